//! Map synchronisation: applying deltas, reading back what is programmed, and host addresses.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{HashMap, MapData, MapError, PerCpuValues};
use policy_common::{
    maps::{Counter, ENDPOINT_NOT_READY, EndpointInfo, HostAddrKey, PeerClass, counter_index},
    verdict::{Direction, OUTCOMES},
};
use tracing::{debug, error, info, warn};

use super::{
    ApplyError, Datapath, DatapathError, UpdateError,
    encode::{self, PeerKey},
    error::is_not_found,
    hold,
    record::EndpointRecord,
};
use crate::policy::state::{Delta, EndpointState, NodeState, PodRef, PolicyRule, Prefix};

/// What one update wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Map entries written or removed.
    pub writes: usize,
}

fn isolated(info: &EndpointInfo) -> bool {
    info.flags
        & (policy_common::maps::ENDPOINT_INGRESS_ISOLATED
            | policy_common::maps::ENDPOINT_EGRESS_ISOLATED)
        != 0
}

/// How the endpoint map differs from what was programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointDifference {
    /// A programmed endpoint's entry is not there.
    Missing { pod: PodRef, ifindex: u32 },
    /// A programmed endpoint's entry holds something else.
    Changed {
        pod: PodRef,
        ifindex: u32,
        found: EndpointInfo,
    },
    /// An entry that no programmed endpoint or held interface accounts for.
    Stale { ifindex: u32, found: EndpointInfo },
}

/// Which endpoints must deny all traffic after failed writes.
#[derive(Default)]
struct Fence {
    /// Every isolated endpoint (a peer prefix is wrong).
    all_isolated: bool,
    endpoint_ids: BTreeSet<u32>,
}

impl Fence {
    fn applies(&self, info: &EndpointInfo) -> bool {
        (self.all_isolated && isolated(info)) || self.endpoint_ids.contains(&info.endpoint_id)
    }
}

impl Datapath {
    /// Writes `delta` to the maps in the order of its phases ([`Delta`]), waiting for the packets
    /// in flight where the phases need it. `ifindex_of` gives the host-side interface of each
    /// upserted pod. Every write is attempted; failures are collected, and the endpoints they
    /// could open up are fenced (module documentation).
    pub fn apply(
        &mut self,
        delta: &Delta,
        ifindex_of: impl Fn(&PodRef) -> Option<u32>,
    ) -> Result<ApplyStats, ApplyError> {
        let mut stats = ApplyStats::default();
        let mut failures = Vec::new();
        let mut fence = Fence::default();
        let mut fenced = Vec::new();
        let mut freed = BTreeSet::new();
        debug!(
            policy_upserts = delta.policy_upserts.len(),
            peer_bridges = delta.peer_bridges.len(),
            endpoint_upserts = delta.endpoint_upserts.len(),
            peer_upserts = delta.peer_upserts.len(),
            peer_removals = delta.peer_removals.len(),
            policy_removals = delta.policy_removals.len(),
            endpoint_removals = delta.endpoint_removals.len(),
            "applying delta"
        );

        for (key, value) in &delta.policy_upserts {
            match self.maps.policy.insert(key, value, 0) {
                Ok(()) => stats.writes += 1,
                Err(source) => {
                    fence.endpoint_ids.insert(key.endpoint_id);
                    failures.push(UpdateError::PolicyUpsert { key: *key, source });
                }
            }
        }

        for &(prefix, class) in &delta.peer_bridges {
            match self.write_peer(prefix, Some(class)) {
                Ok(()) => stats.writes += 1,
                Err(failure) => {
                    fence.all_isolated = true;
                    failures.push(*failure);
                }
            }
        }

        // The record learns each endpoint before the map does, so a restart can always name
        // what the endpoint map holds.
        let mut targets = Vec::new();
        for endpoint in &delta.endpoint_upserts {
            let Some(ifindex) = ifindex_of(&endpoint.pod) else {
                failures.push(UpdateError::NoInterface {
                    pod: endpoint.pod.clone(),
                });
                continue;
            };
            let previous = self
                .record
                .ifindex_of(&endpoint.pod)
                .filter(|&previous| previous != ifindex);
            self.record.endpoints.insert(
                ifindex,
                EndpointRecord {
                    pod: endpoint.pod.clone(),
                    ips: endpoint.ips.clone(),
                    endpoint_id: Some(endpoint.info.endpoint_id),
                },
            );
            targets.push((ifindex, endpoint, previous));
        }
        if !targets.is_empty()
            && let Err(failure) = self.record.save(&self.config.state_file)
        {
            failures.push(failure.into());
        }
        for (ifindex, endpoint, previous) in targets {
            let mut info = endpoint.info;
            let fencing = fence.applies(&info);
            if fencing {
                info.flags |= ENDPOINT_NOT_READY;
            }
            match self.maps.endpoints.insert(&ifindex, &info, 0) {
                Ok(()) => {
                    stats.writes += 1;
                    if fencing {
                        fenced.push(endpoint.pod.clone());
                    }
                    match self.write_endpoint_id(info.endpoint_id, &info) {
                        Ok(()) => stats.writes += 1,
                        Err(failure) => failures.push(*failure),
                    }
                }
                Err(source) => failures.push(UpdateError::EndpointUpsert {
                    pod: endpoint.pod.clone(),
                    ifindex,
                    source,
                }),
            }
            if let Some(previous) = previous {
                match self.remove_endpoint_entry(previous, &endpoint.pod, &mut freed) {
                    Ok(removed) => stats.writes += removed,
                    Err(failure) => failures.push(*failure),
                }
                self.record.endpoints.remove(&previous);
            }
        }

        if delta.needs_grace_period_after_endpoints() {
            wait_for_packets_in_flight();
        }
        for &(prefix, class) in &delta.peer_upserts {
            match self.write_peer(prefix, Some(class)) {
                Ok(()) => stats.writes += 1,
                Err(failure) => {
                    fence.all_isolated = true;
                    failures.push(*failure);
                }
            }
        }
        for &prefix in &delta.peer_removals {
            match self.write_peer(prefix, None) {
                Ok(()) => stats.writes += 1,
                Err(failure) => {
                    fence.all_isolated = true;
                    failures.push(*failure);
                }
            }
        }

        if delta.needs_grace_period_after_peers() {
            wait_for_packets_in_flight();
        }
        for key in &delta.policy_removals {
            match self.maps.policy.remove(key) {
                Ok(()) => stats.writes += 1,
                Err(source) if is_not_found(&source) => {}
                Err(source) => {
                    fence.endpoint_ids.insert(key.endpoint_id);
                    failures.push(UpdateError::PolicyRemoval { key: *key, source });
                }
            }
        }

        let mut record_changed = false;
        for pod in &delta.endpoint_removals {
            let Some(ifindex) = self.record.ifindex_of(pod) else {
                continue;
            };
            match self.remove_endpoint_entry(ifindex, pod, &mut freed) {
                Ok(removed) => {
                    stats.writes += removed;
                    self.record.endpoints.remove(&ifindex);
                    record_changed = true;
                }
                Err(failure) => failures.push(*failure),
            }
        }
        if record_changed && let Err(failure) = self.record.save(&self.config.state_file) {
            failures.push(failure.into());
        }
        if !freed.is_empty() {
            let (_, forget_failures) = self.forget_endpoint_ids(&|id| freed.contains(&id), &freed);
            failures.extend(forget_failures);
        }

        if fence.all_isolated || !fence.endpoint_ids.is_empty() {
            self.fence_others(&fence, &mut stats, &mut failures, &mut fenced);
        }
        if failures.is_empty() {
            debug!(writes = stats.writes, "delta applied");
            Ok(stats)
        } else {
            for pod in &fenced {
                error!(%pod, "endpoint denies all traffic after a failed map update");
            }
            Err(ApplyError { failures, fenced })
        }
    }

    /// Fences every endpoint in the map that a failure concerns and that does not deny all
    /// traffic yet (including endpoints this update wrote before a later step failed).
    fn fence_others(
        &mut self,
        fence: &Fence,
        stats: &mut super::ApplyStats,
        failures: &mut Vec<UpdateError>,
        fenced: &mut Vec<PodRef>,
    ) {
        let entries: Vec<(u32, EndpointInfo)> = self
            .maps
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, info)| info.flags & ENDPOINT_NOT_READY == 0 && fence.applies(info))
            .collect();
        for (ifindex, mut info) in entries {
            let pod = self
                .record
                .endpoints
                .get(&ifindex)
                .map(|record| record.pod.clone())
                .unwrap_or_else(|| PodRef {
                    namespace: String::new(),
                    name: format!("ifindex {ifindex}"),
                });
            info.flags |= ENDPOINT_NOT_READY;
            match self.maps.endpoints.insert(&ifindex, &info, 0) {
                Ok(()) => {
                    stats.writes += 1;
                    fenced.push(pod);
                    if let Err(failure) = self.write_endpoint_id(info.endpoint_id, &info) {
                        failures.push(*failure);
                    }
                }
                Err(source) => failures.push(UpdateError::Fence {
                    pod,
                    ifindex,
                    source,
                }),
            }
        }
    }

    /// Writes slot `endpoint_id` of the endpoints-by-id map: `info`, or an empty slot.
    fn write_endpoint_id(
        &mut self,
        endpoint_id: u32,
        info: &EndpointInfo,
    ) -> Result<(), Box<UpdateError>> {
        self.maps
            .endpoint_ids
            .set(endpoint_id, info, 0)
            .map_err(|source| {
                Box::new(UpdateError::EndpointIdWrite {
                    endpoint_id,
                    source,
                })
            })
    }

    /// Zeroes the counters of a freed endpoint id, so the pod that gets the id next starts
    /// from zero.
    pub(super) fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), Box<UpdateError>> {
        let cpus_error = |source| {
            Box::new(UpdateError::CounterCpus {
                endpoint_id,
                source,
            })
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| cpus_error(source))?;
        for direction in Direction::ALL {
            for outcome in 0..OUTCOMES as u8 {
                let zero = PerCpuValues::try_from(vec![Counter::default(); cpus.get() as usize])
                    .map_err(cpus_error)?;
                self.maps
                    .counters
                    .set(counter_index(endpoint_id, direction, outcome), zero, 0)
                    .map_err(|source| {
                        Box::new(UpdateError::CounterReset {
                            endpoint_id,
                            source,
                        })
                    })?;
            }
        }
        Ok(())
    }

    /// Removes the endpoint entry of `ifindex` and, unless another entry still holds its
    /// endpoint id, empties the id's slot in the endpoints-by-id map and adds the id to `freed`,
    /// whose flow state and counters the caller must then forget.
    fn remove_endpoint_entry(
        &mut self,
        ifindex: u32,
        pod: &PodRef,
        freed: &mut BTreeSet<u32>,
    ) -> Result<usize, Box<UpdateError>> {
        let removed_id = self
            .maps
            .endpoints
            .get(&ifindex, 0)
            .ok()
            .map(|info| info.endpoint_id);
        match self.maps.endpoints.remove(&ifindex) {
            Ok(()) => {
                let Some(endpoint_id) = removed_id else {
                    return Ok(1);
                };
                let still_used = self
                    .maps
                    .endpoints
                    .iter()
                    .filter_map(Result::ok)
                    .any(|(_, info)| info.endpoint_id == endpoint_id);
                if still_used {
                    return Ok(1);
                }
                self.write_endpoint_id(endpoint_id, &EndpointInfo::default())?;
                if endpoint_id != hold::HELD.endpoint_id {
                    freed.insert(endpoint_id);
                }
                Ok(2)
            }
            Err(source) if is_not_found(&source) => Ok(0),
            Err(source) => Err(Box::new(UpdateError::EndpointRemoval {
                pod: pod.clone(),
                ifindex,
                source,
            })),
        }
    }

    /// Writes (`Some(class)`) or removes (`None`) one prefix of the peer tries.
    fn write_peer(&mut self, prefix: Prefix, class: Option<u32>) -> Result<(), Box<UpdateError>> {
        let key = encode::peer_key(&prefix).ok_or(UpdateError::InvalidPrefix {
            prefix,
            len: prefix.len,
        })?;
        let result = match (key, class) {
            (PeerKey::V4(key), Some(id)) => self.maps.peers_v4.insert(&key, &PeerClass { id }, 0),
            (PeerKey::V6(key), Some(id)) => self.maps.peers_v6.insert(&key, &PeerClass { id }, 0),
            (PeerKey::V4(key), None) => self.maps.peers_v4.remove(&key),
            (PeerKey::V6(key), None) => self.maps.peers_v6.remove(&key),
        };
        match (result, class) {
            (Ok(()), _) => Ok(()),
            (Err(source), None) if is_not_found(&source) => Ok(()),
            (Err(source), Some(class)) => Err(Box::new(UpdateError::PeerUpsert {
                prefix,
                class,
                source,
            })),
            (Err(source), None) => Err(Box::new(UpdateError::PeerRemoval { prefix, source })),
        }
    }

    /// Records what each rule id stands for (no map holds it).
    pub fn set_rules(&mut self, rules: &BTreeMap<u32, PolicyRule>) -> Result<(), DatapathError> {
        if &self.record.rules != rules {
            self.record.rules = rules.clone();
            self.record.save(&self.config.state_file)?;
        }
        Ok(())
    }

    /// The rule a rule id stands for, as last recorded.
    pub fn rule(&self, rule_id: u32) -> Option<&PolicyRule> {
        self.record.rules.get(&rule_id)
    }

    /// Brings the maps to `desired`, writing only what differs from what they hold now (a
    /// restarted agent that adopted its pins writes nothing for unchanged state). Endpoint-map
    /// entries that no desired pod owns are removed.
    pub fn sync(
        &mut self,
        desired: &NodeState,
        ifindex_of: impl Fn(&PodRef) -> Option<u32>,
    ) -> Result<ApplyStats, ApplyError> {
        let (programmed, unknown) = self.read_programmed().map_err(|failure| ApplyError {
            failures: vec![failure.into()],
            fenced: Vec::new(),
        })?;
        let mut delta = Delta::between(&programmed, desired);
        for (pod, endpoint) in &desired.endpoints {
            let moved =
                ifindex_of(pod).is_some_and(|ifindex| self.record.ifindex_of(pod) != Some(ifindex));
            if moved
                && !delta
                    .endpoint_upserts
                    .iter()
                    .any(|upsert| &upsert.pod == pod)
            {
                delta.endpoint_upserts.push(endpoint.clone());
            }
        }
        if let Err(failure) = self.set_rules(&desired.rules) {
            return Err(ApplyError {
                failures: vec![failure.into()],
                fenced: Vec::new(),
            });
        }
        let mut stats = self.apply(&delta, &ifindex_of)?;
        let owned: BTreeSet<u32> = desired.endpoints.keys().filter_map(&ifindex_of).collect();
        let mut failures = Vec::new();
        let mut freed = BTreeSet::new();
        match self.mirror_endpoint_ids() {
            Ok(writes) => stats.writes += writes,
            Err(failure) => failures.push(*failure),
        }
        for ifindex in unknown
            .into_iter()
            .filter(|ifindex| !owned.contains(ifindex))
        {
            let pod = PodRef {
                namespace: String::new(),
                name: format!("ifindex {ifindex}"),
            };
            match self.remove_endpoint_entry(ifindex, &pod, &mut freed) {
                Ok(removed) => {
                    stats.writes += removed;
                    warn!(ifindex, "removed an endpoint entry no recorded pod owns");
                }
                Err(failure) => failures.push(*failure),
            }
        }
        if !freed.is_empty() {
            let (_, forget_failures) = self.forget_endpoint_ids(&|id| freed.contains(&id), &freed);
            failures.extend(forget_failures);
        }
        if failures.is_empty() {
            if stats.writes > 0 {
                info!(writes = stats.writes, "datapath converged");
            }
            Ok(stats)
        } else {
            Err(ApplyError {
                failures,
                fenced: Vec::new(),
            })
        }
    }

    /// Makes the endpoints-by-id map hold exactly the endpoint map's entries, by id (after a
    /// restart, or an older build that did not write it). Returns the slots written.
    fn mirror_endpoint_ids(&mut self) -> Result<usize, Box<UpdateError>> {
        let by_id: BTreeMap<u32, EndpointInfo> = self
            .maps
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .map(|(_, info)| (info.endpoint_id, info))
            .collect();
        let mut writes = 0;
        for endpoint_id in 1..policy_common::maps::MAX_ENDPOINTS {
            let wanted = by_id.get(&endpoint_id).copied().unwrap_or_default();
            let held = self.maps.endpoint_ids.get(&endpoint_id, 0).ok();
            if held != Some(wanted) {
                self.write_endpoint_id(endpoint_id, &wanted)?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// How the endpoint map differs from `expected`, the entry of every programmed endpoint by
    /// interface. Held entries are left to [`Datapath::held`] and its callers.
    pub fn endpoint_differences(
        &self,
        expected: &BTreeMap<u32, (PodRef, EndpointInfo)>,
    ) -> Result<Vec<EndpointDifference>, DatapathError> {
        let mut found = BTreeMap::new();
        for entry in self.maps.endpoints.iter() {
            let (ifindex, info) = entry.map_err(|source| DatapathError::ReadMap {
                name: policy_common::names::ENDPOINTS_MAP,
                source,
            })?;
            found.insert(ifindex, info);
        }
        let mut differences = Vec::new();
        for (&ifindex, (pod, info)) in expected {
            match found.get(&ifindex) {
                None => differences.push(EndpointDifference::Missing {
                    pod: pod.clone(),
                    ifindex,
                }),
                Some(present) if present != info => {
                    differences.push(EndpointDifference::Changed {
                        pod: pod.clone(),
                        ifindex,
                        found: *present,
                    });
                }
                Some(_) => {}
            }
        }
        for (ifindex, info) in found {
            if !expected.contains_key(&ifindex) && !hold::is_held(&info) {
                differences.push(EndpointDifference::Stale {
                    ifindex,
                    found: info,
                });
            }
        }
        Ok(differences)
    }

    /// What the maps hold now, in the shape of the desired state. Endpoints are named through the
    /// record; entries it cannot name are left out (and logged).
    pub fn programmed_state(&self) -> Result<NodeState, DatapathError> {
        let (state, unknown) = self.read_programmed()?;
        for ifindex in unknown {
            warn!(
                ifindex,
                "endpoint entry of an interface no recorded pod owns"
            );
        }
        Ok(state)
    }

    fn read_programmed(&self) -> Result<(NodeState, Vec<u32>), DatapathError> {
        use policy_common::names::{ENDPOINTS_MAP, PEERS_V4_MAP, PEERS_V6_MAP, POLICY_MAP};
        let mut state = NodeState {
            rules: self.record.rules.clone(),
            ..NodeState::default()
        };
        let mut unknown = Vec::new();
        for entry in self.maps.endpoints.iter() {
            let (ifindex, info) = entry.map_err(|source| DatapathError::ReadMap {
                name: ENDPOINTS_MAP,
                source,
            })?;
            match self.record.endpoints.get(&ifindex) {
                Some(record) => {
                    state.endpoints.insert(
                        record.pod.clone(),
                        EndpointState {
                            pod: record.pod.clone(),
                            ips: record.ips.clone(),
                            info,
                        },
                    );
                }
                // Held interfaces are no endpoint; the agent holds and releases them.
                None if hold::is_held(&info) => {}
                None => unknown.push(ifindex),
            }
        }
        for entry in self.maps.peers_v4.iter() {
            let (key, class) = entry.map_err(|source| DatapathError::ReadMap {
                name: PEERS_V4_MAP,
                source,
            })?;
            state.peers.insert(encode::prefix_from_v4(&key), class.id);
        }
        for entry in self.maps.peers_v6.iter() {
            let (key, class) = entry.map_err(|source| DatapathError::ReadMap {
                name: PEERS_V6_MAP,
                source,
            })?;
            state.peers.insert(encode::prefix_from_v6(&key), class.id);
        }
        for entry in self.maps.policy.iter() {
            let (key, value) = entry.map_err(|source| DatapathError::ReadMap {
                name: POLICY_MAP,
                source,
            })?;
            state.policy.insert(key, value);
        }
        Ok((state, unknown))
    }

    /// The interface each programmed pod's endpoint entry is keyed by.
    pub fn programmed_ifindexes(&self) -> BTreeMap<PodRef, u32> {
        self.record
            .endpoints
            .iter()
            .map(|(&ifindex, record)| (record.pod.clone(), ifindex))
            .collect()
    }

    /// Makes the host address map hold exactly `addrs` (traffic between a pod and these
    /// addresses is always allowed).
    pub fn set_host_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError> {
        let stats = sync_addr_map(
            &mut self.maps.host_addrs,
            policy_common::names::HOST_ADDRS_MAP,
            addrs,
            |addr, source| UpdateError::HostAddrUpsert { addr, source },
            |addr, source| UpdateError::HostAddrRemoval { addr, source },
        )?;
        if stats.writes > 0 {
            info!(addrs = ?addrs, "host addresses updated");
        }
        Ok(stats)
    }

    /// Makes the Service address map hold exactly `addrs`, the ClusterIPs of every Service:
    /// a pod's egress to them is decided after DNAT, against the backend.
    pub fn set_service_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError> {
        let stats = sync_addr_map(
            &mut self.maps.services,
            policy_common::names::SERVICES_MAP,
            addrs,
            |addr, source| UpdateError::ServiceAddrUpsert { addr, source },
            |addr, source| UpdateError::ServiceAddrRemoval { addr, source },
        )?;
        if stats.writes > 0 {
            info!(
                addrs = addrs.len(),
                writes = stats.writes,
                "ClusterIPs updated"
            );
        }
        Ok(stats)
    }

    /// The addresses in the Service address map.
    pub fn service_addrs(&self) -> Result<Vec<IpAddr>, DatapathError> {
        read_addr_map(&self.maps.services, policy_common::names::SERVICES_MAP)
    }

    /// The addresses in the host address map.
    pub fn host_addrs(&self) -> Result<Vec<IpAddr>, DatapathError> {
        read_addr_map(&self.maps.host_addrs, policy_common::names::HOST_ADDRS_MAP)
    }
}

/// `MEMBARRIER_CMD_GLOBAL` of `<linux/membarrier.h>`: returns after an RCU grace period.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Returns once every TC program run that started before the call has finished: the programs
/// run inside RCU read-side sections, and `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for an RCU
/// grace period (a few milliseconds). Kernels that refuse it (`nohz_full`) leave the phases of a
/// delta unseparated; that is logged once.
pub(super) fn wait_for_packets_in_flight() {
    static REFUSED: std::sync::Once = std::sync::Once::new();
    // SAFETY: membarrier takes no pointers; it only blocks the caller.
    let result = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        REFUSED.call_once(|| {
            warn!(%error, "membarrier refused: map updates cannot wait for packets in flight");
        });
    }
}

/// Makes an address map (host addresses or ClusterIPs) hold exactly `addrs`, writing only what
/// differs.
fn sync_addr_map(
    map: &mut HashMap<MapData, HostAddrKey, u8>,
    name: &'static str,
    addrs: &[IpAddr],
    upsert_error: impl Fn(IpAddr, MapError) -> UpdateError,
    removal_error: impl Fn(IpAddr, MapError) -> UpdateError,
) -> Result<ApplyStats, ApplyError> {
    let mut stats = ApplyStats::default();
    let mut failures = Vec::new();
    let wanted: BTreeMap<_, IpAddr> = addrs
        .iter()
        .map(|&addr| (host_key_bytes(addr), addr))
        .collect();
    let mut present = BTreeSet::new();
    let mut stale = Vec::new();
    for key in map.keys() {
        let key = key.map_err(|source| ApplyError {
            failures: vec![DatapathError::ReadMap { name, source }.into()],
            fenced: Vec::new(),
        })?;
        if wanted.contains_key(&(key.family, key.addr)) {
            present.insert((key.family, key.addr));
        } else {
            stale.push(key);
        }
    }
    for (bytes, &addr) in &wanted {
        if present.contains(bytes) {
            continue;
        }
        match map.insert(&encode::host_addr_key(addr), &1, 0) {
            Ok(()) => stats.writes += 1,
            Err(source) => failures.push(upsert_error(addr, source)),
        }
    }
    for key in stale {
        match map.remove(&key) {
            Ok(()) => stats.writes += 1,
            Err(source) if is_not_found(&source) => {}
            Err(source) => failures.push(removal_error(
                encode::addr_from_bytes(key.family, key.addr)
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                source,
            )),
        }
    }
    if failures.is_empty() {
        Ok(stats)
    } else {
        Err(ApplyError {
            failures,
            fenced: Vec::new(),
        })
    }
}

/// The addresses of an address map, sorted.
fn read_addr_map(
    map: &HashMap<MapData, HostAddrKey, u8>,
    name: &'static str,
) -> Result<Vec<IpAddr>, DatapathError> {
    let mut addrs = Vec::new();
    for key in map.keys() {
        let key = key.map_err(|source| DatapathError::ReadMap { name, source })?;
        addrs.extend(encode::addr_from_bytes(key.family, key.addr));
    }
    addrs.sort();
    Ok(addrs)
}

fn host_key_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    encode::addr_bytes(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn endpoint(name: &str, id: u32, flags: u32) -> EndpointState {
        EndpointState {
            pod: pod(name),
            ips: vec![format!("10.0.0.{id}").parse().unwrap()],
            info: EndpointInfo {
                endpoint_id: id,
                flags,
                ..EndpointInfo::default()
            },
        }
    }

    #[test]
    fn fence_covers_named_endpoints_and_all_isolated_ones() {
        let open = endpoint("a", 1, 0).info;
        let isolated = endpoint("b", 2, 1).info;
        let named = Fence {
            all_isolated: false,
            endpoint_ids: [1].into(),
        };
        assert!(named.applies(&open));
        assert!(!named.applies(&isolated));
        let all = Fence {
            all_isolated: true,
            endpoint_ids: BTreeSet::new(),
        };
        assert!(!all.applies(&open));
        assert!(all.applies(&isolated));
    }
}
