//! The "empty program" setup: a TC program that passes every packet, attached through TCX to
//! both hooks of the given interfaces, where the agent attaches its programs. It costs what
//! running any TC program costs, without policy.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;
use policy_lab::netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// `r0 = 0 (TC_ACT_OK); exit`.
const PASS_PROGRAM: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];

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

/// The attached program: dropping it closes the links, which detaches it.
pub struct EmptyProgram {
    _links: Vec<OwnedFd>,
}

/// Loads the pass-everything program and attaches it to ingress and egress of `interfaces`
/// inside `netns`.
pub fn attach(netns: &str, interfaces: &[String]) -> anyhow::Result<EmptyProgram> {
    netns::run_inside(netns, || {
        let program = load()?;
        let mut links = Vec::new();
        for interface in interfaces {
            let ifindex = nix::net::if_::if_nametoindex(interface.as_str())
                .with_context(|| format!("finding {interface} in {netns}"))?;
            for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                let attr = LinkCreateAttr {
                    prog_fd: program.as_raw_fd() as u32,
                    target_ifindex: ifindex,
                    attach_type,
                    flags: 0,
                    rest: [0; 6],
                };
                links.push(
                    bpf(BPF_LINK_CREATE, &attr)
                        .with_context(|| format!("attaching the empty program to {interface}"))?,
                );
            }
        }
        Ok(EmptyProgram { _links: links })
    })
}

fn load() -> anyhow::Result<OwnedFd> {
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: PASS_PROGRAM.len() as u32,
        insns: PASS_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        rest: [0; 13],
    };
    bpf(BPF_PROG_LOAD, &attr).context("loading the empty program")
}

/// The bpf system call with `attr`; returns the descriptor it creates.
fn bpf<T>(command: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` prefix for `command` with the rest zeroed, and the
    // pointers it holds outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
