//! The pure policy core: Kubernetes objects in, desired datapath state out.
//!
//! Nothing here names kube, k8s_openapi, aya or tokio, so every NetworkPolicy rule is testable in
//! milliseconds without a cluster or a kernel.

pub mod adopt;
pub mod cluster;
pub mod lookup;
pub mod model;
pub mod resolve;
pub mod spec;
pub mod state;
mod tiers;
