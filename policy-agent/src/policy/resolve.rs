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
        ANY_PEER_CLASS, ANY_PROTOCOL, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED,
        EndpointInfo, LookupPlan, MAX_ENDPOINTS, MAX_PEER_PREFIXES, MAX_POLICY_ENTRIES,
        PLAN_ANY_PEER, PLAN_ANY_PROTOCOL, PolicyKey, PolicyValue, WORLD_CLASS,
    },
    ports::range_to_prefixes,
    verdict::Direction,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::policy::{
    model::{
        ContainerPort, IpBlock, Labels, NamespaceScope, NetworkPolicy, Peer, Pod, PortValue,
        Protocol, Snapshot,
    },
    state::{Allocations, ClassKey, EndpointState, NodeState, Prefix, RuleRef},
};

/// A desired state the datapath could not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("node {node} has {count} endpoints; the endpoint map holds at most {capacity}")]
    TooManyEndpoints {
        node: String,
        count: usize,
        capacity: u32,
    },
    #[error("node {node} needs {count} policy entries; the policy map holds {capacity}")]
    TooManyPolicyEntries {
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
    let relevant: BTreeSet<(usize, Direction)> = selecting
        .iter()
        .flat_map(|by_direction| {
            Direction::ALL.into_iter().flat_map(move |direction| {
                by_direction[direction as usize]
                    .iter()
                    .map(move |&index| (index, direction))
            })
        })
        .collect();

    let rules = allocate_rules(&policies, &relevant, previous, &mut ids)?;
    let peers = RelevantPeers::collect(&policies, &relevant);
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
    for ((pod, by_direction), endpoint_id) in endpoints.iter().zip(&selecting).zip(endpoint_ids) {
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
        for direction in Direction::ALL {
            let applying = &by_direction[direction as usize];
            if applying.is_empty() {
                continue;
            }
            info.flags |= match direction {
                Direction::Ingress => ENDPOINT_INGRESS_ISOLATED,
                Direction::Egress => ENDPOINT_EGRESS_ISOLATED,
            };
            let mut compiler = EntryCompiler {
                endpoint_id,
                direction,
                plan: 0,
                policy: &mut state.policy,
            };
            for &index in applying {
                let policy = policies[index];
                for (rule_index, rule) in policy.rules(direction).iter().enumerate() {
                    let rule_id = rules[&rule_ref(policy, direction, rule_index)];
                    compiler.rule(pod, rule, rule_id, &peers, &classes, &class_ids);
                }
            }
            match direction {
                Direction::Ingress => info.ingress_plan = compiler.plan,
                Direction::Egress => info.egress_plan = compiler.plan,
            }
        }
        state.endpoints.insert(
            pod_ref.clone(),
            EndpointState {
                pod: pod_ref,
                ips: pod.ips.clone(),
                info,
            },
        );
    }
    if state.policy.len() > MAX_POLICY_ENTRIES as usize {
        return Err(ResolveError::TooManyPolicyEntries {
            node: node.to_owned(),
            count: state.policy.len(),
            capacity: MAX_POLICY_ENTRIES,
        });
    }
    state.ids = ids;
    Ok(state)
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
    policies: &[&NetworkPolicy],
    relevant: &BTreeSet<(usize, Direction)>,
    previous: &NodeState,
    ids: &mut Allocations,
) -> Result<BTreeMap<RuleRef, u32>, ResolveError> {
    let known: HashMap<&RuleRef, u32> = previous.rules.iter().map(|(id, r)| (r, *id)).collect();
    let recent: HashSet<u32> = previous.rules.keys().copied().collect();
    let mut in_use: HashSet<u32> = relevant
        .iter()
        .flat_map(|&(index, direction)| {
            let policy = policies[index];
            (0..policy.rules(direction).len()).map(move |i| rule_ref(policy, direction, i))
        })
        .filter_map(|rule| known.get(&rule).copied())
        .collect();
    let mut rules = BTreeMap::new();
    for &(index, direction) in relevant {
        let policy = policies[index];
        for rule_index in 0..policy.rules(direction).len() {
            let rule = rule_ref(policy, direction, rule_index);
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
                    if let Entry::Vacant(vacant) = peers.ids.entry(peer) {
                        vacant.insert(peers.peers.len());
                        peers.peers.push(peer);
                    }
                }
                if direction == Direction::Egress {
                    for spec in &rule.ports {
                        if let Some(PortValue::Name(name)) = &spec.port
                            && let Entry::Vacant(vacant) = peers
                                .egress_port_name_ids
                                .entry((name.as_str(), spec.protocol))
                        {
                            vacant.insert(peers.egress_port_names.len() as u32);
                            peers.egress_port_names.push((name.as_str(), spec.protocol));
                        }
                    }
                }
            }
        }
        peers
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
        // Blocks by cidr, so each address is tested once per distinct cidr.
        let mut by_cidr: BTreeMap<Prefix, Vec<(u32, &IpBlock)>> = BTreeMap::new();
        for &(id, block) in &blocks {
            by_cidr.entry(block.cidr).or_default().push((id, block));
        }

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
            signature.extend(
                blocks
                    .iter()
                    .filter(|(_, block)| {
                        block.cidr.covers(&prefix)
                            && !block.except.iter().any(|e| e.covers(&prefix))
                    })
                    .map(|(id, _)| *id),
            );
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
                for (cidr, with_cidr) in &by_cidr {
                    if cidr.contains(ip) {
                        in_blocks.extend(
                            with_cidr
                                .iter()
                                .filter(|(_, block)| !block.except.iter().any(|e| e.contains(ip)))
                                .map(|(id, _)| *id),
                        );
                    }
                }
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

/// Writes the policy entries of one endpoint and direction, and collects its lookup plan.
struct EntryCompiler<'s> {
    endpoint_id: u32,
    direction: Direction,
    plan: LookupPlan,
    policy: &'s mut BTreeMap<PolicyKey, PolicyValue>,
}

impl EntryCompiler<'_> {
    fn rule(
        &mut self,
        pod: &Pod,
        rule: &crate::policy::model::Rule,
        rule_id: u32,
        peers: &RelevantPeers<'_>,
        classes: &Classes,
        class_ids: &[u32],
    ) {
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
                    if self.direction == Direction::Ingress
                        && let Some(port) = pod.named_port(name, spec.protocol)
                    {
                        ranges.push((protocol, port, port));
                    }
                }
            }
        }
        match &reached {
            None => {
                for &(protocol, first, last) in &ranges {
                    self.emit(ANY_PEER_CLASS, protocol, first, last, rule_id);
                }
            }
            Some(reached) => {
                for &class in reached {
                    for &(protocol, first, last) in &ranges {
                        self.emit(class_ids[class], protocol, first, last, rule_id);
                    }
                }
            }
        }

        if self.direction == Direction::Ingress {
            return;
        }
        // Egress names resolve per destination. Only the classes of pod addresses carry ports,
        // so an address that is no pod's matches no name.
        let candidates: Vec<usize> = match &reached {
            None => (0..classes.keys.len()).collect(),
            Some(reached) => reached.iter().copied().collect(),
        };
        for spec in &rule.ports {
            let Some(PortValue::Name(name)) = &spec.port else {
                continue;
            };
            let protocol = spec.protocol;
            for &class in &candidates {
                let resolved = classes
                    .ports(class)
                    .iter()
                    .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name));
                if let Some(resolved) = resolved {
                    self.emit(
                        class_ids[class],
                        Some(protocol.number()),
                        resolved.port,
                        resolved.port,
                        rule_id,
                    );
                }
            }
        }
    }

    fn emit(&mut self, peer_class: u32, protocol: Option<u8>, first: u16, last: u16, rule: u32) {
        if peer_class == ANY_PEER_CLASS {
            self.plan |= PLAN_ANY_PEER;
        }
        let mut key = PolicyKey {
            endpoint_id: self.endpoint_id,
            peer_class,
            direction: self.direction as u8,
            ..PolicyKey::default()
        };
        let mut insert = |key: PolicyKey| {
            self.policy
                .entry(key)
                .and_modify(|value| value.rule_id = value.rule_id.min(rule))
                .or_insert(PolicyValue { rule_id: rule });
        };
        match protocol {
            None => {
                self.plan |= PLAN_ANY_PROTOCOL;
                key.protocol = ANY_PROTOCOL;
                insert(key);
            }
            Some(protocol) => {
                key.protocol = protocol;
                range_to_prefixes(first, last, |port, len| {
                    self.plan |= 1 << len;
                    key.port = port;
                    key.port_prefix_len = len;
                    insert(key);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::model::{LabelSelector, PodPeer, PodPhase, Rule};

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
}
