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
