//! The test bed the lab, the benchmarks and the agent's privileged tests share: network
//! namespaces ([`netns`]: created, entered, run in, and removed with everything in them, by a
//! guard when they belong to one run), the external commands that wire them ([`cmd`]), pods
//! attached to their node as the ptp and bridge CNI plugins do it ([`wire`]), and the bare
//! classifiers that price what running any TC program costs ([`bpf`]).

pub mod bpf;
pub mod cmd;
pub mod netns;
pub mod wire;
