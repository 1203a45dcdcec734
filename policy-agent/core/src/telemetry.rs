//! What the agent writes for others to read: the lines of `flows.jsonl`. `policy-agent flows`,
//! the demo and the tests read them with these same types.

use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

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
