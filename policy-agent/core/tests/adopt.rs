//! Adopting programmed state after a restart: on random clusters reached through a history of
//! incremental resolves, a fresh resolve adopting what the maps hold changes nothing when the
//! snapshot is the same, changes about what an incremental resolve would when it is not, decides
//! every packet as the reference evaluator does, and leaves ids later resolves keep.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use policy_common::verdict::Direction;
use policy_core::policy::{
    adopt::resolve_adopting,
    lookup::Decision,
    model::{
        ContainerPort, IpBlock, LabelSelector, Labels, Namespace, NamespaceScope, NetworkPolicy,
        Peer, Pod, PodPeer, PodPhase, PortSpec, PortValue, Protocol, Rule, Snapshot,
    },
    resolve::resolve,
    spec::evaluate,
    state::{Allocations, Delta, NodeState, PolicyRule, Prefix},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const NODES: [&str; 2] = ["node-1", "node-2"];
const NAMESPACES: [&str; 2] = ["a", "b"];
const APPS: [&str; 3] = ["web", "api", "db"];
const PORT_NAMES: [&str; 2] = ["http", "dns"];
const PORTS: [u16; 5] = [53, 80, 443, 8080, 9090];

fn app(rng: &mut StdRng) -> Labels {
    [("app".to_owned(), (*APPS.choose(rng).unwrap()).to_owned())]
        .into_iter()
        .collect()
}

fn selector(rng: &mut StdRng) -> LabelSelector {
    LabelSelector {
        match_labels: if rng.random_bool(0.25) {
            Labels::new()
        } else {
            app(rng)
        },
        match_expressions: Vec::new(),
    }
}

fn pod(rng: &mut StdRng, name: String, used: &mut BTreeSet<IpAddr>) -> Option<Pod> {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, rng.random_range(1..40)))];
    if rng.random_bool(0.3) {
        ips.push(IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            0,
            rng.random_range(1..40),
        )));
    }
    if ips.iter().any(|ip| used.contains(ip)) {
        return None;
    }
    used.extend(ips.iter().copied());
    let ports = (0..rng.random_range(0..3))
        .map(|_| ContainerPort {
            name: Some((*PORT_NAMES.choose(rng).unwrap()).to_owned()),
            protocol: *[Protocol::Tcp, Protocol::Udp].choose(rng).unwrap(),
            port: *PORTS.choose(rng).unwrap(),
        })
        .collect();
    Some(Pod {
        namespace: (*NAMESPACES.choose(rng).unwrap()).to_owned(),
        name,
        labels: app(rng),
        node: Some((*NODES.choose(rng).unwrap()).to_owned()),
        phase: PodPhase::Running,
        host_network: false,
        ips,
        ports,
    })
}

/// An ipBlock, often exactly one pod's address (its class then keeps no prefix of its own).
fn ip_block(rng: &mut StdRng, pods: &[Pod]) -> IpBlock {
    if let Some(pod) = pods.choose(rng)
        && rng.random_bool(0.4)
    {
        return IpBlock {
            cidr: Prefix::host(pod.ips[0]),
            except: Vec::new(),
        };
    }
    let cidr = Prefix::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
        *[8, 26, 27, 28].choose(rng).unwrap(),
    );
    let except = match pods.choose(rng) {
        Some(pod) if rng.random_bool(0.5) => vec![Prefix::host(pod.ips[0])],
        _ => Vec::new(),
    };
    IpBlock { cidr, except }
}

fn rule(rng: &mut StdRng, namespace: &str, pods: &[Pod]) -> Rule {
    let mut rule = Rule::default();
    for _ in 0..rng.random_range(0..3) {
        rule.peers.push(match rng.random_range(0..3) {
            0 => Peer::IpBlock(ip_block(rng, pods)),
            1 => Peer::Pods(PodPeer {
                namespaces: NamespaceScope::Own(namespace.to_owned()),
                pods: selector(rng),
            }),
            _ => Peer::Pods(PodPeer {
                namespaces: NamespaceScope::Selected(LabelSelector {
                    match_labels: [(
                        "team".to_owned(),
                        (*["x", "y"].choose(rng).unwrap()).to_owned(),
                    )]
                    .into_iter()
                    .collect(),
                    match_expressions: Vec::new(),
                }),
                pods: selector(rng),
            }),
        });
    }
    for _ in 0..rng.random_range(0..3) {
        let protocol = *[Protocol::Tcp, Protocol::Udp].choose(rng).unwrap();
        let (port, end_port) = match rng.random_range(0..4) {
            0 => (None, None),
            1 => (
                Some(PortValue::Name(
                    (*PORT_NAMES.choose(rng).unwrap()).to_owned(),
                )),
                None,
            ),
            2 => (Some(PortValue::Number(*PORTS.choose(rng).unwrap())), None),
            _ => {
                let first = *PORTS.choose(rng).unwrap();
                (Some(PortValue::Number(first)), Some(first + 20))
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

fn policy(rng: &mut StdRng, name: String, pods: &[Pod]) -> NetworkPolicy {
    let namespace = *NAMESPACES.choose(rng).unwrap();
    NetworkPolicy {
        namespace: namespace.to_owned(),
        name,
        pod_selector: selector(rng),
        policy_types: match rng.random_range(0..3) {
            0 => Vec::new(),
            1 => vec![Direction::Egress],
            _ => vec![Direction::Ingress, Direction::Egress],
        },
        ingress: (0..rng.random_range(0..3))
            .map(|_| rule(rng, namespace, pods))
            .collect(),
        egress: (0..rng.random_range(0..3))
            .map(|_| rule(rng, namespace, pods))
            .collect(),
    }
}

fn cluster(rng: &mut StdRng) -> Snapshot {
    let namespaces = NAMESPACES
        .iter()
        .map(|name| Namespace {
            name: (*name).to_owned(),
            labels: [(
                "team".to_owned(),
                (*["x", "y"].choose(rng).unwrap()).to_owned(),
            )]
            .into_iter()
            .collect(),
        })
        .collect();
    let mut used = BTreeSet::new();
    let pods: Vec<Pod> = (0..rng.random_range(4..14))
        .filter_map(|index| pod(rng, format!("pod-{index}"), &mut used))
        .collect();
    let policies = (0..rng.random_range(1..5))
        .map(|index| policy(rng, format!("policy-{index}"), &pods))
        .collect();
    Snapshot {
        namespaces,
        pods,
        policies,
        ..Snapshot::default()
    }
}

/// One change: a pod relabelled, replaced by a pod of the same labels at a new address (a
/// rollout), removed or added, or a policy rewritten.
fn mutate(snapshot: &Snapshot, rng: &mut StdRng, step: usize) -> Snapshot {
    let mut next = snapshot.clone();
    let mut used: BTreeSet<IpAddr> = next.pods.iter().flat_map(|p| p.ips.clone()).collect();
    let index = rng.random_range(0..next.pods.len().max(1));
    match rng.random_range(0..5) {
        0 if index < next.pods.len() => next.pods[index].labels = app(rng),
        1 if index < next.pods.len() => {
            if let Some(mut replacement) = pod(rng, format!("rolled-{step}"), &mut used) {
                let old = &next.pods[index];
                replacement.namespace = old.namespace.clone();
                replacement.labels = old.labels.clone();
                replacement.node = old.node.clone();
                replacement.ports = old.ports.clone();
                next.pods[index] = replacement;
            }
        }
        2 if index < next.pods.len() => {
            next.pods.remove(index);
        }
        3 => {
            if let Some(added) = pod(rng, format!("added-{step}"), &mut used) {
                next.pods.push(added);
            }
        }
        _ => {
            let index = rng.random_range(0..next.policies.len());
            let name = next.policies[index].name.clone();
            next.policies[index] = policy(rng, name, &snapshot.pods);
        }
    }
    next
}

/// What the datapath reads back from the maps: everything but the allocations.
fn read_back(state: &NodeState) -> NodeState {
    NodeState {
        ids: Allocations::default(),
        ..state.clone()
    }
}

/// Checks `state` against the reference evaluator on random packets; returns the packet count.
fn check_semantics(snapshot: &Snapshot, state: &NodeState, node: &str, rng: &mut StdRng) -> usize {
    let endpoints: Vec<&Pod> = snapshot
        .pods
        .iter()
        .filter(|p| p.is_endpoint_of(node))
        .collect();
    assert_eq!(endpoints.len(), state.endpoints.len());
    if endpoints.is_empty() {
        return 0;
    }
    let mut addresses: Vec<IpAddr> = snapshot.pods.iter().flat_map(|p| p.ips.clone()).collect();
    addresses.extend(
        ["10.0.0.63", "10.0.0.200", "8.8.8.8", "fd00::3f"].map(|a| a.parse::<IpAddr>().unwrap()),
    );
    let count = 40;
    for _ in 0..count {
        let pod = *endpoints.choose(rng).unwrap();
        let direction = *Direction::ALL.choose(rng).unwrap();
        let peer = *addresses.choose(rng).unwrap();
        let protocol = *[6u8, 17].choose(rng).unwrap();
        let port = PORTS.choose(rng).unwrap() + rng.random_range(0..3);
        let reference = evaluate(snapshot, pod, direction, peer, protocol, port);
        let decision = state
            .decide(&pod.pod_ref(), direction, peer, protocol, port)
            .unwrap();
        assert_eq!(
            decision.allows(),
            reference.allows(),
            "{} {direction:?} {peer} {protocol}/{port}\n{}",
            pod.pod_ref(),
            state.render()
        );
        if let Decision::Allowed { rule_id } = decision {
            assert!(matches!(
                &state.rules[&rule_id],
                PolicyRule::Network(rule) if reference.allowing.contains(rule)
            ));
        }
    }
    count
}

/// Ids are what later resolves rely on: no two classes, endpoints or rules share one.
fn check_ids_distinct(state: &NodeState) {
    let classes: BTreeSet<u32> = state.ids.classes.values().copied().collect();
    assert_eq!(classes.len(), state.ids.classes.len(), "class ids collide");
    let endpoints: BTreeSet<u32> = state
        .endpoints
        .values()
        .map(|e| e.info.endpoint_id)
        .collect();
    assert_eq!(
        endpoints.len(),
        state.endpoints.len(),
        "endpoint ids collide"
    );
    let in_maps: BTreeSet<u32> = state.peers.values().copied().collect();
    assert!(
        in_maps.iter().all(|id| *id == 0 || classes.contains(id)),
        "a prefix names a class the allocations do not know"
    );
}

/// A history A, B, C of incremental resolves; then the restart: a fresh resolve of C adopting
/// what C's maps hold. Then D, either way.
#[test]
fn adopting_after_a_history_reprograms_nothing_and_then_only_the_change() {
    let mut rng = StdRng::seed_from_u64(0xad0_2026);
    let mut packets = 0;
    let (mut changes, mut adopted_changes, mut unadopted_changes) = (0, 0, 0);
    let mut prefix_less_classes = 0;
    let mut unadopted_same = 0;
    for round in 0..300 {
        let a = cluster(&mut rng);
        let b = mutate(&a, &mut rng, 1);
        let c = mutate(&b, &mut rng, 2);
        let d = mutate(&c, &mut rng, 3);
        for node in NODES {
            let context = format!("round {round} {node}");
            let mut incremental = NodeState::default();
            for snapshot in [&a, &b, &c] {
                incremental = resolve(snapshot, node, &incremental).unwrap();
            }
            let programmed = read_back(&incremental);
            prefix_less_classes += incremental
                .ids
                .classes
                .values()
                .filter(|id| !incremental.peers.values().any(|class| class == *id))
                .count();

            let adopted = resolve_adopting(&c, node, &programmed).unwrap();
            unadopted_same +=
                Delta::between(&programmed, &resolve(&c, node, &programmed).unwrap()).len();
            let delta = Delta::between(&programmed, &adopted);
            assert!(
                delta.is_empty(),
                "{context}: {delta:#?}\nprogrammed:\n{}\nadopted:\n{}",
                incremental.render(),
                adopted.render()
            );
            packets += check_semantics(&c, &adopted, node, &mut rng);
            check_ids_distinct(&adopted);

            // The next resolve keeps the adopted ids and changes what an uninterrupted agent's
            // would.
            let after_adopted = resolve(&d, node, &adopted).unwrap();
            let after_incremental = resolve(&d, node, &incremental).unwrap();
            assert_eq!(
                Delta::between(&adopted, &after_adopted).len(),
                Delta::between(&incremental, &after_incremental).len(),
                "{context}: the resolve after adopting"
            );
            for (key, id) in &after_adopted.ids.classes {
                if let Some(kept) = adopted.ids.classes.get(key) {
                    assert_eq!(kept, id, "{context}: a class id moved");
                }
            }
            packets += check_semantics(&d, &after_adopted, node, &mut rng);
            check_ids_distinct(&after_adopted);

            // Restarted while D was already the snapshot.
            let adopted_d = resolve_adopting(&d, node, &programmed).unwrap();
            packets += check_semantics(&d, &adopted_d, node, &mut rng);
            check_ids_distinct(&adopted_d);
            changes += Delta::between(&incremental, &after_incremental).len();
            adopted_changes += Delta::between(&programmed, &adopted_d).len();
            unadopted_changes +=
                Delta::between(&programmed, &resolve(&d, node, &programmed).unwrap()).len();
        }
    }
    println!(
        "{packets} packets; {prefix_less_classes} classes without a prefix; map operations for \
         C without adopting {unadopted_same}; for D: incremental {changes}, adopting \
         {adopted_changes}, without adopting {unadopted_changes}"
    );
    assert!(unadopted_same > 1000, "{unadopted_same}");
    assert!(packets > 20_000);
    assert!(prefix_less_classes > 20, "{prefix_less_classes}");
    assert!(changes > 1000, "{changes}");
    assert!(
        adopted_changes * 10 <= changes * 12,
        "adopting D costs {adopted_changes} map operations, the incremental resolve {changes}"
    );
    assert!(unadopted_changes * 10 > adopted_changes * 15);
}
