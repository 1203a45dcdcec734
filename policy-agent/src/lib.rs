//! The node agent: resolves NetworkPolicies into per-endpoint allow maps and programs the TC
//! eBPF datapath that enforces them.

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod discovery;
pub mod k8s;
pub mod metrics;

pub use policy_core::{error_chain, explain, manifest, policy, printable, steers_terminal};

/// The compiled `policy-ebpf` object, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy-ebpf"));
