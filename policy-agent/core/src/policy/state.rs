//! The desired datapath state of one node, in the map types of `policy-common`, and the delta
//! between two such states.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use policy_common::{
    maps::{ANY_PEER_CLASS, EndpointInfo, LookupPlan, PolicyKey, PolicyValue, WORLD_CLASS},
    verdict::Direction,
};
use serde::{Deserialize, Serialize};

use crate::policy::{
    cluster::ClusterRuleRef,
    model::{ContainerPort, Peer},
};

/// A namespaced object (a pod, a Service), by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

/// A pod, by namespace and name.
pub type PodRef = ObjectRef;

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An IP prefix of the peer-class LPM tries. `addr` has no bits set past `len`.
///
/// Ordered IPv4 before IPv6, then by address, then by length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The order as integers, which compare faster than the address types do.
    fn order_key(&self) -> (bool, u128, u8) {
        match self.addr {
            IpAddr::V4(v4) => (false, u128::from(v4.to_bits()), self.len),
            IpAddr::V6(v6) => (true, v6.to_bits(), self.len),
        }
    }
}

impl Ord for Prefix {
    fn cmp(&self, other: &Prefix) -> std::cmp::Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl PartialOrd for Prefix {
    fn partial_cmp(&self, other: &Prefix) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    /// The prefix of `len` bits (clamped to the family's width) that contains `addr`.
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        let len = len.min(Prefix::max_len(addr));
        let addr = match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
            }
        };
        Prefix { addr, len }
    }

    /// The single-address prefix of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix::new(addr, Prefix::max_len(addr))
    }

    /// 32 for IPv4, 128 for IPv6.
    pub const fn max_len(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addr.is_ipv4() == ip.is_ipv4() && Prefix::new(ip, self.len) == *self
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

/// Why a string is not a CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixParseError {
    #[error("{text:?} is not ADDRESS/LENGTH")]
    Shape { text: String },
    #[error("{text:?} has an invalid address")]
    Address {
        text: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("{text:?} has an invalid prefix length (0 to 32 for IPv4, 0 to 128 for IPv6)")]
    Length { text: String },
}

impl FromStr for Prefix {
    type Err = PrefixParseError;

    /// Parses `ADDRESS/LENGTH`; host bits past the length are cleared, as the API server's
    /// CIDR parsing does.
    fn from_str(text: &str) -> Result<Prefix, PrefixParseError> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| PrefixParseError::Shape {
                text: text.to_owned(),
            })?;
        let addr: IpAddr = addr.parse().map_err(|source| PrefixParseError::Address {
            text: text.to_owned(),
            source,
        })?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|len| *len <= Prefix::max_len(addr))
            .ok_or_else(|| PrefixParseError::Length {
                text: text.to_owned(),
            })?;
        Ok(Prefix::new(addr, len))
    }
}

/// One local pod's entry: its addresses and what goes into the endpoint map for its interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointState {
    pub pod: PodRef,
    pub ips: Vec<IpAddr>,
    /// Endpoint id, isolation flags and lookup plans. The datapath keys it by the pod's ifindex.
    pub info: EndpointInfo,
}

/// What a rule id stands for, so drops and allows can name the policy behind them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub namespace: String,
    pub policy: String,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = direction_name(self.direction);
        write!(
            f,
            "{}/{}, {} rule {}",
            self.namespace, self.policy, direction, self.index
        )
    }
}

/// What a rule id stands for: a NetworkPolicy rule or a ClusterNetworkPolicy rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyRule {
    Network(RuleRef),
    Cluster(ClusterRuleRef),
}

impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyRule::Network(rule) => rule.fmt(f),
            PolicyRule::Cluster(rule) => rule.fmt(f),
        }
    }
}

/// The desired datapath state of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The endpoints on this node, by pod.
    pub endpoints: BTreeMap<PodRef, EndpointState>,
    /// Every prefix of the peer-class LPM tries (both families) and its class.
    pub peers: BTreeMap<Prefix, u32>,
    /// Every entry of the policy map.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Every rule of the policies that select a local endpoint (so every rule id in `policy`),
    /// and what it stands for.
    pub rules: BTreeMap<u32, PolicyRule>,
    /// What each peer class stands for, and where the next new ids start.
    pub ids: Allocations,
    /// What the resolver left out so that the maps can hold the rest, sorted.
    pub degraded: Vec<Degraded>,
}

/// A part of the desired state the resolver left out because the maps could not hold it. The
/// pods it concerns are kept closed, never more open than their policies; every other pod of
/// the node gets its state as usual.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Degraded {
    #[error(
        "NetworkPolicy {policy} needs {entries} policy entries for pod {pod}, more than the \
         {budget} one policy may have per pod: the pod stays isolated by it, with none of its rules"
    )]
    PolicyOverBudget {
        /// `namespace/name`.
        policy: String,
        pod: PodRef,
        entries: usize,
        budget: usize,
    },
    #[error(
        "the endpoints of node {node} need {needed} policy entries, more than the {capacity} \
         the policy map holds: pod {pod}, which needs the most ({entries}), denies all traffic"
    )]
    NodeOverCapacity {
        node: String,
        pod: PodRef,
        entries: usize,
        needed: usize,
        capacity: u32,
    },
}

impl Degraded {
    /// The object at fault, as failures name it: the policy, or the pod.
    pub fn object(&self) -> String {
        match self {
            Degraded::PolicyOverBudget { policy, .. } => format!("NetworkPolicy {policy}"),
            Degraded::NodeOverCapacity { pod, .. } => pod.to_string(),
        }
    }
}

/// What a peer class is: the relevant policy peers its addresses match, and (when an egress
/// rule names a port) the pod's containerPorts of the names such rules use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassKey {
    pub peers: Vec<Peer>,
    pub ports: Vec<ContainerPort>,
}

/// The ids handed out so far. Ids are kept for as long as what they stand for exists, so an
/// incremental change gives a small [`Delta`]; new ids are taken from counters that only move
/// forward (wrapping past their range), so an id is not reused while the map updates of its
/// previous meaning may still be in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocations {
    /// Every class in use but [`policy_common::maps::WORLD_CLASS`] (the empty key).
    pub classes: BTreeMap<ClassKey, u32>,
    pub next_class: u32,
    pub next_endpoint: u32,
    pub next_rule: u32,
}

impl Default for Allocations {
    fn default() -> Allocations {
        Allocations {
            classes: BTreeMap::new(),
            next_class: 1,
            next_endpoint: 1,
            next_rule: 1,
        }
    }
}

/// The map changes that turn one [`NodeState`] into another, in the phases they are applied in.
///
/// A packet reads its endpoint's entry, then its peer's class, then the policy entries of that
/// class: three reads that an update can fall between. The phases keep every mix a packet can
/// read as permissive as one of the two states for every flow both allow, and never more
/// permissive than their union:
/// 1. `policy_upserts`: the new state's entries the maps lack, and the entries of the bridge
///    classes (below).
/// 2. `peer_bridges`: every prefix whose addresses change class (a changed class, or a prefix
///    that appears or goes) is moved to a bridge class. A bridge class stands for one (old
///    class, new class) pair and holds the entries of both, so an endpoint finds what it needs
///    under its old entry and under its new one.
/// 3. `endpoint_upserts`: endpoint entries (isolation, lookup plans).
/// 4. `peer_upserts` and `peer_removals`: prefixes take their new classes; prefixes that go are
///    removed. Every endpoint entry is the new one by now.
/// 5. `policy_removals`: the old state's entries the new one lacks, and the bridge entries.
/// 6. `endpoint_removals`.
///
/// The datapath waits for packets in flight between phases 3 and 4 and between 4 and 5 (see
/// [`Delta::needs_grace_period_after_endpoints`]), so that no packet reads an endpoint entry of
/// one phase and a class or policy entry of a later one that the first did not expect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub policy_upserts: Vec<(PolicyKey, PolicyValue)>,
    pub peer_bridges: Vec<(Prefix, u32)>,
    pub endpoint_upserts: Vec<EndpointState>,
    pub peer_upserts: Vec<(Prefix, u32)>,
    pub peer_removals: Vec<Prefix>,
    pub policy_removals: Vec<PolicyKey>,
    pub endpoint_removals: Vec<PodRef>,
}

impl Delta {
    /// The changes that turn `old` into `new`: only entries that differ, and the bridges that
    /// carry the prefixes whose class changes.
    pub fn between(old: &NodeState, new: &NodeState) -> Delta {
        let mut delta = Delta::default();
        diff_maps(
            &old.policy,
            &new.policy,
            |key, value| delta.policy_upserts.push((*key, *value)),
            |key| delta.policy_removals.push(*key),
        );
        diff_maps(
            &old.peers,
            &new.peers,
            |prefix, class| delta.peer_upserts.push((*prefix, *class)),
            |prefix| delta.peer_removals.push(*prefix),
        );
        diff_maps(
            &old.endpoints,
            &new.endpoints,
            |_, endpoint| delta.endpoint_upserts.push(endpoint.clone()),
            |pod| delta.endpoint_removals.push(pod.clone()),
        );
        let moves: Vec<Prefix> = (delta.peer_upserts.iter().map(|(prefix, _)| *prefix))
            .chain(delta.peer_removals.iter().copied())
            .collect();
        delta.bridge(old, new, &moves);
        delta
    }

    /// Adds a bridge class for every (old class, new class) pair that `moves` (prefixes added,
    /// changed or removed) put addresses through, with the entries of both classes.
    fn bridge(&mut self, old: &NodeState, new: &NodeState, moves: &[Prefix]) {
        let crossings: Vec<(Prefix, (u32, u32))> = moves
            .iter()
            .map(|&prefix| (prefix, (old.class_of(prefix), new.class_of(prefix))))
            .filter(|(_, (from, to))| from != to)
            .collect();
        // Most reconciles move no address to another class: they skip the scan below.
        if crossings.is_empty() {
            return;
        }
        let in_use: BTreeSet<u32> = [old, new]
            .iter()
            .flat_map(|state| {
                state
                    .peers
                    .values()
                    .copied()
                    .chain(state.policy.keys().map(|key| key.peer_class))
            })
            .collect();
        let mut bridges: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        // Bridge ids come from the top of the range, downwards: the resolver counts up from 1.
        let mut next_bridge = ANY_PEER_CLASS;
        for (prefix, pair) in crossings {
            let bridge = *bridges.entry(pair).or_insert_with(|| {
                next_bridge -= 1;
                while in_use.contains(&next_bridge) {
                    next_bridge -= 1;
                }
                next_bridge
            });
            self.peer_bridges.push((prefix, bridge));
        }
        let mut entries: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
        let mut add = |policy: &BTreeMap<PolicyKey, PolicyValue>, pick: fn(&(u32, u32)) -> u32| {
            let by_class: BTreeMap<u32, Vec<u32>> =
                bridges
                    .iter()
                    .fold(BTreeMap::new(), |mut by_class, (pair, &bridge)| {
                        by_class.entry(pick(pair)).or_default().push(bridge);
                        by_class
                    });
            for (key, value) in policy {
                for &bridge in by_class.get(&key.peer_class).into_iter().flatten() {
                    entries.insert(
                        PolicyKey {
                            peer_class: bridge,
                            ..*key
                        },
                        *value,
                    );
                }
            }
        };
        add(&old.policy, |&(from, _)| from);
        add(&new.policy, |&(_, to)| to);
        self.policy_removals.extend(entries.keys().copied());
        self.policy_upserts.extend(entries);
    }

    /// Whether packets that read an endpoint entry before phase 3 must be waited for before
    /// phase 4 changes the classes they may read next.
    pub fn needs_grace_period_after_endpoints(&self) -> bool {
        !self.endpoint_upserts.is_empty()
            && !(self.peer_upserts.is_empty() && self.peer_removals.is_empty())
    }

    /// Whether packets that read a class before phase 4 must be waited for before phase 5
    /// removes the entries of that class.
    pub fn needs_grace_period_after_peers(&self) -> bool {
        !(self.peer_upserts.is_empty() && self.peer_removals.is_empty())
            && !self.policy_removals.is_empty()
    }

    /// Number of map operations.
    pub fn len(&self) -> usize {
        self.policy_upserts.len()
            + self.peer_bridges.len()
            + self.endpoint_upserts.len()
            + self.peer_upserts.len()
            + self.peer_removals.len()
            + self.policy_removals.len()
            + self.endpoint_removals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Walks two sorted maps together, reporting keys new or changed in `new` and keys gone from it.
fn diff_maps<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    mut upsert: impl FnMut(&K, &V),
    mut remove: impl FnMut(&K),
) {
    let mut old_iter = old.iter().peekable();
    let mut new_iter = new.iter().peekable();
    loop {
        match (old_iter.peek(), new_iter.peek()) {
            (None, None) => break,
            (Some((old_key, _)), None) => {
                remove(old_key);
                old_iter.next();
            }
            (None, Some((new_key, new_value))) => {
                upsert(new_key, new_value);
                new_iter.next();
            }
            (Some((old_key, old_value)), Some((new_key, new_value))) => {
                match old_key.cmp(new_key) {
                    std::cmp::Ordering::Less => {
                        remove(old_key);
                        old_iter.next();
                    }
                    std::cmp::Ordering::Greater => {
                        upsert(new_key, new_value);
                        new_iter.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if old_value != new_value {
                            upsert(new_key, new_value);
                        }
                        old_iter.next();
                        new_iter.next();
                    }
                }
            }
        }
    }
}

impl NodeState {
    /// The class the addresses of `prefix` that no longer prefix holds get: the prefix's own,
    /// else that of the longest shorter prefix that covers it, else the world class.
    pub fn class_of(&self, prefix: Prefix) -> u32 {
        (0..=prefix.len)
            .rev()
            .find_map(|len| self.peers.get(&Prefix::new(prefix.addr, len)))
            .copied()
            .unwrap_or(WORLD_CLASS)
    }

    /// The whole state as readable text, one map entry per line, in key order: what golden
    /// tests compare and what a person reads to see what the kernel got.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;

        use policy_common::maps::ANY_PROTOCOL;

        let mut text = String::new();
        let prefixes = |plan: u32| {
            let mut parts: Vec<String> = (0..=16u32)
                .rev()
                .filter(|len| plan & (1 << len) != 0)
                .map(|len| format!("/{len}"))
                .collect();
            if plan & policy_common::maps::PLAN_ANY_PROTOCOL != 0 {
                parts.push("any-protocol".to_owned());
            }
            parts.join(" ")
        };
        let plan = |plan: LookupPlan| {
            let class = prefixes(plan.class);
            match plan.any_peer {
                0 => class,
                any_peer => format!("{class} any-peer({})", prefixes(any_peer))
                    .trim_start()
                    .to_owned(),
            }
        };
        let mut pods_by_id = BTreeMap::new();
        text.push_str("endpoints:\n");
        for endpoint in self.endpoints.values() {
            let info = endpoint.info;
            pods_by_id.insert(info.endpoint_id, endpoint.pod.to_string());
            let ips: Vec<String> = endpoint.ips.iter().map(ToString::to_string).collect();
            let _ = write!(
                text,
                "  {} id={} ips={}",
                endpoint.pod,
                info.endpoint_id,
                ips.join(",")
            );
            for direction in Direction::ALL {
                let name = direction_name(direction);
                if info.isolated(direction) {
                    let _ = write!(text, " {name}=isolated[{}]", plan(info.plan(direction)));
                } else {
                    let _ = write!(text, " {name}=open");
                }
            }
            text.push('\n');
        }
        text.push_str("classes:\n");
        let mut classes: Vec<(&u32, &ClassKey)> =
            self.ids.classes.iter().map(|(key, id)| (id, key)).collect();
        classes.sort();
        for (id, key) in classes {
            let mut parts: Vec<String> = key.peers.iter().map(ToString::to_string).collect();
            parts.extend(key.ports.iter().map(|port| format!("port {port}")));
            let _ = writeln!(text, "  {id}: {}", parts.join(" | "));
        }
        text.push_str("peers:\n");
        for (prefix, class) in &self.peers {
            let _ = writeln!(text, "  {prefix} -> {class}");
        }
        text.push_str("policy:\n");
        for (key, value) in &self.policy {
            let pod = pods_by_id.get(&key.endpoint_id).map_or("?", String::as_str);
            let direction = Direction::from_u8(key.direction).map_or("?", direction_name);
            let class = if key.peer_class == ANY_PEER_CLASS {
                "any".to_owned()
            } else {
                key.peer_class.to_string()
            };
            let port = match key.protocol {
                ANY_PROTOCOL => "any".to_owned(),
                protocol => format!("{protocol}:{}/{}", key.port, key.port_prefix_len),
            };
            let _ = writeln!(
                text,
                "  {pod} {direction} class={class} port={port} -> rule {}",
                value.rule_id
            );
        }
        text.push_str("rules:\n");
        for (id, rule) in &self.rules {
            let _ = writeln!(text, "  {id}: {rule}");
        }
        if !self.degraded.is_empty() {
            text.push_str("degraded:\n");
            for degraded in &self.degraded {
                let _ = writeln!(text, "  {degraded}");
            }
        }
        text
    }
}

/// The API spelling of a direction.
pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    #[test]
    fn parsing_clears_host_bits_and_checks_length() {
        assert_eq!(prefix("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(prefix("fd00::1:2/112").to_string(), "fd00::1:0/112");
        assert_eq!(prefix("0.0.0.0/0").len, 0);
        assert!(matches!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(PrefixParseError::Length { .. })
        ));
        assert!(matches!(
            "::/129".parse::<Prefix>(),
            Err(PrefixParseError::Length { .. })
        ));
        assert!(matches!(
            "10.0.0.0".parse::<Prefix>(),
            Err(PrefixParseError::Shape { .. })
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Prefix>(),
            Err(PrefixParseError::Address { .. })
        ));
    }

    #[test]
    fn containment_respects_family_and_length() {
        let net = prefix("10.0.0.0/8");
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!prefix("::/0").contains("10.0.0.1".parse().unwrap()));
        assert!(prefix("0.0.0.0/0").contains("10.0.0.1".parse().unwrap()));
        assert!(net.covers(&prefix("10.1.0.0/16")));
        assert!(net.covers(&net));
        assert!(!prefix("10.1.0.0/16").covers(&net));
    }

    #[test]
    fn order_is_ipv4_first_then_address_then_length() {
        let mut prefixes = [
            prefix("fd00::/8"),
            prefix("10.0.0.0/16"),
            prefix("10.0.0.0/8"),
            prefix("9.0.0.0/8"),
        ];
        prefixes.sort();
        let shown: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["9.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16", "fd00::/8"]
        );
    }

    #[test]
    fn a_bridge_holds_the_entries_of_both_classes_and_goes_afterwards() {
        let key = |endpoint_id, peer_class, port| PolicyKey {
            endpoint_id,
            peer_class,
            port,
            direction: 0,
            protocol: 6,
            port_prefix_len: 16,
            _pad: [0; 3],
        };
        let mut old = NodeState::default();
        old.peers.insert(prefix("10.0.0.1/32"), 1);
        old.policy.insert(key(7, 1, 80), PolicyValue::allow(1));
        let mut new = NodeState::default();
        new.peers.insert(prefix("10.0.0.1/32"), 2);
        new.policy.insert(key(7, 2, 81), PolicyValue::allow(2));
        let delta = Delta::between(&old, &new);
        let [(bridged, bridge)] = delta.peer_bridges[..] else {
            panic!("one bridge: {delta:?}");
        };
        assert_eq!(bridged, prefix("10.0.0.1/32"));
        let upserted: BTreeMap<PolicyKey, PolicyValue> =
            delta.policy_upserts.iter().copied().collect();
        assert_eq!(
            upserted.get(&key(7, bridge, 80)),
            Some(&PolicyValue::allow(1))
        );
        assert_eq!(
            upserted.get(&key(7, bridge, 81)),
            Some(&PolicyValue::allow(2))
        );
        assert!(delta.policy_removals.contains(&key(7, bridge, 80)));
        assert!(delta.policy_removals.contains(&key(7, bridge, 81)));
        assert_eq!(delta.peer_upserts, [(prefix("10.0.0.1/32"), 2)]);
        assert!(delta.needs_grace_period_after_peers());
    }

    #[test]
    fn a_prefix_takes_the_class_of_the_longest_shorter_one_that_covers_it() {
        let mut state = NodeState::default();
        state.peers.insert(prefix("10.0.0.0/8"), 4);
        state.peers.insert(prefix("10.1.0.0/16"), 5);
        assert_eq!(state.class_of(prefix("10.1.2.3/32")), 5);
        assert_eq!(state.class_of(prefix("10.2.0.0/16")), 4);
        assert_eq!(state.class_of(prefix("10.0.0.0/8")), 4);
        assert_eq!(state.class_of(prefix("11.0.0.1/32")), WORLD_CLASS);
    }

    #[test]
    fn delta_lists_only_differences() {
        let mut old = NodeState::default();
        old.peers.insert(prefix("10.0.0.1/32"), 1);
        old.peers.insert(prefix("10.0.0.2/32"), 2);
        let mut new = old.clone();
        new.peers.insert(prefix("10.0.0.2/32"), 3);
        new.peers.insert(prefix("10.0.0.3/32"), 1);
        new.peers.remove(&prefix("10.0.0.1/32"));
        let delta = Delta::between(&old, &new);
        assert_eq!(
            delta.peer_upserts,
            [(prefix("10.0.0.2/32"), 3), (prefix("10.0.0.3/32"), 1)]
        );
        assert_eq!(delta.peer_removals, [prefix("10.0.0.1/32")]);
        // Each prefix's addresses change class (1 -> world, 2 -> 3, world -> 1): three
        // bridges, none of them a class either state uses.
        let bridges: BTreeSet<u32> = delta.peer_bridges.iter().map(|(_, class)| *class).collect();
        assert_eq!(delta.peer_bridges.len(), 3);
        assert_eq!(bridges.len(), 3);
        assert!(bridges.iter().all(|class| ![0, 1, 2, 3].contains(class)));
        assert_eq!(delta.len(), 6);
        assert!(Delta::between(&new, &new).is_empty());
    }
}
