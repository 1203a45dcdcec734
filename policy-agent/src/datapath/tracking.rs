//! Maps of per-endpoint flow state (connection tracking, first-fragment verdicts): their keys
//! name an endpoint id, and their entries outlive the endpoint. When an id is freed its entries
//! are deleted, or the next pod given that id would inherit the flows of the pod that had it.

use std::collections::BTreeSet;

use aya::{
    Ebpf, Pod,
    maps::{HashMap, MapData, MapError},
};
use policy_common::{
    maps::{CtKey, FragKey},
    names::ENDPOINTS_MAP,
};
use tracing::info;

use super::{Datapath, DatapathError, UpdateError, sync, take_map};

/// A map key that belongs to one endpoint.
pub trait EndpointKey: Pod {
    fn endpoint_id(&self) -> u32;
}

impl EndpointKey for CtKey {
    fn endpoint_id(&self) -> u32 {
        self.endpoint_id
    }
}

impl EndpointKey for FragKey {
    fn endpoint_id(&self) -> u32 {
        self.endpoint_id
    }
}

/// One map of flow state, whatever its key and value types.
pub trait FlowMap: Send {
    fn name(&self) -> &'static str;

    /// Deletes every entry of an endpoint id `forget` holds; returns how many went.
    fn forget(&mut self, forget: &dyn Fn(u32) -> bool) -> Result<usize, MapError>;
}

struct Typed<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
}

impl<K: EndpointKey + Send, V: Pod + Send> FlowMap for Typed<K, V> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn forget(&mut self, forget: &dyn Fn(u32) -> bool) -> Result<usize, MapError> {
        // Collected first: deleting the key an iteration stands on restarts it from the top.
        let mut doomed = Vec::new();
        for key in self.map.keys() {
            let key = key?;
            if forget(key.endpoint_id()) {
                doomed.push(key);
            }
        }
        let mut removed = 0;
        for key in &doomed {
            match self.map.remove(key) {
                Ok(()) => removed += 1,
                // The LRU evicted it meanwhile.
                Err(error) if super::error::is_not_found(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(removed)
    }
}

/// Takes map `name` of the object as a flow map keyed by `K`.
pub fn take<K: EndpointKey + Send + 'static, V: Pod + Send + 'static>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<Box<dyn FlowMap>, DatapathError> {
    let map = take_map(ebpf, name)?
        .try_into()
        .map_err(|source| DatapathError::MapType { name, source })?;
    Ok(Box::new(Typed::<K, V> { name, map }))
}

impl Datapath {
    /// Deletes the flow state of every endpoint id `stale` holds and zeroes the counters of
    /// the ids in `reset`, once the program runs that may still write under those ids have
    /// finished. Every map is tried; returns how many entries went, and what failed.
    pub(super) fn forget_endpoint_ids(
        &mut self,
        stale: &dyn Fn(u32) -> bool,
        reset: &BTreeSet<u32>,
    ) -> (usize, Vec<UpdateError>) {
        sync::wait_for_packets_in_flight();
        let mut forgotten = 0;
        let mut failures = Vec::new();
        for map in &mut self.maps.flows {
            match map.forget(stale) {
                Ok(removed) => forgotten += removed,
                Err(source) => failures.push(UpdateError::ForgetFlows {
                    map: map.name(),
                    source,
                }),
            }
        }
        for &endpoint_id in reset {
            if let Err(failure) = self.reset_counters(endpoint_id) {
                failures.push(*failure);
            }
        }
        (forgotten, failures)
    }

    /// Deletes the flow state of every endpoint id that no endpoint entry holds (left by a
    /// crash between freeing an id and forgetting it, or by an older build) or that was just
    /// `reassigned`, and zeroes the counters of the reassigned ids.
    pub(super) fn forget_unused_ids(
        &mut self,
        reassigned: &BTreeSet<u32>,
    ) -> Result<usize, DatapathError> {
        let mut in_use = BTreeSet::new();
        for entry in self.maps.endpoints.iter() {
            let (_, info) = entry.map_err(|source| DatapathError::ReadMap {
                name: ENDPOINTS_MAP,
                source,
            })?;
            in_use.insert(info.endpoint_id);
        }
        let stale = |id: u32| !in_use.contains(&id) || reassigned.contains(&id);
        let (forgotten, failures) = self.forget_endpoint_ids(&stale, reassigned);
        if let Some(failure) = failures.into_iter().next() {
            return Err(DatapathError::ForgetUnused {
                source: Box::new(failure),
            });
        }
        if forgotten > 0 {
            info!(
                forgotten,
                "deleted the flow state of endpoint ids no endpoint holds"
            );
        }
        Ok(forgotten)
    }
}
