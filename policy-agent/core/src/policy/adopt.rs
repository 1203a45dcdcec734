//! Resolving against the state the maps already hold, after a restart lost the in-memory state.
//!
//! What the maps give back has endpoint ids (by pod) and rule ids (by rule), so [`resolve`] keeps
//! those as it does for any previous state. Peer classes come back only as ids: what each stands
//! for (its [`ClassKey`]) is not in the maps. So the classes of a fresh resolve are matched to the
//! programmed ones by what the maps show of them, and renamed to the programmed ids:
//! - by address: a class and a programmed class whose common prefixes all go to each other (equal
//!   prefix sets are the usual case; a class that gained or lost a prefix still matches);
//! - by entries: of the classes left that share no prefix with any class of the other side (say,
//!   a class whose only address changed, or one whose prefixes a pod's host prefix replaced), a
//!   class and a programmed class with the same policy entries.
//!
//! Renaming is one to one, so the result decides every packet as the fresh resolve does; classes
//! without a match get ids neither state uses.

use std::collections::{BTreeMap, BTreeSet};

use policy_common::maps::{ANY_PEER_CLASS, PolicyKey, WORLD_CLASS};

use crate::policy::{
    model::Snapshot,
    resolve::{ResolveError, next_free, resolve},
    state::{Allocations, NodeState},
};

/// Resolves the desired state of `node` with the ids `programmed` (the state read back from the
/// maps, whose [`Allocations`] are unknown) already uses for the same endpoints, rules and
/// peer classes, so that an unchanged snapshot gives an empty [`crate::policy::state::Delta`].
/// The result carries complete [`Allocations`] for later incremental resolves.
pub fn resolve_adopting(
    snapshot: &Snapshot,
    node: &str,
    programmed: &NodeState,
) -> Result<NodeState, ResolveError> {
    let classes = class_ids(programmed);
    let previous = NodeState {
        endpoints: programmed.endpoints.clone(),
        rules: programmed.rules.clone(),
        ids: Allocations {
            classes: BTreeMap::new(),
            next_class: after(classes.iter().copied()),
            next_endpoint: after(programmed.endpoints.values().map(|e| e.info.endpoint_id)),
            next_rule: after(programmed.rules.keys().copied()),
        },
        ..NodeState::default()
    };
    let desired = resolve(snapshot, node, &previous)?;
    let renames = match_classes(&desired, programmed, &classes, previous.ids.next_class)?;
    Ok(rename_classes(desired, &renames))
}

/// Every peer class id a state's maps use, but the world class and the any-peer wildcard.
fn class_ids(state: &NodeState) -> BTreeSet<u32> {
    state
        .peers
        .values()
        .copied()
        .chain(state.policy.keys().map(|key| key.peer_class))
        .chain(state.ids.classes.values().copied())
        .filter(|id| *id != WORLD_CLASS && *id != ANY_PEER_CLASS)
        .collect()
}

/// The counter position after the highest of `ids`, so new ids follow the ones in use.
fn after(ids: impl Iterator<Item = u32>) -> u32 {
    ids.max().map_or(1, |id| id.wrapping_add(1))
}

/// The programmed id (or a new one) of every class of `desired`, by its id in `desired`.
fn match_classes(
    desired: &NodeState,
    programmed: &NodeState,
    programmed_classes: &BTreeSet<u32>,
    mut next_class: u32,
) -> Result<BTreeMap<u32, u32>, ResolveError> {
    // Which classes hold each prefix both states have, seen from either side.
    let mut desired_to: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    let mut programmed_to: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (prefix, desired_class) in &desired.peers {
        if let Some(programmed_class) = programmed.peers.get(prefix) {
            desired_to
                .entry(*desired_class)
                .or_default()
                .insert(*programmed_class);
            programmed_to
                .entry(*programmed_class)
                .or_default()
                .insert(*desired_class);
        }
    }

    let mut renames: BTreeMap<u32, u32> = BTreeMap::new();
    for (desired_class, related) in &desired_to {
        let mut related = related.iter().copied();
        if let (Some(programmed_class), None) = (related.next(), related.next())
            && *desired_class != WORLD_CLASS
            && programmed_class != WORLD_CLASS
            && programmed_to[&programmed_class].len() == 1
        {
            renames.insert(*desired_class, programmed_class);
        }
    }

    let desired_entries = entries_by_class(desired);
    let mut programmed_entries = entries_by_class(programmed);
    let mut unmatched_by_entries: BTreeMap<Vec<(PolicyKey, u32)>, Vec<u32>> = BTreeMap::new();
    for class in programmed_classes.iter().rev() {
        if !programmed_to.contains_key(class) {
            unmatched_by_entries
                .entry(programmed_entries.remove(class).unwrap_or_default())
                .or_default()
                .push(*class);
        }
    }
    let desired_classes: BTreeSet<u32> = desired.ids.classes.values().copied().collect();
    let mut fresh = Vec::new();
    for class in &desired_classes {
        if renames.contains_key(class) {
            continue;
        }
        let entries = desired_entries.get(class).cloned().unwrap_or_default();
        let candidate = if desired_to.contains_key(class) {
            None
        } else {
            unmatched_by_entries.get_mut(&entries).and_then(Vec::pop)
        };
        match candidate {
            Some(programmed_class) => {
                renames.insert(*class, programmed_class);
            }
            None => fresh.push(*class),
        }
    }

    let mut in_use: BTreeSet<u32> = renames.values().copied().collect();
    for class in fresh {
        let id = next_free(
            &mut next_class,
            ANY_PEER_CLASS,
            |id| in_use.contains(&id),
            |id| programmed_classes.contains(&id),
        )
        .ok_or(ResolveError::IdsExhausted { what: "peer class" })?;
        in_use.insert(id);
        renames.insert(class, id);
    }
    Ok(renames)
}

/// Each class's policy entries with the class left out of the key, sorted.
fn entries_by_class(state: &NodeState) -> BTreeMap<u32, Vec<(PolicyKey, u32)>> {
    let mut entries: BTreeMap<u32, Vec<(PolicyKey, u32)>> = BTreeMap::new();
    for (key, value) in &state.policy {
        let anonymous = PolicyKey {
            peer_class: WORLD_CLASS,
            ..*key
        };
        entries
            .entry(key.peer_class)
            .or_default()
            .push((anonymous, value.rule_id));
    }
    entries
}

/// `state` with every class id renamed through `renames` (which covers every class but the
/// world class and the any-peer wildcard, which keep their ids).
fn rename_classes(mut state: NodeState, renames: &BTreeMap<u32, u32>) -> NodeState {
    let rename = |id: u32| renames.get(&id).copied().unwrap_or(id);
    for class in state.peers.values_mut() {
        *class = rename(*class);
    }
    state.policy = std::mem::take(&mut state.policy)
        .into_iter()
        .map(|(key, value)| {
            let key = PolicyKey {
                peer_class: rename(key.peer_class),
                ..key
            };
            (key, value)
        })
        .collect();
    for class in state.ids.classes.values_mut() {
        *class = rename(*class);
    }
    state
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy::{
        model::{IpBlock, LabelSelector, NamespaceScope, NetworkPolicy, Peer, Pod, PodPeer, Rule},
        state::{Delta, Prefix},
    };

    fn app(app: &str) -> LabelSelector {
        LabelSelector {
            match_labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
            match_expressions: Vec::new(),
        }
    }

    fn pod(name: &str, ip: &str, app: &str, node: &str) -> Pod {
        Pod {
            namespace: "ns".to_owned(),
            name: name.to_owned(),
            labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
            node: Some(node.to_owned()),
            phase: crate::policy::model::PodPhase::Running,
            host_network: false,
            ips: vec![ip.parse().unwrap()],
            ports: Vec::new(),
        }
    }

    fn from_app(name: &str, apps: &[&str], blocks: &[&str]) -> NetworkPolicy {
        let pods = apps.iter().map(|name| {
            Peer::Pods(PodPeer {
                namespaces: NamespaceScope::Own("ns".to_owned()),
                pods: app(name),
            })
        });
        let blocks = blocks.iter().map(|cidr| {
            Peer::IpBlock(IpBlock {
                cidr: cidr.parse().unwrap(),
                except: Vec::new(),
            })
        });
        NetworkPolicy {
            namespace: "ns".to_owned(),
            name: name.to_owned(),
            pod_selector: app("server"),
            policy_types: Vec::new(),
            ingress: pods
                .chain(blocks)
                .map(|peer| Rule {
                    peers: vec![peer],
                    ports: Vec::new(),
                })
                .collect(),
            egress: Vec::new(),
        }
    }

    fn read_back(state: &NodeState) -> NodeState {
        NodeState {
            ids: Allocations::default(),
            ..state.clone()
        }
    }

    fn class_of(state: &NodeState, ip: &str) -> u32 {
        state.peer_class(ip.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn an_unchanged_snapshot_keeps_every_id_even_of_a_class_without_prefixes() {
        // The ipBlock is exactly the client's address: the client's host prefix replaces it, so
        // the class of the ipBlock alone has policy entries but no prefix.
        let mut snapshot = Snapshot {
            pods: vec![
                pod("server", "10.0.0.1", "server", "node-1"),
                pod("client", "10.0.0.2", "client", "node-2"),
                pod("other", "10.0.0.3", "other", "node-2"),
            ],
            policies: vec![
                from_app("early", &["other"], &[]),
                from_app("p", &["client"], &["10.0.0.2/32"]),
            ],
            ..Snapshot::default()
        };
        let first = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        snapshot.policies.remove(0);
        let running = resolve(&snapshot, "node-1", &first).unwrap();
        assert!(
            running
                .ids
                .classes
                .values()
                .any(|id| !running.peers.values().any(|class| class == id))
        );

        // Without adopting, the classes would be numbered afresh.
        let fresh = resolve(&snapshot, "node-1", &read_back(&running)).unwrap();
        assert_ne!(fresh.ids.classes, running.ids.classes);

        let adopted = resolve_adopting(&snapshot, "node-1", &read_back(&running)).unwrap();
        assert_eq!(Delta::between(&running, &adopted), Delta::default());
        assert_eq!(adopted.ids.classes, running.ids.classes);
        assert_eq!(adopted.rules, running.rules);
    }

    #[test]
    fn a_replaced_pod_keeps_its_class_and_a_new_class_takes_an_unused_id() {
        let mut snapshot = Snapshot {
            pods: vec![
                pod("server", "10.0.0.1", "server", "node-1"),
                pod("client-a", "10.0.0.2", "client", "node-2"),
                pod("other", "10.0.0.3", "other", "node-2"),
            ],
            policies: vec![from_app("p", &["client", "other", "third"], &[])],
            ..Snapshot::default()
        };
        let running = resolve(&snapshot, "node-1", &NodeState::default()).unwrap();
        let programmed = read_back(&running);

        snapshot.pods[1] = pod("client-b", "10.0.0.4", "client", "node-2");
        snapshot
            .pods
            .push(pod("third", "10.0.0.5", "third", "node-2"));
        let adopted = resolve_adopting(&snapshot, "node-1", &programmed).unwrap();
        assert_eq!(
            class_of(&adopted, "10.0.0.4"),
            class_of(&running, "10.0.0.2")
        );
        assert_eq!(
            class_of(&adopted, "10.0.0.3"),
            class_of(&running, "10.0.0.3")
        );
        let third = class_of(&adopted, "10.0.0.5");
        assert_ne!(third, WORLD_CLASS);
        assert!(!class_ids(&programmed).contains(&third));

        let delta = Delta::between(&programmed, &adopted);
        let prefix = |text: &str| text.parse::<Prefix>().unwrap();
        assert_eq!(
            delta.peer_upserts,
            [
                (prefix("10.0.0.4/32"), class_of(&running, "10.0.0.2")),
                (prefix("10.0.0.5/32"), third)
            ]
        );
        assert_eq!(delta.peer_removals, [prefix("10.0.0.2/32")]);
        // Besides the entries of the bridge classes that carry the moved prefixes, which the
        // same delta removes again, one entry is new: the new class's.
        let bridges: BTreeSet<u32> = delta.peer_bridges.iter().map(|(_, class)| *class).collect();
        let lasting = |key: &PolicyKey| !bridges.contains(&key.peer_class);
        assert_eq!(
            delta
                .policy_upserts
                .iter()
                .filter(|(key, _)| lasting(key))
                .count(),
            1
        );
        assert!(!delta.policy_removals.iter().any(lasting) && delta.endpoint_upserts.is_empty());
    }
}
