//! Pods attached to their node as the two CNI plugins the lab and the tests model do it: the ptp
//! plugin (a host-side veth per pod holding the pods' gateway, a /32 or /128 route to each pod
//! address through it) and the bridge plugin (the host-side veths ports of a bridge that holds
//! the gateway, the pods in its subnets, reaching each other without routing).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The address each pod routes through, one per family.
#[derive(Clone, Copy, Debug)]
pub struct Gateways {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Gateways {
    /// The gateway of `address`'s family.
    pub fn of(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(_) => self.v4.into(),
            IpAddr::V6(_) => self.v6.into(),
        }
    }
}

/// The link-local gateways a ptp node gives every pod: the same on each host-side veth, so no
/// pod address is spent on them.
pub const LINK_LOCAL_GATEWAYS: Gateways = Gateways {
    v4: Ipv4Addr::new(169, 254, 1, 1),
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
};

/// A gateway address of a bridge, with the prefix length of the pod subnet it serves.
#[derive(Clone, Copy, Debug)]
pub struct Gateway {
    pub address: IpAddr,
    pub prefix: u8,
}

/// A node's bridge: its pods' host-side veths are its ports, and it holds their gateways.
#[derive(Clone, Debug)]
pub struct Bridge {
    pub name: String,
    /// One per family the pods have.
    pub gateways: Vec<Gateway>,
    /// The bridge's own MAC. Without one it takes its lowest port's, and each change of that
    /// flushes the static neighbour entries of its pods.
    pub mac: Option<String>,
}

impl Bridge {
    /// Creates the bridge in `node` with its gateway addresses, and brings it up. No multicast
    /// snooping and no forward delay: neighbour discovery reaches every port, and ports forward
    /// as soon as they are up.
    pub fn create(&self, node: &str) -> Result<()> {
        let name = &self.name;
        let address = self
            .mac
            .as_ref()
            .map(|mac| format!(" address {mac}"))
            .unwrap_or_default();
        let mut commands = vec![format!(
            "link add {name}{address} type bridge mcast_snooping 0 forward_delay 0"
        )];
        for Gateway { address, prefix } in &self.gateways {
            let nodad = if address.is_ipv6() { " nodad" } else { "" };
            commands.push(format!("addr add {address}/{prefix} dev {name}{nodad}"));
        }
        commands.push(format!("link set {name} up"));
        cmd::ip_batch(node, &commands).with_context(|| format!("creating bridge {name}"))
    }

    /// The gateway of `address`'s family.
    fn gateway(&self, address: IpAddr) -> Result<Gateway> {
        self.gateways
            .iter()
            .find(|gateway| gateway.address.is_ipv4() == address.is_ipv4())
            .copied()
            .with_context(|| format!("bridge {} has no gateway for {address}", self.name))
    }
}

/// How the node learns which bridge port and MAC a pod address is behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbours {
    /// From the traffic, as the bridge plugin leaves it (and as an attacker can try to sway).
    Learned,
    /// From permanent neighbour and static fdb entries written when the pod is attached, so the
    /// node knows every pod before any traffic. Needs the pod's MAC.
    Static,
}

/// How a node wires its pods.
#[derive(Clone, Debug)]
pub enum Wiring {
    /// The ptp plugin: the host-side veth holds the gateways (as /32 and /128), and the node
    /// routes each pod address to it.
    Ptp(Gateways),
    /// The bridge plugin: the host-side veth is a port of the bridge, in hairpin mode as the
    /// plugin's `hairpinMode` sets it, so a pod reaching itself through a Service gets its
    /// packets back through its own port.
    Bridge {
        bridge: Bridge,
        neighbours: Neighbours,
    },
}

/// One pod's link to its node: a veth with `host_if` in the node and `pod_if` in the pod.
#[derive(Clone, Copy, Debug)]
pub struct PodLink<'a> {
    /// The node's network namespace.
    pub node: &'a str,
    /// The pod's network namespace.
    pub pod: &'a str,
    pub host_if: &'a str,
    pub pod_if: &'a str,
    /// The MAC of the pod's interface; the kernel picks one when `None`.
    pub mac: Option<&'a str>,
    pub addresses: &'a [IpAddr],
}

/// How long a link that was just brought up may take to be able to send.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns once `ifname` in `netns` can send. A veth end has its carrier as soon as both ends
/// are up, but the kernel starts its transmit queue (and a bridge enables its port) only when
/// the link-watch work runs, and until then drops all it sends: a pod probed at once would lose
/// its first ARP request or neighbour solicitation, and with it a second of its first
/// connection. Asking for the link by name runs the pending work (Linux 6.8 and later), so the
/// first answer normally says it is up; earlier kernels are asked again until it is.
pub fn wait_until_up(netns: &str, ifname: &str) -> Result<()> {
    let deadline = Instant::now() + LINK_UP_TIMEOUT;
    loop {
        let link = cmd::ip(netns, &["-o", "link", "show", "dev", ifname])?;
        if link.contains(" state UP ") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{ifname} in network namespace {netns} is not up {LINK_UP_TIMEOUT:?} after \
                 being brought up: {}",
                link.trim()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Creates the pod's veth and wires both ends: its addresses and default routes in the pod,
/// its routes (ptp) or bridge port (bridge) in the node. Returns once both ends (and the
/// bridge) can send.
pub fn attach(link: &PodLink, wiring: &Wiring) -> Result<()> {
    let PodLink {
        node,
        pod,
        host_if,
        pod_if,
        mac,
        addresses,
    } = *link;
    let address = mac.map(|mac| format!(" address {mac}")).unwrap_or_default();
    cmd::ip_batch(
        node,
        &[format!(
            "link add {host_if} type veth peer name {pod_if}{address} netns {pod}"
        )],
    )
    .with_context(|| format!("attaching {pod} to {node}"))?;
    let mut in_pod = vec![format!("link set {pod_if} up")];
    let mut in_node = Vec::new();
    match wiring {
        Wiring::Ptp(gateways) => {
            // Up first: a route through a link that is down is refused.
            in_node.push(format!("link set {host_if} up"));
            in_node.push(format!("addr add {}/32 dev {host_if}", gateways.v4));
            in_node.push(format!("addr add {}/128 dev {host_if} nodad", gateways.v6));
            for &ip in addresses {
                let (len, nodad, scope) = match ip {
                    IpAddr::V4(_) => (32, "", " scope link"),
                    IpAddr::V6(_) => (128, " nodad", ""),
                };
                let gateway = gateways.of(ip);
                in_pod.push(format!("addr add {ip}/{len} dev {pod_if}{nodad}"));
                in_pod.push(format!("route replace {gateway} dev {pod_if}{scope}"));
                in_pod.push(format!("route replace default via {gateway} dev {pod_if}"));
                in_node.push(format!("route replace {ip}/{len} dev {host_if}"));
            }
        }
        Wiring::Bridge { bridge, neighbours } => {
            in_node.push(format!("link set {host_if} master {}", bridge.name));
            in_node.push(format!("link set {host_if} type bridge_slave hairpin on"));
            in_node.push(format!("link set {host_if} up"));
            for &ip in addresses {
                let Gateway { address, prefix } = bridge.gateway(ip)?;
                let nodad = if ip.is_ipv6() { " nodad" } else { "" };
                in_pod.push(format!("addr add {ip}/{prefix} dev {pod_if}{nodad}"));
                in_pod.push(format!("route replace default via {address} dev {pod_if}"));
            }
            if *neighbours == Neighbours::Static {
                let Some(mac) = mac else {
                    bail!("static neighbour entries for {pod} need its MAC");
                };
                for &ip in addresses {
                    in_node.push(format!(
                        "neigh replace {ip} lladdr {mac} dev {} nud permanent",
                        bridge.name
                    ));
                }
            }
        }
    }
    cmd::ip_batch(pod, &in_pod)?;
    cmd::ip_batch(node, &in_node)?;
    if let (
        Wiring::Bridge {
            neighbours: Neighbours::Static,
            ..
        },
        Some(mac),
    ) = (wiring, mac)
    {
        cmd::run(
            "bridge",
            &[
                "-n", node, "fdb", "replace", mac, "dev", host_if, "master", "static",
            ],
        )?;
    }
    wait_until_up(pod, pod_if)?;
    // The host end first: its link-watch work is what enables the bridge port, whose
    // forwarding brings the bridge's own carrier.
    wait_until_up(node, host_if)?;
    if let Wiring::Bridge { bridge, .. } = wiring {
        wait_until_up(node, &bridge.name)?;
    }
    Ok(())
}

/// Removes the pod's veth from the node, and its static neighbour entries. Deleting the veth
/// removes it and its routes at once; a deleted pod namespace takes its links down only later,
/// and the pod's addresses may be handed out again right away. Each is best effort: what is
/// already gone is what was wanted.
pub fn detach(link: &PodLink, wiring: &Wiring) {
    if let Wiring::Bridge {
        bridge,
        neighbours: Neighbours::Static,
    } = wiring
    {
        for ip in link.addresses {
            let _ = cmd::ip(
                link.node,
                &["neigh", "del", &ip.to_string(), "dev", &bridge.name],
            );
        }
    }
    let _ = cmd::ip(link.node, &["link", "del", link.host_if]);
}
