//! Differential test: the compiled node state, looked up the way the kernel does, against the
//! reference evaluator that loops over policies and rules per packet, on random clusters,
//! policies and packets (IPv4 and IPv6, named ports, also behind ipBlock peers, ranges, ipBlock
//! except, every selector operator), with and without ClusterNetworkPolicies of both tiers
//! (every action and peer kind, equal priorities, named ports and port ranges). Also checks that resolving against a previous state after a
//! small change gives the same answers and a delta that turns the old maps into the new ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use policy_common::verdict::Direction;
use policy_core::policy::{
    cluster::{
        Action, ClusterNetworkPolicy, ClusterPeer, ClusterProtocol, ClusterRule, Node,
        PodsSelector, PortRange, Subject, Tier,
    },
    lookup::Decision,
    model::{
        ContainerPort, IpBlock, LabelSelector, Labels, Namespace, NamespaceScope, NetworkPolicy,
        Operator, Peer, Pod, PodPeer, PodPhase, PortSpec, PortValue, Protocol, Requirement, Rule,
        Snapshot,
    },
    resolve::resolve,
    spec::{self, Decider, Probe, Route, evaluate},
    state::{Delta, NodeState, PolicyRule, Prefix, RuleRef},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const NODES: [&str; 2] = ["node-1", "node-2"];
const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const LABELS: [(&str, &[&str]); 3] = [
    ("app", &["web", "api", "db"]),
    ("tier", &["front", "back"]),
    ("role", &["x", "y"]),
];
const PORT_NAMES: [&str; 4] = ["http", "dns", "metrics", "nope"];
const PORTS: [u16; 8] = [53, 80, 443, 1000, 1003, 1010, 8080, 9090];

fn v4(rng: &mut StdRng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        rng.random_range(0..2),
        rng.random_range(0..4),
        rng.random_range(0..24),
    ))
}

fn v6(rng: &mut StdRng) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        rng.random_range(0..2),
        0,
        0,
        0,
        0,
        rng.random_range(0..4),
        rng.random_range(0..24),
    ))
}

fn labels(rng: &mut StdRng) -> Labels {
    let mut labels = Labels::new();
    for (key, values) in LABELS {
        if rng.random_bool(0.5) {
            labels.insert(key.to_owned(), (*values.choose(rng).unwrap()).to_owned());
        }
    }
    labels
}

fn selector(rng: &mut StdRng) -> LabelSelector {
    let mut selector = LabelSelector::default();
    for _ in 0..rng.random_range(0..2) {
        let (key, values) = LABELS.choose(rng).unwrap();
        selector
            .match_labels
            .insert((*key).to_owned(), (*values.choose(rng).unwrap()).to_owned());
    }
    for _ in 0..rng.random_range(0..2) {
        let (key, values) = LABELS.choose(rng).unwrap();
        let operator = *[
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]
        .choose(rng)
        .unwrap();
        let values = match operator {
            Operator::In | Operator::NotIn => {
                let count = rng.random_range(1..=values.len());
                let mut chosen: Vec<String> = values
                    .choose_multiple(rng, count)
                    .map(|v| (*v).to_owned())
                    .collect();
                chosen.sort();
                chosen
            }
            Operator::Exists | Operator::DoesNotExist => Vec::new(),
        };
        selector.match_expressions.push(Requirement {
            key: (*key).to_owned(),
            operator,
            values,
        });
    }
    selector
}

fn namespace_selector(rng: &mut StdRng) -> LabelSelector {
    let mut selector = LabelSelector::default();
    match rng.random_range(0..4) {
        0 => {}
        1 => {
            selector.match_labels.insert(
                "kubernetes.io/metadata.name".to_owned(),
                (*NAMESPACES.choose(rng).unwrap()).to_owned(),
            );
        }
        2 => {
            selector.match_labels.insert(
                "team".to_owned(),
                (*["x", "y"].choose(rng).unwrap()).to_owned(),
            );
        }
        _ => selector.match_expressions.push(Requirement {
            key: "team".to_owned(),
            operator: *[Operator::NotIn, Operator::DoesNotExist, Operator::Exists]
                .choose(rng)
                .unwrap(),
            values: Vec::new(),
        }),
    }
    if let Some(requirement) = selector.match_expressions.first_mut()
        && requirement.operator == Operator::NotIn
    {
        requirement.values = vec!["x".to_owned()];
    }
    selector
}

fn prefix(rng: &mut StdRng) -> Prefix {
    if rng.random_bool(0.6) {
        Prefix::new(
            v4(rng),
            *[0, 8, 15, 16, 22, 24, 27, 32].choose(rng).unwrap(),
        )
    } else {
        Prefix::new(
            v6(rng),
            *[0, 16, 100, 112, 120, 124, 128].choose(rng).unwrap(),
        )
    }
}

/// A prefix short enough to hold several pod addresses.
fn wide_prefix(rng: &mut StdRng) -> Prefix {
    if rng.random_bool(0.6) {
        Prefix::new(v4(rng), *[8, 15, 16, 22].choose(rng).unwrap())
    } else {
        Prefix::new(v6(rng), *[16, 100, 112].choose(rng).unwrap())
    }
}

/// `cidr` with up to two random excepts inside it.
fn ip_block(rng: &mut StdRng, cidr: Prefix) -> IpBlock {
    let max = Prefix::max_len(cidr.addr);
    let mut except = BTreeSet::new();
    if cidr.len < max {
        for _ in 0..rng.random_range(0..3) {
            // A random address inside the cidr, cut to a longer prefix.
            let inside = match cidr.addr {
                IpAddr::V4(base) => {
                    let host = rng.random::<u32>() & (u32::MAX >> cidr.len.min(31)) & 0x0003_ffff;
                    IpAddr::V4(Ipv4Addr::from_bits(base.to_bits() | host))
                }
                IpAddr::V6(base) => {
                    let host = u128::from(rng.random::<u32>() & 0x0003_ffff)
                        & (u128::MAX >> cidr.len.min(127));
                    IpAddr::V6(Ipv6Addr::from_bits(base.to_bits() | host))
                }
            };
            let len = rng.random_range(cidr.len + 1..=max);
            except.insert(Prefix::new(inside, len.max(max.saturating_sub(12))));
        }
    }
    let except: Vec<Prefix> = except
        .into_iter()
        .filter(|e| cidr.covers(e) && e.len > cidr.len)
        .collect();
    IpBlock { cidr, except }
}

/// What random rules are made of.
#[derive(Clone, Copy)]
enum Mix {
    /// Every kind of peer and port alike.
    Any,
    /// Mostly ipBlock peers over the pod addresses and named ports, so that names resolve on
    /// the pods behind the blocks' addresses.
    NamesBehindBlocks,
    /// Every kind of NetworkPolicy rule, with ClusterNetworkPolicies of both tiers.
    Tiers,
}

impl Mix {
    /// The protocols of rules' ports, TCP the most common as in real policies.
    fn rule_protocols(self) -> &'static [Protocol] {
        match self {
            Mix::Any | Mix::Tiers => &[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
            Mix::NamesBehindBlocks => &[Protocol::Tcp, Protocol::Tcp, Protocol::Udp],
        }
    }

    /// The protocols of containerPorts.
    fn container_protocols(self) -> &'static [Protocol] {
        match self {
            Mix::Any | Mix::Tiers => &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
            Mix::NamesBehindBlocks => &[Protocol::Tcp, Protocol::Tcp, Protocol::Udp],
        }
    }

    /// How often a packet goes to a declared containerPort of the pod that receives it.
    fn aim(self) -> f64 {
        match self {
            Mix::Any | Mix::Tiers => 0.5,
            Mix::NamesBehindBlocks => 0.9,
        }
    }
}

/// A podSelector and/or namespaceSelector peer of a policy in `namespace`.
fn pod_peer(rng: &mut StdRng, namespace: &str) -> Peer {
    Peer::Pods(match rng.random_range(0..3) {
        0 => PodPeer {
            namespaces: NamespaceScope::Own(namespace.to_owned()),
            pods: selector(rng),
        },
        1 => PodPeer {
            namespaces: NamespaceScope::Selected(namespace_selector(rng)),
            pods: LabelSelector::default(),
        },
        _ => PodPeer {
            namespaces: NamespaceScope::Selected(namespace_selector(rng)),
            pods: selector(rng),
        },
    })
}

fn rule(rng: &mut StdRng, namespace: &str, mix: Mix) -> Rule {
    let mut rule = Rule::default();
    let peers = match mix {
        Mix::Any | Mix::Tiers => rng.random_range(0..3),
        Mix::NamesBehindBlocks => rng.random_range(1..3),
    };
    for _ in 0..peers {
        let peer = match mix {
            Mix::Any | Mix::Tiers if rng.random_bool(0.25) => {
                let cidr = prefix(rng);
                Peer::IpBlock(ip_block(rng, cidr))
            }
            Mix::NamesBehindBlocks if rng.random_bool(0.75) => {
                let cidr = wide_prefix(rng);
                Peer::IpBlock(ip_block(rng, cidr))
            }
            _ => pod_peer(rng, namespace),
        };
        rule.peers.push(peer);
    }
    let ports = match mix {
        Mix::Any | Mix::Tiers => rng.random_range(0..3),
        Mix::NamesBehindBlocks => rng.random_range(1..3),
    };
    for _ in 0..ports {
        let protocol = *mix.rule_protocols().choose(rng).unwrap();
        let kind = match mix {
            // A named port.
            Mix::NamesBehindBlocks if rng.random_bool(0.75) => 1,
            _ => rng.random_range(0..5),
        };
        let (port, end_port) = match kind {
            0 => (None, None),
            1 | 2 => (
                Some(PortValue::Name(
                    (*PORT_NAMES.choose(rng).unwrap()).to_owned(),
                )),
                None,
            ),
            3 => (Some(PortValue::Number(*PORTS.choose(rng).unwrap())), None),
            _ => {
                let first = *PORTS.choose(rng).unwrap();
                let last = first.saturating_add(rng.random_range(0..40));
                (Some(PortValue::Number(first)), Some(last))
            }
        };
        rule.ports.push(PortSpec {
            protocol,
            port,
            end_port,
        });
    }
    rule
}

fn cluster(rng: &mut StdRng, mix: Mix) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for name in NAMESPACES {
        let mut labels = Labels::new();
        if rng.random_bool(0.7) {
            labels.insert(
                "team".to_owned(),
                (*["x", "y"].choose(rng).unwrap()).to_owned(),
            );
        }
        snapshot.namespaces.push(Namespace {
            name: name.to_owned(),
            labels,
        });
    }
    let mut used = BTreeSet::new();
    for index in 0..rng.random_range(4..12) {
        let mut ips = Vec::new();
        let family = rng.random_range(0..10);
        if family < 9 {
            ips.push(v4(rng));
        }
        if family >= 5 {
            ips.push(v6(rng));
        }
        if rng.random_bool(0.08) {
            ips.clear();
        }
        if ips.iter().any(|ip| used.contains(ip)) {
            continue;
        }
        used.extend(ips.iter().copied());
        let ports = container_ports(rng, mix);
        snapshot.pods.push(Pod {
            namespace: (*NAMESPACES.choose(rng).unwrap()).to_owned(),
            name: format!("pod-{index}"),
            labels: labels(rng),
            node: Some((*NODES.choose(rng).unwrap()).to_owned()),
            phase: *[
                PodPhase::Running,
                PodPhase::Running,
                PodPhase::Running,
                PodPhase::Pending,
                PodPhase::Succeeded,
                PodPhase::Failed,
            ]
            .choose(rng)
            .unwrap(),
            host_network: rng.random_bool(0.05),
            ips,
            ports,
        });
    }
    for index in 0..rng.random_range(1..5) {
        snapshot.policies.push(policy(rng, index, mix));
    }
    if let Mix::Tiers = mix {
        for (k, name) in NODES.iter().enumerate() {
            let mut labels = Labels::new();
            labels.insert("role".to_owned(), ["x", "y"][k % 2].to_owned());
            snapshot.nodes.push(Node {
                name: (*name).to_owned(),
                labels,
                addresses: NODE_ADDRESSES[k]
                    .iter()
                    .map(|a| a.parse().unwrap())
                    .collect(),
            });
        }
        for index in 0..rng.random_range(1..5) {
            snapshot.cluster_policies.push(cluster_policy(rng, index));
        }
    }
    snapshot
}

/// The addresses of each of [`NODES`].
const NODE_ADDRESSES: [[&str; 2]; 2] = [["192.168.9.1", "fd09::1"], ["192.168.9.2", "fd09::2"]];

/// A ClusterNetworkPolicy of either tier; priorities from a few values, so that policies often
/// share one.
fn cluster_policy(rng: &mut StdRng, index: usize) -> ClusterNetworkPolicy {
    let pods = PodsSelector {
        namespaces: namespace_selector(rng),
        pods: selector(rng),
    };
    ClusterNetworkPolicy {
        name: format!("cnp-{index}"),
        tier: *[Tier::Admin, Tier::Baseline].choose(rng).unwrap(),
        priority: rng.random_range(0..3),
        subject: if rng.random_bool(0.5) {
            Subject::Namespaces(pods.namespaces)
        } else {
            Subject::Pods(pods)
        },
        ingress: (0..rng.random_range(0..4))
            .map(|_| cluster_rule(rng, Direction::Ingress))
            .collect(),
        egress: (0..rng.random_range(0..4))
            .map(|_| cluster_rule(rng, Direction::Egress))
            .collect(),
    }
}

fn cluster_rule(rng: &mut StdRng, direction: Direction) -> ClusterRule {
    let action = *Action::ALL.choose(rng).unwrap();
    let kinds = match direction {
        Direction::Ingress => 2,
        Direction::Egress => 6,
    };
    let peers = (0..rng.random_range(1..3))
        .map(|_| match rng.random_range(0..kinds) {
            0 => ClusterPeer::Namespaces(namespace_selector(rng)),
            1 => ClusterPeer::Pods(PodsSelector {
                namespaces: namespace_selector(rng),
                pods: selector(rng),
            }),
            2 | 3 => ClusterPeer::Networks(
                (0..rng.random_range(1..3))
                    .map(|_| {
                        if rng.random_bool(0.5) {
                            wide_prefix(rng)
                        } else {
                            prefix(rng)
                        }
                    })
                    .collect(),
            ),
            4 => {
                let mut nodes = LabelSelector::default();
                if rng.random_bool(0.6) {
                    nodes.match_labels.insert(
                        "role".to_owned(),
                        (*["x", "y"].choose(rng).unwrap()).to_owned(),
                    );
                }
                ClusterPeer::Nodes(nodes)
            }
            _ if rng.random_bool(0.5) => ClusterPeer::DomainNames(vec!["example.com".to_owned()]),
            _ => ClusterPeer::Unknown,
        })
        .collect::<Vec<_>>();
    let address_peer = peers.iter().any(|peer| {
        matches!(
            peer,
            ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_)
        )
    });
    let protocols = (0..rng.random_range(0..3))
        .map(|_| {
            if !address_peer && rng.random_bool(0.3) {
                ClusterProtocol::Named((*PORT_NAMES.choose(rng).unwrap()).to_owned())
            } else {
                let first = *PORTS.choose(rng).unwrap();
                ClusterProtocol::Ports {
                    protocol: *Protocol::ALL.choose(rng).unwrap(),
                    ports: PortRange {
                        first,
                        last: first + rng.random_range(0..12),
                    },
                }
            }
        })
        .collect();
    ClusterRule {
        name: rng.random_bool(0.5).then(|| "named".to_owned()),
        action,
        peers,
        protocols,
    }
}

/// Up to three named containerPorts; the last of [`PORT_NAMES`] is never declared.
fn container_ports(rng: &mut StdRng, mix: Mix) -> Vec<ContainerPort> {
    (0..rng.random_range(0..4))
        .map(|_| ContainerPort {
            name: Some((*PORT_NAMES[..3].choose(rng).unwrap()).to_owned()),
            protocol: *mix.container_protocols().choose(rng).unwrap(),
            port: *PORTS.choose(rng).unwrap(),
        })
        .collect()
}

fn policy(rng: &mut StdRng, index: usize, mix: Mix) -> NetworkPolicy {
    let namespace = *NAMESPACES.choose(rng).unwrap();
    let policy_types = match rng.random_range(0..4) {
        0 => Vec::new(),
        1 => vec![Direction::Ingress],
        2 => vec![Direction::Egress],
        _ => vec![Direction::Ingress, Direction::Egress],
    };
    NetworkPolicy {
        namespace: namespace.to_owned(),
        name: format!("policy-{index}"),
        pod_selector: selector(rng),
        policy_types,
        ingress: (0..rng.random_range(0..3))
            .map(|_| rule(rng, namespace, mix))
            .collect(),
        egress: (0..rng.random_range(0..3))
            .map(|_| rule(rng, namespace, mix))
            .collect(),
    }
}

/// Addresses worth probing: every pod address, the edges of every ipBlock prefix, strangers.
fn probe_addresses(snapshot: &Snapshot, rng: &mut StdRng) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = snapshot.pods.iter().flat_map(|p| p.ips.clone()).collect();
    for policy in &snapshot.policies {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for peer in &rule.peers {
                if let Peer::IpBlock(block) = peer {
                    for prefix in std::iter::once(block.cidr).chain(block.except.iter().copied()) {
                        addresses.push(prefix.addr);
                        addresses.push(last_address(prefix));
                    }
                }
            }
        }
    }
    for _ in 0..6 {
        addresses.push(v4(rng));
        addresses.push(v6(rng));
    }
    for node in &snapshot.nodes {
        addresses.extend(node.addresses.iter().copied());
    }
    for policy in &snapshot.cluster_policies {
        for rule in policy.egress.iter() {
            for peer in &rule.peers {
                if let ClusterPeer::Networks(prefixes) = peer {
                    for prefix in prefixes {
                        addresses.push(prefix.addr);
                        addresses.push(last_address(*prefix));
                    }
                }
            }
        }
    }
    addresses.push("8.8.8.8".parse().unwrap());
    addresses.push("2001:db8::1".parse().unwrap());
    addresses
}

fn last_address(prefix: Prefix) -> IpAddr {
    match prefix.addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(
            a.to_bits() | (u32::MAX.checked_shr(u32::from(prefix.len)).unwrap_or(0)),
        )),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(
            a.to_bits() | (u128::MAX.checked_shr(u32::from(prefix.len)).unwrap_or(0)),
        )),
    }
}

struct Tally {
    packets: usize,
    allowed: usize,
    isolated: usize,
    /// Packets allowed by a rule through one of its ipBlock peers and one of its named ports,
    /// by direction: the name resolved on the pod that owns the destination address.
    named_behind_blocks: [usize; 2],
}

/// Whether `rule` matches the packet through an ipBlock peer and a named port that `receiver`
/// (the pod owning the destination address) declares.
fn name_behind_block(
    snapshot: &Snapshot,
    rule: &RuleRef,
    receiver: Option<&Pod>,
    peer: IpAddr,
    protocol: u8,
    port: u16,
) -> bool {
    let policy = snapshot
        .policies
        .iter()
        .find(|p| p.namespace == rule.namespace && p.name == rule.policy)
        .expect("the rule's policy exists");
    let rule = &policy.rules(rule.direction)[rule.index];
    let in_block = rule
        .peers
        .iter()
        .any(|p| matches!(p, Peer::IpBlock(block) if block.contains(peer)));
    let by_name = rule.ports.iter().any(|spec| match &spec.port {
        Some(PortValue::Name(name)) => {
            spec.protocol.number() == protocol
                && receiver.and_then(|pod| pod.named_port(name, spec.protocol)) == Some(port)
        }
        _ => false,
    });
    in_block && by_name
}

/// The random source of one run, what its rules are made of, and what it has seen.
struct Run {
    rng: StdRng,
    mix: Mix,
    tally: Tally,
}

/// Compares compiled and reference verdicts for `count` random packets at `node`'s endpoints.
fn compare(
    snapshot: &Snapshot,
    state: &NodeState,
    node: &str,
    count: usize,
    run: &mut Run,
    context: &str,
) {
    let Run { rng, mix, tally } = run;
    let mix = *mix;
    let endpoints: Vec<&Pod> = snapshot
        .pods
        .iter()
        .filter(|p| p.is_endpoint_of(node))
        .collect();
    assert_eq!(
        endpoints.len(),
        state.endpoints.len(),
        "{context}: endpoint count"
    );
    if endpoints.is_empty() {
        return;
    }
    let addresses = probe_addresses(snapshot, rng);
    for _ in 0..count {
        let pod = *endpoints.choose(rng).unwrap();
        let direction = *Direction::ALL.choose(rng).unwrap();
        let peer = match mix {
            Mix::NamesBehindBlocks if rng.random_bool(0.75) => {
                let pods = snapshot
                    .pods
                    .choose(rng)
                    .map_or(&[][..], |p| p.ips.as_slice());
                pods.choose(rng).copied()
            }
            _ => None,
        }
        .unwrap_or_else(|| *addresses.choose(rng).unwrap());
        let mut protocol = *[6u8, 6, 17, 132, 1].choose(rng).unwrap();
        let mut port = if rng.random_bool(0.9) {
            PORTS.choose(rng).unwrap() + rng.random_range(0..12)
        } else {
            rng.random()
        };
        // Often aim at a declared containerPort of the receiving pod, where named ports resolve.
        let receiver = match direction {
            Direction::Ingress => Some(pod),
            Direction::Egress => snapshot.pods.iter().find(|p| p.ips.contains(&peer)),
        };
        if let Some(declared) = receiver.and_then(|r| r.ports.choose(rng))
            && rng.random_bool(mix.aim())
        {
            protocol = declared.protocol.number();
            port = declared.port;
        }
        let decision = state
            .decide(&pod.pod_ref(), direction, peer, protocol, port)
            .expect("every endpoint is in the state");
        if let Mix::Tiers = mix {
            // A pod's packets to its own address never reach its programs.
            if !pod.ips.contains(&peer) {
                compare_tiers(
                    snapshot,
                    state,
                    pod,
                    direction,
                    (peer, protocol, port),
                    decision,
                    context,
                );
                tally.packets += 1;
                tally.allowed += usize::from(decision.allows());
            }
            continue;
        }
        let reference = evaluate(snapshot, pod, direction, peer, protocol, port);
        tally.packets += 1;
        tally.allowed += usize::from(decision.allows());
        tally.isolated += usize::from(reference.isolated());
        let owner = match direction {
            Direction::Ingress => Some(pod),
            Direction::Egress => snapshot
                .pods
                .iter()
                .find(|p| p.is_peer() && p.ips.contains(&peer)),
        };
        if reference
            .allowing
            .iter()
            .any(|rule| name_behind_block(snapshot, rule, owner, peer, protocol, port))
        {
            tally.named_behind_blocks[direction as usize] += 1;
        }
        assert_eq!(
            decision.allows(),
            reference.allows(),
            "{context}: {} {direction:?} peer {peer} proto {protocol} port {port}: compiled {decision:?}, reference {reference:?}\n{snapshot:#?}\n{}",
            pod.pod_ref(),
            state.render()
        );
        match decision {
            Decision::NotIsolated => assert!(!reference.isolated()),
            Decision::Allowed { rule_id } => {
                let rule = &state.rules[&rule_id];
                assert!(
                    matches!(rule, PolicyRule::Network(rule) if reference.allowing.contains(rule)),
                    "{context}: entry names {rule}, which does not allow the packet"
                );
            }
            Decision::Denied { .. } => {}
        }
    }
}

/// Compares one packet's compiled decision with the tiered reference's, the deciding rule
/// included.
fn compare_tiers(
    snapshot: &Snapshot,
    state: &NodeState,
    pod: &Pod,
    direction: Direction,
    (peer, protocol, port): (IpAddr, u8, u16),
    decision: Decision,
    context: &str,
) {
    let probe = Probe {
        peer,
        protocol,
        port,
        route: Route::Direct,
    };
    let reference = spec::decide(snapshot, pod, direction, probe);
    let explain = || {
        format!(
            "{context}: {} {direction:?} peer {peer} proto {protocol} port {port}: compiled \
             {decision:?}, reference {reference:?}\n{snapshot:#?}\n{}",
            pod.pod_ref(),
            state.render()
        )
    };
    assert_eq!(decision.allows(), reference.allowed, "{}", explain());
    let named = |rule_id: u32| state.rules.get(&rule_id).cloned();
    match (decision, &reference.decider) {
        (
            Decision::Denied { rule_id, .. } | Decision::Allowed { rule_id },
            Decider::Cluster(rule),
        ) => {
            assert_eq!(
                named(rule_id),
                Some(PolicyRule::Cluster(rule.clone())),
                "{}",
                explain()
            );
        }
        (Decision::Allowed { rule_id }, Decider::NetworkPolicy(evaluation)) => {
            assert!(
                matches!(named(rule_id), Some(PolicyRule::Network(rule)) if evaluation.allowing.contains(&rule)),
                "{}",
                explain()
            );
        }
        (Decision::Denied { rule_id: 0, .. }, Decider::NetworkPolicy(_))
        | (Decision::NotIsolated, Decider::Default) => {}
        _ => panic!("the deciders differ: {}", explain()),
    }
}

/// Applies a delta to the maps of `old`, in its documented order.
fn apply(old: &NodeState, delta: &Delta) -> NodeState {
    let mut state = old.clone();
    for (key, value) in &delta.policy_upserts {
        state.policy.insert(*key, *value);
    }
    for (prefix, class) in &delta.peer_upserts {
        state.peers.insert(*prefix, *class);
    }
    for endpoint in &delta.endpoint_upserts {
        state
            .endpoints
            .insert(endpoint.pod.clone(), endpoint.clone());
    }
    for prefix in &delta.peer_removals {
        state.peers.remove(prefix);
    }
    for key in &delta.policy_removals {
        state.policy.remove(key);
    }
    for pod in &delta.endpoint_removals {
        state.endpoints.remove(pod);
    }
    state
}

/// One small change: a pod's labels, a policy or cluster policy rewritten, a pod gone, or a pod
/// added.
fn mutate(snapshot: &Snapshot, rng: &mut StdRng, mix: Mix) -> Snapshot {
    let mut next = snapshot.clone();
    if let Mix::Tiers = mix
        && !next.cluster_policies.is_empty()
        && rng.random_bool(0.4)
    {
        // A cluster policy rewritten: its tier, priority, subject and rules.
        let index = rng.random_range(0..next.cluster_policies.len());
        let name = next.cluster_policies[index].name.clone();
        next.cluster_policies[index] = cluster_policy(rng, 0);
        next.cluster_policies[index].name = name;
        return next;
    }
    match rng.random_range(0..4) {
        0 if !next.pods.is_empty() => {
            let index = rng.random_range(0..next.pods.len());
            next.pods[index].labels = labels(rng);
        }
        1 => {
            let index = rng.random_range(0..next.policies.len());
            let name = next.policies[index].name.clone();
            next.policies[index] = policy(rng, 0, mix);
            next.policies[index].name = name;
        }
        2 if !next.pods.is_empty() => {
            let index = rng.random_range(0..next.pods.len());
            next.pods.remove(index);
        }
        _ => {
            let ip = v4(rng);
            if !next.pods.iter().any(|p| p.ips.contains(&ip)) {
                next.pods.push(Pod {
                    namespace: (*NAMESPACES.choose(rng).unwrap()).to_owned(),
                    name: "added".to_owned(),
                    labels: labels(rng),
                    node: Some((*NODES.choose(rng).unwrap()).to_owned()),
                    phase: PodPhase::Running,
                    host_network: false,
                    ips: vec![ip],
                    ports: container_ports(rng, mix),
                });
            }
        }
    }
    next
}

fn key_maps(
    state: &NodeState,
) -> (
    impl PartialEq + std::fmt::Debug,
    impl PartialEq + std::fmt::Debug,
    impl PartialEq + std::fmt::Debug,
) {
    (
        state.policy.clone(),
        state.peers.clone(),
        state.endpoints.clone(),
    )
}

/// Resolves `rounds` random clusters of `mix` for every node, and a small change of each against
/// the previous state, comparing every compiled verdict with the reference evaluator's.
fn run(seed: u64, rounds: usize, mix: Mix) -> Tally {
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed),
        mix,
        tally: Tally {
            packets: 0,
            allowed: 0,
            isolated: 0,
            named_behind_blocks: [0; 2],
        },
    };
    for round in 0..rounds {
        let snapshot = cluster(&mut run.rng, mix);
        let next = mutate(&snapshot, &mut run.rng, mix);
        for node in NODES {
            let context = format!("round {round} {node}");
            let state = resolve(&snapshot, node, &NodeState::default()).expect("resolves");
            compare(&snapshot, &state, node, 30, &mut run, &context);

            // Same input against its own result: nothing changes, ids included.
            let again = resolve(&snapshot, node, &state).expect("resolves");
            assert!(
                Delta::between(&state, &again).is_empty(),
                "{context}: re-resolve changed state"
            );
            assert_eq!(
                again.ids.classes, state.ids.classes,
                "{context}: class ids moved"
            );

            // A small change, resolved against the previous state.
            let incremental = resolve(&next, node, &state).expect("resolves");
            let context = format!("{context} after change");
            compare(&next, &incremental, node, 25, &mut run, &context);
            let delta = Delta::between(&state, &incremental);
            assert_eq!(
                key_maps(&apply(&state, &delta)),
                key_maps(&incremental),
                "{context}: delta"
            );
            for (pod, endpoint) in &incremental.endpoints {
                if let Some(old) = state.endpoints.get(pod) {
                    assert_eq!(
                        old.info.endpoint_id, endpoint.info.endpoint_id,
                        "{context}: endpoint id of {pod} moved"
                    );
                }
            }
            let old_ids: BTreeMap<_, _> = state.ids.classes.iter().collect();
            for (key, id) in &incremental.ids.classes {
                if let Some(old) = old_ids.get(key) {
                    assert_eq!(*old, id, "{context}: class id moved");
                }
            }
        }
    }
    run.tally
}

#[test]
fn compiled_state_agrees_with_the_reference_evaluator() {
    let tally = run(0x5eed_2026, 400, Mix::Any);
    assert!(tally.packets >= 20_000, "only {} packets", tally.packets);
    // The random mix must exercise both outcomes and isolation substantially.
    assert!(
        tally.allowed > tally.packets / 10,
        "allowed {} of {}",
        tally.allowed,
        tally.packets
    );
    assert!(
        tally.packets - tally.allowed > tally.packets / 10,
        "denied too rare"
    );
    assert!(
        tally.isolated > tally.packets / 5,
        "isolated {} of {}",
        tally.isolated,
        tally.packets
    );
}

#[test]
fn compiled_tiers_agree_with_the_reference_evaluator() {
    let tally = run(0x7135_2026, 400, Mix::Tiers);
    assert!(tally.packets >= 15_000, "only {} packets", tally.packets);
    assert!(
        tally.allowed > tally.packets / 10,
        "allowed {} of {}",
        tally.allowed,
        tally.packets
    );
    assert!(
        tally.packets - tally.allowed > tally.packets / 10,
        "denied too rare"
    );
}

#[test]
fn named_ports_behind_ip_blocks_agree_with_the_reference_evaluator() {
    let tally = run(0x0b10_c4a3, 500, Mix::NamesBehindBlocks);
    for direction in Direction::ALL {
        let count = tally.named_behind_blocks[direction as usize];
        assert!(
            count >= 100,
            "{direction:?}: only {count} packets allowed by a named port behind an ipBlock"
        );
    }
    assert!(
        tally.packets - tally.allowed > tally.packets / 10,
        "denied too rare"
    );
}
