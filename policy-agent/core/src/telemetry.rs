//! What the agent writes for others to read: its `status.json` and the lines of `flows.jsonl`.
//! `policy-agent status` and `flows`, the lab, the end-to-end checks, the benchmarks and the
//! tests read them with these same types; nothing learns what the agent did from its log.

use std::{fmt, fs, io, net::IpAddr, path::Path};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The file the agent publishes its status in, under the state directory.
pub const STATUS_FILE: &str = "status.json";
/// The file the agent logs the kernel's drops (and, when asked, new allowed flows) in, one
/// [`FlowRecord`] per line, under the state directory.
pub const FLOW_LOG: &str = "flows.jsonl";

/// The agent's state, as `status.json` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub source: String,
    /// When this status was written.
    pub time: Timestamp,
    /// The generation of the source content the datapath enforces.
    pub applied_generation: Option<String>,
    /// Whether a reconcile has programmed the datapath since the agent started.
    pub ready: bool,
    pub endpoints: Vec<EndpointStatus>,
    /// Pods claimed by interfaces they are not bound to; those interfaces are held closed.
    #[serde(default)]
    pub conflicts: Vec<ConflictStatus>,
    pub maps: Vec<MapUsage>,
    /// Failures that persist now, oldest first.
    pub failures: Vec<Failure>,
    /// The error of the last reconcile, while the reconciles fail.
    pub last_error: Option<LastError>,
    /// How this agent process started.
    #[serde(default)]
    pub start: Option<StartReport>,
    /// The first reconcile since the start that ran to its end: after a restart that adopted
    /// unchanged pins, it writes nothing.
    #[serde(default)]
    pub first_reconcile: Option<ReconcileReport>,
    /// The last reconcile that ran to its end.
    #[serde(default)]
    pub last_reconcile: Option<ReconcileReport>,
    /// The last reconcile that wrote to the maps.
    #[serde(default)]
    pub last_update: Option<ReconcileReport>,
}

/// How the agent started: when, and what it found pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartReport {
    /// When the process began to open the datapath.
    pub time: Timestamp,
    /// When the datapath was open: the eBPF object loaded (the verifier included) and the pins
    /// adopted or replaced.
    pub datapath_open: Timestamp,
    /// Pinned programs kept as they were.
    pub adopted_programs: Vec<String>,
    /// Programs pinned anew (a first start, or an upgrade).
    pub installed_programs: Vec<String>,
    /// Map pins of another layout, replaced by empty maps.
    pub replaced_maps: Vec<String>,
    /// Interfaces held closed because maps the programs decide by started empty.
    pub held_closed: Vec<u32>,
}

/// One reconcile that ran to its end, failures included (they are in `failures`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// The generation of the source content it applied.
    pub generation: String,
    pub started: Timestamp,
    /// When the maps were written, before programs were attached.
    pub written: Timestamp,
    pub finished: Timestamp,
    /// Map entries written or removed: endpoints, policy, peers, node and Service addresses,
    /// held interfaces.
    pub writes: usize,
    /// Endpoints programmed: local pods with an interface.
    pub endpoints: usize,
    /// Local pods without an interface yet.
    pub waiting: usize,
    /// Interfaces held closed.
    pub held: usize,
    /// Interfaces the pod programs were attached to, and detached from.
    pub attached: usize,
    pub detached: usize,
    /// Endpoint-map entries found to differ from what was programmed, and repaired.
    pub repaired: usize,
}

/// One local pod's endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `namespace/name`.
    pub pod: String,
    /// The host-side interface; absent while the pod has none yet.
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub endpoint_id: u32,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub state: EndpointPhase,
    /// The generation of the reconcile that last wrote this endpoint's entry or policy entries.
    pub generation: Option<String>,
    /// Entries of the policy map this endpoint uses.
    pub policy_entries: usize,
}

/// Where an endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointPhase {
    /// Its programs run with its policy.
    Programmed,
    /// A map update for it failed: it denies all traffic until an update succeeds.
    Fenced,
    /// The pod has no interface on this node yet.
    WaitingForInterface,
    /// A binding conflict holds it closed: its interface claims another pod's address, or it
    /// has no established interface and several claim it. It denies all traffic until the
    /// conflict goes away.
    Conflict,
}

/// A pod claimed by interfaces it is not bound to: the agent binds each pod to the one interface
/// whose peer holds its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictStatus {
    /// `namespace/name`.
    pub pod: String,
    /// The interface the pod is bound to; absent while it has none.
    pub bound: Option<InterfaceRef>,
    /// The other interfaces claiming it, each held closed.
    pub claimants: Vec<InterfaceRef>,
}

/// A host-side interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceRef {
    pub ifindex: u32,
    /// Absent when the interface is gone.
    pub interface: Option<String>,
}

/// Entries and capacity of one map that can fill (the LRU maps evict instead).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapUsage {
    pub map: String,
    /// The entries the last resolve needs.
    pub entries: u64,
    pub capacity: u64,
}

/// What kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// A map (or the resolver's check of its capacity) has no room.
    MapFull,
    /// Another map write failed.
    MapUpdate,
    /// A program could not be attached.
    Attach,
    /// An object of the source was rejected (it does not parse, or a field is invalid).
    InvalidObject,
    /// Valid objects the datapath cannot represent (ids exhausted).
    Unrepresentable,
    /// The agent could not read its source, talk to netlink, or write its state.
    Agent,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        FailureKind::MapFull,
        FailureKind::MapUpdate,
        FailureKind::Attach,
        FailureKind::InvalidObject,
        FailureKind::Unrepresentable,
        FailureKind::Agent,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            FailureKind::MapFull => "map-full",
            FailureKind::MapUpdate => "map-update",
            FailureKind::Attach => "attach",
            FailureKind::InvalidObject => "invalid-object",
            FailureKind::Unrepresentable => "unrepresentable",
            FailureKind::Agent => "agent",
        }
    }
}

/// One failure that persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// The object it concerns: a pod, a manifest object, a map's contents, the node.
    pub object: String,
    /// The first error of this kind and object, with its causes.
    pub error: String,
    /// How many errors of this kind and object the last failing reconcile had.
    pub count: usize,
    /// When it started.
    pub since: Timestamp,
}

/// The error of the last reconcile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub time: Timestamp,
    pub error: String,
}

/// Why `status.json` cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusReadError {
    #[error(
        "no agent has published a status in {dir} (is `policy-agent run` running with this --state-dir?)",
        dir = dir.display()
    )]
    Missing {
        dir: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid status", path = path.display())]
    Invalid {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the status an agent published in `state_dir`.
pub fn read(state_dir: &Path) -> Result<Status, StatusReadError> {
    let path = state_dir.join(STATUS_FILE);
    let text = fs::read_to_string(&path).map_err(|source| StatusReadError::Missing {
        dir: state_dir.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StatusReadError::Invalid { path, source })
}

/// One line of `flows.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When the kernel decided, RFC 3339 in UTC (from the event's CLOCK_MONOTONIC time).
    #[serde(default)]
    pub time: Option<Timestamp>,
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub node: String,
    /// The local pod whose program decided.
    pub pod: Option<String>,
    pub direction: String,
    pub protocol: String,
    pub src: IpAddr,
    pub src_port: u16,
    pub src_pod: Option<String>,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub dst_pod: Option<String>,
    pub verdict: String,
    pub reason: String,
    /// The rule that allowed the flow, or the policies whose isolation dropped it.
    pub decided_by: Option<String>,
}

/// One flow on one line: time, node, verdict, protocol, source and destination (pod or IP,
/// with ports), the endpoint and direction that decided, the reason and what decided it.
impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = match self.time {
            Some(time) => time.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            None => format!("monotonic+{}ns", self.time_ns),
        };
        let has_ports = matches!(self.protocol.as_str(), "TCP" | "UDP" | "SCTP");
        let party = |pod: &Option<String>, ip: IpAddr, port: u16| {
            let name = match (pod, ip) {
                (Some(pod), _) => pod.clone(),
                (None, IpAddr::V6(v6)) if has_ports => format!("[{v6}]"),
                (None, ip) => ip.to_string(),
            };
            if has_ports {
                format!("{name}:{port}")
            } else {
                name
            }
        };
        write!(
            f,
            "{time} {node} {verdict} {protocol} {src} -> {dst} {direction} of {pod} {reason}",
            node = self.node,
            verdict = self.verdict,
            protocol = self.protocol,
            src = party(&self.src_pod, self.src, self.src_port),
            dst = party(&self.dst_pod, self.dst, self.dst_port),
            direction = self.direction,
            pod = self.pod.as_deref().unwrap_or("unknown endpoint"),
            reason = self.reason,
        )?;
        if let Some(decided_by) = &self.decided_by {
            write!(f, " ({decided_by})")?;
        }
        Ok(())
    }
}
