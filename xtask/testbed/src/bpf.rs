//! Classifiers of two instructions, loaded with the bare `bpf` system call: a TC program that
//! only returns a verdict costs what running any TC program costs, without policy. The bench
//! attaches one where the agent attaches its programs; the packet tests subtract what one costs
//! under BPF_PROG_TEST_RUN.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Where a TCX link attaches a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcxHook {
    Ingress = 46,
    Egress = 47,
}

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the rest stays zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    rest: [u64; 13],
}

/// The leading fields of `union bpf_attr` for BPF_LINK_CREATE; the rest stays zero.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    rest: [u64; 6],
}

/// The fields of `union bpf_attr` for BPF_PROG_TEST_RUN this module sets or reads.
#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    rest: [u8; 88],
}

/// Loads the classifier `r0 = verdict; exit`.
pub fn load_classifier(verdict: i32) -> io::Result<OwnedFd> {
    let insns: [u64; 2] = [0xb7 | (u64::from(verdict as u32) << 32), 0x95];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        rest: [0; 13],
    };
    bpf(BPF_PROG_LOAD, &attr)
}

/// Attaches `program` to `hook` of interface `ifindex` (of the calling thread's network
/// namespace); dropping the link detaches it.
pub fn attach_tcx(program: &OwnedFd, ifindex: u32, hook: TcxHook) -> io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: hook as u32,
        flags: 0,
        rest: [0; 6],
    };
    bpf(BPF_LINK_CREATE, &attr)
}

/// Runs `program` `repeat` times on `frame` with BPF_PROG_TEST_RUN; returns its verdict and the
/// kernel's time per run in nanoseconds.
pub fn test_run(program: &OwnedFd, frame: &[u8], repeat: u32) -> io::Result<(i32, u32)> {
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        retval: 0,
        data_size_in: frame.len() as u32,
        data_size_out: 0,
        data_in: frame.as_ptr() as u64,
        data_out: 0,
        repeat,
        duration: 0,
        rest: [0; 88],
    };
    // SAFETY: `attr` is a `union bpf_attr` prefix for BPF_PROG_TEST_RUN with the rest zeroed,
    // and the frame it points to outlives the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.retval as i32, attr.duration))
}

/// The bpf system call with `attr`; returns the descriptor it creates.
fn bpf<T>(command: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` prefix for `command` with the rest zeroed, and the
    // pointers it holds outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: run through cargo xtask test"]
    fn a_classifier_returns_its_verdict_under_test_run() {
        let frame = [0u8; 64];
        for verdict in [-1, 0, 2] {
            let program = load_classifier(verdict).expect("load");
            let (returned, _) = test_run(&program, &frame, 10).expect("test run");
            assert_eq!(returned, verdict);
        }
    }

    #[test]
    #[ignore = "needs root: run through cargo xtask test"]
    fn a_classifier_attaches_to_both_tcx_hooks_of_an_interface() {
        let netns = crate::netns::Netns::create(format!("tb-tcx-{}", std::process::id()))
            .expect("namespace");
        crate::cmd::ip(
            netns.name(),
            &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
        )
        .expect("veth");
        let ifindex = netns.ifindex("d0").expect("ifindex");
        let links = netns
            .run(|| {
                let program = load_classifier(0)?;
                [TcxHook::Ingress, TcxHook::Egress]
                    .map(|hook| attach_tcx(&program, ifindex, hook))
                    .into_iter()
                    .collect::<io::Result<Vec<_>>>()
            })
            .expect("run in the namespace")
            .expect("attach");
        assert_eq!(links.len(), 2);
    }
}
