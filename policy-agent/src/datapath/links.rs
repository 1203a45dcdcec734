//! TCX links: attaching the programs to an interface, pinning the links, adopting and pruning
//! pinned links, and switching them to a new program.

use std::{
    collections::BTreeSet,
    fs, io,
    os::fd::{AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, MultiProgLink as _, SchedClassifier, TcAttach,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
};
use tracing::{info, warn};

use super::{Datapath, DatapathError, Hook, bpffs, bpffs::PinLayout};

/// What the kernel says about a TCX link (from its fdinfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 once the interface is gone: the link is defunct.
    pub ifindex: u32,
}

/// Parses the fdinfo of a link fd (`key:\tvalue` lines).
pub fn parse_link_fdinfo(text: &str) -> LinkState {
    let mut state = LinkState::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.split_whitespace().next().and_then(|v| v.parse().ok());
        match (key.trim(), value) {
            ("link_id", Some(value)) => state.link_id = value,
            ("prog_id", Some(value)) => state.prog_id = value,
            ("ifindex", Some(value)) => state.ifindex = value,
            _ => {}
        }
    }
    state
}

/// The pin name of the link of `hook` on `ifindex`.
pub fn link_pin_name(ifindex: u32, hook: Hook) -> String {
    format!("{ifindex}-{}", hook.program_name())
}

/// The interface and hook a link pin name stands for.
pub fn parse_link_pin_name(name: &str) -> Option<(u32, Hook)> {
    let (ifindex, program) = name.split_once('-')?;
    let hook = Hook::ALL
        .into_iter()
        .find(|hook| hook.program_name() == program)?;
    Some((ifindex.parse().ok()?, hook))
}

/// Every link pin of the pin directory, with its interface and hook. Pins of names this build
/// does not write are left alone.
pub fn pinned_links(layout: &PinLayout) -> Result<Vec<(u32, Hook, PathBuf)>, DatapathError> {
    Ok(bpffs::pin_names(&layout.links)?
        .into_iter()
        .filter_map(|name| {
            let (ifindex, hook) = parse_link_pin_name(&name)?;
            Some((ifindex, hook, layout.links.join(name)))
        })
        .collect())
}

fn open_link(path: &Path) -> Result<SchedClassifierLink, DatapathError> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| DatapathError::OpenLink {
        path: path.to_owned(),
        source,
    })?;
    SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| {
        DatapathError::NotTcxLink {
            path: path.to_owned(),
            source,
        }
    })
}

/// Reads the kernel's view of a pinned TCX link.
pub fn read_link(path: &Path) -> Result<LinkState, DatapathError> {
    let link = open_link(path)?;
    let fd = link.fd().map_err(|source| DatapathError::NotTcxLink {
        path: path.to_owned(),
        source,
    })?;
    let text =
        fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).map_err(|source| {
            DatapathError::LinkInfo {
                path: path.to_owned(),
                source,
            }
        })?;
    Ok(parse_link_fdinfo(&text))
}

/// Removes the pins of links whose interface is gone; returns the links kept and removed.
#[expect(
    clippy::type_complexity,
    reason = "two lists of (ifindex, hook), named by the caller"
)]
pub fn prune_defunct(
    layout: &PinLayout,
) -> Result<(Vec<(u32, Hook)>, Vec<(u32, Hook)>), DatapathError> {
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for (ifindex, hook, path) in pinned_links(layout)? {
        let state = read_link(&path)?;
        if state.ifindex == ifindex {
            kept.push((ifindex, hook));
        } else {
            bpffs::remove_pin(&path)?;
            info!(ifindex, %hook, "removed the pinned link of a deleted interface");
            removed.push((ifindex, hook));
        }
    }
    Ok((kept, removed))
}

/// Switches every pinned link of `hook` to `program` atomically (`BPF_LINK_UPDATE`).
pub fn update_links(
    layout: &PinLayout,
    hook: Hook,
    program: &mut SchedClassifier,
) -> Result<(), DatapathError> {
    for (ifindex, link_hook, path) in pinned_links(layout)? {
        if link_hook != hook {
            continue;
        }
        update_link(&path, hook, program)?;
        info!(ifindex, %hook, "switched pinned link to the new program");
    }
    Ok(())
}

fn update_link(
    path: &Path,
    hook: Hook,
    program: &mut SchedClassifier,
) -> Result<(), DatapathError> {
    let update_error = |source| DatapathError::UpdateLink {
        path: path.to_owned(),
        hook,
        source,
    };
    let link = open_link(path)?;
    let id = program.attach_to_link(link).map_err(update_error)?;
    // The program now tracks the link; take it back so dropping the program does not close
    // anything but this descriptor (the pin keeps the link).
    drop(program.take_link(id).map_err(update_error)?);
    Ok(())
}

/// `BPF_LINK_DETACH`: detaches a link from its hook now, whoever else holds it. aya has no
/// call for it.
fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    /// The `link_detach` member of `union bpf_attr`.
    #[repr(C)]
    struct LinkDetachAttr {
        link_fd: u32,
    }
    const BPF_LINK_DETACH: libc::c_long = 34;
    let attr = LinkDetachAttr {
        link_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for this command, alive for the call, and its
    // size is passed along; the kernel reads nothing past it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &raw const attr,
            size_of::<LinkDetachAttr>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Datapath {
    /// Attaches `from_pod` to TC ingress and `svc_egress` then `to_pod` to TC egress of the
    /// pod's host-side interface through TCX, and pins the links. Idempotent: a hook already attached with the
    /// current program is left alone, one attached with another program is switched atomically.
    ///
    /// The ifindex is resolved in the calling thread's network namespace.
    pub fn attach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        for hook in Hook::POD {
            self.attach_hook(ifindex, hook)?;
        }
        Ok(())
    }

    /// Attaches `svc_egress` to TC egress of one of the node's other interfaces (an uplink, not
    /// a pod's), and pins the link; idempotent as [`Datapath::attach`].
    pub fn attach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.attach_hook(ifindex, Hook::SvcEgress)
    }

    fn attach_hook(&mut self, ifindex: u32, hook: Hook) -> Result<(), DatapathError> {
        let path = self.layout.links.join(link_pin_name(ifindex, hook));
        let program = &mut self.programs[hook.index()];
        if path.exists() {
            let state = read_link(&path)?;
            if state.ifindex == ifindex {
                if state.prog_id != self.program_ids[hook.index()] {
                    update_link(&path, hook, program)?;
                    info!(ifindex, %hook, "switched link to the current program");
                }
                return Ok(());
            }
            warn!(ifindex, %hook, "replacing the pinned link of a deleted interface");
            bpffs::remove_pin(&path)?;
        }
        let attach_error = |source| DatapathError::Attach {
            ifindex,
            hook,
            source,
        };
        let id = program
            .attach(
                ifindex,
                TcAttach::Tcx {
                    attach_type: hook.attach_type(),
                    // Ahead of `to_pod`, whichever was attached first.
                    order: if hook == Hook::SvcEgress {
                        LinkOrder::first()
                    } else {
                        LinkOrder::default()
                    },
                },
            )
            .map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        let link = FdLink::try_from(link).map_err(|source| DatapathError::NotTcxLink {
            path: path.clone(),
            source,
        })?;
        link.pin(&path).map_err(|source| DatapathError::PinLink {
            ifindex,
            hook,
            path: path.clone(),
            source,
        })?;
        info!(ifindex, %hook, "attached");
        Ok(())
    }

    /// [`Datapath::attach`] by interface name, resolved in the calling thread's namespace.
    pub fn attach_by_name(&mut self, name: &str) -> Result<u32, DatapathError> {
        let ifindex = nix::net::if_::if_nametoindex(name).map_err(|source| {
            DatapathError::UnknownInterface {
                name: name.to_owned(),
                source,
            }
        })?;
        self.attach(ifindex)?;
        Ok(ifindex)
    }

    /// Detaches the pod programs from the interface, then removes the link pins. Removing a
    /// pin alone would release the link only once the kernel frees the pin's inode, some time
    /// later; `BPF_LINK_DETACH` takes the program off the interface at once. Detaching what is
    /// not attached is not an error.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.detach_hooks(ifindex, &Hook::POD)
    }

    /// Detaches `svc_egress` from an uplink, as [`Datapath::detach`] does the pod programs.
    pub fn detach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.detach_hooks(ifindex, &[Hook::SvcEgress])
    }

    fn detach_hooks(&mut self, ifindex: u32, hooks: &[Hook]) -> Result<(), DatapathError> {
        for &hook in hooks {
            let path = self.layout.links.join(link_pin_name(ifindex, hook));
            if !path.exists() {
                continue;
            }
            let link = open_link(&path)?;
            let fd = link.fd().map_err(|source| DatapathError::NotTcxLink {
                path: path.clone(),
                source,
            })?;
            link_detach(fd).map_err(|source| DatapathError::DetachLink {
                path: path.clone(),
                source,
            })?;
            match fs::remove_file(&path) {
                Ok(()) => info!(ifindex, %hook, "detached"),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(DatapathError::RemovePin { path, source }),
            }
        }
        Ok(())
    }

    /// The interfaces with a pinned `from_pod` or `to_pod` link.
    pub fn attached(&self) -> Result<Vec<u32>, DatapathError> {
        self.linked(&[Hook::FromPod, Hook::ToPod])
    }

    /// The interfaces with a pinned `svc_egress` link and no pod program: the uplinks.
    pub fn attached_uplinks(&self) -> Result<Vec<u32>, DatapathError> {
        let pods = self.attached()?;
        let mut uplinks = self.linked(&[Hook::SvcEgress])?;
        uplinks.retain(|ifindex| !pods.contains(ifindex));
        Ok(uplinks)
    }

    fn linked(&self, hooks: &[Hook]) -> Result<Vec<u32>, DatapathError> {
        let ifindexes: BTreeSet<u32> = pinned_links(&self.layout)?
            .into_iter()
            .filter(|(_, hook, _)| hooks.contains(hook))
            .map(|(ifindex, _, _)| ifindex)
            .collect();
        Ok(ifindexes.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcx_fdinfo_gives_ids_and_interface() {
        let text = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\nlink_type:\ttcx\n\
                    link_id:\t42\nprog_tag:\t0123456789abcdef\nprog_id:\t77\nifindex:\t9\n\
                    attach_type:\t46 (tcx_ingress)\n";
        assert_eq!(
            parse_link_fdinfo(text),
            LinkState {
                link_id: 42,
                prog_id: 77,
                ifindex: 9
            }
        );
    }

    #[test]
    fn defunct_link_has_no_interface() {
        let text = "link_type:\ttcx\nlink_id:\t42\nprog_id:\t77\nifindex:\t0\n";
        assert_eq!(parse_link_fdinfo(text).ifindex, 0);
    }

    #[test]
    fn link_pin_names_round_trip() {
        for hook in Hook::ALL {
            let name = link_pin_name(17, hook);
            assert_eq!(parse_link_pin_name(&name), Some((17, hook)));
        }
        assert_eq!(parse_link_pin_name("17-other"), None);
        assert_eq!(parse_link_pin_name("x-from_pod"), None);
        assert_eq!(parse_link_pin_name("from_pod"), None);
    }
}
