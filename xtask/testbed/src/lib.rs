//! The test bed the lab, the benchmarks and the agent's privileged tests share: network
//! namespaces ([`netns`]: created, entered, run in, and removed with everything in them, by a
//! guard when they belong to one run) and the external commands that wire them ([`cmd`]).

pub mod cmd;
pub mod netns;
