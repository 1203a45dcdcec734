//! Maps that start empty while interfaces are managed.
//!
//! After a layout change (a map of a new name, or a pinned map replaced) the programs that
//! [`super::Datapath::open`] switches the pinned links to read maps no reconcile has filled yet,
//! and a miss in the endpoint map passes. So, before any link switches, every interface the
//! pinned links or the record say is managed gets an entry that drops all its traffic
//! (`ENDPOINT_NOT_READY`), and every slot of the endpoints-by-id map drops the deferred
//! Service traffic of its id. The first [`super::Datapath::sync`] reads these entries back as
//! the recorded pods' endpoints and writes the real state over them.
//!
//! Each held entry carries the endpoint id its interface had (from the endpoint map when it is
//! kept, else from the record), so the flows and counters kept under that id stay its own. A
//! recorded pod whose id is unknown (a record an older build wrote) gets an id no other held
//! entry has; that id is reported as reassigned, so its old flow state and counters are
//! dropped. An interface with links but no record is a held interface (endpoint id 0).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use policy_common::{
    maps::{ENDPOINT_NOT_READY, EndpointInfo, MAX_ENDPOINTS},
    names::{
        CONNTRACK_MAP, COUNTERS_MAP, ENDPOINTS_MAP, EVENTS_MAP, FRAGMENTS_MAP, UNCONFIRMED_MAP,
    },
};

use super::{
    DatapathError, Hook, Maps, bpffs::PinLayout, error::is_not_found, links, record::Record,
};

/// Maps that, empty, let nothing through that the policy denies: an empty connection or
/// fragment table only has flows decided again, and counters and events are telemetry. Any
/// other map starting empty holds the managed interfaces closed.
const EMPTY_IS_SAFE: [&str; 5] = [
    CONNTRACK_MAP,
    UNCONFIRMED_MAP,
    FRAGMENTS_MAP,
    COUNTERS_MAP,
    EVENTS_MAP,
];

/// What [`hold_closed`] did.
#[derive(Debug, Default)]
pub struct HeldClosed {
    /// The interfaces given a closed entry.
    pub interfaces: Vec<u32>,
    /// Ids given to endpoints whose own id was unknown: what was kept under them is stale.
    pub reassigned: BTreeSet<u32>,
}

/// An endpoint entry that drops every packet of its interface; with id 0 it is
/// [`super::HELD`].
pub fn closed(endpoint_id: u32) -> EndpointInfo {
    EndpointInfo {
        endpoint_id,
        flags: ENDPOINT_NOT_READY,
        ..EndpointInfo::default()
    }
}

/// Holds every managed interface closed when a map the programs decide by was created empty
/// (`created` names the maps that were).
pub fn hold_closed(
    maps: &mut Maps,
    layout: &PinLayout,
    record: &mut Record,
    state_file: &Path,
    created: &[String],
) -> Result<HeldClosed, DatapathError> {
    if created
        .iter()
        .all(|name| EMPTY_IS_SAFE.contains(&name.as_str()))
    {
        return Ok(HeldClosed::default());
    }
    let mut managed: BTreeSet<u32> = links::pinned_links(layout)?
        .into_iter()
        .filter(|(_, hook, _)| matches!(hook, Hook::FromPod | Hook::ToPod))
        .map(|(ifindex, _, _)| ifindex)
        .collect();
    managed.extend(record.endpoints.keys().copied());
    if managed.is_empty() {
        return Ok(HeldClosed::default());
    }

    let endpoint_map_kept = !created.iter().any(|name| name == ENDPOINTS_MAP);
    let mut ids: BTreeMap<u32, u32> = BTreeMap::new();
    // Which interface each id was given to first, to keep two pods from sharing one.
    let mut owners: BTreeMap<u32, u32> = BTreeMap::new();
    if endpoint_map_kept {
        for &ifindex in &managed {
            match maps.endpoints.get(&ifindex, 0) {
                Ok(info) if info.endpoint_id != 0 => {
                    ids.insert(ifindex, info.endpoint_id);
                    owners.entry(info.endpoint_id).or_insert(ifindex);
                }
                Ok(_) => {}
                Err(source) if is_not_found(&source) => {}
                Err(source) => return Err(DatapathError::HoldClosed { ifindex, source }),
            }
        }
    }
    for &ifindex in &managed {
        let Some(endpoint) = record.endpoints.get(&ifindex) else {
            continue;
        };
        let Some(id) = endpoint.endpoint_id else {
            continue;
        };
        // Two interfaces of one pod share its id (a move that a crash interrupted).
        let free = owners.get(&id).is_none_or(|other| {
            record
                .endpoints
                .get(other)
                .is_some_and(|owner| owner.pod == endpoint.pod)
        });
        if ids.contains_key(&ifindex) || !free || id == 0 || id >= MAX_ENDPOINTS {
            continue;
        }
        ids.insert(ifindex, id);
        owners.entry(id).or_insert(ifindex);
    }
    let mut reassigned = BTreeSet::new();
    let mut spare = (1..MAX_ENDPOINTS).filter(|id| !owners.contains_key(id));
    for &ifindex in &managed {
        if ids.contains_key(&ifindex) {
            continue;
        }
        let id = if record.endpoints.contains_key(&ifindex) {
            let id = spare
                .next()
                .ok_or(DatapathError::EndpointIdsExhausted { ifindex })?;
            reassigned.insert(id);
            id
        } else {
            0
        };
        ids.insert(ifindex, id);
    }

    // The record names every entry before the map holds it, with the id it holds.
    let mut record_changed = false;
    for (ifindex, endpoint) in &mut record.endpoints {
        let id = ids.get(ifindex).copied();
        if endpoint.endpoint_id != id {
            endpoint.endpoint_id = id;
            record_changed = true;
        }
    }
    if record_changed {
        record.save(state_file)?;
    }
    for (&ifindex, &id) in &ids {
        maps.endpoints
            .insert(&ifindex, &closed(id), 0)
            .map_err(|source| DatapathError::HoldClosed { ifindex, source })?;
    }
    for endpoint_id in 1..MAX_ENDPOINTS {
        maps.endpoint_ids
            .set(endpoint_id, &closed(endpoint_id), 0)
            .map_err(|source| DatapathError::HoldClosedId {
                endpoint_id,
                source,
            })?;
    }
    Ok(HeldClosed {
        interfaces: managed.into_iter().collect(),
        reassigned,
    })
}
