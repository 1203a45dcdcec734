//! Deterministic nodes and addresses for pods whose manifests carry none, so that `explain` and
//! the lab agree on every address without a cluster.
//!
//! The rule, exactly:
//! - Nodes are `node-1` to `node-N`. A pod without `spec.nodeName` goes to node `1 + (i mod N)`,
//!   where `i` is its index among all such pods sorted by (namespace, name).
//! - Node `node-K` has number `K`; nodes named otherwise get the numbers after the largest
//!   (`N`, or the largest `K` named), in sorted name order.
//! - On node number `K`, the pods that need addresses (no IP, not hostNetwork, not Succeeded or
//!   Failed), sorted by (namespace, name), get host numbers 2, 3, ... skipping numbers already
//!   taken on that node by any pod's own address (`10.244.K.H` or `fd00:10:244:K::H`).
//! - Host `H` on node `K` has the addresses `10.244.K.H` and `fd00:10:244:K::H` (the IPv6 groups
//!   `K` and `H` written in hex), IPv4 first.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::policy::model::Snapshot;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("node {node} would get number {number}; addresses have room for nodes 1 to 255")]
    TooManyNodes { node: String, number: usize },
    #[error("node {node} has more than 253 pods to address (hosts 2 to 254)")]
    NodeFull { node: String },
}

/// The name of node number `number`.
pub fn node_name(number: usize) -> String {
    format!("node-{number}")
}

fn node_number(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?.parse().ok().filter(|n| *n >= 1)
}

/// The number of nodes `explain` assumes: 2, or the largest `K` of a `node-K` a pod names.
pub fn node_count(snapshot: &Snapshot) -> usize {
    snapshot
        .pods
        .iter()
        .filter_map(|pod| pod.node.as_deref().and_then(node_number))
        .fold(2, usize::max)
}

/// Schedules pods without a node onto `node-1..node-<nodes>` and gives every pod that needs
/// addresses an IPv4 and an IPv6 address, by the rule in this module's documentation.
pub fn assign_addresses(snapshot: &mut Snapshot, nodes: usize) -> Result<(), AddressError> {
    let nodes = nodes.max(1);
    let mut unscheduled: Vec<usize> = (0..snapshot.pods.len())
        .filter(|&i| snapshot.pods[i].node.is_none())
        .collect();
    unscheduled.sort_by(|&a, &b| {
        let (a, b) = (&snapshot.pods[a], &snapshot.pods[b]);
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    for (i, index) in unscheduled.into_iter().enumerate() {
        snapshot.pods[index].node = Some(node_name(1 + i % nodes));
    }

    let named: BTreeSet<&str> = snapshot
        .pods
        .iter()
        .filter_map(|pod| pod.node.as_deref())
        .collect();
    let largest = named
        .iter()
        .filter_map(|name| node_number(name))
        .fold(nodes, usize::max);
    let mut numbers: BTreeMap<String, usize> = BTreeMap::new();
    let mut next = largest + 1;
    for name in named {
        let number = match node_number(name) {
            Some(number) => number,
            None => {
                next += 1;
                next - 1
            }
        };
        if number > 255 {
            return Err(AddressError::TooManyNodes {
                node: name.to_owned(),
                number,
            });
        }
        numbers.insert(name.to_owned(), number);
    }

    let mut taken: BTreeMap<usize, BTreeSet<u16>> = BTreeMap::new();
    for ip in snapshot.pods.iter().flat_map(|pod| &pod.ips) {
        if let Some((node, host)) = lab_host(*ip) {
            taken.entry(node).or_default().insert(host);
        }
    }

    let mut needing: Vec<usize> = (0..snapshot.pods.len())
        .filter(|&i| {
            let pod = &snapshot.pods[i];
            pod.ips.is_empty() && !pod.host_network && !pod.phase.is_terminated()
        })
        .collect();
    needing.sort_by(|&a, &b| {
        let (a, b) = (&snapshot.pods[a], &snapshot.pods[b]);
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    let mut next_host: BTreeMap<usize, u16> = BTreeMap::new();
    for index in needing {
        let node = snapshot.pods[index].node.clone().unwrap_or_default();
        let number = numbers.get(&node).copied().unwrap_or(1);
        let taken = taken.entry(number).or_default();
        let host = next_host.entry(number).or_insert(2);
        while taken.contains(host) {
            *host += 1;
        }
        if *host > 254 {
            return Err(AddressError::NodeFull { node });
        }
        snapshot.pods[index].ips = addresses(number, *host).to_vec();
        *host += 1;
    }
    Ok(())
}

/// The IPv4 and IPv6 address of host `host` on node number `node` (both at most 255).
fn addresses(node: usize, host: u16) -> [IpAddr; 2] {
    let node = node as u8;
    [
        IpAddr::V4(Ipv4Addr::new(10, 244, node, host as u8)),
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            u16::from(node),
            0,
            0,
            0,
            host,
        )),
    ]
}

/// Node and host number of an address in the lab's ranges.
fn lab_host(ip: IpAddr) -> Option<(usize, u16)> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, node, host] = v4.octets();
            (a == 10 && b == 244).then_some((usize::from(node), u16::from(host)))
        }
        IpAddr::V6(v6) => {
            let [a, b, c, node, 0, 0, 0, host] = v6.segments() else {
                return None;
            };
            (a == 0xfd00 && b == 0x10 && c == 0x244).then_some((usize::from(node), host))
        }
    }
}
