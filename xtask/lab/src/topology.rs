//! Wiring: the underlay between nodes, the nodes, and each pod attached to its node the way a CNI
//! would. Odd nodes are wired like the ptp plugin (a host-side veth per pod, a link-local gateway,
//! /32 and /128 routes); even nodes like the bridge plugin (pods' veths on `cni0`, which holds the
//! node's gateway addresses), with static neighbour and fdb entries so the agent can map a pod IP
//! to its bridge port before any traffic.

use std::net::IpAddr;

use anyhow::{Context, Result};
use policy_core::manifest::{IpFamily, node_cidr_v4, node_cidr_v6, node_name};

use super::{cmd, names, netns, plan::LabPod};

/// The ptp gateway every pod of a ptp-style node routes through.
const PTP_GATEWAY_V4: &str = "169.254.1.1";
const PTP_GATEWAY_V6: &str = "fe80::1";

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

/// Node `k`'s underlay addresses.
pub fn underlay_v4(k: usize) -> String {
    format!("172.31.0.{k}")
}

pub fn underlay_v6(k: usize) -> String {
    format!("fd00:172:31::{k:x}")
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
    if CniStyle::of_node(k) == CniStyle::Bridge {
        let bridge = names::NODE_BRIDGE;
        // A bridge without a MAC of its own takes its lowest port's, and every change of it
        // flushes the static neighbour entries of its pods.
        commands.push(format!(
            "link add {bridge} address 02:00:0a:f4:{k:02x}:01 type bridge"
        ));
        if family.has_v4() {
            commands.push(format!("addr add {} dev {bridge}", gateway(k, false, true)));
        }
        if family.has_v6() {
            commands.push(format!(
                "addr add {} dev {bridge} nodad",
                gateway(k, true, true)
            ));
        }
        commands.push(format!("link set {bridge} up"));
    }
    cmd::ip_batch(&node, &commands)?;
    if CniStyle::of_node(k) == CniStyle::Bridge {
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

/// The gateway address of bridge node `k` (`10.244.k.1`, `fd00:10:244:k::1`), with its prefix
/// length when `with_len`.
fn gateway(k: usize, v6: bool, with_len: bool) -> String {
    let cidr = if v6 { node_cidr_v6(k) } else { node_cidr_v4(k) };
    let address = match cidr.addr {
        IpAddr::V4(net) => IpAddr::V4((u32::from(net) | 1).into()),
        IpAddr::V6(net) => IpAddr::V6((u128::from(net) | 1).into()),
    };
    if with_len {
        format!("{address}/{}", cidr.len)
    } else {
        address.to_string()
    }
}

/// Creates the pod's namespace and attaches it to its node.
pub fn create_pod(pod: &LabPod) -> Result<()> {
    let pod_netns = pod.netns();
    let node_netns = names::node_netns(pod.node);
    let veth = names::host_veth(&pod.key);
    let mac = names::pod_mac(&pod.key);
    let link = names::POD_LINK;
    netns::create(&pod_netns)?;
    cmd::run(
        "ip",
        &[
            "-n",
            &node_netns,
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            link,
            "address",
            &mac,
            "netns",
            &pod_netns,
        ],
    )
    .with_context(|| format!("attaching pod {} to {}", pod.key, node_name(pod.node)))?;
    let mut in_pod = vec!["link set lo up".to_owned(), format!("link set {link} up")];
    let mut in_node = vec![format!("link set {veth} up")];
    match CniStyle::of_node(pod.node) {
        CniStyle::Ptp => {
            in_node.push(format!("addr add {PTP_GATEWAY_V4}/32 dev {veth}"));
            in_node.push(format!("addr add {PTP_GATEWAY_V6}/64 dev {veth} nodad"));
            for ip in &pod.ips {
                if ip.is_ipv4() {
                    in_pod.push(format!("addr add {ip}/32 dev {link}"));
                    in_pod.push(format!("route add {PTP_GATEWAY_V4} dev {link} scope link"));
                    in_pod.push(format!("route add default via {PTP_GATEWAY_V4} dev {link}"));
                    in_node.push(format!("route replace {ip}/32 dev {veth}"));
                } else {
                    in_pod.push(format!("addr add {ip}/128 dev {link} nodad"));
                    in_pod.push(format!("route add default via {PTP_GATEWAY_V6} dev {link}"));
                    in_node.push(format!("route replace {ip}/128 dev {veth}"));
                }
            }
        }
        CniStyle::Bridge => {
            let bridge = names::NODE_BRIDGE;
            // Hairpin, as the bridge plugin's hairpinMode: a pod reaching itself through its
            // Service leaves and re-enters the bridge through its own port.
            in_node.insert(0, format!("link set {veth} type bridge_slave hairpin on"));
            in_node.insert(0, format!("link set {veth} master {bridge}"));
            for ip in &pod.ips {
                let v6 = ip.is_ipv6();
                let len = if v6 { 64 } else { 24 };
                let nodad = if v6 { " nodad" } else { "" };
                in_pod.push(format!("addr add {ip}/{len} dev {link}{nodad}"));
                in_pod.push(format!(
                    "route add default via {} dev {link}",
                    gateway(pod.node, v6, false)
                ));
                in_node.push(format!(
                    "neigh replace {ip} lladdr {mac} dev {bridge} nud permanent"
                ));
            }
        }
    }
    cmd::ip_batch(&pod_netns, &in_pod)?;
    cmd::ip_batch(&node_netns, &in_node)?;
    if CniStyle::of_node(pod.node) == CniStyle::Bridge {
        cmd::run(
            "bridge",
            &[
                "-n",
                &node_netns,
                "fdb",
                "replace",
                &mac,
                "dev",
                &veth,
                "master",
                "static",
            ],
        )?;
    }
    Ok(())
}

/// Detaches the pod from its node and deletes its namespace (which stops its server).
pub fn delete_pod(pod: &LabPod) -> Result<()> {
    let node_netns = names::node_netns(pod.node);
    if CniStyle::of_node(pod.node) == CniStyle::Bridge && netns::exists(&node_netns) {
        for ip in &pod.ips {
            // The entry may already be gone with the bridge port; only its absence matters.
            let _ = cmd::ip(
                &node_netns,
                &["neigh", "del", &ip.to_string(), "dev", names::NODE_BRIDGE],
            );
        }
    }
    // Deleting the veth here removes it and its routes at once; a deleted namespace takes its
    // links down only later, and the pod's addresses may be handed out again right away.
    if netns::exists(&node_netns) {
        let _ = cmd::ip(&node_netns, &["link", "del", &names::host_veth(&pod.key)]);
    }
    netns::delete(&pod.netns())?;
    for file in [
        names::server_ready_file(&pod.netns()),
        names::server_log(&pod.netns()),
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
