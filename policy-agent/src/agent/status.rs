//! What the agent tells operators about itself: `<state-dir>/status.json`, replaced atomically
//! after every reconcile that ran (and after every failure), the failures that persist (each
//! logged and counted once, when it starts), and the metrics. `status.json` also carries what
//! tests and benchmarks measure the agent by (its start, and the writes and timings of its
//! first, last and last writing reconciles), so that no program reads the log.

use std::{
    collections::{BTreeMap, BTreeSet, hash_map::DefaultHasher},
    hash::{Hash as _, Hasher as _},
    io,
    path::Path,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use policy_common::{
    maps::{
        ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, MAX_ENDPOINTS, MAX_HOST_ADDRS,
        MAX_PEER_PREFIXES, MAX_POLICY_ENTRIES, MAX_SERVICE_ADDRS,
    },
    names::{ENDPOINTS_MAP, HOST_ADDRS_MAP, PEERS_V4_MAP, PEERS_V6_MAP, POLICY_MAP, SERVICES_MAP},
};
pub use policy_core::telemetry::{
    ConflictStatus, EndpointPhase, EndpointStatus, Failure, FailureKind, InterfaceRef, LastError,
    MapUsage, ReconcileReport, STATUS_FILE, StartReport, Status, StatusReadError, read,
};
use tracing::{info, warn};

use super::{
    ReconcileError,
    plan::Applied,
    source::{LoadError, RejectedObject},
    write_atomically,
};
use crate::{
    datapath::{ApplyError, UpdateError},
    error_chain,
    manifest::ManifestError,
    metrics::{Health, MapFill, Metrics},
    policy::{
        resolve::ResolveError,
        state::{NodeState, PodRef},
    },
};

/// The interface `ifindex`, named if it still exists.
fn interface_ref(ifindex: u32) -> InterfaceRef {
    InterfaceRef {
        ifindex,
        interface: interface_name(ifindex),
    }
}

/// The observability side of the agent: failure tracking, status and metrics.
pub(super) struct Observer {
    pub(super) metrics: Option<std::sync::Arc<Metrics>>,
    pub(super) health: std::sync::Arc<Health>,
    /// Failures of the last reconcile, by kind and object.
    failures: BTreeMap<(FailureKind, String), Failure>,
    last_error: Option<LastError>,
    /// Endpoints denying all traffic after the last failed update.
    fenced: BTreeSet<PodRef>,
    /// Per endpoint: a digest of what was written for it, and the generation that wrote it.
    written: BTreeMap<PodRef, (u64, String)>,
    /// The first source change no successful reconcile has applied yet.
    pending_change: Option<Instant>,
    /// Whether the last reconcile failed: the periodic pass retries it.
    pub(super) failing: bool,
    start: Option<StartReport>,
    first_reconcile: Option<ReconcileReport>,
    last_reconcile: Option<ReconcileReport>,
    last_update: Option<ReconcileReport>,
}

impl Observer {
    pub(super) fn new(
        metrics: Option<std::sync::Arc<Metrics>>,
        health: std::sync::Arc<Health>,
    ) -> Observer {
        if let Some(metrics) = &metrics {
            for kind in FailureKind::ALL {
                metrics.declare_failure_kind(kind.name());
            }
        }
        Observer {
            metrics,
            health,
            failures: BTreeMap::new(),
            last_error: None,
            fenced: BTreeSet::new(),
            written: BTreeMap::new(),
            pending_change: None,
            failing: false,
            start: None,
            first_reconcile: None,
            last_reconcile: None,
            last_update: None,
        }
    }

    pub(super) fn started(&mut self, start: StartReport) {
        self.start = Some(start);
    }

    /// A reconcile ran to its end.
    pub(super) fn reconciled(&mut self, report: ReconcileReport) {
        if self.first_reconcile.is_none() {
            self.first_reconcile = Some(report.clone());
        }
        if report.writes > 0 {
            self.last_update = Some(report.clone());
        }
        self.last_reconcile = Some(report);
    }

    /// The source announced a change now.
    pub(super) fn change_received(&mut self) {
        self.pending_change.get_or_insert_with(Instant::now);
    }

    /// Makes the failures of the last reconcile the current ones: new ones are logged and
    /// counted, gone ones logged as resolved.
    fn track_failures(&mut self, found: Vec<(FailureKind, String, String)>) {
        let now = Timestamp::now();
        let mut current: BTreeMap<(FailureKind, String), Failure> = BTreeMap::new();
        for (kind, object, error) in found {
            let key = (kind, object);
            if let Some(failure) = current.get_mut(&key) {
                failure.count += 1;
                continue;
            }
            let since = match self.failures.get(&key) {
                Some(known) => known.since,
                None => {
                    warn!(kind = kind.name(), object = %key.1, "{error}");
                    if let Some(metrics) = &self.metrics {
                        metrics.failure_started(kind.name());
                    }
                    now
                }
            };
            current.insert(
                key.clone(),
                Failure {
                    kind,
                    object: key.1,
                    error,
                    count: 1,
                    since,
                },
            );
        }
        for (kind, object) in self.failures.keys() {
            if !current.contains_key(&(*kind, object.clone())) {
                info!(kind = kind.name(), %object, "failure resolved");
            }
        }
        self.failures = current;
    }

    /// Records the outcome of a reconcile that ran: failures, fenced endpoints, metrics. The
    /// agent remembers `applied` and has published `generation`.
    pub(super) fn observe(
        &mut self,
        result: &Result<bool, ReconcileError>,
        elapsed: Duration,
        applied: &Applied,
        generation: Option<&str>,
    ) {
        if let Some(metrics) = &self.metrics {
            metrics.observe_reconcile(elapsed);
        }
        // Whether the datapath holds the whole resolved state (rejected objects and what the
        // resolver left out included, as the closed state they resolve to).
        let programmed_all = match result {
            Ok(_) => true,
            Err(error @ ReconcileError::Incomplete { .. }) => error.apply().is_none(),
            Err(_) => false,
        };
        if programmed_all {
            self.fenced.clear();
            self.health.set_ready();
            if let (Some(received), Some(metrics)) = (self.pending_change.take(), &self.metrics) {
                metrics.observe_enforcement(received.elapsed());
            }
            if let Some(programmed) = &applied.programmed
                && let Some(generation) = generation
            {
                record_writes(
                    &mut self.written,
                    programmed,
                    &applied.interfaces,
                    generation,
                );
            }
        }
        match result {
            Ok(_) => {
                self.track_failures(Vec::new());
                self.last_error = None;
                self.failing = false;
            }
            Err(error) => {
                let endpoint_pods: BTreeMap<u32, PodRef> = applied
                    .resolved
                    .endpoints
                    .values()
                    .map(|endpoint| (endpoint.info.endpoint_id, endpoint.pod.clone()))
                    .collect();
                self.track_failures(failures_of(error, &endpoint_pods));
                self.last_error = Some(LastError {
                    time: Timestamp::now(),
                    error: error_chain(error),
                });
                if let Some(apply) = error.apply() {
                    // A reconcile that failed some writes still wrote the rest: what it fenced
                    // is what is fenced now.
                    if matches!(error, ReconcileError::Incomplete { .. }) {
                        self.fenced.clear();
                    }
                    self.fenced.extend(apply.fenced.iter().cloned());
                }
                // Rejected objects and what the maps cannot hold stay so until the source
                // changes: only failed map writes are worth retrying.
                self.failing = !matches!(error, ReconcileError::Incomplete { apply: None, .. });
            }
        }
    }

    /// Publishes `status` to the metrics and to `status.json` under `state_dir`.
    pub(super) fn publish(
        &self,
        state_dir: &Path,
        status: &Status,
        applied: &Applied,
    ) -> io::Result<()> {
        if let Some(metrics) = &self.metrics {
            let endpoints = applied
                .programmed
                .iter()
                .flat_map(|state| state.endpoints.values())
                .map(|endpoint| (endpoint.info.endpoint_id, endpoint.pod.clone()))
                .collect();
            let maps = status
                .maps
                .iter()
                .map(|usage| MapFill {
                    map: usage.map.clone(),
                    entries: usage.entries,
                    capacity: usage.capacity,
                })
                .collect();
            metrics.publish(endpoints, maps);
        }
        let text = serde_json::to_string_pretty(status).map_err(io::Error::other)?;
        write_atomically(&state_dir.join(STATUS_FILE), &text)
    }

    /// The status of the agent of `node` reading `source`, which remembers `applied` and has
    /// published `generation`.
    pub(super) fn status(
        &self,
        node: &str,
        source: &str,
        applied: &Applied,
        generation: Option<&str>,
    ) -> Status {
        let empty = NodeState::default();
        let programmed = applied.programmed.as_ref().unwrap_or(&empty);
        let mut entries_of: BTreeMap<u32, usize> = BTreeMap::new();
        for key in programmed.policy.keys() {
            *entries_of.entry(key.endpoint_id).or_default() += 1;
        }
        let held: BTreeSet<u32> = applied
            .conflicts
            .iter()
            .flat_map(|conflict| conflict.claimants.iter().copied())
            .collect();
        let contested: BTreeSet<&PodRef> = applied
            .conflicts
            .iter()
            .map(|conflict| &conflict.pod)
            .collect();
        let endpoints = applied
            .resolved
            .endpoints
            .values()
            .map(|endpoint| {
                let ifindex = applied.interfaces.get(&endpoint.pod).copied();
                let state = if ifindex.is_none() && contested.contains(&endpoint.pod)
                    || ifindex.is_some_and(|ifindex| held.contains(&ifindex))
                {
                    EndpointPhase::Conflict
                } else if ifindex.is_none() {
                    EndpointPhase::WaitingForInterface
                } else if self.fenced.contains(&endpoint.pod) {
                    EndpointPhase::Fenced
                } else {
                    EndpointPhase::Programmed
                };
                EndpointStatus {
                    pod: endpoint.pod.to_string(),
                    interface: ifindex.and_then(interface_name),
                    ifindex,
                    endpoint_id: endpoint.info.endpoint_id,
                    ingress_isolated: endpoint.info.flags & ENDPOINT_INGRESS_ISOLATED != 0,
                    egress_isolated: endpoint.info.flags & ENDPOINT_EGRESS_ISOLATED != 0,
                    state,
                    generation: self
                        .written
                        .get(&endpoint.pod)
                        .map(|(_, generation)| generation.clone()),
                    policy_entries: programmed
                        .endpoints
                        .get(&endpoint.pod)
                        .and_then(|programmed| entries_of.get(&programmed.info.endpoint_id))
                        .copied()
                        .unwrap_or(0),
                }
            })
            .collect();
        let mut failures: Vec<Failure> = self.failures.values().cloned().collect();
        failures.sort_by_key(|failure| failure.since);
        Status {
            node: node.to_owned(),
            source: source.to_owned(),
            time: Timestamp::now(),
            applied_generation: generation.map(str::to_owned),
            ready: self.health.is_ready(),
            endpoints,
            conflicts: applied
                .conflicts
                .iter()
                .map(|conflict| ConflictStatus {
                    pod: conflict.pod.to_string(),
                    bound: conflict.bound.map(interface_ref),
                    claimants: conflict
                        .claimants
                        .iter()
                        .copied()
                        .map(interface_ref)
                        .collect(),
                })
                .collect(),
            maps: map_usage(
                programmed,
                applied.host_addrs.len(),
                applied.service_addrs.len(),
            ),
            failures,
            last_error: self.last_error.clone(),
            start: self.start.clone(),
            first_reconcile: self.first_reconcile.clone(),
            last_reconcile: self.last_reconcile.clone(),
            last_update: self.last_update.clone(),
        }
    }
}

/// The name of an interface of this network namespace.
pub(super) fn interface_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|name| name.into_string().ok())
}

/// The fill of every map that can fill, from the programmed state.
fn map_usage(programmed: &NodeState, host_addrs: usize, service_addrs: usize) -> Vec<MapUsage> {
    let v4 = programmed
        .peers
        .keys()
        .filter(|prefix| prefix.addr.is_ipv4())
        .count();
    let v6 = programmed.peers.len() - v4;
    [
        (ENDPOINTS_MAP, programmed.endpoints.len(), MAX_ENDPOINTS),
        (POLICY_MAP, programmed.policy.len(), MAX_POLICY_ENTRIES),
        (PEERS_V4_MAP, v4, MAX_PEER_PREFIXES),
        (PEERS_V6_MAP, v6, MAX_PEER_PREFIXES),
        (HOST_ADDRS_MAP, host_addrs, MAX_HOST_ADDRS),
        (SERVICES_MAP, service_addrs, MAX_SERVICE_ADDRS),
    ]
    .into_iter()
    .map(|(map, entries, capacity)| MapUsage {
        map: map.to_owned(),
        entries: entries as u64,
        capacity: u64::from(capacity),
    })
    .collect()
}

/// Remembers, per programmed endpoint, the generation that last changed what was written for
/// it (its entry, its interface, or its policy entries).
fn record_writes(
    written: &mut BTreeMap<PodRef, (u64, String)>,
    programmed: &NodeState,
    interfaces: &BTreeMap<PodRef, u32>,
    generation: &str,
) {
    let mut digests: BTreeMap<u32, DefaultHasher> = BTreeMap::new();
    for (key, value) in &programmed.policy {
        let hasher = digests.entry(key.endpoint_id).or_default();
        key.hash(hasher);
        value.hash(hasher);
    }
    written.retain(|pod, _| programmed.endpoints.contains_key(pod));
    for (pod, endpoint) in &programmed.endpoints {
        let mut hasher = digests
            .remove(&endpoint.info.endpoint_id)
            .unwrap_or_default();
        let info = endpoint.info;
        (
            info.endpoint_id,
            info.flags,
            info.ingress_plan,
            info.egress_plan,
        )
            .hash(&mut hasher);
        interfaces.get(pod).hash(&mut hasher);
        let digest = hasher.finish();
        match written.get(pod) {
            Some((known, _)) if *known == digest => {}
            _ => {
                written.insert(pod.clone(), (digest, generation.to_owned()));
            }
        }
    }
}

/// The failures in a reconcile's error, as (kind, object, error).
fn failures_of(
    error: &ReconcileError,
    endpoint_pods: &BTreeMap<u32, PodRef>,
) -> Vec<(FailureKind, String, String)> {
    let one = |kind, object: String| vec![(kind, object, error_chain(error))];
    match error {
        ReconcileError::Load(LoadError::Manifests { errors }) => errors
            .iter()
            .map(|error| {
                (
                    FailureKind::InvalidObject,
                    manifest_object(error),
                    error_chain(error),
                )
            })
            .collect(),
        ReconcileError::Load(LoadError::Generation { .. } | LoadError::NotReady(_)) => {
            one(FailureKind::Agent, "source".to_owned())
        }
        ReconcileError::Incomplete {
            rejected,
            degraded,
            apply,
        } => {
            let mut found: Vec<(FailureKind, String, String)> = rejected
                .iter()
                .map(|rejected| {
                    let object = match rejected {
                        RejectedObject::Kubernetes(rejected) => rejected.object.clone(),
                        RejectedObject::Manifest(error) => manifest_object(error),
                    };
                    (FailureKind::InvalidObject, object, error_chain(rejected))
                })
                .collect();
            found.extend(degraded.iter().map(|degraded| {
                (
                    FailureKind::MapFull,
                    degraded.object(),
                    degraded.to_string(),
                )
            }));
            if let Some(apply) = apply {
                found.extend(apply_failures(apply, endpoint_pods));
            }
            found
        }
        ReconcileError::Resolve(resolve) => match resolve {
            ResolveError::TooManyEndpoints { node, .. }
            | ResolveError::TooManyPeerPrefixes { node, .. } => {
                one(FailureKind::MapFull, format!("node {node}"))
            }
            ResolveError::IdsExhausted { what } => {
                one(FailureKind::Unrepresentable, format!("{what} ids"))
            }
        },
        ReconcileError::Discovery(_) => one(FailureKind::Agent, "netlink".to_owned()),
        ReconcileError::Apply(apply) => apply_failures(apply, endpoint_pods),
        ReconcileError::AttachUplink { ifindex, .. } => {
            one(FailureKind::Attach, format!("uplink {ifindex}"))
        }
        ReconcileError::Attach { pod, .. } => one(FailureKind::Attach, pod.to_string()),
        ReconcileError::Datapath(_) => one(FailureKind::Agent, "datapath".to_owned()),
        ReconcileError::Publish { path, .. } => one(FailureKind::Agent, path.display().to_string()),
    }
}

/// The failures of a map update, as (kind, object, error).
fn apply_failures(
    apply: &ApplyError,
    endpoint_pods: &BTreeMap<u32, PodRef>,
) -> Vec<(FailureKind, String, String)> {
    apply
        .failures
        .iter()
        .map(|failure| {
            let kind = if failure.is_map_full() {
                FailureKind::MapFull
            } else {
                FailureKind::MapUpdate
            };
            (
                kind,
                update_object(failure, endpoint_pods),
                error_chain(failure),
            )
        })
        .collect()
}

/// The object a manifest error names, or its file when it names none.
fn manifest_object(error: &ManifestError) -> String {
    match error {
        ManifestError::Schema { path, object, .. }
        | ManifestError::UnknownFields { path, object, .. }
        | ManifestError::ApiVersion { path, object, .. }
        | ManifestError::Invalid { path, object, .. }
        | ManifestError::Duplicate { path, object, .. } => {
            format!("{object} ({})", path.display())
        }
        ManifestError::Read { path, .. }
        | ManifestError::Yaml { path, .. }
        | ManifestError::Shape { path, .. } => path.display().to_string(),
    }
}

/// The object a failed map update concerns: the pod whose entries it wrote, or the shared
/// contents of a map.
fn update_object(failure: &UpdateError, endpoint_pods: &BTreeMap<u32, PodRef>) -> String {
    let endpoint = |endpoint_id: u32| {
        endpoint_pods
            .get(&endpoint_id)
            .map_or_else(|| format!("endpoint {endpoint_id}"), ToString::to_string)
    };
    match failure {
        UpdateError::PolicyUpsert { key, .. } | UpdateError::PolicyRemoval { key, .. } => {
            endpoint(key.endpoint_id)
        }
        UpdateError::EndpointIdWrite { endpoint_id, .. }
        | UpdateError::CounterReset { endpoint_id, .. }
        | UpdateError::CounterCpus { endpoint_id, .. } => endpoint(*endpoint_id),
        UpdateError::PeerUpsert { .. }
        | UpdateError::PeerRemoval { .. }
        | UpdateError::InvalidPrefix { .. } => "peer prefixes".to_owned(),
        UpdateError::NoInterface { pod }
        | UpdateError::EndpointUpsert { pod, .. }
        | UpdateError::EndpointRemoval { pod, .. }
        | UpdateError::Fence { pod, .. } => pod.to_string(),
        UpdateError::HostAddrUpsert { .. } | UpdateError::HostAddrRemoval { .. } => {
            "host addresses".to_owned()
        }
        UpdateError::ServiceAddrUpsert { .. } | UpdateError::ServiceAddrRemoval { .. } => {
            "ClusterIPs".to_owned()
        }
        UpdateError::ForgetFlows { map, .. } => format!("map {map}"),
        UpdateError::Datapath(_) => "datapath".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn found(kind: FailureKind, object: &str) -> (FailureKind, String, String) {
        (kind, object.to_owned(), format!("{object} failed"))
    }

    #[test]
    fn a_failure_keeps_its_start_while_it_persists_and_repeats_are_counted() {
        let mut observer = Observer::new(None, Arc::new(Health::default()));
        observer.track_failures(vec![found(FailureKind::MapFull, "shop/db")]);
        let since = observer.failures.values().next().unwrap().since;
        std::thread::sleep(Duration::from_millis(5));
        observer.track_failures(vec![
            found(FailureKind::MapFull, "shop/db"),
            found(FailureKind::MapFull, "shop/db"),
            found(FailureKind::Attach, "shop/web"),
        ]);
        let failures: Vec<&Failure> = observer.failures.values().collect();
        assert_eq!(failures.len(), 2);
        assert_eq!(
            (failures[0].kind, failures[0].count, failures[0].since),
            (FailureKind::MapFull, 2, since)
        );
        assert_eq!(failures[1].object, "shop/web");
        assert!(failures[1].since > since);
        observer.track_failures(Vec::new());
        assert!(observer.failures.is_empty());
    }

    #[test]
    fn map_usage_counts_each_family_and_map() {
        let mut state = NodeState::default();
        state.peers.insert("10.0.0.0/8".parse().unwrap(), 1);
        state.peers.insert("10.1.0.0/16".parse().unwrap(), 2);
        state.peers.insert("fd00::/64".parse().unwrap(), 1);
        let usage = map_usage(&state, 3, 7);
        let entries = |map: &str| {
            usage
                .iter()
                .find(|usage| usage.map == map)
                .map(|usage| usage.entries)
        };
        assert_eq!(entries(PEERS_V4_MAP), Some(2));
        assert_eq!(entries(PEERS_V6_MAP), Some(1));
        assert_eq!(entries(HOST_ADDRS_MAP), Some(3));
        assert_eq!(entries(SERVICES_MAP), Some(7));
        assert_eq!(entries(ENDPOINTS_MAP), Some(0));
    }
}
