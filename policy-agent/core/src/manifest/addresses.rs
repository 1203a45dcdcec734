//! Deterministic nodes and addresses for pods and Services whose manifests carry none, so that
//! `explain` and the lab agree on every address without a cluster.
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
//!   `K` and `H` written in hex), IPv4 first, of the families the cluster runs; node `K`'s pod
//!   CIDRs are `10.244.K.0/24` and `fd00:10:244:K::/64`.
//! - Node `node-K` has the addresses `172.31.0.K` and `fd00:172:31::K` (its InternalIPs, the
//!   IPv6 group `K` in hex), of the families the cluster runs. A node a pod is on and no Node
//!   document describes gets a Node with those addresses and no labels; a Node document that
//!   gives no IP address gets them too.
//! - A hostNetwork pod (not Succeeded or Failed) without addresses gets its node's IP addresses,
//!   as the kubelet reports them.
//! - Services without a cluster IP (and not headless) get `10.96.0.<10+j>` and
//!   `fd00:10:96::<10+j in hex>`, `j` being their index in (namespace, name) order among such
//!   Services.
//!
//! `explain` runs both families on as many nodes as the pods name ([`assign_addresses`]); the lab
//! runs exactly the nodes and families it was given, and every address a manifest gives must
//! fit them ([`address_cluster`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::policy::{
    cluster::Node,
    model::{Labels, Snapshot},
    state::{ObjectRef, PodRef, Prefix},
};

/// The most nodes [`address_cluster`] lays out.
pub const MAX_NODES: usize = 250;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("node {node} would get number {number}; addresses have room for nodes 1 to 255")]
    TooManyNodes { node: String, number: usize },
    #[error("node {node} has more than 253 pods to address (hosts 2 to 254)")]
    NodeFull { node: String },
    #[error("a cluster has 1 to {MAX_NODES} nodes, not {nodes}")]
    NodeCount { nodes: usize },
    #[error(
        "Pod {pod}: spec.nodeName: {node:?} is not a node of the cluster (node-1..node-{nodes})"
    )]
    UnknownNode {
        pod: PodRef,
        node: String,
        nodes: usize,
    },
    #[error("Pod {pod}: status.podIPs: {ip} is of a family the cluster does not run ({family})")]
    PodFamily {
        pod: PodRef,
        ip: IpAddr,
        family: IpFamily,
    },
    #[error(
        "Pod {pod}: status.podIPs: {ip} is outside the pod CIDRs of {node} ({})",
        cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    OutsideNode {
        pod: PodRef,
        ip: IpAddr,
        node: String,
        cidrs: Vec<Prefix>,
    },
    #[error("Pod {pod}: status.podIPs: {ip} is reserved for {node}")]
    Reserved {
        pod: PodRef,
        ip: IpAddr,
        node: String,
    },
    #[error("Pod {pod}: status.podIPs: {ip} is used twice")]
    UsedTwice { pod: PodRef, ip: IpAddr },
    #[error(
        "Pod {pod}: status.podIPs: {ip} is not an address of {node}, as a hostNetwork pod's \
         must be ({})",
        node_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    NotNodeAddress {
        pod: PodRef,
        ip: IpAddr,
        node: String,
        node_ips: Vec<IpAddr>,
    },
    #[error(
        "Node {node}: status.addresses: {ip} is not an address of the lab's {node} ({})",
        node_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    ForeignNodeAddress {
        node: String,
        ip: IpAddr,
        node_ips: Vec<IpAddr>,
    },
    #[error(
        "Service {service}: spec.clusterIPs: {ip} is of a family the cluster does not run \
         ({family})"
    )]
    ServiceFamily {
        service: ObjectRef,
        ip: IpAddr,
        family: IpFamily,
    },
    #[error("more than 245 Services without a cluster IP")]
    TooManyServices,
}

/// Which IP families pods and Services get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
    Dual,
}

impl IpFamily {
    pub const ALL: [IpFamily; 3] = [IpFamily::Ipv4, IpFamily::Ipv6, IpFamily::Dual];

    pub const fn name(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
            IpFamily::Dual => "dual",
        }
    }

    pub const fn has_v4(self) -> bool {
        matches!(self, IpFamily::Ipv4 | IpFamily::Dual)
    }

    pub const fn has_v6(self) -> bool {
        matches!(self, IpFamily::Ipv6 | IpFamily::Dual)
    }

    pub const fn allows(self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.has_v4(),
            IpAddr::V6(_) => self.has_v6(),
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not `ipv4`, `ipv6` or `dual`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown IP family {0:?} (expected ipv4, ipv6 or dual)")]
pub struct IpFamilyParseError(String);

impl FromStr for IpFamily {
    type Err = IpFamilyParseError;

    fn from_str(text: &str) -> Result<IpFamily, IpFamilyParseError> {
        IpFamily::ALL
            .into_iter()
            .find(|family| family.name() == text)
            .ok_or_else(|| IpFamilyParseError(text.to_owned()))
    }
}

/// Node `k`'s IPv4 pod CIDR.
pub fn node_cidr_v4(k: usize) -> Prefix {
    Prefix::new(IpAddr::V4(Ipv4Addr::new(10, 244, k as u8, 0)), 24)
}

/// Node `k`'s IPv6 pod CIDR.
pub fn node_cidr_v6(k: usize) -> Prefix {
    Prefix::new(
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x244, k as u16, 0, 0, 0, 0)),
        64,
    )
}

/// Node `k`'s pod CIDRs of `family`, IPv4 first.
pub fn node_cidrs(k: usize, family: IpFamily) -> Vec<Prefix> {
    let mut cidrs = Vec::new();
    if family.has_v4() {
        cidrs.push(node_cidr_v4(k));
    }
    if family.has_v6() {
        cidrs.push(node_cidr_v6(k));
    }
    cidrs
}

/// Node `k`'s own addresses (its InternalIPs) of `family`, IPv4 first.
pub fn node_addresses(k: usize, family: IpFamily) -> Vec<IpAddr> {
    let node = k as u8;
    [
        IpAddr::V4(Ipv4Addr::new(172, 31, 0, node)),
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x172,
            0x31,
            0,
            0,
            0,
            0,
            u16::from(node),
        )),
    ]
    .into_iter()
    .filter(|ip| family.allows(*ip))
    .collect()
}

/// The name of node number `number`.
pub fn node_name(number: usize) -> String {
    format!("node-{number}")
}

/// The number of node `node-K`.
pub fn node_number(name: &str) -> Option<usize> {
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
    schedule(snapshot, nodes);
    let numbers = node_numbers(snapshot, nodes)?;
    assign_hosts(snapshot, &numbers, IpFamily::Dual)?;
    describe_nodes(snapshot, &numbers, IpFamily::Dual);
    assign_host_network(snapshot, None)
}

/// Lays pods and Services out on a cluster of exactly `nodes` nodes running `family`, by the rule
/// in this module's documentation: every `spec.nodeName` must name one of its nodes, and every
/// address a pod gives must be of the cluster's families, inside its node's pod CIDRs, not the
/// node's own (host 0 or 1) and not another pod's; every cluster IP a Service gives must be of
/// the cluster's families.
pub fn address_cluster(
    snapshot: &mut Snapshot,
    nodes: usize,
    family: IpFamily,
) -> Result<(), AddressError> {
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(AddressError::NodeCount { nodes });
    }
    for pod in sorted_pods(snapshot) {
        let pod = &snapshot.pods[pod];
        if let Some(node) = &pod.node
            && !(1..=nodes).any(|k| node_name(k) == *node)
        {
            return Err(AddressError::UnknownNode {
                pod: pod.pod_ref(),
                node: node.clone(),
                nodes,
            });
        }
    }
    schedule(snapshot, nodes);
    check_pod_addresses(snapshot, family)?;
    let mut numbers = node_numbers(snapshot, nodes)?;
    numbers.extend((1..=nodes).map(|k| (node_name(k), k)));
    assign_hosts(snapshot, &numbers, family)?;
    check_node_addresses(snapshot, &numbers, family)?;
    describe_nodes(snapshot, &numbers, family);
    assign_host_network(snapshot, Some(family))?;
    assign_service_addresses(snapshot, family)
}

/// Indices of the pods in (namespace, name) order.
fn sorted_pods(snapshot: &Snapshot) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..snapshot.pods.len()).collect();
    indices.sort_by(|&a, &b| {
        let (a, b) = (&snapshot.pods[a], &snapshot.pods[b]);
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    indices
}

/// Puts every pod without a node on one of `node-1..node-<nodes>`, in turn.
fn schedule(snapshot: &mut Snapshot, nodes: usize) {
    let unscheduled: Vec<usize> = sorted_pods(snapshot)
        .into_iter()
        .filter(|&i| snapshot.pods[i].node.is_none())
        .collect();
    for (i, index) in unscheduled.into_iter().enumerate() {
        snapshot.pods[index].node = Some(node_name(1 + i % nodes));
    }
}

/// The number of every node a pod is on.
fn node_numbers(
    snapshot: &Snapshot,
    nodes: usize,
) -> Result<BTreeMap<String, usize>, AddressError> {
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
    Ok(numbers)
}

/// Checks the addresses that pods not terminated give against their (scheduled) nodes.
fn check_pod_addresses(snapshot: &Snapshot, family: IpFamily) -> Result<(), AddressError> {
    let mut used = BTreeSet::new();
    for index in sorted_pods(snapshot) {
        let pod = &snapshot.pods[index];
        if pod.phase.is_terminated() || pod.host_network {
            continue;
        }
        let node = pod.node.clone().unwrap_or_default();
        let cidrs = node_cidrs(node_number(&node).unwrap_or_default(), family);
        for &ip in &pod.ips {
            if !family.allows(ip) {
                return Err(AddressError::PodFamily {
                    pod: pod.pod_ref(),
                    ip,
                    family,
                });
            }
            if !cidrs.iter().any(|cidr| cidr.contains(ip)) {
                return Err(AddressError::OutsideNode {
                    pod: pod.pod_ref(),
                    ip,
                    node,
                    cidrs,
                });
            }
            if matches!(lab_host(ip), Some((_, 0 | 1))) {
                return Err(AddressError::Reserved {
                    pod: pod.pod_ref(),
                    ip,
                    node,
                });
            }
            if !used.insert(ip) {
                return Err(AddressError::UsedTwice {
                    pod: pod.pod_ref(),
                    ip,
                });
            }
        }
    }
    Ok(())
}

/// Gives every pod that needs addresses those of its host number on its node, of `family`.
fn assign_hosts(
    snapshot: &mut Snapshot,
    numbers: &BTreeMap<String, usize>,
    family: IpFamily,
) -> Result<(), AddressError> {
    let mut taken: BTreeMap<usize, BTreeSet<u16>> = BTreeMap::new();
    for ip in snapshot.pods.iter().flat_map(|pod| &pod.ips) {
        if family.allows(*ip)
            && let Some((node, host)) = lab_host(*ip)
        {
            taken.entry(node).or_default().insert(host);
        }
    }

    let needing: Vec<usize> = sorted_pods(snapshot)
        .into_iter()
        .filter(|&i| {
            let pod = &snapshot.pods[i];
            pod.ips.is_empty() && !pod.host_network && !pod.phase.is_terminated()
        })
        .collect();
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
        snapshot.pods[index].ips = addresses(number, *host)
            .into_iter()
            .filter(|ip| family.allows(*ip))
            .collect();
        *host += 1;
    }
    Ok(())
}

/// Fails when a Node document gives an address the lab's node of that name does not have.
fn check_node_addresses(
    snapshot: &Snapshot,
    numbers: &BTreeMap<String, usize>,
    family: IpFamily,
) -> Result<(), AddressError> {
    for node in &snapshot.nodes {
        let Some(&number) = numbers.get(&node.name) else {
            continue;
        };
        let node_ips = node_addresses(number, family);
        if let Some(&ip) = node.addresses.iter().find(|ip| !node_ips.contains(ip)) {
            return Err(AddressError::ForeignNodeAddress {
                node: node.name.clone(),
                ip,
                node_ips,
            });
        }
    }
    Ok(())
}

/// Gives every node in `numbers` a Node with IP addresses: the document's, else the rule's.
fn describe_nodes(snapshot: &mut Snapshot, numbers: &BTreeMap<String, usize>, family: IpFamily) {
    for (name, &number) in numbers {
        match snapshot.nodes.iter_mut().find(|node| node.name == *name) {
            Some(node) if node.addresses.is_empty() => {
                node.addresses = node_addresses(number, family);
            }
            Some(_) => {}
            None => snapshot.nodes.push(Node {
                name: name.clone(),
                labels: Labels::new(),
                addresses: node_addresses(number, family),
            }),
        }
    }
}

/// Gives every hostNetwork pod without addresses those of its node. In the lab (`family` given),
/// the addresses a hostNetwork pod gives must be its node's.
fn assign_host_network(
    snapshot: &mut Snapshot,
    family: Option<IpFamily>,
) -> Result<(), AddressError> {
    let Snapshot { pods, nodes, .. } = snapshot;
    for pod in pods
        .iter_mut()
        .filter(|pod| pod.host_network && !pod.phase.is_terminated())
    {
        let node_ips = nodes
            .iter()
            .find(|node| Some(&node.name) == pod.node.as_ref())
            .map(|node| node.addresses.clone())
            .unwrap_or_default();
        if pod.ips.is_empty() {
            pod.ips = node_ips;
        } else if family.is_some()
            && let Some(&ip) = pod.ips.iter().find(|ip| !node_ips.contains(ip))
        {
            return Err(AddressError::NotNodeAddress {
                pod: pod.pod_ref(),
                ip,
                node: pod.node.clone().unwrap_or_default(),
                node_ips,
            });
        }
    }
    Ok(())
}

/// Gives every Service that has no cluster IP and is not headless its virtual addresses.
fn assign_service_addresses(snapshot: &mut Snapshot, family: IpFamily) -> Result<(), AddressError> {
    let mut indices: Vec<usize> = (0..snapshot.services.len()).collect();
    indices.sort_by(|&a, &b| {
        let (a, b) = (&snapshot.services[a], &snapshot.services[b]);
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    let mut j: u16 = 0;
    for index in indices {
        let service = &mut snapshot.services[index];
        if service.headless {
            continue;
        }
        if let Some(&ip) = service.cluster_ips.iter().find(|ip| !family.allows(**ip)) {
            return Err(AddressError::ServiceFamily {
                service: service.object_ref(),
                ip,
                family,
            });
        }
        if !service.cluster_ips.is_empty() {
            continue;
        }
        let host = 10 + j;
        if host > 254 {
            return Err(AddressError::TooManyServices);
        }
        j += 1;
        let ips = [
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, host as u8)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, host)),
        ];
        service.cluster_ips = ips.into_iter().filter(|ip| family.allows(*ip)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Pod, PodPhase, Service, ServiceType};

    fn pod(namespace: &str, name: &str, node: Option<&str>, given: &[&str]) -> Pod {
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            node: node.map(Into::into),
            phase: PodPhase::Running,
            host_network: false,
            ips: ips(given),
            ports: Vec::new(),
        }
    }

    fn ips(texts: &[&str]) -> Vec<IpAddr> {
        texts.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    fn laid_out(pods: Vec<Pod>, nodes: usize, family: IpFamily) -> Snapshot {
        let mut snapshot = Snapshot {
            pods,
            ..Snapshot::default()
        };
        address_cluster(&mut snapshot, nodes, family).unwrap();
        snapshot
    }

    fn placed<'a>(snapshot: &'a Snapshot, name: &str) -> (&'a str, &'a [IpAddr]) {
        let pod = snapshot.pods.iter().find(|pod| pod.name == name).unwrap();
        (pod.node.as_deref().unwrap(), &pod.ips)
    }

    #[test]
    fn pods_without_a_node_are_spread_in_name_order_and_numbered_per_node() {
        let snapshot = laid_out(
            vec![
                pod("y", "d", None, &[]),
                pod("x", "b", None, &[]),
                pod("x", "a", None, &[]),
                pod("x", "c", None, &[]),
            ],
            2,
            IpFamily::Dual,
        );
        let dual = |v4: &str, v6: &str| ips(&[v4, v6]);
        assert_eq!(placed(&snapshot, "a").0, "node-1");
        assert_eq!(
            placed(&snapshot, "a").1,
            dual("10.244.1.2", "fd00:10:244:1::2")
        );
        assert_eq!(placed(&snapshot, "b").0, "node-2");
        assert_eq!(
            placed(&snapshot, "b").1,
            dual("10.244.2.2", "fd00:10:244:2::2")
        );
        assert_eq!(
            placed(&snapshot, "c").1,
            dual("10.244.1.3", "fd00:10:244:1::3")
        );
        assert_eq!(
            placed(&snapshot, "d").1,
            dual("10.244.2.3", "fd00:10:244:2::3")
        );
    }

    #[test]
    fn a_node_name_wins_and_does_not_count_in_the_spread() {
        let snapshot = laid_out(
            vec![
                pod("x", "a", Some("node-2"), &[]),
                pod("x", "b", None, &[]),
                pod("x", "c", None, &[]),
            ],
            2,
            IpFamily::Ipv4,
        );
        assert_eq!(placed(&snapshot, "a").1, ips(&["10.244.2.2"]));
        assert_eq!(placed(&snapshot, "b").1, ips(&["10.244.1.2"]));
        assert_eq!(placed(&snapshot, "c").1, ips(&["10.244.2.3"]));
    }

    #[test]
    fn given_addresses_are_kept_and_their_host_numbers_skipped() {
        let snapshot = laid_out(
            vec![
                pod("x", "a", None, &[]),
                pod(
                    "x",
                    "b",
                    Some("node-1"),
                    &["fd00:10:244:1::2", "10.244.1.2"],
                ),
                pod("x", "c", Some("node-1"), &[]),
            ],
            1,
            IpFamily::Dual,
        );
        assert_eq!(
            placed(&snapshot, "b").1,
            ips(&["fd00:10:244:1::2", "10.244.1.2"])
        );
        assert_eq!(
            placed(&snapshot, "a").1,
            ips(&["10.244.1.3", "fd00:10:244:1::3"])
        );
        assert_eq!(
            placed(&snapshot, "c").1,
            ips(&["10.244.1.4", "fd00:10:244:1::4"])
        );
    }

    #[test]
    fn ipv6_node_and_host_numbers_are_hex() {
        let pods = (0..10)
            .map(|i| pod("x", &format!("p{i:02}"), Some("node-10"), &[]))
            .collect();
        let snapshot = laid_out(pods, 10, IpFamily::Ipv6);
        assert_eq!(placed(&snapshot, "p09").1, ips(&["fd00:10:244:a::b"]));
        assert_eq!(node_cidr_v6(10).to_string(), "fd00:10:244:a::/64");
    }

    #[test]
    fn terminated_pods_get_nothing_but_count_in_the_spread() {
        let mut done = pod("x", "a", None, &[]);
        done.phase = PodPhase::Succeeded;
        let snapshot = laid_out(
            vec![done, pod("x", "b", None, &[]), pod("x", "c", None, &[])],
            2,
            IpFamily::Ipv4,
        );
        assert!(placed(&snapshot, "a").1.is_empty());
        assert_eq!(placed(&snapshot, "b").1, ips(&["10.244.2.2"]));
        assert_eq!(placed(&snapshot, "c").1, ips(&["10.244.1.2"]));
    }

    #[test]
    fn inconsistent_input_is_rejected_with_the_pod_and_field_named() {
        let cases = [
            (pod("x", "a", Some("node-3"), &[]), "spec.nodeName"),
            (
                pod("x", "a", Some("node-1"), &["10.244.2.5"]),
                "outside the pod CIDRs",
            ),
            (pod("x", "a", Some("node-1"), &["10.244.1.1"]), "reserved"),
            (
                pod("x", "a", Some("node-1"), &["fd00:10:244:1::5"]),
                "family",
            ),
        ];
        for (pod, expected) in cases {
            let mut snapshot = Snapshot {
                pods: vec![pod],
                ..Snapshot::default()
            };
            let error = address_cluster(&mut snapshot, 2, IpFamily::Ipv4)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("Pod x/a") && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn services_get_virtual_ips_in_name_order() {
        let service = |namespace: &str, name: &str, given: &[&str], headless: bool| Service {
            namespace: namespace.into(),
            name: name.into(),
            service_type: ServiceType::ClusterIp,
            selector: BTreeMap::new(),
            cluster_ips: ips(given),
            headless,
            ports: Vec::new(),
        };
        let mut snapshot = Snapshot {
            services: vec![
                service("y", "a", &[], false),
                service("x", "h", &[], true),
                service("x", "z", &[], false),
                service("x", "given", &["10.96.7.7"], false),
            ],
            ..Snapshot::default()
        };
        address_cluster(&mut snapshot, 1, IpFamily::Dual).unwrap();
        let ips_of = |name: &str| {
            snapshot
                .services
                .iter()
                .find(|service| service.name == name)
                .unwrap()
                .cluster_ips
                .clone()
        };
        assert_eq!(ips_of("z"), ips(&["10.96.0.10", "fd00:10:96::a"]));
        assert_eq!(ips_of("a"), ips(&["10.96.0.11", "fd00:10:96::b"]));
        assert_eq!(ips_of("given"), ips(&["10.96.7.7"]));
        assert!(ips_of("h").is_empty());
    }

    #[test]
    fn node_cidrs_contain_their_hosts() {
        assert!(node_cidr_v4(3).contains("10.244.3.200".parse().unwrap()));
        assert!(!node_cidr_v4(3).contains("10.244.4.2".parse().unwrap()));
        assert!(node_cidr_v6(3).contains("fd00:10:244:3::ff".parse().unwrap()));
        assert!(!node_cidr_v6(3).contains("10.244.3.2".parse().unwrap()));
    }
}
