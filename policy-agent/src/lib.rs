//! The node agent: resolves NetworkPolicies into per-endpoint allow maps and programs the TC
//! eBPF datapath that enforces them.

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod discovery;
pub mod explain;
pub mod k8s;
pub mod manifest;
pub mod metrics;
pub mod policy;

/// The compiled `policy-ebpf` object, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy-ebpf"));

/// An error and its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
