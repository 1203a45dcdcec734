//! `policy-agent run`: the node agent's loop.
//!
//! source (the API server's reflectors, or a manifest directory) -> snapshot -> resolve (pure)
//! -> desired state of this node's endpoints -> the node observed (each local pod's candidate
//! interfaces, the node's addresses and links, what the datapath holds;
//! [`execute::observe`]) -> a plan (pure: bindings, the map writes, attaches, holds, releases,
//! detaches and uplinks; [`plan`]) -> the plan executed (map writes, then attach;
//! [`execute::execute`]) -> the applied generation is published. Each reconcile is one
//! `reconcile` span that ends with its counts, which `status.json` also carries.
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
mod execute;
mod flows;
mod plan;
mod source;
pub mod status;

use std::{
    collections::BTreeSet,
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

pub use endpoints::{
    DEFAULT_INTERFACE_PREFIX, NewEndpointPolicy, NewEndpoints, NewEndpointsParseError,
};
pub use flows::{Clocks, FLOW_LOG_MAX_BYTES, FlowContext, FlowRecord, rotated_path};
use jiff::Timestamp;
use plan::Applied;
use source::{LoadError, Loader};
pub use source::{RejectedObject, Source, SourceParseError};
use status::{ReconcileReport, StartReport};
use tracing::{Span, debug, info, instrument, warn};

use crate::{
    datapath::{ApplyError, Datapath, DatapathConfig, DatapathError, Hook, OpenReport},
    discovery::{
        Discovery, DiscoveryError,
        binding::Conflict,
        events::{self, Pacer},
    },
    error_chain, k8s,
    metrics::{self, Health, Metrics},
    policy::{
        adopt::resolve_adopting,
        resolve::{ResolveError, resolve},
        state::{Degraded, PodRef},
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
    applied: Applied,
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
    let flow_log = config.state_dir.join(policy_core::telemetry::FLOW_LOG);
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
        applied: Applied::default(),
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
        let generation = self.applied_generation.as_deref();
        self.observer
            .observe(&result, elapsed, &self.applied, generation);
        let status = self.observer.status(
            &self.config.node_name,
            &self.config.source.to_string(),
            &self.applied,
            generation,
        );
        if let Err(error) = &result
            && error.apply().is_some()
        {
            // Fenced endpoints keep their entries otherwise (a later delta may not touch them):
            // the next reconcile diffs against what the maps really hold, which heals them.
            self.applied.programmed = None;
        }
        self.observer
            .publish(&self.config.state_dir, &status, &self.applied)
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

    /// Load, resolve, observe the node, plan, execute, publish the generation. Returns whether
    /// anything was written.
    #[instrument(
        name = "reconcile",
        skip_all,
        fields(generation, writes, endpoints, waiting, held, attached, detached)
    )]
    async fn reconcile(&mut self) -> Result<bool, ReconcileError> {
        let started = Timestamp::now();
        let mut loaded = self.loader.load()?;
        for rejected in &loaded.rejected {
            debug!("{}", error_chain(rejected));
        }
        let generation = std::mem::take(&mut loaded.generation);
        let span = Span::current();
        span.record("generation", generation.as_str());
        let adopting = self.applied.programmed.is_none();
        let resolved = if adopting {
            // After a restart: keep the ids the pinned maps already use, so unchanged state is
            // not rewritten.
            resolve_adopting(
                &loaded.snapshot,
                &self.config.node_name,
                &self.datapath.programmed_state()?,
            )?
        } else {
            resolve(
                &loaded.snapshot,
                &self.config.node_name,
                &self.applied.resolved,
            )?
        };
        let observed = execute::observe(
            &self.discovery,
            &self.datapath,
            &resolved,
            &self.applied,
            self.config.new_endpoints.mode,
        )
        .await?;
        let plan = plan::plan(
            &loaded.snapshot,
            &resolved,
            &observed,
            &self.applied,
            &self.settings(),
        );
        self.track_conflicts(plan.conflicts.clone());
        for pod in &plan.waiting {
            debug!(%pod, "no interface yet");
        }
        let (waiting, held) = (plan.waiting.len(), plan.hold.len());
        let executed = execute::execute(plan, &mut self.datapath, &mut self.applied)?;

        if let Ok(mut context) = self.flow_context.write() {
            context.update(&loaded.snapshot, &resolved);
        }
        let endpoints = self
            .applied
            .programmed
            .as_ref()
            .map_or(0, |programmed| programmed.endpoints.len());
        let writes = executed.map_writes + executed.addr_writes + executed.held_writes;
        if executed.map_writes > 0 {
            info!(
                writes = executed.map_writes,
                endpoints,
                generation = %generation,
                "datapath updated"
            );
        }
        if adopting {
            info!(writes, endpoints, held, "first reconcile since start");
        }
        span.record("writes", writes);
        span.record("endpoints", endpoints);
        span.record("waiting", waiting);
        span.record("held", held);
        span.record("attached", executed.attached);
        span.record("detached", executed.detached);
        let finished = Timestamp::now();
        self.observer.reconciled(ReconcileReport {
            generation: generation.clone(),
            started,
            written: executed.written.unwrap_or(finished),
            finished,
            writes,
            endpoints,
            waiting,
            held,
            attached: executed.attached,
            detached: executed.detached,
            repaired: observed.differences.len(),
        });
        let degraded = resolved.degraded.clone();
        self.applied.resolved = resolved;
        if self.applied_generation.as_deref() != Some(generation.as_str()) {
            let path = self.config.state_dir.join("generation");
            write_atomically(&path, &format!("{generation}\n"))
                .map_err(|source| ReconcileError::Publish { path, source })?;
            self.applied_generation = Some(generation);
        }
        if !loaded.rejected.is_empty() || !degraded.is_empty() || executed.apply_error.is_some() {
            return Err(ReconcileError::Incomplete {
                rejected: loaded.rejected,
                degraded,
                apply: executed.apply_error,
            });
        }
        Ok(executed.map_writes > 0)
    }

    fn settings(&self) -> plan::Settings {
        plan::Settings {
            log_allowed: self.config.log_allowed,
            any_source_namespaces: self.config.any_source_namespaces.clone(),
            new_endpoints: self.config.new_endpoints.clone(),
        }
    }

    /// Makes `conflicts` the current binding conflicts: new ones are logged as warnings, gone
    /// ones as resolved.
    fn track_conflicts(&mut self, conflicts: Vec<Conflict>) {
        for conflict in &conflicts {
            if !self.applied.conflicts.contains(conflict) {
                warn!(
                    pod = %conflict.pod,
                    bound = %describe_bound(conflict.bound),
                    claimed_by = %describe_interfaces(&conflict.claimants),
                    "binding conflict: other interfaces claim the pod's address; they are held \
                     closed until the conflict goes away"
                );
            }
        }
        for conflict in &self.applied.conflicts {
            if !conflicts.contains(conflict) {
                info!(
                    pod = %conflict.pod,
                    bound = %describe_bound(conflict.bound),
                    claimed_by = %describe_interfaces(&conflict.claimants),
                    "binding conflict resolved"
                );
            }
        }
        self.applied.conflicts = conflicts;
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
