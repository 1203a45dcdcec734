//! Wiring: the underlay between nodes, the nodes, and each pod attached to its node the way a CNI
//! would. Odd nodes are wired like the ptp plugin (a host-side veth per pod, a link-local gateway,
//! /32 and /128 routes); even nodes like the bridge plugin (pods' veths on `cni0`, which holds the
//! node's gateway addresses), with static neighbour and fdb entries so the node knows every pod
//! before any traffic. The pods are wired by [`policy_testbed::wire`], as in the agent's tests.

use std::net::IpAddr;

use anyhow::{Context, Result};
use policy_core::manifest::{IpFamily, node_addresses, node_cidr_v4, node_cidr_v6, node_name};
use policy_testbed::wire::{
    self, Bridge, Gateway, LINK_LOCAL_GATEWAYS, Neighbours, PodLink, Wiring,
};

use super::{cmd, names, netns, plan::LabPod};

/// How a node attaches its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniStyle {
    Ptp,
    Bridge,
}

impl CniStyle {
    pub fn of_node(k: usize) -> Self {
        if k.is_multiple_of(2) {
            Self::Bridge
        } else {
            Self::Ptp
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ptp => "ptp",
            Self::Bridge => "bridge",
        }
    }
}

/// Node `k`'s underlay addresses: its addresses by the core's rule, which explain assumes too.
pub fn underlay_v4(k: usize) -> IpAddr {
    node_addresses(k, IpFamily::Ipv4)[0]
}

pub fn underlay_v6(k: usize) -> IpAddr {
    node_addresses(k, IpFamily::Ipv6)[0]
}

/// The namespace that links the nodes: one bridge, one port per node.
pub fn create_underlay() -> Result<()> {
    let netns = names::UNDERLAY_NETNS;
    netns::create(netns)?;
    cmd::ip_batch(
        netns,
        &[
            "link set lo up".to_owned(),
            format!("link add {} type bridge", names::UNDERLAY_BRIDGE),
            format!("link set {} up", names::UNDERLAY_BRIDGE),
        ],
    )
}

/// Node `k` of `nodes`: its uplink to the underlay, routes to every other node's pod CIDRs,
/// forwarding on, and the `cni0` bridge for bridge-style nodes.
pub fn create_node(k: usize, nodes: usize, family: IpFamily) -> Result<()> {
    let node = names::node_netns(k);
    netns::create(&node)?;
    netns::sysctls(
        &node,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ],
    )?;
    let port = names::underlay_port(k);
    // The port of a node whose namespace was deleted outside the lab may not be gone yet.
    let _ = cmd::ip(names::UNDERLAY_NETNS, &["link", "del", &port]);
    cmd::run(
        "ip",
        &[
            "-n",
            &node,
            "link",
            "add",
            names::NODE_UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            names::UNDERLAY_NETNS,
        ],
    )?;
    cmd::ip_batch(
        names::UNDERLAY_NETNS,
        &[
            format!("link set {port} master {}", names::UNDERLAY_BRIDGE),
            format!("link set {port} up"),
        ],
    )?;
    let uplink = names::NODE_UPLINK;
    let mut commands = vec![
        "link set lo up".to_owned(),
        format!("addr add {}/24 dev {uplink}", underlay_v4(k)),
        format!("addr add {}/64 dev {uplink} nodad", underlay_v6(k)),
        format!("link set {uplink} up"),
    ];
    for other in (1..=nodes).filter(|other| *other != k) {
        if family.has_v4() {
            commands.push(format!(
                "route add {} via {}",
                node_cidr_v4(other),
                underlay_v4(other)
            ));
        }
        if family.has_v6() {
            commands.push(format!(
                "route add {} via {}",
                node_cidr_v6(other),
                underlay_v6(other)
            ));
        }
    }
    cmd::ip_batch(&node, &commands)?;
    // The port first: its link-watch work enables it on the underlay bridge, whose forwarding
    // brings the bridge's carrier.
    wire::wait_until_up(names::UNDERLAY_NETNS, &port)?;
    wire::wait_until_up(names::UNDERLAY_NETNS, names::UNDERLAY_BRIDGE)?;
    wire::wait_until_up(&node, uplink)?;
    if let Wiring::Bridge { bridge, .. } = wiring(k, family) {
        bridge.create(&node)?;
        // Bridged pod-to-pod traffic must pass the node's iptables, or replies from a Service
        // backend on the same bridge would skip the reverse translation (as with kube-proxy).
        netns::sysctls(
            &node,
            &[
                ("net.bridge.bridge-nf-call-iptables", "1"),
                ("net.bridge.bridge-nf-call-ip6tables", "1"),
            ],
        )?;
    }
    Ok(())
}

/// How node `k` wires its pods: ptp nodes through link-local gateways; bridge nodes through
/// `cni0`, which holds the first address of each of the node's pod CIDRs, with static
/// neighbour entries so the node knows every pod before any traffic.
fn wiring(k: usize, family: IpFamily) -> Wiring {
    if CniStyle::of_node(k) == CniStyle::Ptp {
        return Wiring::Ptp(LINK_LOCAL_GATEWAYS);
    }
    let mut cidrs = Vec::new();
    if family.has_v4() {
        cidrs.push(node_cidr_v4(k));
    }
    if family.has_v6() {
        cidrs.push(node_cidr_v6(k));
    }
    let gateways = cidrs
        .into_iter()
        .map(|cidr| Gateway {
            address: match cidr.addr {
                IpAddr::V4(net) => IpAddr::V4((u32::from(net) | 1).into()),
                IpAddr::V6(net) => IpAddr::V6((u128::from(net) | 1).into()),
            },
            prefix: cidr.len,
        })
        .collect();
    Wiring::Bridge {
        bridge: Bridge {
            name: names::NODE_BRIDGE.to_owned(),
            gateways,
            mac: Some(format!("02:00:0a:f4:{k:02x}:01")),
        },
        neighbours: Neighbours::Static,
    }
}

/// Creates the pod's namespace and attaches it to its node.
pub fn create_pod(pod: &LabPod, family: IpFamily) -> Result<()> {
    let pod_netns = pod.netns();
    netns::create(&pod_netns)?;
    let (host_if, mac) = (names::host_veth(&pod.key), names::pod_mac(&pod.key));
    let node_netns = names::node_netns(pod.node);
    let link = PodLink {
        node: &node_netns,
        pod: &pod_netns,
        host_if: &host_if,
        pod_if: names::POD_LINK,
        mac: Some(&mac),
        addresses: &pod.ips,
    };
    wire::attach(&link, &wiring(pod.node, family))
        .with_context(|| format!("attaching pod {} to {}", pod.key, node_name(pod.node)))
}

/// Detaches the pod from its node and deletes its namespace (which stops its server).
pub fn delete_pod(pod: &LabPod, family: IpFamily) -> Result<()> {
    let node_netns = names::node_netns(pod.node);
    if pod.host_network {
        stop_host_server(pod)?;
    } else {
        if netns::exists(&node_netns) {
            let (host_if, mac) = (names::host_veth(&pod.key), names::pod_mac(&pod.key));
            let link = PodLink {
                node: &node_netns,
                pod: &pod.netns(),
                host_if: &host_if,
                pod_if: names::POD_LINK,
                mac: Some(&mac),
                addresses: &pod.ips,
            };
            wire::detach(&link, &wiring(pod.node, family));
        }
        netns::delete(&pod.netns())?;
    }
    for file in [
        names::server_ready_file(&pod.name()),
        names::server_log(&pod.name()),
        names::server_pid_file(&pod.name()),
    ] {
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("removing {}", file.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Stops a hostNetwork pod's server: the process its pid file names, if that is still the
/// pod's server (a pid outlives its process and may be reused).
fn stop_host_server(pod: &LabPod) -> Result<()> {
    let file = names::server_pid_file(&pod.name());
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(());
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("reading {}", file.display()))?;
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let reply = pod.key.to_string();
    let is_server = command_line
        .split(|byte| *byte == 0)
        .any(|argument| argument == reply.as_bytes());
    if is_server {
        // Gone already is as good as stopped.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(())
}
