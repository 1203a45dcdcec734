//! The "empty program" setup: a TC program that passes every packet, attached through TCX to
//! both hooks of the given interfaces, where the agent attaches its programs. It costs what
//! running any TC program costs, without policy.

use std::os::fd::OwnedFd;

use anyhow::Context as _;
use policy_lab::netns;
use policy_testbed::bpf::{self, TcxHook};

/// The attached program: dropping it closes the links, which detaches it.
pub struct EmptyProgram {
    _links: Vec<OwnedFd>,
}

/// Loads the pass-everything program and attaches it to ingress and egress of `interfaces`
/// inside `netns`.
pub fn attach(netns: &str, interfaces: &[String]) -> anyhow::Result<EmptyProgram> {
    netns::run_inside(netns, || {
        // TC_ACT_OK.
        let program = bpf::load_classifier(0).context("loading the empty program")?;
        let mut links = Vec::new();
        for interface in interfaces {
            let ifindex = nix::net::if_::if_nametoindex(interface.as_str())
                .with_context(|| format!("finding {interface} in {netns}"))?;
            for hook in [TcxHook::Ingress, TcxHook::Egress] {
                links.push(
                    bpf::attach_tcx(&program, ifindex, hook)
                        .with_context(|| format!("attaching the empty program to {interface}"))?,
                );
            }
        }
        Ok(EmptyProgram { _links: links })
    })
}
