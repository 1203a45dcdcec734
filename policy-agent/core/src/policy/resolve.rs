//! Compiles a [`Snapshot`] into the desired [`NodeState`] of one node.
//!
//! Peer classes: only the policies that select a local endpoint matter (the relevant policies),
//! and of those only the peers of the directions they isolate. Each address's class is the set of
//! relevant peers it matches, plus (when a relevant egress rule names a port) its pod's
//! containerPorts of those names, since an egress named port resolves against the pod behind the
//! destination address, whichever peer matched it (ipBlock prefixes carry no ports, so an address
//! that is no pod's matches no name). Every pod address gets a host prefix with its class; every
//! ipBlock `cidr` and `except` gets a prefix with the class of the ipBlocks that cover the part of
//! it no longer prefix carves out. The LPM lookup then gives every address exactly its class, with
//! memory in pods plus rules.

use std::{
    collections::{BTreeMap, BTreeSet, hash_map::Entry},
    net::IpAddr,
};

use policy_common::{
    maps::{
        ANY_PEER_CLASS, ANY_PROTOCOL, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_EGRESS_TIERED,
        ENDPOINT_INGRESS_ISOLATED, ENDPOINT_INGRESS_TIERED, ENDPOINT_NOT_READY, EndpointInfo,
        LookupPlan, MAX_ENDPOINTS, MAX_PEER_PREFIXES, MAX_POLICY_ENTRIES, PolicyAction, PolicyKey,
        PolicyValue, WORLD_CLASS,
    },
    ports::range_to_prefixes,
    verdict::Direction,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::policy::{
    cluster::{ClusterProtocol, ClusterRule, ClusterRuleRef},
    model::{
        ContainerPort, IpBlock, Labels, NamespaceScope, NetworkPolicy, Peer, Pod, PortValue,
        Protocol, Rule, Snapshot,
    },
    state::{
        Allocations, ClassKey, Degraded, EndpointState, NodeState, PodRef, PolicyRule, Prefix,
        RuleRef,
    },
    tiers::{ClusterPolicies, RuleMatch, TierRule, Tiers, class_id},
};

/// The policy entries one NetworkPolicy may give one pod (both directions together). A policy
/// that needs more is left out for that pod, which it still isolates: with the policy map's
/// capacity this leaves room for at least 32 pods at the limit, so no single namespace can fill
/// the map for the rest of the node.
pub const POLICY_ENTRY_BUDGET: usize = MAX_POLICY_ENTRIES as usize / 32;

/// A desired state the datapath could not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("node {node} has {count} endpoints; the endpoint map holds at most {capacity}")]
    TooManyEndpoints {
        node: String,
        count: usize,
        capacity: u32,
    },
    #[error("every {what} id is in use")]
    IdsExhausted { what: &'static str },
    #[error("node {node} needs {count} {family} peer prefixes; the peer map holds {capacity}")]
    TooManyPeerPrefixes {
        node: String,
        family: &'static str,
        count: usize,
        capacity: u32,
    },
}

/// Resolves the desired state of `node`, keeping the ids of `previous` (the state programmed
/// now, or the default for a first resolve) for everything that still exists.
pub fn resolve(
    snapshot: &Snapshot,
    node: &str,
    previous: &NodeState,
) -> Result<NodeState, ResolveError> {
    let mut cluster = Cluster::index(snapshot);
    let mut ids = previous.ids.clone();

    let endpoints: Vec<&Pod> = {
        let mut endpoints: Vec<&Pod> = cluster
            .peers
            .iter()
            .copied()
            .filter(|pod| pod.node.as_deref() == Some(node))
            .collect();
        endpoints.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        endpoints
    };
    if endpoints.len() >= MAX_ENDPOINTS as usize {
        return Err(ResolveError::TooManyEndpoints {
            node: node.to_owned(),
            count: endpoints.len(),
            capacity: MAX_ENDPOINTS - 1,
        });
    }

    // The policies of each endpoint and direction, by index into the sorted policy list.
    let policies = cluster.sorted_policies(snapshot);
    let selecting: Vec<[Vec<usize>; 2]> = endpoints
        .iter()
        .map(|pod| {
            let mut by_direction: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
            for &index in cluster.policies_in(&pod.namespace) {
                let policy = policies[index];
                if !policy.selects(pod) {
                    continue;
                }
                for direction in Direction::ALL {
                    if policy.has_type(direction) {
                        by_direction[direction as usize].push(index);
                    }
                }
            }
            by_direction
        })
        .collect();
    let relevant = applying_pairs(&selecting);

    // The ClusterNetworkPolicies whose subject is each endpoint, by direction with rules.
    let cluster_policies = ClusterPolicies::new(&snapshot.cluster_policies, &snapshot.nodes);
    let subject_of: Vec<[Vec<usize>; 2]> = endpoints
        .iter()
        .map(|pod| {
            let labels = snapshot.namespace_labels(&pod.namespace);
            let mut by_direction: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
            for (index, policy) in cluster_policies.policies.iter().enumerate() {
                if !policy.subject.pods().matches(pod, &labels) {
                    continue;
                }
                for direction in Direction::ALL {
                    if !policy.rules(direction).is_empty() {
                        by_direction[direction as usize].push(index);
                    }
                }
            }
            by_direction
        })
        .collect();
    let relevant_cluster = applying_pairs(&subject_of);

    let wanted_rules = relevant
        .iter()
        .flat_map(|&(index, direction)| {
            let policy = policies[index];
            (0..policy.rules(direction).len())
                .map(move |i| PolicyRule::Network(rule_ref(policy, direction, i)))
        })
        .chain(relevant_cluster.iter().flat_map(|&(index, direction)| {
            let policy = cluster_policies.policies[index];
            (0..policy.rules(direction).len())
                .map(move |i| PolicyRule::Cluster(ClusterRuleRef::of(policy, direction, i)))
        }));
    let rules = allocate_rules(wanted_rules, previous, &mut ids)?;
    let mut peers = RelevantPeers::collect(&policies, &relevant);
    peers.add_cluster(&cluster_policies, &relevant_cluster);
    let classes = Classes::compute(&cluster, &peers);
    let class_ids = allocate_classes(&classes, &peers, &mut ids)?;

    let mut state = NodeState {
        rules: rules.iter().map(|(rule, id)| (*id, rule.clone())).collect(),
        ..NodeState::default()
    };
    state.peers = classes
        .prefixes
        .iter()
        .map(|(prefix, class)| (*prefix, class_ids[*class]))
        .collect();
    for family in [Family::V4, Family::V6] {
        let count = classes
            .prefixes
            .iter()
            .filter(|(prefix, _)| Family::of(prefix.addr) == family)
            .count();
        if count > MAX_PEER_PREFIXES as usize {
            return Err(ResolveError::TooManyPeerPrefixes {
                node: node.to_owned(),
                family: family.name(),
                count,
                capacity: MAX_PEER_PREFIXES,
            });
        }
    }

    let endpoint_ids = allocate_endpoints(&endpoints, node, previous, &mut ids)?;
    let mut compiled: Vec<CompiledEndpoint> = Vec::with_capacity(endpoints.len());
    let endpoint_inputs = endpoints.iter().zip(&selecting).zip(&subject_of);
    for (((pod, by_direction), cluster), endpoint_id) in endpoint_inputs.zip(endpoint_ids) {
        let pod_ref = pod.pod_ref();
        let mut info = EndpointInfo {
            endpoint_id,
            ..EndpointInfo::default()
        };
        for ip in &pod.ips {
            match ip {
                IpAddr::V4(addr) => info.addr4 = addr.octets(),
                IpAddr::V6(addr) => info.addr6 = addr.octets(),
            }
        }
        if !by_direction[Direction::Ingress as usize].is_empty() {
            info.flags |= ENDPOINT_INGRESS_ISOLATED;
        }
        if !by_direction[Direction::Egress as usize].is_empty() {
            info.flags |= ENDPOINT_EGRESS_ISOLATED;
        }
        // A direction a ClusterNetworkPolicy applies to is painted from every tier below;
        // the others get the union of their NetworkPolicies' entries.
        let tiered = Direction::ALL.map(|direction| !cluster[direction as usize].is_empty());
        if tiered[Direction::Ingress as usize] {
            info.flags |= ENDPOINT_INGRESS_TIERED;
        }
        if tiered[Direction::Egress as usize] {
            info.flags |= ENDPOINT_EGRESS_TIERED;
        }
        let mut applying: Vec<usize> = by_direction.concat();
        applying.sort_unstable();
        applying.dedup();
        let mut entries: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
        let mut plans = [LookupPlan::EMPTY; 2];
        let mut admitted: Vec<usize> = Vec::new();
        for index in applying {
            let policy = policies[index];
            let mut own: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
            let mut own_plans = [LookupPlan::EMPTY; 2];
            for direction in Direction::ALL {
                if !by_direction[direction as usize].contains(&index) {
                    continue;
                }
                let mut compiler = EntryCompiler {
                    endpoint_id,
                    direction,
                    plan: LookupPlan::EMPTY,
                    policy: &mut own,
                };
                for (rule_index, rule) in policy.rules(direction).iter().enumerate() {
                    let rule_id =
                        rules[&PolicyRule::Network(rule_ref(policy, direction, rule_index))];
                    let matched = network_match(pod, rule, direction, &peers, &classes);
                    compiler.emit_match(&matched, &class_ids, PolicyValue::allow(rule_id));
                }
                own_plans[direction as usize] = compiler.plan;
            }
            if own.len() > POLICY_ENTRY_BUDGET {
                state.degraded.push(Degraded::PolicyOverBudget {
                    policy: format!("{}/{}", policy.namespace, policy.name),
                    pod: pod_ref.clone(),
                    entries: own.len(),
                    budget: POLICY_ENTRY_BUDGET,
                });
                continue;
            }
            admitted.push(index);
            for direction in Direction::ALL.into_iter().filter(|d| !tiered[*d as usize]) {
                plans[direction as usize] |= own_plans[direction as usize];
            }
            for (key, value) in own {
                if tiered[usize::from(key.direction)] {
                    continue;
                }
                entries
                    .entry(key)
                    .and_modify(|held| held.rule_id = held.rule_id.min(value.rule_id))
                    .or_insert(value);
            }
        }
        for direction in Direction::ALL.into_iter().filter(|d| tiered[*d as usize]) {
            let mut compiler = EntryCompiler {
                endpoint_id,
                direction,
                plan: LookupPlan::EMPTY,
                policy: &mut entries,
            };
            let inputs = TierInputs {
                pod,
                direction,
                peers: &peers,
                classes: &classes,
                rules: &rules,
            };
            inputs.paint(
                &mut compiler,
                &class_ids,
                &cluster_policies,
                &cluster[direction as usize],
                !by_direction[direction as usize].is_empty(),
                admitted
                    .iter()
                    .filter(|index| by_direction[direction as usize].contains(index))
                    .map(|&index| policies[index]),
            );
            plans[direction as usize] = compiler.plan;
        }
        info.ingress_plan = plans[Direction::Ingress as usize];
        info.egress_plan = plans[Direction::Egress as usize];
        compiled.push(CompiledEndpoint {
            pod: pod_ref,
            ips: pod.ips.clone(),
            info,
            entries,
        });
    }
    fit_policy_map(node, &mut compiled, &mut state.degraded);
    for endpoint in compiled {
        state.policy.extend(endpoint.entries);
        state.endpoints.insert(
            endpoint.pod.clone(),
            EndpointState {
                pod: endpoint.pod,
                ips: endpoint.ips,
                info: endpoint.info,
            },
        );
    }
    state.degraded.sort();
    state.ids = ids;
    Ok(state)
}

/// Every (policy, direction) that applies to some endpoint, from each endpoint's policies by
/// direction.
fn applying_pairs(by_endpoint: &[[Vec<usize>; 2]]) -> BTreeSet<(usize, Direction)> {
    by_endpoint
        .iter()
        .flat_map(|by_direction| {
            Direction::ALL.into_iter().flat_map(move |direction| {
                by_direction[direction as usize]
                    .iter()
                    .map(move |&index| (index, direction))
            })
        })
        .collect()
}

/// One endpoint's entry and policy entries, before they join the node's state.
struct CompiledEndpoint {
    pod: PodRef,
    ips: Vec<IpAddr>,
    info: EndpointInfo,
    entries: BTreeMap<PolicyKey, PolicyValue>,
}

/// Makes the endpoints' policy entries fit the policy map: while they do not, the endpoint that
/// needs the most (the first by pod on a tie) loses its entries and denies all traffic in both
/// directions. Deterministic, and it picks the pods whose policies ask for the most.
///
/// Its Admin `Deny` entries stay: they alone still decide the traffic NetworkPolicy exempts
/// (between the pod and its own node), so a namespace owner cannot shed an operator's `Deny` by
/// writing policies that outgrow the map; an endpoint with nothing else is left as it is. Should
/// the Admin `Deny` entries still overflow the map (an operator's `Deny` of very many peer
/// classes and port ranges), the endpoints lose them too, in the same order, and drop every
/// packet (`ENDPOINT_NOT_READY`): that needs no entry and opens nothing.
fn fit_policy_map(node: &str, compiled: &mut [CompiledEndpoint], degraded: &mut Vec<Degraded>) {
    let capacity = MAX_POLICY_ENTRIES as usize;
    let needed: usize = compiled.iter().map(|endpoint| endpoint.entries.len()).sum();
    if needed <= capacity {
        return;
    }
    let mut order: Vec<usize> = (0..compiled.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&compiled[a], &compiled[b]);
        (b.entries.len(), &a.pod).cmp(&(a.entries.len(), &b.pod))
    });
    let mut total = needed;
    let mut reported = vec![false; compiled.len()];
    for last_resort in [false, true] {
        for &index in &order {
            if total <= capacity {
                return;
            }
            let endpoint = &mut compiled[index];
            let is_admin_deny = |value: &PolicyValue| value.action == PolicyAction::DenyAdmin as u8;
            let entries = endpoint.entries.len();
            let kept = if last_resort {
                0
            } else {
                endpoint
                    .entries
                    .values()
                    .filter(|v| is_admin_deny(v))
                    .count()
            };
            if kept == entries {
                continue;
            }
            if !reported[index] {
                reported[index] = true;
                degraded.push(Degraded::NodeOverCapacity {
                    node: node.to_owned(),
                    pod: endpoint.pod.clone(),
                    entries,
                    needed,
                    capacity: MAX_POLICY_ENTRIES,
                });
            }
            endpoint
                .entries
                .retain(|_, value| !last_resort && is_admin_deny(value));
            total -= entries - kept;
            endpoint.info.flags |= if last_resort {
                ENDPOINT_NOT_READY
            } else {
                ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED
            };
            let mut plans = [LookupPlan::EMPTY; 2];
            for key in endpoint.entries.keys() {
                plans[usize::from(key.direction)].record(key);
            }
            endpoint.info.ingress_plan = plans[Direction::Ingress as usize];
            endpoint.info.egress_plan = plans[Direction::Egress as usize];
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The snapshot indexed for selector evaluation.
struct Cluster<'a> {
    /// Pods that are policy peers (see [`Pod::is_peer`]).
    peers: Vec<&'a Pod>,
    /// Indices into `peers`, by namespace.
    peers_by_namespace: HashMap<&'a str, Vec<usize>>,
    /// Labels (with the implicit name label) of every namespace that has peers.
    namespace_labels: Vec<(&'a str, Labels)>,
    /// Indices into `peers`, by namespace, label key and label value.
    peers_by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
    /// Indices into the sorted policy list, by namespace.
    policies_by_namespace: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Cluster<'a> {
    fn index(snapshot: &'a Snapshot) -> Cluster<'a> {
        let peers: Vec<&Pod> = snapshot.pods.iter().filter(|pod| pod.is_peer()).collect();
        let mut peers_by_namespace: HashMap<&str, Vec<usize>> = HashMap::default();
        let mut peers_by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::default();
        for (index, pod) in peers.iter().enumerate() {
            peers_by_namespace
                .entry(pod.namespace.as_str())
                .or_default()
                .push(index);
            for (key, value) in &pod.labels {
                peers_by_label
                    .entry((pod.namespace.as_str(), key.as_str(), value.as_str()))
                    .or_default()
                    .push(index);
            }
        }
        let declared: HashMap<&str, &crate::policy::model::Namespace> = snapshot
            .namespaces
            .iter()
            .map(|namespace| (namespace.name.as_str(), namespace))
            .collect();
        let mut namespace_labels: Vec<(&str, Labels)> = peers_by_namespace
            .keys()
            .map(|&name| {
                let labels = match declared.get(name) {
                    Some(namespace) => namespace.effective_labels(),
                    None => crate::policy::model::Namespace {
                        name: name.to_owned(),
                        labels: Labels::new(),
                    }
                    .effective_labels(),
                };
                (name, labels)
            })
            .collect();
        namespace_labels.sort_by(|a, b| a.0.cmp(b.0));
        Cluster {
            peers,
            peers_by_namespace,
            peers_by_label,
            namespace_labels,
            policies_by_namespace: HashMap::default(),
        }
    }

    /// The policies sorted by (namespace, name), so ids come out the same whatever the input order.
    fn sorted_policies(&mut self, snapshot: &'a Snapshot) -> Vec<&'a NetworkPolicy> {
        let mut policies: Vec<&NetworkPolicy> = snapshot.policies.iter().collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for (index, policy) in policies.iter().enumerate() {
            self.policies_by_namespace
                .entry(policy.namespace.as_str())
                .or_default()
                .push(index);
        }
        policies
    }

    fn policies_in(&self, namespace: &str) -> &[usize] {
        self.policies_by_namespace
            .get(namespace)
            .map_or(&[], Vec::as_slice)
    }

    /// Indices into `peers` of the pods a pod peer selects.
    fn select(&self, peer: &crate::policy::model::PodPeer, mut found: impl FnMut(usize)) {
        // With a label to require, only the pods that carry it are candidates.
        let required = peer.pods.match_labels.iter().next();
        let mut visit = |namespace: &str| {
            let candidates = match required {
                Some((key, value)) => {
                    self.peers_by_label
                        .get(&(namespace, key.as_str(), value.as_str()))
                }
                None => self.peers_by_namespace.get(namespace),
            };
            for &index in candidates.into_iter().flatten() {
                if peer.pods.matches(&self.peers[index].labels) {
                    found(index);
                }
            }
        };
        match &peer.namespaces {
            NamespaceScope::Own(namespace) => visit(namespace),
            NamespaceScope::Selected(selector) => {
                for (namespace, labels) in &self.namespace_labels {
                    if selector.matches(labels) {
                        visit(namespace);
                    }
                }
            }
        }
    }
}

fn rule_ref(policy: &NetworkPolicy, direction: Direction, index: usize) -> RuleRef {
    RuleRef {
        namespace: policy.namespace.clone(),
        policy: policy.name.clone(),
        direction,
        index,
    }
}

/// Ids for every rule of the relevant policies, kept from `previous` where the rule existed.
fn allocate_rules(
    wanted: impl Iterator<Item = PolicyRule>,
    previous: &NodeState,
    ids: &mut Allocations,
) -> Result<BTreeMap<PolicyRule, u32>, ResolveError> {
    let wanted: BTreeSet<PolicyRule> = wanted.collect();
    let known: HashMap<&PolicyRule, u32> = previous.rules.iter().map(|(id, r)| (r, *id)).collect();
    let recent: HashSet<u32> = previous.rules.keys().copied().collect();
    let mut in_use: HashSet<u32> = wanted
        .iter()
        .filter_map(|rule| known.get(rule).copied())
        .collect();
    let mut rules = BTreeMap::new();
    for rule in wanted {
        let id = match known.get(&rule) {
            Some(id) => *id,
            None => {
                let id = next_free(
                    &mut ids.next_rule,
                    u32::MAX,
                    |id| in_use.contains(&id),
                    |id| recent.contains(&id),
                )
                .ok_or(ResolveError::IdsExhausted { what: "rule" })?;
                in_use.insert(id);
                id
            }
        };
        rules.insert(rule, id);
    }
    Ok(rules)
}

/// The next id from `counter` (1 to `limit - 1`, wrapping) that `in_use` does not hold,
/// preferring ids `recent` does not hold either: map entries of an id's previous meaning may
/// still be in place while a delta applies. `None` when every id is in use.
pub(super) fn next_free(
    counter: &mut u32,
    limit: u32,
    in_use: impl Fn(u32) -> bool,
    recent: impl Fn(u32) -> bool,
) -> Option<u32> {
    for avoid_recent in [true, false] {
        for _ in 1..limit {
            if *counter == 0 || *counter >= limit {
                *counter = 1;
            }
            let id = *counter;
            *counter += 1;
            if !in_use(id) && !(avoid_recent && recent(id)) {
                return Some(id);
            }
        }
    }
    None
}

/// Endpoint ids for `endpoints`: kept from `previous`, new ones for new pods.
fn allocate_endpoints(
    endpoints: &[&Pod],
    node: &str,
    previous: &NodeState,
    ids: &mut Allocations,
) -> Result<Vec<u32>, ResolveError> {
    let known = |pod: &Pod| {
        previous
            .endpoints
            .get(&pod.pod_ref())
            .map(|endpoint| endpoint.info.endpoint_id)
    };
    let recent: HashSet<u32> = previous
        .endpoints
        .values()
        .map(|endpoint| endpoint.info.endpoint_id)
        .collect();
    let mut in_use: HashSet<u32> = endpoints.iter().filter_map(|pod| known(pod)).collect();
    endpoints
        .iter()
        .map(|pod| match known(pod) {
            Some(id) => Ok(id),
            None => {
                let id = next_free(
                    &mut ids.next_endpoint,
                    MAX_ENDPOINTS,
                    |id| in_use.contains(&id),
                    |id| recent.contains(&id),
                )
                .ok_or_else(|| ResolveError::TooManyEndpoints {
                    node: node.to_owned(),
                    count: endpoints.len(),
                    capacity: MAX_ENDPOINTS - 1,
                })?;
                in_use.insert(id);
                Ok(id)
            }
        })
        .collect()
}

/// The peers of the relevant policies' rules, deduplicated by content.
struct RelevantPeers<'a> {
    peers: Vec<&'a Peer>,
    ids: HashMap<&'a Peer, usize>,
    /// Named ports (name, protocol) of egress rules, by index: a peer pod's containerPorts of
    /// these names are part of its class, whichever peer of the rule matches its address.
    egress_port_names: Vec<(&'a str, Protocol)>,
    egress_port_name_ids: HashMap<(&'a str, Protocol), u32>,
}

impl<'a> RelevantPeers<'a> {
    fn collect(
        policies: &[&'a NetworkPolicy],
        relevant: &BTreeSet<(usize, Direction)>,
    ) -> RelevantPeers<'a> {
        let mut peers = RelevantPeers {
            peers: Vec::new(),
            ids: HashMap::default(),
            egress_port_names: Vec::new(),
            egress_port_name_ids: HashMap::default(),
        };
        for &(index, direction) in relevant {
            for rule in policies[index].rules(direction) {
                for peer in &rule.peers {
                    peers.add(peer);
                }
                if direction == Direction::Egress {
                    for spec in &rule.ports {
                        if let Some(PortValue::Name(name)) = &spec.port {
                            peers.add_port_name(name, spec.protocol);
                        }
                    }
                }
            }
        }
        peers
    }
}

impl<'a> RelevantPeers<'a> {
    /// Adds the peers of the ClusterNetworkPolicies that apply to a local endpoint, and their
    /// egress named ports, which resolve with the named container port's own protocol.
    fn add_cluster(
        &mut self,
        cluster: &'a ClusterPolicies<'a>,
        relevant: &BTreeSet<(usize, Direction)>,
    ) {
        for &(index, direction) in relevant {
            let policy = cluster.policies[index];
            let rules = policy.rules(direction).iter();
            for (rule, peers) in rules.zip(&cluster.peers[index][direction as usize]) {
                for peer in peers.iter().flatten().flatten() {
                    self.add(peer);
                }
                if direction == Direction::Egress {
                    for protocol in &rule.protocols {
                        if let ClusterProtocol::Named(name) = protocol {
                            for protocol in Protocol::ALL {
                                self.add_port_name(name, protocol);
                            }
                        }
                    }
                }
            }
        }
    }

    fn add(&mut self, peer: &'a Peer) {
        if let Entry::Vacant(vacant) = self.ids.entry(peer) {
            vacant.insert(self.peers.len());
            self.peers.push(peer);
        }
    }

    fn add_port_name(&mut self, name: &'a str, protocol: Protocol) {
        if let Entry::Vacant(vacant) = self.egress_port_name_ids.entry((name, protocol)) {
            vacant.insert(self.egress_port_names.len() as u32);
            self.egress_port_names.push((name, protocol));
        }
    }
}

/// The peer classes of one resolve, before they get their stable ids.
struct Classes {
    /// Per class: the ids of the relevant peers it matches (sorted) and its relevant ports.
    keys: Vec<(Vec<usize>, Vec<ContainerPort>)>,
    /// Per relevant peer: the classes it matches.
    of_peer: Vec<Vec<usize>>,
    /// Every LPM prefix and its class, sorted by prefix.
    prefixes: Vec<(Prefix, usize)>,
}

impl Classes {
    fn compute(cluster: &Cluster<'_>, peers: &RelevantPeers<'_>) -> Classes {
        // The selector peers each pod matches: pairs gathered per peer (so in ascending peer
        // order), then grouped by pod in one flat list.
        let mut pairs: Vec<(usize, u32)> = Vec::new();
        let mut blocks = Vec::new();
        for (id, peer) in peers.peers.iter().enumerate() {
            match peer {
                Peer::Pods(pod_peer) => {
                    cluster.select(pod_peer, |pod| pairs.push((pod, id as u32)))
                }
                Peer::IpBlock(block) => blocks.push((id as u32, block)),
            }
        }
        let mut starts = vec![0usize; cluster.peers.len() + 1];
        for &(pod, _) in &pairs {
            starts[pod + 1] += 1;
        }
        for pod in 0..cluster.peers.len() {
            starts[pod + 1] += starts[pod];
        }
        let mut pod_peers = vec![0u32; pairs.len()];
        let mut fill = starts.clone();
        for &(pod, peer) in &pairs {
            pod_peers[fill[pod]] = peer;
            fill[pod] += 1;
        }
        let block_index = BlockIndex::new(&blocks);

        let mut classes = Classes {
            keys: vec![(Vec::new(), Vec::new())],
            of_peer: vec![Vec::new(); peers.peers.len()],
            prefixes: Vec::new(),
        };
        // A class signature: its peer ids (ascending), a separator, then (port name index, port)
        // pairs in ascending name index. Looked up by slice, so only new classes allocate.
        const SEPARATOR: u32 = u32::MAX;
        let mut interned: HashMap<Box<[u32]>, usize> = HashMap::default();
        interned.insert(Box::new([SEPARATOR]), 0);
        let mut intern = |signature: &[u32], classes: &mut Classes| -> usize {
            if let Some(class) = interned.get(signature) {
                return *class;
            }
            let class = classes.keys.len();
            let split = signature
                .iter()
                .position(|&word| word == SEPARATOR)
                .unwrap_or(signature.len());
            let members: Vec<usize> = signature[..split].iter().map(|&id| id as usize).collect();
            for &peer in &members {
                classes.of_peer[peer].push(class);
            }
            let ports = signature[split + 1..]
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&[name, port]| {
                    let (name, protocol) = peers.egress_port_names[name as usize];
                    ContainerPort {
                        name: Some(name.to_owned()),
                        protocol,
                        port: port as u16,
                    }
                })
                .collect();
            classes.keys.push((members, ports));
            interned.insert(signature.into(), class);
            class
        };

        // ipBlock prefixes first: a pod's host prefix replaces an equal one (see the end).
        let block_prefixes: BTreeSet<Prefix> = blocks
            .iter()
            .flat_map(|(_, block)| std::iter::once(block.cidr).chain(block.except.iter().copied()))
            .collect();
        let mut signature: Vec<u32> = Vec::new();
        for prefix in block_prefixes {
            signature.clear();
            block_index.holding(&prefix, &mut signature);
            signature.sort_unstable();
            signature.push(SEPARATOR);
            let class = intern(&signature, &mut classes);
            classes.prefixes.push((prefix, class));
        }

        let mut ports: Vec<(u32, u32)> = Vec::new();
        let mut in_blocks: Vec<u32> = Vec::new();
        for (index, pod) in cluster.peers.iter().enumerate() {
            // What each relevant name resolves to on this pod: its first declaration, as
            // `Pod::named_port` reads it.
            ports.clear();
            for port in &pod.ports {
                let Some(name) = port.name.as_deref() else {
                    continue;
                };
                let Some(&name_id) = peers.egress_port_name_ids.get(&(name, port.protocol)) else {
                    continue;
                };
                if !ports.iter().any(|(seen, _)| *seen == name_id) {
                    ports.push((name_id, u32::from(port.port)));
                }
            }
            ports.sort_unstable();
            let own_peers = &pod_peers[starts[index]..starts[index + 1]];
            for &ip in &pod.ips {
                in_blocks.clear();
                block_index.holding(&Prefix::host(ip), &mut in_blocks);
                signature.clear();
                signature.extend_from_slice(own_peers);
                if !in_blocks.is_empty() {
                    signature.extend_from_slice(&in_blocks);
                    signature.sort_unstable();
                }
                signature.push(SEPARATOR);
                signature.extend(ports.iter().flat_map(|&(name, port)| [name, port]));
                let class = intern(&signature, &mut classes);
                classes.prefixes.push((Prefix::host(ip), class));
            }
        }
        // Sorted, and where a host prefix equals an ipBlock prefix the pod's (later) entry wins.
        classes.prefixes.reverse();
        classes.prefixes.sort_by_key(|(prefix, _)| *prefix);
        classes.prefixes.dedup_by_key(|(prefix, _)| *prefix);
        classes
    }

    fn ports(&self, class: usize) -> &[ContainerPort] {
        &self.keys[class].1
    }
}

/// The relevant ipBlocks, indexed so that finding the blocks that hold a prefix costs a hash
/// lookup per distinct cidr length and a binary search per block with that cidr, however many
/// excepts the blocks have.
struct BlockIndex {
    /// Per cidr: each block's id and its excepts, sorted, without those another except covers
    /// (so no two overlap).
    by_cidr: HashMap<Prefix, Vec<(u32, Vec<Prefix>)>>,
    /// The distinct cidr lengths, ascending: IPv4, then IPv6.
    lengths: [Vec<u8>; 2],
}

impl BlockIndex {
    fn new(blocks: &[(u32, &IpBlock)]) -> BlockIndex {
        let mut index = BlockIndex {
            by_cidr: HashMap::default(),
            lengths: [Vec::new(), Vec::new()],
        };
        for &(id, block) in blocks {
            let mut except = block.except.clone();
            except.sort_unstable();
            let mut disjoint: Vec<Prefix> = Vec::with_capacity(except.len());
            for prefix in except {
                // Sorted, a covering prefix comes before those it covers.
                if disjoint.last().is_none_or(|kept| !kept.covers(&prefix)) {
                    disjoint.push(prefix);
                }
            }
            index
                .by_cidr
                .entry(block.cidr)
                .or_default()
                .push((id, disjoint));
            index.lengths[usize::from(block.cidr.addr.is_ipv6())].push(block.cidr.len);
        }
        for lengths in &mut index.lengths {
            lengths.sort_unstable();
            lengths.dedup();
        }
        index
    }

    /// Appends the ids of the blocks that hold every address of `prefix`: their cidr covers
    /// it and none of their excepts does.
    fn holding(&self, prefix: &Prefix, ids: &mut Vec<u32>) {
        for &len in &self.lengths[usize::from(prefix.addr.is_ipv6())] {
            if len > prefix.len {
                break;
            }
            let Some(blocks) = self.by_cidr.get(&Prefix::new(prefix.addr, len)) else {
                continue;
            };
            for (id, except) in blocks {
                // Of non-overlapping prefixes, only the last one that sorts before `prefix`
                // can cover it.
                let after = except.partition_point(|e| e <= prefix);
                if after == 0 || !except[after - 1].covers(prefix) {
                    ids.push(*id);
                }
            }
        }
    }
}

/// Stable ids for this resolve's classes: kept where the class existed before, new otherwise.
fn allocate_classes(
    classes: &Classes,
    peers: &RelevantPeers<'_>,
    ids: &mut Allocations,
) -> Result<Vec<u32>, ResolveError> {
    let keys: Vec<ClassKey> = classes
        .keys
        .iter()
        .map(|(members, ports)| {
            let mut key = ClassKey {
                peers: members.iter().map(|&id| peers.peers[id].clone()).collect(),
                ports: ports.clone(),
            };
            key.peers.sort();
            key.ports.sort();
            key
        })
        .collect();
    let previous = std::mem::take(&mut ids.classes);
    let recent: HashSet<u32> = previous.values().copied().collect();
    let mut assigned = vec![WORLD_CLASS; keys.len()];
    let mut fresh: Vec<usize> = Vec::new();
    for (class, key) in keys.iter().enumerate() {
        if key.peers.is_empty() && key.ports.is_empty() {
            continue;
        }
        match previous.get(key) {
            Some(id) => assigned[class] = *id,
            None => fresh.push(class),
        }
    }
    fresh.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
    let mut in_use: HashSet<u32> = assigned.iter().copied().collect();
    for class in fresh {
        let id = next_free(
            &mut ids.next_class,
            ANY_PEER_CLASS,
            |id| in_use.contains(&id),
            |id| recent.contains(&id),
        )
        .ok_or(ResolveError::IdsExhausted { what: "peer class" })?;
        in_use.insert(id);
        assigned[class] = id;
    }
    for (class, key) in keys.into_iter().enumerate() {
        if assigned[class] != WORLD_CLASS {
            ids.classes.insert(key, assigned[class]);
        }
    }
    Ok(assigned)
}

/// What a NetworkPolicy rule matches at `pod` in `direction`.
fn network_match(
    pod: &Pod,
    rule: &Rule,
    direction: Direction,
    peers: &RelevantPeers<'_>,
    classes: &Classes,
) -> RuleMatch {
    // Classes the rule's peers reach; `None`: every peer. A named port resolves against the
    // pod that receives the traffic whichever peer matched, ipBlocks included.
    let reached: Option<BTreeSet<usize>> = (!rule.peers.is_empty()).then(|| {
        rule.peers
            .iter()
            .flat_map(|peer| classes.of_peer[peers.ids[peer]].iter().copied())
            .collect()
    });
    // The ports that are the same for every peer: numbers, and on ingress the names, which
    // resolve on the endpoint itself.
    let mut ranges: Vec<(Option<u8>, u16, u16)> = Vec::new();
    if rule.ports.is_empty() {
        ranges.push((None, 0, u16::MAX));
    }
    for spec in &rule.ports {
        let protocol = Some(spec.protocol.number());
        match &spec.port {
            None => ranges.push((protocol, 0, u16::MAX)),
            Some(PortValue::Number(port)) => {
                ranges.push((protocol, *port, spec.end_port.unwrap_or(*port)))
            }
            Some(PortValue::Name(name)) => {
                if direction == Direction::Ingress
                    && let Some(port) = pod.named_port(name, spec.protocol)
                {
                    ranges.push((protocol, port, port));
                }
            }
        }
    }
    coalesce(&mut ranges);
    // Egress names resolve per destination. Only the classes of pod addresses carry ports,
    // so an address that is no pod's matches no name.
    let mut by_class: BTreeMap<usize, Vec<(u8, u16)>> = BTreeMap::new();
    if direction == Direction::Egress {
        for spec in &rule.ports {
            let Some(PortValue::Name(name)) = &spec.port else {
                continue;
            };
            for class in candidates(&reached, classes) {
                let resolved = classes
                    .ports(class)
                    .iter()
                    .find(|p| p.protocol == spec.protocol && p.name.as_deref() == Some(name));
                if let Some(resolved) = resolved {
                    by_class
                        .entry(class)
                        .or_default()
                        .push((spec.protocol.number(), resolved.port));
                }
            }
        }
    }
    RuleMatch {
        reached,
        ranges,
        by_class,
    }
}

/// The classes a rule that reaches `reached` can match (every class for `None`).
fn candidates(reached: &Option<BTreeSet<usize>>, classes: &Classes) -> Vec<usize> {
    match reached {
        None => (0..classes.keys.len()).collect(),
        Some(reached) => reached.iter().copied().collect(),
    }
}

/// What one endpoint's tiers are compiled from.
struct TierInputs<'a, 'p> {
    pod: &'a Pod,
    direction: Direction,
    peers: &'a RelevantPeers<'p>,
    classes: &'a Classes,
    rules: &'a BTreeMap<PolicyRule, u32>,
}

impl TierInputs<'_, '_> {
    /// Paints the verdicts of every tier for the endpoint and direction: the ClusterNetworkPolicy
    /// rules of `applying` (indices into `cluster`, in reading order) and the admitted
    /// NetworkPolicies `network`, which decide when `isolated`.
    fn paint<'n>(
        &self,
        compiler: &mut EntryCompiler<'_>,
        class_ids: &[u32],
        cluster: &ClusterPolicies<'_>,
        applying: &[usize],
        isolated: bool,
        network: impl Iterator<Item = &'n NetworkPolicy>,
    ) {
        let direction = self.direction;
        let mut network_matches = Vec::new();
        for policy in network {
            for (index, rule) in policy.rules(direction).iter().enumerate() {
                let id = self.rules[&PolicyRule::Network(rule_ref(policy, direction, index))];
                let matched = network_match(self.pod, rule, direction, self.peers, self.classes);
                network_matches.push((matched, id));
            }
        }
        let mut cluster_matches = Vec::new();
        for &index in applying {
            let policy = cluster.policies[index];
            let peers = &cluster.peers[index][direction as usize];
            for (rule_index, (rule, rule_peers)) in
                policy.rules(direction).iter().zip(peers).enumerate()
            {
                let rule_ref = ClusterRuleRef::of(policy, direction, rule_index);
                let id = self.rules[&PolicyRule::Cluster(rule_ref)];
                cluster_matches.push((
                    policy.tier,
                    rule.action,
                    id,
                    self.cluster_match(rule, rule_peers),
                ));
            }
        }
        let tier_rules = |tier| {
            cluster_matches
                .iter()
                .filter(|(of, ..)| *of == tier)
                .map(|(_, action, rule_id, matched)| TierRule {
                    action: *action,
                    rule_id: *rule_id,
                    matched,
                })
                .collect()
        };
        let tiers = Tiers {
            admin: tier_rules(crate::policy::cluster::Tier::Admin),
            network: network_matches
                .iter()
                .map(|(matched, id)| (matched, *id))
                .collect(),
            isolated,
            baseline: tier_rules(crate::policy::cluster::Tier::Baseline),
        };
        for painted in tiers.paint() {
            compiler.emit(
                class_id(painted.row, class_ids),
                painted.protocol,
                painted.first,
                painted.last,
                painted.value,
            );
        }
    }

    /// What a ClusterNetworkPolicy rule matches at the endpoint; `peers` are its peers as the
    /// resolver's (`None`: every address).
    fn cluster_match(&self, rule: &ClusterRule, peers: &[Option<Vec<Peer>>]) -> RuleMatch {
        let reached: Option<BTreeSet<usize>> = if peers.iter().any(Option::is_none) {
            None
        } else {
            Some(
                peers
                    .iter()
                    .flatten()
                    .flatten()
                    .flat_map(|peer| self.classes.of_peer[self.peers.ids[peer]].iter().copied())
                    .collect(),
            )
        };
        let mut ranges = Vec::new();
        let mut by_class: BTreeMap<usize, Vec<(u8, u16)>> = BTreeMap::new();
        if rule.protocols.is_empty() {
            ranges.push((None, 0, u16::MAX));
        }
        for protocol in &rule.protocols {
            match protocol {
                ClusterProtocol::Ports { protocol, ports } => {
                    ranges.push((Some(protocol.number()), ports.first, ports.last));
                }
                // A named port resolves with each protocol it is declared for, to its first
                // declaration with that protocol (as `Pod::named_port` reads it).
                ClusterProtocol::Named(name) if self.direction == Direction::Ingress => {
                    for protocol in Protocol::ALL {
                        if let Some(port) = self.pod.named_port(name, protocol) {
                            ranges.push((Some(protocol.number()), port, port));
                        }
                    }
                }
                ClusterProtocol::Named(name) => {
                    for class in candidates(&reached, self.classes) {
                        for port in self.classes.ports(class) {
                            if port.name.as_deref() == Some(name.as_str()) {
                                by_class
                                    .entry(class)
                                    .or_default()
                                    .push((port.protocol.number(), port.port));
                            }
                        }
                    }
                }
            }
        }
        coalesce(&mut ranges);
        RuleMatch {
            reached,
            ranges,
            by_class,
        }
    }
}

/// Writes the policy entries of one endpoint and direction, and collects its lookup plan.
struct EntryCompiler<'s> {
    endpoint_id: u32,
    direction: Direction,
    plan: LookupPlan,
    policy: &'s mut BTreeMap<PolicyKey, PolicyValue>,
}

impl EntryCompiler<'_> {
    /// Writes the entries that give what `matched` matches `value`, for a NetworkPolicy rule:
    /// where rules overlap, any of them allows.
    fn emit_match(&mut self, matched: &RuleMatch, class_ids: &[u32], value: PolicyValue) {
        match &matched.reached {
            None => {
                for &(protocol, first, last) in &matched.ranges {
                    self.emit(ANY_PEER_CLASS, protocol, first, last, value);
                }
            }
            Some(reached) => {
                for &class in reached {
                    for &(protocol, first, last) in &matched.ranges {
                        self.emit(class_ids[class], protocol, first, last, value);
                    }
                }
            }
        }
        for (&class, ports) in &matched.by_class {
            for &(protocol, port) in ports {
                self.emit(class_ids[class], Some(protocol), port, port, value);
            }
        }
    }

    /// Writes `value` for `first..=last` of `protocol` (`None`: any protocol) from peers of
    /// `peer_class`. Where an entry is there already, the lower rule id stays: the entries of
    /// one NetworkPolicy endpoint all allow, and painted entries never overlap.
    fn emit(
        &mut self,
        peer_class: u32,
        protocol: Option<u8>,
        first: u16,
        last: u16,
        value: PolicyValue,
    ) {
        let mut key = PolicyKey {
            endpoint_id: self.endpoint_id,
            peer_class,
            direction: self.direction as u8,
            ..PolicyKey::default()
        };
        let mut insert = |key: PolicyKey| {
            self.policy
                .entry(key)
                .and_modify(|held| held.rule_id = held.rule_id.min(value.rule_id))
                .or_insert(value);
        };
        match protocol {
            None => {
                key.protocol = ANY_PROTOCOL;
                self.plan.record(&key);
                insert(key);
            }
            Some(protocol) => {
                key.protocol = protocol;
                range_to_prefixes(first, last, |port, len| {
                    key.port = port;
                    key.port_prefix_len = len;
                    self.plan.record(&key);
                    insert(key);
                });
            }
        }
    }
}

/// Sorts one rule's port ranges and merges those of a protocol that overlap or touch, so a
/// list of neighbouring ports becomes a few port prefixes instead of one entry per port. The
/// rule allows the same ports either way.
fn coalesce(ranges: &mut Vec<(Option<u8>, u16, u16)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(Option<u8>, u16, u16)> = Vec::with_capacity(ranges.len());
    for &(protocol, first, last) in ranges.iter() {
        match merged.last_mut() {
            Some((held, _, end))
                if *held == protocol && u32::from(first) <= u32::from(*end) + 1 =>
            {
                *end = (*end).max(last);
            }
            _ => merged.push((protocol, first, last)),
        }
    }
    *ranges = merged;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::model::{LabelSelector, PodPeer, PodPhase, PortSpec, Rule};

    fn pod(name: &str, host: u32, app: &str) -> Pod {
        Pod {
            namespace: "ns".to_owned(),
            name: name.to_owned(),
            labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
            node: Some("node-1".to_owned()),
            phase: PodPhase::Running,
            host_network: false,
            ips: vec![IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + host))],
            ports: Vec::new(),
        }
    }

    fn ids(state: &NodeState) -> BTreeMap<String, u32> {
        state
            .endpoints
            .iter()
            .map(|(pod, endpoint)| (pod.name.clone(), endpoint.info.endpoint_id))
            .collect()
    }

    #[test]
    fn endpoint_ids_stay_and_departed_ids_are_not_reused_at_once() {
        let mut snapshot = Snapshot {
            pods: vec![pod("a", 1, "x"), pod("b", 2, "x"), pod("c", 3, "x")],
            ..Snapshot::default()
        };
        let first = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        assert_eq!(
            ids(&first),
            [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)].into()
        );
        snapshot.pods.remove(1);
        snapshot.pods.push(pod("d", 4, "x"));
        let second = resolve(&snapshot, "node-1", &first).unwrap();
        assert_eq!(
            ids(&second),
            [("a".into(), 1), ("c".into(), 3), ("d".into(), 4)].into()
        );
    }

    #[test]
    fn replacing_every_endpoint_at_full_capacity_still_finds_ids() {
        let count = MAX_ENDPOINTS - 1;
        let old = Snapshot {
            pods: (0..count)
                .map(|i| pod(&format!("old-{i}"), i, "x"))
                .collect(),
            ..Snapshot::default()
        };
        let first = resolve(&old, "node-1", &NodeState::default()).unwrap();
        let new = Snapshot {
            pods: (0..count)
                .map(|i| pod(&format!("new-{i}"), i + 5000, "x"))
                .collect(),
            ..Snapshot::default()
        };
        let second = resolve(&new, "node-1", &first).unwrap();
        let distinct: BTreeSet<u32> = ids(&second).into_values().collect();
        assert_eq!(distinct.len(), count as usize);
        assert!(distinct.iter().all(|id| (1..MAX_ENDPOINTS).contains(id)));
        let too_many = Snapshot {
            pods: (0..=count)
                .map(|i| pod(&format!("p-{i}"), i, "x"))
                .collect(),
            ..Snapshot::default()
        };
        assert!(matches!(
            resolve(&too_many, "node-1", &NodeState::default()),
            Err(ResolveError::TooManyEndpoints { count: 1024, .. })
        ));
    }

    #[test]
    fn a_new_class_does_not_take_the_id_of_one_that_just_went_away() {
        let selector = |app: &str| LabelSelector {
            match_labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
            match_expressions: Vec::new(),
        };
        let policy = NetworkPolicy {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
            pod_selector: selector("server"),
            policy_types: Vec::new(),
            ingress: ["x", "y"]
                .into_iter()
                .map(|app| Rule {
                    peers: vec![Peer::Pods(PodPeer {
                        namespaces: NamespaceScope::Own("ns".to_owned()),
                        pods: selector(app),
                    })],
                    ports: Vec::new(),
                })
                .collect(),
            egress: Vec::new(),
        };
        let mut snapshot = Snapshot {
            pods: vec![pod("server", 1, "server"), pod("client", 2, "x")],
            policies: vec![policy],
            ..Snapshot::default()
        };
        let first = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let old_class = first.peer_class(client);
        assert_ne!(old_class, WORLD_CLASS);
        snapshot.pods[1]
            .labels
            .insert("app".to_owned(), "y".to_owned());
        let second = resolve(&snapshot, "node-1", &first).unwrap();
        let new_class = second.peer_class(client);
        assert_ne!(new_class, WORLD_CLASS);
        assert_ne!(new_class, old_class);
        assert!(!second.ids.classes.values().any(|id| *id == old_class));
    }

    fn app(value: &str) -> LabelSelector {
        LabelSelector {
            match_labels: [("app".to_owned(), value.to_owned())].into_iter().collect(),
            match_expressions: Vec::new(),
        }
    }

    /// A policy of `ns` isolating the pods of `selected` for ingress, admitting TCP `ports`
    /// from `blocks` ipBlocks (10.1.0.0/16, 10.2.0.0/16, ...).
    fn ingress_policy(name: &str, selected: &str, blocks: u32, ports: &[u16]) -> NetworkPolicy {
        NetworkPolicy {
            namespace: "ns".to_owned(),
            name: name.to_owned(),
            pod_selector: app(selected),
            policy_types: Vec::new(),
            ingress: vec![Rule {
                peers: (1..=blocks)
                    .map(|block| {
                        Peer::IpBlock(IpBlock {
                            cidr: format!("10.{block}.0.0/16").parse().unwrap(),
                            except: Vec::new(),
                        })
                    })
                    .collect(),
                ports: ports
                    .iter()
                    .map(|&port| PortSpec {
                        protocol: Protocol::Tcp,
                        port: Some(PortValue::Number(port)),
                        end_port: None,
                    })
                    .collect(),
            }],
            egress: Vec::new(),
        }
    }

    fn entries_of(state: &NodeState, name: &str) -> usize {
        let id = ids(state)[name];
        state
            .policy
            .keys()
            .filter(|key| key.endpoint_id == id)
            .count()
    }

    fn ingress(state: &NodeState, name: &str) -> (bool, LookupPlan) {
        let endpoint = state
            .endpoints
            .values()
            .find(|endpoint| endpoint.pod.name == name)
            .unwrap();
        (
            endpoint.info.isolated(Direction::Ingress),
            endpoint.info.ingress_plan,
        )
    }

    #[test]
    fn neighbouring_ports_of_a_rule_become_port_prefixes() {
        let every_port: Vec<u16> = (1..=u16::MAX).rev().collect();
        let snapshot = Snapshot {
            pods: vec![pod("server", 1, "server")],
            policies: vec![ingress_policy("all-ports", "server", 9, &every_port)],
            ..Snapshot::default()
        };
        let state = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        // 1-65535 is 16 port prefixes, for each of the 9 blocks.
        assert_eq!(entries_of(&state, "server"), 16 * 9);
        assert!(state.degraded.is_empty());
        for port in [1, 2, 1000, 65535] {
            let decision = state.decide(
                &pod("server", 1, "server").pod_ref(),
                Direction::Ingress,
                "10.3.0.9".parse().unwrap(),
                6,
                port,
            );
            assert!(decision.is_some_and(|decision| decision.allows()), "{port}");
        }
    }

    #[test]
    fn a_policy_over_budget_isolates_its_pods_with_none_of_its_rules() {
        // Every other port cannot merge: 1,100 prefixes for each of 16 blocks.
        let odd: Vec<u16> = (0..1100).map(|n| 2 * n + 1).collect();
        let snapshot = Snapshot {
            pods: vec![
                pod("server", 1, "server"),
                pod("other", 2, "other"),
                pod("open", 3, "open"),
            ],
            policies: vec![
                ingress_policy("huge", "server", 16, &odd),
                ingress_policy("small", "server", 1, &[80]),
                ingress_policy("other", "other", 1, &[443]),
            ],
            ..Snapshot::default()
        };
        let state = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        assert_eq!(
            state.degraded,
            [Degraded::PolicyOverBudget {
                policy: "ns/huge".to_owned(),
                pod: pod("server", 1, "server").pod_ref(),
                entries: 16 * 1100,
                budget: POLICY_ENTRY_BUDGET,
            }]
        );
        let message = state.degraded[0].to_string();
        assert!(
            message.contains("ns/huge") && message.contains("17600") && message.contains("16384"),
            "{message}"
        );
        // Still isolated; only the other policy's rule is there.
        assert_eq!(
            ingress(&state, "server"),
            (
                true,
                LookupPlan {
                    class: 1 << 16,
                    ..LookupPlan::EMPTY
                }
            )
        );
        assert_eq!(entries_of(&state, "server"), 1);
        let decide = |pod: &Pod, peer: &str, port| {
            state
                .decide(
                    &pod.pod_ref(),
                    Direction::Ingress,
                    peer.parse().unwrap(),
                    6,
                    port,
                )
                .unwrap()
                .allows()
        };
        let server = pod("server", 1, "server");
        assert!(
            !decide(&server, "10.2.0.1", 1),
            "the huge policy's rules are left out"
        );
        assert!(
            decide(&server, "10.1.0.1", 80),
            "the small policy still applies"
        );
        assert!(decide(&pod("other", 2, "other"), "10.1.0.1", 443));
        assert!(!decide(&pod("other", 2, "other"), "10.1.0.1", 444));
        assert_eq!(ingress(&state, "open"), (false, LookupPlan::EMPTY));
    }

    #[test]
    fn a_node_over_capacity_denies_all_at_the_pods_that_need_the_most() {
        // 40 pods with 16,000 entries each need 640,000: the map holds 524,288, so 8 of them
        // (the first by name on a tie) deny all; the small pod keeps its rule.
        let ports: Vec<u16> = (0..8000).map(|n| 2 * n + 1).collect();
        let mut pods: Vec<Pod> = (0..40)
            .map(|n| pod(&format!("big-{n:02}"), n + 10, "big"))
            .collect();
        pods.push(pod("small", 1, "small"));
        let snapshot = Snapshot {
            pods,
            policies: vec![
                ingress_policy("big", "big", 2, &ports),
                ingress_policy("small", "small", 1, &[80]),
            ],
            ..Snapshot::default()
        };
        let state = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        let degraded: Vec<String> = state
            .degraded
            .iter()
            .map(|degraded| match degraded {
                Degraded::NodeOverCapacity {
                    pod,
                    entries: 16_000,
                    needed: 640_001,
                    capacity: MAX_POLICY_ENTRIES,
                    ..
                } => pod.name.clone(),
                other => panic!("{other}"),
            })
            .collect();
        let expected: Vec<String> = (0..8).map(|n| format!("big-{n:02}")).collect();
        assert_eq!(degraded, expected);
        assert!(state.policy.len() <= MAX_POLICY_ENTRIES as usize);
        for name in &expected {
            assert_eq!(entries_of(&state, name), 0);
            let endpoint = &state.endpoints[&pod(name, 0, "big").pod_ref()];
            assert!(endpoint.info.isolated(Direction::Ingress));
            assert!(endpoint.info.isolated(Direction::Egress));
        }
        assert_eq!(entries_of(&state, "big-08"), 16_000);
        assert_eq!(entries_of(&state, "small"), 1);
    }

    #[test]
    fn a_pod_over_capacity_keeps_the_admin_denies_of_its_own_node_traffic() {
        // The same 40 big pods, and an operator's Admin Deny of the kubelet port of the node
        // (10.9.0.1): it decides traffic NetworkPolicy exempts, so a namespace owner must not
        // shed it by outgrowing the map.
        let ports: Vec<u16> = (0..8000).map(|n| 2 * n + 1).collect();
        let pods: Vec<Pod> = (0..40)
            .map(|n| pod(&format!("big-{n:02}"), n + 10, "big"))
            .collect();
        let mut loaded = crate::manifest::Loaded::default();
        crate::manifest::load_text(
            std::path::Path::new("kubelet.yaml"),
            r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-kubelet}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{networks: [10.9.0.1/32]}]
    protocols: [{tcp: {destinationPort: {number: 10250}}}]
"#,
            &mut loaded,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let snapshot = Snapshot {
            pods,
            policies: vec![ingress_policy("big", "big", 2, &ports)],
            cluster_policies: loaded.snapshot.cluster_policies,
            ..Snapshot::default()
        };
        let state = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        let degraded = pod("big-00", 0, "big").pod_ref();
        assert!(state.degraded.iter().any(|problem| matches!(
            problem,
            Degraded::NodeOverCapacity { pod, .. } if *pod == degraded
        )));
        let kubelet: IpAddr = "10.9.0.1".parse().unwrap();
        let decide = |port: u16| {
            state
                .decide(&degraded, Direction::Egress, kubelet, 6, port)
                .unwrap()
        };
        assert!(!decide(10250).allows_exempt(), "{:?}", decide(10250));
        assert!(decide(10255).allows_exempt());
        assert!(!decide(10255).allows());
        let peer: IpAddr = "10.0.0.11".parse().unwrap();
        assert!(
            !state
                .decide(&degraded, Direction::Ingress, peer, 6, 1)
                .unwrap()
                .allows()
        );
        assert!(entries_of(&state, "big-00") > 0);
        assert!(entries_of(&state, "big-00") < 10);
    }

    #[test]
    fn admin_denies_that_alone_overflow_the_map_drop_everything_at_the_pods_that_keep_the_most() {
        // 3 policies of 25 rules, each a Deny of its own address on every TCP, UDP and SCTP port
        // but 0 and 65535 (30 port prefixes each): 6,750 entries for each of 100 pods, 675,000
        // together, and nothing a pod could lose while keeping its Admin Deny entries.
        let range = "destinationPort: {range: {start: 1, end: 65534}}";
        let mut yaml = String::new();
        for policy in 0..3 {
            yaml.push_str(&format!(
                "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
                 metadata: {{name: wide-{policy}}}\nspec:\n  tier: Admin\n  priority: {policy}\n\
                 \x20 subject: {{namespaces: {{}}}}\n  egress:\n"
            ));
            for rule in 0..25 {
                yaml.push_str(&format!(
                    "  - action: Deny\n    to: [{{networks: [10.200.{policy}.{rule}/32]}}]\n\
                     \x20   protocols: [{{tcp: {{{range}}}}}, {{udp: {{{range}}}}}, \
                     {{sctp: {{{range}}}}}]\n"
                ));
            }
        }
        let mut loaded = crate::manifest::Loaded::default();
        crate::manifest::load_text(std::path::Path::new("wide.yaml"), &yaml, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let snapshot = Snapshot {
            pods: (0..100)
                .map(|n| pod(&format!("pod-{n:03}"), n + 10, "any"))
                .collect(),
            cluster_policies: loaded.snapshot.cluster_policies,
            ..Snapshot::default()
        };
        let state = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        assert!(state.policy.len() <= MAX_POLICY_ENTRIES as usize);
        let per_pod = entries_of(&state, "pod-099");
        let dropping = (100 * per_pod - MAX_POLICY_ENTRIES as usize).div_ceil(per_pod);
        assert!(per_pod >= 6_750 && dropping > 0, "{per_pod} entries a pod");
        let degraded: Vec<String> = state
            .degraded
            .iter()
            .map(|problem| match problem {
                Degraded::NodeOverCapacity { pod, .. } => pod.name.clone(),
                other => panic!("{other}"),
            })
            .collect();
        let expected: Vec<String> = (0..dropping).map(|n| format!("pod-{n:03}")).collect();
        assert_eq!(degraded, expected);
        let denied: IpAddr = "10.200.1.7".parse().unwrap();
        let elsewhere: IpAddr = "10.9.9.9".parse().unwrap();
        let decide = |name: &str, peer: IpAddr, port: u16| {
            state
                .decide(
                    &pod(name, 0, "any").pod_ref(),
                    Direction::Egress,
                    peer,
                    6,
                    port,
                )
                .unwrap()
        };
        for name in &expected {
            assert_eq!(entries_of(&state, name), 0);
            for peer in [denied, elsewhere] {
                assert!(!decide(name, peer, 0).allows_exempt(), "{name} {peer}");
            }
        }
        let kept = format!("pod-{dropping:03}");
        assert_eq!(entries_of(&state, &kept), per_pod);
        assert!(!decide(&kept, denied, 80).allows_exempt());
        assert!(decide(&kept, denied, 0).allows());
        assert!(decide(&kept, elsewhere, 80).allows());
    }

    #[test]
    fn nested_and_many_excepts_leave_out_exactly_what_they_cover() {
        let mut except: Vec<Prefix> = ["10.1.2.0/24", "10.1.0.0/16", "10.3.0.0/16"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        except.extend(
            (0..2000u32)
                .map(|n| Prefix::host(IpAddr::V4(Ipv4Addr::from_bits(0x0a05_0000 + 2 * n)))),
        );
        let block = IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except,
        };
        let mut policy = ingress_policy("p", "server", 0, &[80]);
        policy.ingress[0].peers = vec![Peer::IpBlock(block.clone())];
        let peers = [
            0x01_0205, 0x01_0301, 0x02_0001, 0x03_0001, 0x05_0000, 0x05_0001, 0x05_0fa0,
        ];
        let mut pods: Vec<Pod> = peers
            .iter()
            .map(|&host| pod(&format!("p{host:x}"), host, "peer"))
            .collect();
        pods.push(pod("server", 1, "server"));
        let snapshot = Snapshot {
            pods,
            policies: vec![policy],
            ..Snapshot::default()
        };
        let state = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        let server = pod("server", 1, "server").pod_ref();
        for host in peers.into_iter().chain([0x05_0002, 0x05_0003, 0x06_0000]) {
            let ip = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + host));
            let allowed = state
                .decide(&server, Direction::Ingress, ip, 6, 80)
                .unwrap()
                .allows();
            assert_eq!(allowed, block.contains(ip), "{ip}");
        }
    }
}
