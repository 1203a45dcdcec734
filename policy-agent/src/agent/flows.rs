//! The kernel's flow events, named: which pods, which policy. Appended as JSON lines to the
//! state directory's `flows.jsonl`, for `policy-agent flows`, the demo and operators.
//!
//! The log is bounded: once it passes [`FLOW_LOG_MAX_BYTES`] it is renamed to `flows.jsonl.1`
//! (replacing the previous one) and a new log starts, so the node keeps at most twice that.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, OpenOptions},
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use nix::time::{ClockId, clock_gettime};
use policy_common::verdict::{Direction, DropReason, Verdict};
pub use policy_core::telemetry::FlowRecord;
use tracing::{debug, warn};

use crate::{
    datapath::{AsyncEventReader, Flow},
    policy::{
        model::{Pod, Snapshot},
        state::{NodeState, PodRef, PolicyRule},
    },
};

/// What the agent knows to name the parties and the deciding policy of a flow.
#[derive(Debug, Default)]
pub struct FlowContext {
    node: String,
    pods_by_ip: BTreeMap<IpAddr, PodRef>,
    endpoints: BTreeMap<u32, EndpointNames>,
    rules: BTreeMap<u32, PolicyRule>,
}

/// A local endpoint and the policies that isolate it, per direction.
#[derive(Debug, Default)]
struct EndpointNames {
    pod: Option<PodRef>,
    ingress_isolated_by: Vec<String>,
    egress_isolated_by: Vec<String>,
}

/// The size past which the flow log is rotated.
pub const FLOW_LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;

impl FlowContext {
    pub fn new(node: &str) -> FlowContext {
        FlowContext {
            node: node.to_owned(),
            ..FlowContext::default()
        }
    }

    /// Learns the names of the latest resolve.
    pub fn update(&mut self, snapshot: &Snapshot, state: &NodeState) {
        self.pods_by_ip = snapshot
            .pods
            .iter()
            .filter(|pod| pod.is_peer())
            .flat_map(|pod| pod.ips.iter().map(move |&ip| (ip, pod.pod_ref())))
            .collect();
        let pods: BTreeMap<PodRef, &Pod> = snapshot
            .pods
            .iter()
            .map(|pod| (pod.pod_ref(), pod))
            .collect();
        let isolated_by = |pod: &PodRef, direction: Direction| -> Vec<String> {
            let Some(pod) = pods.get(pod) else {
                return Vec::new();
            };
            snapshot
                .policies
                .iter()
                .filter(|policy| policy.has_type(direction) && policy.selects(pod))
                .map(|policy| format!("{}/{}", policy.namespace, policy.name))
                .collect()
        };
        self.endpoints = state
            .endpoints
            .values()
            .map(|endpoint| {
                (
                    endpoint.info.endpoint_id,
                    EndpointNames {
                        pod: Some(endpoint.pod.clone()),
                        ingress_isolated_by: isolated_by(&endpoint.pod, Direction::Ingress),
                        egress_isolated_by: isolated_by(&endpoint.pod, Direction::Egress),
                    },
                )
            })
            .collect();
        self.rules = state.rules.clone();
    }

    /// Names a flow. `clocks` converts the kernel's monotonic time to wall-clock time.
    pub fn describe(&self, flow: &Flow, clocks: Option<Clocks>) -> FlowRecord {
        let endpoint = self.endpoints.get(&flow.endpoint_id);
        let name = |ip: &IpAddr| self.pods_by_ip.get(ip).map(ToString::to_string);
        let decided_by = match flow.outcome {
            Ok(Verdict::Policy) => self.rules.get(&flow.rule_id).map(ToString::to_string),
            Ok(_) => None,
            Err(DropReason::AdminDenied | DropReason::BaselineDenied) => {
                self.rules.get(&flow.rule_id).map(ToString::to_string)
            }
            Err(_) => endpoint.and_then(|endpoint| {
                let isolated_by = match flow.direction {
                    Direction::Ingress => &endpoint.ingress_isolated_by,
                    Direction::Egress => &endpoint.egress_isolated_by,
                };
                (!isolated_by.is_empty())
                    .then(|| format!("default deny: isolated by {}", isolated_by.join(", ")))
            }),
        };
        FlowRecord {
            time: clocks.and_then(|clocks| clocks.wall_time(flow.timestamp_ns)),
            time_ns: flow.timestamp_ns,
            node: self.node.clone(),
            pod: endpoint.and_then(|endpoint| endpoint.pod.as_ref().map(ToString::to_string)),
            direction: match flow.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            }
            .to_owned(),
            protocol: protocol_name(flow.protocol),
            src: flow.src,
            src_port: flow.src_port,
            src_pod: name(&flow.src),
            dst: flow.dst,
            dst_port: flow.dst_port,
            dst_pod: name(&flow.dst),
            verdict: if flow.outcome.is_ok() {
                "allowed"
            } else {
                "dropped"
            }
            .to_owned(),
            reason: match flow.outcome {
                Ok(verdict) => verdict.name(),
                Err(reason) => reason.name(),
            }
            .to_owned(),
            decided_by,
        }
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "ICMP".to_owned(),
        6 => "TCP".to_owned(),
        17 => "UDP".to_owned(),
        58 => "ICMPv6".to_owned(),
        132 => "SCTP".to_owned(),
        other => other.to_string(),
    }
}

/// The monotonic clock and the wall clock read together, to place kernel timestamps in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clocks {
    pub monotonic_ns: u64,
    pub wall: Timestamp,
}

impl Clocks {
    /// Both clocks now; `None` when the monotonic clock cannot be read.
    pub fn now() -> Option<Clocks> {
        let monotonic = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
        let monotonic_ns = Duration::from(monotonic).as_nanos();
        Some(Clocks {
            monotonic_ns: u64::try_from(monotonic_ns).ok()?,
            wall: Timestamp::now(),
        })
    }

    /// The wall-clock time of a CLOCK_MONOTONIC instant.
    pub fn wall_time(&self, monotonic_ns: u64) -> Option<Timestamp> {
        let ago = i128::from(self.monotonic_ns) - i128::from(monotonic_ns);
        let ago = SignedDuration::from_nanos(i64::try_from(ago).ok()?);
        self.wall.checked_sub(ago).ok()
    }
}

/// The file a full flow log is renamed to.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Appends `lines` to `log`, first rotating it when it has reached `max_bytes`.
pub fn append(log: &Path, lines: &str, max_bytes: u64) -> io::Result<()> {
    match fs::metadata(log) {
        Ok(metadata) if metadata.len() >= max_bytes => fs::rename(log, rotated_path(log))?,
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut file| file.write_all(lines.as_bytes()))
}

/// Appends every flow event to `log` until the ring buffer fails.
pub async fn record(mut events: AsyncEventReader, context: Arc<RwLock<FlowContext>>, log: PathBuf) {
    let mut undecodable = BTreeSet::new();
    loop {
        let batch = match events.next_batch().await {
            Ok(batch) => batch,
            Err(error) => {
                warn!(%error, "flow events stopped");
                return;
            }
        };
        let mut lines = String::new();
        let clocks = Clocks::now();
        if let Ok(context) = context.read() {
            for flow in batch {
                match flow {
                    Ok(flow) => {
                        if let Ok(line) = serde_json::to_string(&context.describe(&flow, clocks)) {
                            lines.push_str(&line);
                            lines.push('\n');
                        }
                    }
                    // A fenced endpoint reports the non-IP frames it drops, which carry no
                    // addresses: warn once, not for every frame.
                    Err(error) if undecodable.insert(error.to_string()) => {
                        warn!(%error, "undecodable flow event; further ones are logged at debug");
                    }
                    Err(error) => debug!(%error, "undecodable flow event"),
                }
            }
        }
        if let Err(error) = append(&log, &lines, FLOW_LOG_MAX_BYTES) {
            warn!(%error, log = %log.display(), "cannot append flow events");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_time_is_placed_before_the_wall_clock_reading() {
        let clocks = Clocks {
            monotonic_ns: 10_000_000_000,
            wall: "2026-11-26T07:00:10Z".parse().unwrap(),
        };
        assert_eq!(
            clocks.wall_time(8_500_000_000).unwrap().to_string(),
            "2026-11-26T07:00:08.5Z"
        );
    }

    #[test]
    fn a_full_log_is_rotated_once_and_the_new_one_starts_empty() {
        let dir = std::env::temp_dir().join(format!("flowlog-rotate-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("flows.jsonl");
        append(&log, "aaaa\n", 8).unwrap();
        append(&log, "bbbb\n", 8).unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "aaaa\nbbbb\n");
        append(&log, "cccc\n", 8).unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "cccc\n");
        assert_eq!(
            fs::read_to_string(rotated_path(&log)).unwrap(),
            "aaaa\nbbbb\n"
        );
        append(&log, "dddd\n", 8).unwrap();
        append(&log, "eeee\n", 8).unwrap();
        assert_eq!(
            fs::read_to_string(rotated_path(&log)).unwrap(),
            "cccc\ndddd\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
