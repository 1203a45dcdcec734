//! Where each pod runs and which addresses pods and Services get. The policy engine's `explain`
//! assigns addresses to manifests without them by the same rule, so both agree:
//!
//! - nodes are `node-1..node-N`; a pod without `spec.nodeName` goes to node `1 + (i mod N)`, where
//!   `i` is its index among all such pods (terminated ones included) sorted by (namespace, name);
//! - within node `k`, pods sorted by (namespace, name) get host numbers 2, 3, ..., skipping numbers
//!   already taken by pods that carry their own addresses: IPv4 `10.244.<k>.<host>`, IPv6
//!   `fd00:10:244:<k in hex>::<host in hex>`;
//! - node `k`'s pod CIDRs are `10.244.<k>.0/24` and `fd00:10:244:<k in hex>::/64`;
//! - Services without a cluster IP get `10.96.0.<10+j>` and `fd00:10:96::<10+j in hex>`, `j` being
//!   their index in (namespace, name) order among such Services;
//! - `--ip-family` decides which families pods and Services get.
//!
//! Terminated pods (phase Succeeded or Failed) get no address and no network: they are no peers.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::manifest::{ObjectKey, PodDecl, ServiceDecl};

/// Which IP families the lab's pods and Services get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
    Dual,
}

impl IpFamily {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Dual => "dual",
        }
    }

    pub fn has_v4(self) -> bool {
        matches!(self, Self::Ipv4 | Self::Dual)
    }

    pub fn has_v6(self) -> bool {
        matches!(self, Self::Ipv6 | Self::Dual)
    }

    fn allows(self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.has_v4(),
            IpAddr::V6(_) => self.has_v6(),
        }
    }
}

/// An IP prefix such as a node's pod CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The name of node `k` (1-based).
pub fn node_name(k: usize) -> String {
    format!("node-{k}")
}

/// Node `k`'s IPv4 pod CIDR.
pub fn node_cidr_v4(k: usize) -> Cidr {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(10, 244, k as u8, 0)),
        len: 24,
    }
}

/// Node `k`'s IPv6 pod CIDR.
pub fn node_cidr_v6(k: usize) -> Cidr {
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x244, k as u16, 0, 0, 0, 0)),
        len: 64,
    }
}

/// Node `k`'s pod CIDRs for the lab's families, IPv4 first.
pub fn node_cidrs(k: usize, family: IpFamily) -> Vec<Cidr> {
    let mut cidrs = Vec::new();
    if family.has_v4() {
        cidrs.push(node_cidr_v4(k));
    }
    if family.has_v6() {
        cidrs.push(node_cidr_v6(k));
    }
    cidrs
}

/// The address of `host` in node `k`'s pod CIDR of the family of `cidr`.
fn host_address(cidr: Cidr, host: u8) -> IpAddr {
    match cidr.addr {
        IpAddr::V4(net) => {
            let [a, b, c, _] = net.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, host))
        }
        IpAddr::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net) | u128::from(host))),
    }
}

/// The host number an address takes in a node's pod CIDR.
fn host_number(ip: IpAddr) -> Option<u8> {
    match ip {
        IpAddr::V4(ip) => Some(ip.octets()[3]),
        IpAddr::V6(ip) => u8::try_from(u128::from(ip) & 0xffff_ffff_ffff_ffff).ok(),
    }
}

/// Where a pod runs and its addresses (IPv4 first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// 1-based node number.
    pub node: usize,
    pub ips: Vec<IpAddr>,
}

/// Places every pod that is not terminated on a node and gives it its addresses.
pub fn place_pods(
    pods: &[PodDecl],
    nodes: usize,
    family: IpFamily,
) -> Result<BTreeMap<ObjectKey, Placement>> {
    if nodes == 0 || nodes > 250 {
        bail!("the lab supports 1 to 250 nodes, not {nodes}");
    }
    let mut sorted: Vec<&PodDecl> = pods.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));

    let mut node_of = BTreeMap::new();
    let mut spread = 0;
    for pod in &sorted {
        let node = match &pod.node_name {
            Some(name) => (1..=nodes)
                .find(|k| node_name(*k) == *name)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "pod {}: spec.nodeName {name:?} is not a lab node (node-1..node-{nodes})",
                        pod.key
                    )
                })?,
            None => {
                spread += 1;
                1 + (spread - 1) % nodes
            }
        };
        node_of.insert(pod.key.clone(), node);
    }
    let live: Vec<&PodDecl> = sorted
        .iter()
        .copied()
        .filter(|pod| !pod.terminated)
        .collect();

    let mut placements = BTreeMap::new();
    let mut used_ips = BTreeSet::new();
    for k in 1..=nodes {
        let cidrs = node_cidrs(k, family);
        let on_node: Vec<&&PodDecl> = live.iter().filter(|pod| node_of[&pod.key] == k).collect();
        // A terminated pod's address is no peer, but it is not handed out again either.
        let mut taken: BTreeSet<u8> = sorted
            .iter()
            .filter(|pod| pod.terminated)
            .flat_map(|pod| &pod.ips)
            .filter(|ip| cidrs.iter().any(|cidr| cidr.contains(**ip)))
            .filter_map(|ip| host_number(*ip))
            .collect();
        for pod in on_node.iter().filter(|pod| !pod.ips.is_empty()) {
            for ip in &pod.ips {
                if !family.allows(*ip) {
                    bail!(
                        "pod {}: address {ip} is of a family the lab does not run",
                        pod.key
                    );
                }
                let cidr = cidrs.iter().find(|cidr| cidr.contains(*ip));
                let Some(cidr) = cidr else {
                    bail!(
                        "pod {}: address {ip} is outside the pod CIDRs of {} ({})",
                        pod.key,
                        node_name(k),
                        cidrs
                            .iter()
                            .map(Cidr::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                };
                if matches!(host_number(*ip), Some(0 | 1)) || *ip == cidr.addr {
                    bail!(
                        "pod {}: address {ip} is reserved for {}",
                        pod.key,
                        node_name(k)
                    );
                }
                if !used_ips.insert(*ip) {
                    bail!("pod {}: address {ip} is used twice", pod.key);
                }
                taken.extend(host_number(*ip));
            }
            placements.insert(
                pod.key.clone(),
                Placement {
                    node: k,
                    ips: sorted_v4_first(pod.ips.clone()),
                },
            );
        }
        let mut next: u16 = 2;
        for pod in on_node.iter().filter(|pod| pod.ips.is_empty()) {
            while u8::try_from(next).is_ok_and(|host| taken.contains(&host)) {
                next += 1;
            }
            let Ok(host) = u8::try_from(next)
                .map_err(drop)
                .and_then(|host| if host == u8::MAX { Err(()) } else { Ok(host) })
            else {
                bail!(
                    "{} has no free pod address left for {}",
                    node_name(k),
                    pod.key
                );
            };
            next += 1;
            let ips = cidrs.iter().map(|cidr| host_address(*cidr, host)).collect();
            placements.insert(pod.key.clone(), Placement { node: k, ips });
        }
    }
    Ok(placements)
}

fn sorted_v4_first(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

/// The cluster IPs of every Service that has (or gets) a virtual IP, IPv4 first.
pub fn service_ips(
    services: &[ServiceDecl],
    family: IpFamily,
) -> Result<BTreeMap<ObjectKey, Vec<IpAddr>>> {
    let mut sorted: Vec<&ServiceDecl> = services.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut result = BTreeMap::new();
    let mut j: u32 = 0;
    for service in sorted {
        if service.headless {
            continue;
        }
        if !service.cluster_ips.is_empty() {
            if let Some(ip) = service.cluster_ips.iter().find(|ip| !family.allows(**ip)) {
                bail!(
                    "service {}: cluster IP {ip} is of a family the lab does not run",
                    service.key
                );
            }
            result.insert(
                service.key.clone(),
                sorted_v4_first(service.cluster_ips.clone()),
            );
            continue;
        }
        let host = 10 + j;
        if host > 254 {
            bail!("too many Services without a cluster IP (at most 245)");
        }
        j += 1;
        let mut ips = Vec::new();
        if family.has_v4() {
            ips.push(IpAddr::V4(Ipv4Addr::new(10, 96, 0, host as u8)));
        }
        if family.has_v6() {
            ips.push(IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x96,
                0,
                0,
                0,
                0,
                host as u16,
            )));
        }
        result.insert(service.key.clone(), ips);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, node: Option<&str>, ips: &[&str]) -> PodDecl {
        PodDecl {
            key: ObjectKey {
                namespace: namespace.into(),
                name: name.into(),
            },
            node_name: node.map(Into::into),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ports: Vec::new(),
            labels: BTreeMap::new(),
            terminated: false,
        }
    }

    fn key(text: &str) -> ObjectKey {
        let (namespace, name) = text.split_once('/').unwrap();
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn ips(texts: &[&str]) -> Vec<IpAddr> {
        texts.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn pods_without_a_node_are_spread_in_name_order_and_numbered_per_node() {
        let pods = [
            pod("y", "a", None, &[]),
            pod("x", "b", None, &[]),
            pod("x", "a", None, &[]),
            pod("x", "c", None, &[]),
        ];
        let placed = place_pods(&pods, 2, IpFamily::Dual).unwrap();
        assert_eq!(placed[&key("x/a")].node, 1);
        assert_eq!(
            placed[&key("x/a")].ips,
            ips(&["10.244.1.2", "fd00:10:244:1::2"])
        );
        assert_eq!(placed[&key("x/b")].node, 2);
        assert_eq!(
            placed[&key("x/b")].ips,
            ips(&["10.244.2.2", "fd00:10:244:2::2"])
        );
        assert_eq!(
            placed[&key("x/c")].ips,
            ips(&["10.244.1.3", "fd00:10:244:1::3"])
        );
        assert_eq!(
            placed[&key("y/a")].ips,
            ips(&["10.244.2.3", "fd00:10:244:2::3"])
        );
    }

    #[test]
    fn a_node_name_wins_and_does_not_count_in_the_spread() {
        let pods = [
            pod("x", "a", Some("node-2"), &[]),
            pod("x", "b", None, &[]),
            pod("x", "c", None, &[]),
        ];
        let placed = place_pods(&pods, 2, IpFamily::Ipv4).unwrap();
        assert_eq!(placed[&key("x/a")].ips, ips(&["10.244.2.2"]));
        assert_eq!(placed[&key("x/b")].ips, ips(&["10.244.1.2"]));
        assert_eq!(placed[&key("x/c")].ips, ips(&["10.244.2.3"]));
    }

    #[test]
    fn given_addresses_are_kept_and_their_host_numbers_skipped() {
        let pods = [
            pod("x", "a", None, &[]),
            pod(
                "x",
                "b",
                Some("node-1"),
                &["fd00:10:244:1::2", "10.244.1.2"],
            ),
            pod("x", "c", Some("node-1"), &[]),
        ];
        let placed = place_pods(&pods, 1, IpFamily::Dual).unwrap();
        assert_eq!(
            placed[&key("x/b")].ips,
            ips(&["10.244.1.2", "fd00:10:244:1::2"])
        );
        assert_eq!(
            placed[&key("x/a")].ips,
            ips(&["10.244.1.3", "fd00:10:244:1::3"])
        );
        assert_eq!(
            placed[&key("x/c")].ips,
            ips(&["10.244.1.4", "fd00:10:244:1::4"])
        );
    }

    #[test]
    fn ipv6_node_and_host_numbers_are_hex() {
        let pods: Vec<PodDecl> = (0..10)
            .map(|i| pod("x", &format!("p{i:02}"), Some("node-10"), &[]))
            .collect();
        let placed = place_pods(&pods, 10, IpFamily::Ipv6).unwrap();
        assert_eq!(placed[&key("x/p09")].ips, ips(&["fd00:10:244:a::b"]));
        assert_eq!(node_cidr_v6(10).to_string(), "fd00:10:244:a::/64");
    }

    #[test]
    fn terminated_pods_get_nothing_but_count_in_the_spread() {
        let mut done = pod("x", "a", None, &[]);
        done.terminated = true;
        let pods = [done, pod("x", "b", None, &[]), pod("x", "c", None, &[])];
        let placed = place_pods(&pods, 2, IpFamily::Ipv4).unwrap();
        assert!(!placed.contains_key(&key("x/a")));
        assert_eq!(placed[&key("x/b")].ips, ips(&["10.244.2.2"]));
        assert_eq!(placed[&key("x/c")].ips, ips(&["10.244.1.2"]));
    }

    #[test]
    fn inconsistent_input_is_rejected_with_the_pod_named() {
        let cases = [
            (pod("x", "a", Some("node-3"), &[]), "not a lab node"),
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
            let error = place_pods(&[pod], 2, IpFamily::Ipv4)
                .unwrap_err()
                .to_string();
            assert!(error.contains("x/a") && error.contains(expected), "{error}");
        }
    }

    #[test]
    fn services_get_virtual_ips_in_name_order() {
        let service = |namespace: &str, name: &str, given: &[&str], headless: bool| ServiceDecl {
            key: ObjectKey {
                namespace: namespace.into(),
                name: name.into(),
            },
            selector: None,
            cluster_ips: ips(given),
            headless,
            ports: Vec::new(),
        };
        let services = [
            service("y", "a", &[], false),
            service("x", "h", &[], true),
            service("x", "z", &[], false),
            service("x", "given", &["10.96.7.7"], false),
        ];
        let assigned = service_ips(&services, IpFamily::Dual).unwrap();
        assert_eq!(assigned[&key("x/z")], ips(&["10.96.0.10", "fd00:10:96::a"]));
        assert_eq!(assigned[&key("y/a")], ips(&["10.96.0.11", "fd00:10:96::b"]));
        assert_eq!(assigned[&key("x/given")], ips(&["10.96.7.7"]));
        assert!(!assigned.contains_key(&key("x/h")));
    }

    #[test]
    fn cidr_contains() {
        assert!(node_cidr_v4(3).contains("10.244.3.200".parse().unwrap()));
        assert!(!node_cidr_v4(3).contains("10.244.4.2".parse().unwrap()));
        assert!(node_cidr_v6(3).contains("fd00:10:244:3::ff".parse().unwrap()));
        assert!(!node_cidr_v6(3).contains("10.244.3.2".parse().unwrap()));
    }
}
