//! `policy-agent run`: the node agent's loop.
//!
//! source (the API server's reflectors, or a manifest directory) -> snapshot -> resolve (pure)
//! -> desired state of this node's endpoints -> endpoint discovery (the host-side interface of
//! each local pod) -> the delta against what is programmed -> map writes, then attach -> the
//! applied generation is published.
//!
//! Reconciles run when the source changes (a few milliseconds after it), when the kernel
//! announces a change of interfaces, addresses or routes (routing netlink notifications, see
//! [`crate::discovery::events`]; at most one such reconcile per second, since pods write much of
//! what they report), and periodically (every ten seconds by default) as a safety net. Every
//! reconcile reads the endpoint map back and repairs it where it differs from what the agent
//! programmed (an entry missing, changed or left over), logging each difference; so an endpoint
//! that `status.json` reports programmed has its entry in the kernel. Manifests with errors (an
//! unparsable document, an invalid Pod) are reported and not applied: the datapath keeps the
//! last good state, which never opens what the bad content might have closed. A rejected
//! NetworkPolicy, from either source, is reported and applied as isolation of the pods it
//! selects with none of its rules; the Kubernetes source leaves out the other objects it
//! rejects. What the maps cannot hold stays with the pods it concerns: the resolver leaves out
//! a policy too big for one pod, or, when the node's endpoints need more entries than the
//! policy map holds, the entries of the pods that need the most (they deny all traffic); a map
//! write that still fails fences its endpoints only. Either way every other pod keeps
//! receiving changes. On start the
//! agent adopts what is pinned: the programs keep enforcing while it is down, and the first
//! reconcile writes only what differs from the maps.
//!
//! Services: every reconcile programs the ClusterIPs of all Services (both families), and
//! attaches `svc_egress` to the node's uplinks (every interface but loopback, bridges, bridge
//! ports and the endpoints' veths), detaching it from interfaces that stopped being uplinks.
//! Together they let the programs decide a pod's egress to a ClusterIP against the backend
//! kube-proxy chose, also when that backend is on another node. The periodic pass also looks for
//! uplinks that came or went.
//!
//! Binding: each local pod is bound to the veth whose peer, in the pod's namespace, holds one of
//! its IPs, cross-checked with the node's route (see [`crate::discovery`] and
//! [`crate::discovery::binding`]); a binding is kept until its interface is gone, and an
//! interface that claims a pod bound elsewhere (or, while the pod has no binding, any interface
//! claiming it) is held closed and reported in `status.json` as a conflict.
//!
//! New endpoints: [`NewEndpoints`] chooses what a pod's traffic meets before it is programmed;
//! `endpoints.rs` explains both modes.
//!
//! After every reconcile that ran the agent publishes `status.json` (see [`status`]); a failed
//! reconcile is retried every second, and each failure is logged and counted once, when
//! it starts. With a metrics address it serves Prometheus metrics and health probes
//! ([`crate::metrics`]).

mod endpoints;
mod flows;
mod source;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

pub use endpoints::{
    DEFAULT_INTERFACE_PREFIX, NewEndpointPolicy, NewEndpoints, NewEndpointsParseError,
};
pub use flows::{Clocks, FLOW_LOG_MAX_BYTES, FlowContext, FlowRecord, rotated_path};
use jiff::Timestamp;
use policy_common::maps::{
    ENDPOINT_ANY_SOURCE, ENDPOINT_LOG_ALLOWED, ENDPOINT_NOT_READY, EndpointInfo, MAX_HOST_ADDRS,
};
use source::{LoadError, Loader};
pub use source::{RejectedObject, Source, SourceParseError};
use status::{ReconcileReport, StartReport};
use tracing::{debug, info, warn};

use crate::{
    datapath::{
        ApplyError, Datapath, DatapathConfig, DatapathError, EndpointDifference, Hook, OpenReport,
    },
    discovery::{
        Discovery, DiscoveryError,
        binding::{self, Conflict},
        events::{self, Pacer},
    },
    error_chain, k8s,
    metrics::{self, Health, Metrics},
    policy::{
        adopt::resolve_adopting,
        model::Snapshot,
        resolve::{ResolveError, resolve},
        state::{Degraded, Delta, NodeState, PodRef},
    },
};

/// How often a failed reconcile is retried (a full map, a failed attach, a source not listed
/// yet).
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Events closer together than this are handled by one reconcile (an editor's save, the lab
/// swapping several files, or a CNI creating, moving, addressing and routing a veth, is a burst
/// of events).
const DEBOUNCE: Duration = Duration::from_millis(5);
/// The least time between two reconciles that routing netlink notifications trigger: pods can
/// cause such notifications at will (changing their own addresses, links and routes, or the
/// carrier of their veth), and must not drive the agent's reconciles faster than this.
const NETLINK_SPACING: Duration = Duration::from_secs(1);

/// What `policy-agent run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub source: Source,
    pub node_name: String,
    pub pin_dir: PathBuf,
    /// Where the agent publishes its applied generation, last error and flow log, and keeps the
    /// datapath's record.
    pub state_dir: PathBuf,
    /// What a new endpoint's traffic meets before it is programmed.
    pub new_endpoints: NewEndpointPolicy,
    /// Where to serve metrics and health probes; none when absent.
    pub metrics_addr: Option<SocketAddr>,
    /// Also report the first packet of every allowed new flow, not only drops.
    pub log_allowed: bool,
    /// Namespaces whose pods may send from any source address (see `ENDPOINT_ANY_SOURCE`).
    pub any_source_namespaces: BTreeSet<String>,
    /// How often to reconcile without being told of a change: a safety net for notifications
    /// the kernel could not deliver, and the pass that finds map entries changed behind the
    /// agent's back (`policy-agent run` defaults to ten seconds).
    pub resync_interval: Duration,
}

/// Failures that stop the agent. Failures of one reconcile are reported and retried instead.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot open the datapath under {pin_dir}", pin_dir = pin_dir.display())]
    Datapath {
        pin_dir: PathBuf,
        #[source]
        source: Box<DatapathError>,
    },
    #[error("cannot read the datapath's flow events")]
    Events {
        #[source]
        source: Box<DatapathError>,
    },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Kubernetes(#[from] k8s::ClientError),
    #[error("the kernel's routing notifications stopped; restarting re-subscribes")]
    NetlinkEventsClosed,
    #[error("cannot watch {dir}", dir = dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot write {path}", path = path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Why one reconcile did not apply.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The reconcile applied, but not all of it as written: objects were rejected, the
    /// resolver left out what the maps cannot hold, or map writes failed (their endpoints are
    /// fenced). Each concerns only its own object and pods; everything else took the change.
    #[error("{}", incomplete(rejected, degraded, apply.as_deref()))]
    Incomplete {
        rejected: Vec<RejectedObject>,
        degraded: Vec<Degraded>,
        #[source]
        apply: Option<Box<ApplyError>>,
    },
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Apply(Box<ApplyError>),
    #[error("cannot attach svc_egress to uplink {ifindex}")]
    AttachUplink {
        ifindex: u32,
        #[source]
        source: Box<DatapathError>,
    },
    #[error("cannot attach the programs to interface {ifindex} of {pod}")]
    Attach {
        pod: PodRef,
        ifindex: u32,
        #[source]
        source: Box<DatapathError>,
    },
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error("cannot publish {path}", path = path.display())]
    Publish {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The summary of [`ReconcileError::Incomplete`]; the failed map writes follow as its cause.
fn incomplete(
    rejected: &[RejectedObject],
    degraded: &[Degraded],
    apply: Option<&ApplyError>,
) -> String {
    let mut parts = Vec::new();
    if let Some(first) = rejected.first() {
        parts.push(format!(
            "{} object(s) rejected (a rejected NetworkPolicy isolates its pods with none of its \
             rules), the rest applied. First: {}",
            rejected.len(),
            error_chain(first)
        ));
    }
    if let Some(first) = degraded.first() {
        parts.push(format!(
            "{} part(s) of the state left out to fit the maps, their pods kept closed. First: \
             {first}",
            degraded.len()
        ));
    }
    if apply.is_some() {
        parts.push("map updates failed; the endpoints they concern are fenced".to_owned());
    }
    parts.join("; ")
}

impl ReconcileError {
    /// The failed map writes of this reconcile, if any.
    fn apply(&self) -> Option<&ApplyError> {
        match self {
            ReconcileError::Apply(apply) => Some(apply),
            ReconcileError::Incomplete {
                apply: Some(apply), ..
            } => Some(apply),
            _ => None,
        }
    }
}

impl From<DatapathError> for ReconcileError {
    fn from(error: DatapathError) -> ReconcileError {
        ReconcileError::Datapath(Box::new(error))
    }
}

impl From<ApplyError> for ReconcileError {
    fn from(error: ApplyError) -> ReconcileError {
        ReconcileError::Apply(Box::new(error))
    }
}

/// The agent's memory between reconciles.
struct Agent {
    config: RunConfig,
    loader: Loader,
    datapath: Datapath,
    discovery: Discovery,
    /// The last resolved state: ids stay stable against it.
    resolved: NodeState,
    /// What the maps hold: `resolved` less the endpoints without an interface.
    programmed: Option<NodeState>,
    /// The interface each programmed pod is bound to.
    interfaces: BTreeMap<PodRef, u32>,
    /// The binding conflicts of the last reconcile.
    conflicts: Vec<Conflict>,
    host_addrs: Vec<IpAddr>,
    service_addrs: Vec<IpAddr>,
    uplinks: Vec<u32>,
    applied_generation: Option<String>,
    flow_context: Arc<RwLock<FlowContext>>,
    observer: status::Observer,
}

/// Runs the agent until SIGINT or SIGTERM. The programs stay attached when it exits.
pub async fn run(config: RunConfig) -> Result<(), AgentError> {
    fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let started = Timestamp::now();
    let mut datapath = Datapath::open(DatapathConfig {
        pin_dir: config.pin_dir.clone(),
        state_file: config.state_dir.join("datapath.json"),
    })
    .map_err(|source| AgentError::Datapath {
        pin_dir: config.pin_dir.clone(),
        source: Box::new(source),
    })?;
    let report = datapath.open_report();
    let start = start_report(started, report);
    info!(
        node = %config.node_name,
        pin_dir = %config.pin_dir.display(),
        adopted = ?report,
        "datapath open"
    );
    let events = datapath
        .take_events()
        .and_then(|reader| reader.into_async())
        .map_err(|source| AgentError::Events {
            source: Box::new(source),
        })?;
    let flow_context = Arc::new(RwLock::new(FlowContext::new(&config.node_name)));
    let flow_log = config.state_dir.join("flows.jsonl");
    tokio::spawn(flows::record(events, Arc::clone(&flow_context), flow_log));
    let health = Arc::new(Health::default());
    let metrics = match config.metrics_addr {
        Some(addr) => {
            let counters = datapath
                .counter_reader()
                .map_err(|source| AgentError::Datapath {
                    pin_dir: config.pin_dir.clone(),
                    source: Box::new(source),
                })?;
            let metrics = Arc::new(Metrics::new(counters));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Metrics { addr, source })?;
            info!(%addr, "serving /metrics, /healthz and /readyz");
            tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&metrics),
                Arc::clone(&health),
            ));
            Some(metrics)
        }
        None => None,
    };

    let (loader, mut changes) = Loader::start(&config.source, &config.node_name).await?;
    let mut netlink = events::subscribe()?;
    let mut agent = Agent {
        loader,
        discovery: Discovery::new()?,
        datapath,
        resolved: NodeState::default(),
        programmed: None,
        interfaces: BTreeMap::new(),
        conflicts: Vec::new(),
        host_addrs: Vec::new(),
        service_addrs: Vec::new(),
        uplinks: Vec::new(),
        applied_generation: None,
        flow_context,
        observer: status::Observer::new(metrics, health),
        config,
    };
    agent.observer.started(start);
    let mut resync = tokio::time::interval(agent.config.resync_interval);
    let mut pacer = Pacer::new(NETLINK_SPACING, DEBOUNCE);
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| AgentError::StateDir {
        path: PathBuf::from("SIGTERM handler"),
        source,
    })?;
    agent.observer.health.tick();
    agent.reconcile_and_report().await?;
    loop {
        agent.observer.health.tick();
        tokio::select! {
            change = changes.recv() => {
                if change.is_none() {
                    return Ok(());
                }
                agent.observer.change_received();
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                pacer.covered();
                agent.reconcile_and_report().await?;
            }
            change = netlink.recv() => {
                let Some(change) = change else {
                    return Err(AgentError::NetlinkEventsClosed);
                };
                debug!(?change, "routing netlink notification");
                pacer.notified(Instant::now());
            }
            () = sleep_until(pacer.due()), if pacer.due().is_some() => {
                pacer.started(Instant::now());
                agent.reconcile_and_report().await?;
            }
            _ = resync.tick() => {
                pacer.covered();
                agent.reconcile_and_report().await?;
            }
            _ = retry.tick(), if agent.observer.failing => {
                pacer.covered();
                agent.reconcile_and_report().await?;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    info!("stopping; the programs stay attached and keep enforcing");
    Ok(())
}

impl Agent {
    /// One reconcile; its failure is logged (once) and published, and only state-dir failures
    /// stop the agent.
    async fn reconcile_and_report(&mut self) -> Result<(), AgentError> {
        let started = Instant::now();
        let result = self.reconcile().await;
        let elapsed = started.elapsed();
        self.observe(&result, elapsed)
            .map_err(|source| AgentError::StateDir {
                path: self.config.state_dir.join(status::STATUS_FILE),
                source,
            })?;
        let error_file = self.config.state_dir.join("last-error");
        match result {
            Ok(applied) => {
                if applied {
                    debug!(?elapsed, "reconciled");
                }
                remove_if_present(&error_file)
            }
            Err(error) => {
                debug!("{}", error_chain(&error));
                write_atomically(&error_file, &format!("{}\n", error_chain(&error))).map_err(
                    |source| AgentError::StateDir {
                        path: error_file.clone(),
                        source,
                    },
                )
            }
        }
    }

    /// Returns whether anything was written.
    async fn reconcile(&mut self) -> Result<bool, ReconcileError> {
        let started = Timestamp::now();
        let mut loaded = self.loader.load()?;
        for rejected in &loaded.rejected {
            debug!("{}", error_chain(rejected));
        }
        let generation = std::mem::take(&mut loaded.generation);
        let resolved = match &self.programmed {
            Some(_) => resolve(&loaded.snapshot, &self.config.node_name, &self.resolved)?,
            // After a restart: keep the ids the pinned maps already use, so unchanged state is
            // not rewritten.
            None => resolve_adopting(
                &loaded.snapshot,
                &self.config.node_name,
                &self.datapath.programmed_state()?,
            )?,
        };

        let pods: BTreeMap<PodRef, Vec<IpAddr>> = resolved
            .endpoints
            .iter()
            .map(|(pod, endpoint)| (pod.clone(), endpoint.ips.clone()))
            .collect();
        let wanted: BTreeSet<IpAddr> = pods.values().flatten().copied().collect();
        let wiring = self.discovery.wiring(&wanted).await?;
        // The record names the interface of every endpoint written: the bindings in force,
        // also across a restart.
        let binding = binding::bind(
            &pods,
            &wiring.claims,
            &wiring.veths,
            &self.datapath.programmed_ifindexes(),
        );
        self.track_conflicts(binding.conflicts);
        let interfaces = binding.interfaces;
        let waiting: Vec<&PodRef> = pods
            .keys()
            .filter(|pod| !interfaces.contains_key(*pod))
            .collect();
        let mut programmable = resolved.clone();
        programmable
            .endpoints
            .retain(|pod, _| interfaces.contains_key(pod));
        for (pod, endpoint) in &mut programmable.endpoints {
            if self.config.log_allowed {
                endpoint.info.flags |= ENDPOINT_LOG_ALLOWED;
            }
            if self.config.any_source_namespaces.contains(&pod.namespace) {
                endpoint.info.flags |= ENDPOINT_ANY_SOURCE;
            }
            if interfaces
                .get(pod)
                .is_some_and(|ifindex| binding.held.contains(ifindex))
            {
                endpoint.info.flags |= ENDPOINT_NOT_READY;
            }
        }

        let mut addr_writes = 0;
        let service_addrs = service_addrs(&loaded.snapshot);
        // An address that is both local and a ClusterIP (IPVS puts every ClusterIP on
        // kube-ipvs0) is a Service; only the node's own addresses are host addresses.
        let mut host_addrs = self.discovery.host_addresses().await?;
        host_addrs.retain(|addr| service_addrs.binary_search(addr).is_err());
        if host_addrs.len() > MAX_HOST_ADDRS as usize {
            // The addresses left out are decided by policy like any peer: never more open.
            warn!(
                addresses = host_addrs.len(),
                capacity = MAX_HOST_ADDRS,
                "more node addresses than the host-address map holds; the rest are not host"
            );
            host_addrs.truncate(MAX_HOST_ADDRS as usize);
        }
        if host_addrs != self.host_addrs {
            addr_writes += self.datapath.set_host_addrs(&host_addrs)?.writes;
            info!(addresses = host_addrs.len(), "node addresses programmed");
            self.host_addrs = host_addrs;
        }

        // ClusterIPs first: a pod attached below must already defer its Service traffic.
        if service_addrs != self.service_addrs {
            addr_writes += self.datapath.set_service_addrs(&service_addrs)?.writes;
            self.service_addrs = service_addrs;
        }

        let repaired = match &self.programmed {
            Some(programmed) => {
                let differences = self
                    .datapath
                    .endpoint_differences(&expected_entries(programmed, &self.interfaces))?;
                for difference in &differences {
                    report_difference(difference);
                }
                differences.len()
            }
            None => 0,
        };
        let repairing = repaired > 0;
        // A failed map write fences only the endpoints it concerns: the reconcile goes on, so
        // every other endpoint (and a new pod's attachment) still takes the change.
        let ifindex_of = |pod: &PodRef| interfaces.get(pod).copied();
        let applied = match &self.programmed {
            // The first pass diffs against what the maps really hold: adoption after a restart.
            // So does a pass that found the endpoint map changed behind the agent's back.
            None => self.datapath.sync(&programmable, ifindex_of),
            Some(_) if repairing => {
                let applied = self.datapath.sync(&programmable, ifindex_of);
                if let Ok(stats) = &applied {
                    info!(writes = stats.writes, "endpoint map repaired");
                }
                applied
            }
            Some(programmed) => {
                let mut delta = Delta::between(programmed, &programmable);
                for (pod, endpoint) in &programmable.endpoints {
                    let moved = self.interfaces.get(pod) != interfaces.get(pod);
                    if moved && !delta.endpoint_upserts.iter().any(|e| &e.pod == pod) {
                        delta.endpoint_upserts.push(endpoint.clone());
                    }
                }
                self.datapath.set_rules(&programmable.rules)?;
                self.datapath.apply(&delta, ifindex_of)
            }
        };
        let (writes, apply_error) = match applied {
            Ok(stats) => (stats.writes, None),
            Err(error) => (0, Some(Box::new(error))),
        };
        let written = Timestamp::now();

        let endpoint_ifindexes: BTreeSet<u32> = interfaces.values().copied().collect();
        let mut held = self.interfaces_to_hold(&endpoint_ifindexes).await?;
        held.extend(binding.held.difference(&endpoint_ifindexes));
        let wanted: BTreeSet<u32> = endpoint_ifindexes.union(&held).copied().collect();
        let mut attached = 0;
        let mut detached = 0;
        for (pod, &ifindex) in &interfaces {
            if self.interfaces.get(pod) != Some(&ifindex) {
                self.datapath
                    .attach(ifindex)
                    .map_err(|source| ReconcileError::Attach {
                        pod: pod.clone(),
                        ifindex,
                        source: Box::new(source),
                    })?;
                info!(%pod, ifindex, "programs attached");
                attached += 1;
            }
        }
        let held_writes = self.sync_held(&held)?;
        for ifindex in self.datapath.attached()? {
            if !wanted.contains(&ifindex) {
                self.datapath.detach(ifindex)?;
                info!(
                    ifindex,
                    "programs detached: no local pod uses the interface"
                );
                detached += 1;
            }
        }

        self.sync_uplinks(&wanted).await?;

        if let Ok(mut context) = self.flow_context.write() {
            context.update(&loaded.snapshot, &resolved);
        }
        if writes > 0 {
            info!(
                writes,
                endpoints = programmable.endpoints.len(),
                generation = %generation,
                "datapath updated"
            );
        }
        for pod in &waiting {
            debug!(%pod, "no interface yet");
        }
        if self.programmed.is_none() {
            info!(
                writes = writes + addr_writes + held_writes,
                endpoints = programmable.endpoints.len(),
                held = held.len(),
                "first reconcile since start"
            );
        }
        self.observer.reconciled(ReconcileReport {
            generation: generation.clone(),
            started,
            written,
            finished: Timestamp::now(),
            writes: writes + addr_writes + held_writes,
            endpoints: programmable.endpoints.len(),
            waiting: waiting.len(),
            held: held.len(),
            attached,
            detached,
            repaired,
        });
        let degraded = resolved.degraded.clone();
        self.resolved = resolved;
        self.programmed = Some(programmable);
        self.interfaces = interfaces;
        if self.applied_generation.as_deref() != Some(generation.as_str()) {
            let path = self.config.state_dir.join("generation");
            write_atomically(&path, &format!("{generation}\n"))
                .map_err(|source| ReconcileError::Publish { path, source })?;
            self.applied_generation = Some(generation);
        }
        if !loaded.rejected.is_empty() || !degraded.is_empty() || apply_error.is_some() {
            return Err(ReconcileError::Incomplete {
                rejected: loaded.rejected,
                degraded,
                apply: apply_error,
            });
        }
        Ok(writes > 0)
    }

    /// Attaches `svc_egress` to every uplink and detaches it from interfaces that are no
    /// longer uplinks (gone, or now a pod's).
    async fn sync_uplinks(
        &mut self,
        endpoint_ifindexes: &BTreeSet<u32>,
    ) -> Result<(), ReconcileError> {
        let uplinks = uplinks_of(
            self.discovery.uplinks().await?,
            endpoint_ifindexes.iter().copied(),
        );
        for &ifindex in &uplinks {
            if !self.uplinks.contains(&ifindex) {
                self.datapath.attach_uplink(ifindex).map_err(|source| {
                    ReconcileError::AttachUplink {
                        ifindex,
                        source: Box::new(source),
                    }
                })?;
                info!(ifindex, "svc_egress attached to uplink");
            }
        }
        for ifindex in self.datapath.attached_uplinks()? {
            if !uplinks.contains(&ifindex) {
                self.datapath.detach_uplink(ifindex)?;
                info!(ifindex, "svc_egress detached: no longer an uplink");
            }
        }
        self.uplinks = uplinks;
        Ok(())
    }

    /// Makes `conflicts` the current binding conflicts: new ones are logged as warnings, gone
    /// ones as resolved.
    fn track_conflicts(&mut self, conflicts: Vec<Conflict>) {
        for conflict in &conflicts {
            if !self.conflicts.contains(conflict) {
                warn!(
                    pod = %conflict.pod,
                    bound = %describe_bound(conflict.bound),
                    claimed_by = %describe_interfaces(&conflict.claimants),
                    "binding conflict: other interfaces claim the pod's address; they are held \
                     closed until the conflict goes away"
                );
            }
        }
        for conflict in &self.conflicts {
            if !conflicts.contains(conflict) {
                info!(
                    pod = %conflict.pod,
                    bound = %describe_bound(conflict.bound),
                    claimed_by = %describe_interfaces(&conflict.claimants),
                    "binding conflict resolved"
                );
            }
        }
        self.conflicts = conflicts;
    }
}

/// What `status.json` tells of the start: `started` is when opening the datapath began.
fn start_report(started: Timestamp, report: &OpenReport) -> StartReport {
    let names = |hooks: &[Hook]| hooks.iter().map(ToString::to_string).collect();
    StartReport {
        time: started,
        datapath_open: Timestamp::now(),
        adopted_programs: names(&report.adopted_programs),
        installed_programs: names(&report.installed_programs),
        replaced_maps: report.replaced_maps.clone(),
        held_closed: report.held_closed.clone(),
    }
}

/// The entry of every programmed endpoint, by the interface it was written for.
fn expected_entries(
    programmed: &NodeState,
    interfaces: &BTreeMap<PodRef, u32>,
) -> BTreeMap<u32, (PodRef, EndpointInfo)> {
    programmed
        .endpoints
        .iter()
        .filter_map(|(pod, endpoint)| {
            let ifindex = interfaces.get(pod)?;
            Some((*ifindex, (pod.clone(), endpoint.info)))
        })
        .collect()
}

fn report_difference(difference: &EndpointDifference) {
    match difference {
        EndpointDifference::Missing { pod, ifindex } => warn!(
            %pod,
            interface = %describe_interface(*ifindex),
            "endpoint entry missing from the kernel's map; restoring it"
        ),
        EndpointDifference::Changed {
            pod,
            ifindex,
            found,
        } => warn!(
            %pod,
            interface = %describe_interface(*ifindex),
            ?found,
            "endpoint entry differs from what was programmed; rewriting it"
        ),
        EndpointDifference::Stale { ifindex, found } => warn!(
            interface = %describe_interface(*ifindex),
            ?found,
            "endpoint entry on an interface no programmed pod is bound to; removing it"
        ),
    }
}

/// `name (ifindex N)`, or the index alone for an interface that is gone.
fn describe_interface(ifindex: u32) -> String {
    match status::interface_name(ifindex) {
        Some(name) => format!("{name} (ifindex {ifindex})"),
        None => format!("ifindex {ifindex}"),
    }
}

fn describe_bound(bound: Option<u32>) -> String {
    bound.map_or_else(|| "none".to_owned(), describe_interface)
}

fn describe_interfaces(interfaces: &BTreeSet<u32>) -> String {
    interfaces
        .iter()
        .map(|&ifindex| describe_interface(ifindex))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The uplinks among `links`: those that are not an endpoint's interface.
fn uplinks_of(links: Vec<u32>, endpoints: impl Iterator<Item = u32>) -> Vec<u32> {
    let endpoints: BTreeSet<u32> = endpoints.collect();
    links
        .into_iter()
        .filter(|ifindex| !endpoints.contains(ifindex))
        .collect()
}

/// Every ClusterIP of every Service, both families, sorted and without repeats.
fn service_addrs(snapshot: &Snapshot) -> Vec<IpAddr> {
    let addrs: BTreeSet<IpAddr> = snapshot
        .services
        .iter()
        .flat_map(|service| service.cluster_ips.iter().copied())
        .collect();
    addrs.into_iter().collect()
}

/// Replaces `path` with `text` so readers see the old or the new content, never a mix.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, text)?;
    fs::rename(&temporary, path)
}

fn remove_if_present(path: &Path) -> Result<(), AgentError> {
    match fs::remove_file(path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => Err(AgentError::StateDir {
            path: path.to_owned(),
            source,
        }),
        _ => Ok(()),
    }
}
