//! The kernel's flow events, named: which pods, which policy. Appended as JSON lines to the
//! state directory's `flows.jsonl`, for `policy-agent flows`, the demo and operators.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::Write as _,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use policy_common::verdict::{Direction, Verdict};
use serde::Serialize;
use tracing::warn;

use crate::{
    datapath::{AsyncEventReader, Flow},
    policy::{
        model::{Pod, Snapshot},
        state::{NodeState, PodRef, RuleRef},
    },
};

/// What the agent knows to name the parties and the deciding policy of a flow.
#[derive(Debug, Default)]
pub struct FlowContext {
    node: String,
    pods_by_ip: BTreeMap<IpAddr, PodRef>,
    endpoints: BTreeMap<u32, EndpointNames>,
    rules: BTreeMap<u32, RuleRef>,
}

/// A local endpoint and the policies that isolate it, per direction.
#[derive(Debug, Default)]
struct EndpointNames {
    pod: Option<PodRef>,
    ingress_isolated_by: Vec<String>,
    egress_isolated_by: Vec<String>,
}

/// One line of `flows.jsonl`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub node: String,
    /// The local pod whose program decided.
    pub pod: Option<String>,
    pub direction: &'static str,
    pub protocol: String,
    pub src: IpAddr,
    pub src_port: u16,
    pub src_pod: Option<String>,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub dst_pod: Option<String>,
    pub verdict: &'static str,
    pub reason: &'static str,
    /// The rule that allowed the flow, or the policies whose isolation dropped it.
    pub decided_by: Option<String>,
}

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

    /// Names a flow.
    pub fn describe(&self, flow: &Flow) -> FlowRecord {
        let endpoint = self.endpoints.get(&flow.endpoint_id);
        let name = |ip: &IpAddr| self.pods_by_ip.get(ip).map(ToString::to_string);
        let decided_by = match flow.outcome {
            Ok(Verdict::Policy) => self.rules.get(&flow.rule_id).map(ToString::to_string),
            Ok(_) => None,
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
            time_ns: flow.timestamp_ns,
            node: self.node.clone(),
            pod: endpoint.and_then(|endpoint| endpoint.pod.as_ref().map(ToString::to_string)),
            direction: match flow.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            },
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
            },
            reason: match flow.outcome {
                Ok(verdict) => verdict.name(),
                Err(reason) => reason.name(),
            },
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

/// Appends every flow event to `log` until the ring buffer fails.
pub async fn record(mut events: AsyncEventReader, context: Arc<RwLock<FlowContext>>, log: PathBuf) {
    loop {
        let batch = match events.next_batch().await {
            Ok(batch) => batch,
            Err(error) => {
                warn!(%error, "flow events stopped");
                return;
            }
        };
        let mut lines = String::new();
        if let Ok(context) = context.read() {
            for flow in batch {
                match flow {
                    Ok(flow) => {
                        if let Ok(line) = serde_json::to_string(&context.describe(&flow)) {
                            lines.push_str(&line);
                            lines.push('\n');
                        }
                    }
                    Err(error) => warn!(%error, "undecodable flow event"),
                }
            }
        }
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(lines.as_bytes()));
        if let Err(error) = written {
            warn!(%error, log = %log.display(), "cannot append flow events");
        }
    }
}
