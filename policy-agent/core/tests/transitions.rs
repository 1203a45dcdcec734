//! Every delta applies without a moment in which a flow that both its states allow is denied, or
//! one that neither allows is allowed.
//!
//! The kernel reads an endpoint entry, then a peer class, then policy entries, and the agent
//! writes a delta one map entry at a time: a packet can read each of the three at a different
//! point of the update. These tests replay each delta write by write and check every flow
//! against every such torn read the datapath permits (none that spans a wait for packets in
//! flight), through the same lookup as the kernel.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use policy_common::{ports::probe_policy, verdict::Direction};
use policy_core::{
    manifest::{Loaded, load_text},
    policy::{
        lookup::Decision,
        resolve::resolve,
        state::{Delta, NodeState},
    },
};
use rand::{Rng as _, SeedableRng as _, seq::IndexedRandom as _};
use rand_chacha::ChaCha8Rng;

const NODE: &str = "node-1";
const TCP: u8 = 6;
const UDP: u8 = 17;
const PORTS: [(u8, u16); 3] = [(TCP, 80), (TCP, 81), (UDP, 80)];

/// Pods `x/a`, `x/b`, `y/a`, `y/b` on this node and `x/c`, `y/c` on another, with labels
/// the flips below change.
fn cluster(pod_labels: &[(&str, &str)], namespace_labels: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for (name, labels) in namespace_labels {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n---\n"
        ));
    }
    let pods = [
        ("x", "a", NODE, 10),
        ("x", "b", NODE, 11),
        ("y", "a", NODE, 20),
        ("y", "b", NODE, 21),
        ("x", "c", "node-2", 12),
        ("y", "c", "node-2", 22),
    ];
    for (namespace, name, node, host) in pods {
        let key = format!("{namespace}/{name}");
        let labels = pod_labels
            .iter()
            .find(|(pod, _)| *pod == key)
            .map_or("", |(_, labels)| labels);
        let separator = if labels.is_empty() { "" } else { ", " };
        text.push_str(&format!(
            "apiVersion: v1\nkind: Pod\n\
             metadata: {{name: {name}, namespace: {namespace}, labels: {{pod: {name}{separator}{labels}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{name: web, containerPort: 80}}]}}]}}\n\
             status: {{phase: Running, podIPs: [{{ip: 10.1.0.{host}}}, {{ip: \"fd00::{host}\"}}]}}\n---\n"
        ));
    }
    text
}

fn state(text: &str, previous: &NodeState) -> NodeState {
    let mut loaded = Loaded::default();
    load_text("cluster.yaml".as_ref(), text, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    resolve(&loaded.snapshot, NODE, previous).expect("resolves")
}

/// The maps after each write of `delta` applied to `old`, in the datapath's order, and the
/// positions (indexes into the states) before which the datapath waits for packets in flight.
fn replay(old: &NodeState, delta: &Delta) -> (Vec<NodeState>, BTreeSet<usize>) {
    let mut maps = old.clone();
    let mut states = vec![maps.clone()];
    let mut waits = BTreeSet::new();
    for (key, value) in &delta.policy_upserts {
        maps.policy.insert(*key, *value);
        states.push(maps.clone());
    }
    for (prefix, class) in &delta.peer_bridges {
        maps.peers.insert(*prefix, *class);
        states.push(maps.clone());
    }
    for endpoint in &delta.endpoint_upserts {
        maps.endpoints
            .insert(endpoint.pod.clone(), endpoint.clone());
        states.push(maps.clone());
    }
    if delta.needs_grace_period_after_endpoints() {
        waits.insert(states.len());
    }
    for (prefix, class) in &delta.peer_upserts {
        maps.peers.insert(*prefix, *class);
        states.push(maps.clone());
    }
    for prefix in &delta.peer_removals {
        maps.peers.remove(prefix);
        states.push(maps.clone());
    }
    if delta.needs_grace_period_after_peers() {
        waits.insert(states.len());
    }
    for key in &delta.policy_removals {
        maps.policy.remove(key);
        states.push(maps.clone());
    }
    for pod in &delta.endpoint_removals {
        maps.endpoints.remove(pod);
        states.push(maps.clone());
    }
    (states, waits)
}

/// Checks every flow of every endpoint both states have, at every torn read of the update: the
/// endpoint read after write `i`, the class after write `j >= i`, the policy entries after
/// write `k >= j`, for every such triple that no wait for packets in flight separates. Returns
/// how many torn reads were checked.
fn check_transition(old: &NodeState, new: &NodeState, what: &str) -> usize {
    let delta = Delta::between(old, new);
    let (states, waits) = replay(old, &delta);
    assert_eq!(
        states.last(),
        Some(&without_ids(new, old)),
        "{what}: replay ends at new"
    );
    let peers: Vec<IpAddr> = [10, 11, 12, 20, 21, 22, 99]
        .iter()
        .flat_map(|host| {
            [
                format!("10.1.0.{host}").parse().unwrap(),
                format!("fd00::{host}").parse().unwrap(),
            ]
        })
        .collect();
    // The last write a packet that read something after write `i` can still see.
    let horizon: Vec<usize> = (0..states.len())
        .map(|i| {
            waits
                .iter()
                .find(|&&wait| wait > i)
                .map_or(states.len() - 1, |wait| wait - 1)
        })
        .collect();
    let mut checked = 0;
    for pod in old
        .endpoints
        .keys()
        .filter(|pod| new.endpoints.contains_key(*pod))
    {
        let infos: Vec<_> = states
            .iter()
            .map(|state| state.endpoints[pod].info)
            .collect();
        for direction in Direction::ALL {
            for &peer in &peers {
                let classes: Vec<u32> = states.iter().map(|state| state.peer_class(peer)).collect();
                for (protocol, port) in PORTS {
                    let allows = |state: &NodeState| {
                        state
                            .decide(pod, direction, peer, protocol, port)
                            .is_some_and(Decision::allows)
                    };
                    let expected = allows(old);
                    if expected != allows(new) {
                        continue;
                    }
                    // Decisions by (endpoint entry, class), for every policy position.
                    let mut by_pair = HashMap::new();
                    for (i, (info, &last)) in infos.iter().zip(&horizon).enumerate() {
                        for (j, &class) in classes.iter().enumerate().take(last + 1).skip(i) {
                            let pair = (info.endpoint_id, info.flags, info.plan(direction), class);
                            let decisions = by_pair.entry(pair).or_insert_with(|| {
                                states
                                    .iter()
                                    .map(|state| {
                                        !info.isolated(direction)
                                            || probe_policy(
                                                info.endpoint_id,
                                                info.plan(direction),
                                                direction as u8,
                                                class,
                                                protocol,
                                                port,
                                                |key| state.policy.get(key).copied(),
                                            )
                                            .is_some()
                                    })
                                    .collect::<Vec<bool>>()
                            });
                            for (k, &decision) in
                                decisions.iter().enumerate().take(last + 1).skip(j)
                            {
                                checked += 1;
                                assert_eq!(
                                    decision,
                                    expected,
                                    "{what}: {pod} {direction:?} peer {peer} {protocol}/{port} is \
                                     {} before and after, but {} when the endpoint is read after \
                                     write {i}, the class after write {j} and the policy after \
                                     write {k} of {delta:#?}",
                                    verdict(expected),
                                    verdict(decision)
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    checked
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// `new` as the maps hold it: the allocations are the resolver's memory, not the maps'.
fn without_ids(new: &NodeState, old: &NodeState) -> NodeState {
    NodeState {
        ids: old.ids.clone(),
        rules: old.rules.clone(),
        ..new.clone()
    }
}

const NAMESPACES: [(&str, &str); 2] = [("x", "ns: x"), ("y", "ns: y")];

#[test]
fn a_peer_leaving_an_egress_class_while_its_client_opens() {
    // x/b may send only to namespace y; then x/b is no longer egress-isolated and y/a belongs
    // to no class: the allowed x/b -> y/a must stay allowed throughout.
    let base = cluster(&[], &NAMESPACES);
    let before = format!(
        "{base}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: egress-to-y, namespace: x}}\n\
         spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n\
         \x20 egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]\n"
    );
    let after = format!(
        "{base}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: a-talks-to-y-b, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n\
         \x20 egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: b-hears-x-b, namespace: y}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: b}}}}\n\
         \x20 ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: x}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    );
    let old = state(&before, &NodeState::default());
    let new = state(&after, &old);
    let delta = Delta::between(&old, &new);
    assert!(
        !delta.peer_bridges.is_empty(),
        "y/a changes class: {delta:#?}"
    );
    assert!(check_transition(&old, &new, "egress-to-y -> both-must-allow") > 0);
    assert!(check_transition(&new, &state(&before, &new), "and back") > 0);
}

/// Policies whose verdicts the random flips below move between, each written so that some
/// flows stay allowed across a flip while the peer classes behind them change.
const POLICIES: [&str; 6] = [
    // Ingress of x/a from pods labelled role=client, or from namespace y.
    "metadata: {name: a-from-clients, namespace: x}\n\
     spec:\n  podSelector: {matchLabels: {pod: a}}\n\
     \x20 ingress: [{from: [{podSelector: {matchLabels: {role: client}}}, {namespaceSelector: {matchLabels: {ns: y}}}]}]\n",
    // Ingress of x/a from flip=on pods anywhere, TCP 80 only.
    "metadata: {name: a-from-flipped, namespace: x}\n\
     spec:\n  podSelector: {matchLabels: {pod: a}}\n\
     \x20 ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {flip: on}}}], ports: [{port: 80}]}]\n",
    // Egress of y pods to namespaces labelled open=yes, and to 10.1.0.0/24 but for one address.
    "metadata: {name: y-egress, namespace: y}\n\
     spec:\n  podSelector: {}\n  policyTypes: [Egress]\n\
     \x20 egress:\n  - to: [{namespaceSelector: {matchLabels: {open: \"yes\"}}}]\n\
     \x20 - to: [{ipBlock: {cidr: 10.1.0.0/24, except: [10.1.0.11/32]}}]\n",
    // Ingress of y/b on the named port from role=client pods of x.
    "metadata: {name: b-web, namespace: y}\n\
     spec:\n  podSelector: {matchLabels: {pod: b}}\n\
     \x20 ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {role: client}}}], ports: [{port: web}]}]\n",
    // Ingress of x/b from anything in 10.1.0.0/16, TCP 80-81.
    "metadata: {name: b-range, namespace: x}\n\
     spec:\n  podSelector: {matchLabels: {pod: b}}\n\
     \x20 ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: 80, endPort: 81}]}]\n",
    // Deny-all ingress in y.
    "metadata: {name: y-deny, namespace: y}\n\
     spec:\n  podSelector: {}\n",
];

/// Random label, namespace-label and policy flips, each checked at every torn read.
#[test]
fn random_label_namespace_and_policy_flips_never_deny_what_both_sides_allow() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7a11);
    let pods = ["x/a", "x/b", "y/a", "y/b", "x/c", "y/c"];
    let pod_labels = ["role: client", "flip: on", "role: client, flip: on", ""];
    let namespace_labels = [
        ("x", ["ns: x", "ns: x, open: \"yes\""]),
        ("y", ["ns: y", "ns: y, open: \"yes\""]),
    ];
    let draw = |rng: &mut ChaCha8Rng| {
        let labels: Vec<(&str, &str)> = pods
            .iter()
            .map(|pod| (*pod, *pod_labels.choose(rng).unwrap()))
            .collect();
        let namespaces: Vec<(&str, &str)> = namespace_labels
            .iter()
            .map(|(name, choices)| (*name, *choices.choose(rng).unwrap()))
            .collect();
        let mut text = cluster(&labels, &namespaces);
        for policy in POLICIES {
            if rng.random_bool(0.6) {
                text.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n");
                text.push_str(policy);
                text.push_str("---\n");
            }
        }
        text
    };
    let mut old = state(&draw(&mut rng), &NodeState::default());
    let mut bridged = 0;
    let mut checked = 0;
    for flip in 0..60 {
        let new = state(&draw(&mut rng), &old);
        bridged += Delta::between(&old, &new).peer_bridges.len();
        checked += check_transition(&old, &new, &format!("flip {flip}"));
        old = new;
    }
    assert!(bridged > 0, "the flips change peer classes");
    assert!(checked > 0);
}
