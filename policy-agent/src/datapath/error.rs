//! Errors of the datapath adapter: one enum for setup and attachment, one for map updates.

use std::{io, path::PathBuf};

use aya::{
    EbpfError,
    maps::MapError,
    pin::PinError,
    programs::{ProgramError, links::LinkError},
};
use policy_common::maps::PolicyKey;

use super::Hook;
use crate::policy::state::{PodRef, Prefix};

/// Loading, pinning, attaching and reading the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot read the mount table {path}")]
    ReadMounts {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount bpffs at {path}")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("pin directory {path} is not on a bpf filesystem (it is on {fs_type})")]
    NotBpffs { path: PathBuf, fs_type: String },
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list pin directory {path}")]
    ListPins {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove pin {path}")]
    RemovePin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the eBPF object with maps pinned under {pin_dir}")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("the eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("the eBPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot read map {name}")]
    ReadMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot open pinned map {path}")]
    OpenPinnedMap {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot read map info of pin {path}")]
    MapInfo {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot read which maps program {name} uses")]
    ProgramMaps {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot pin program {name} at {path}")]
    PinProgram {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("cannot open pinned link {path}")]
    OpenLink {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("cannot read link info of {path}")]
    LinkInfo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach {hook} to interface {ifindex}")]
    Attach {
        ifindex: u32,
        hook: Hook,
        #[source]
        source: ProgramError,
    },
    #[error("cannot replace the program of link {path} with the new {hook}")]
    UpdateLink {
        path: PathBuf,
        hook: Hook,
        #[source]
        source: ProgramError,
    },
    #[error("cannot detach link {path}")]
    DetachLink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot pin the link of {hook} on interface {ifindex} at {path}")]
    PinLink {
        ifindex: u32,
        hook: Hook,
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("link {path} is not a TCX link")]
    NotTcxLink {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("no interface named {name}")]
    UnknownInterface {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read the state file {path}")]
    ReadStateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state file {path} is not valid")]
    ParseStateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the state file {path}")]
    WriteStateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the not-ready entry that holds interface {ifindex}")]
    Hold {
        ifindex: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot remove the not-ready entry of interface {ifindex}")]
    Release {
        ifindex: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot hold interface {ifindex} closed in the endpoint map of a new layout")]
    HoldClosed {
        ifindex: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot hold slot {endpoint_id} of the endpoints-by-id map of a new layout closed")]
    HoldClosedId {
        endpoint_id: u32,
        #[source]
        source: MapError,
    },
    #[error("no endpoint id is left for the recorded endpoint of interface {ifindex}")]
    EndpointIdsExhausted { ifindex: u32 },
    #[error("cannot delete the flow state of unused endpoint ids")]
    ForgetUnused {
        #[source]
        source: Box<UpdateError>,
    },
    #[error("the event ring buffer was already taken")]
    EventsTaken,
    #[error("cannot watch the event ring buffer")]
    WatchEvents {
        #[source]
        source: io::Error,
    },
}

/// One map update that failed. Each names the object it was for.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot reset the counters of freed endpoint id {endpoint_id}")]
    CounterReset {
        endpoint_id: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot size the per-CPU counters of freed endpoint id {endpoint_id}")]
    CounterCpus {
        endpoint_id: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot delete the entries of freed endpoint ids from map {map}")]
    ForgetFlows {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot write policy entry {key:?}")]
    PolicyUpsert {
        key: PolicyKey,
        #[source]
        source: MapError,
    },
    #[error("cannot remove policy entry {key:?}")]
    PolicyRemoval {
        key: PolicyKey,
        #[source]
        source: MapError,
    },
    #[error("cannot write peer prefix {prefix} (class {class})")]
    PeerUpsert {
        prefix: Prefix,
        class: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot remove peer prefix {prefix}")]
    PeerRemoval {
        prefix: Prefix,
        #[source]
        source: MapError,
    },
    #[error("peer prefix {prefix} has length {len} past its family's width")]
    InvalidPrefix { prefix: Prefix, len: u8 },
    #[error("endpoint {pod} has no interface on this node")]
    NoInterface { pod: PodRef },
    #[error("cannot write endpoint {pod} (interface {ifindex})")]
    EndpointUpsert {
        pod: PodRef,
        ifindex: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot remove endpoint {pod} (interface {ifindex})")]
    EndpointRemoval {
        pod: PodRef,
        ifindex: u32,
        #[source]
        source: MapError,
    },
    #[error(
        "cannot deny all traffic of endpoint {pod} (interface {ifindex}) after a failed update"
    )]
    Fence {
        pod: PodRef,
        ifindex: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot write host address {addr}")]
    HostAddrUpsert {
        addr: std::net::IpAddr,
        #[source]
        source: MapError,
    },
    #[error("cannot remove host address {addr}")]
    HostAddrRemoval {
        addr: std::net::IpAddr,
        #[source]
        source: MapError,
    },
    #[error("cannot write ClusterIP {addr}")]
    ServiceAddrUpsert {
        addr: std::net::IpAddr,
        #[source]
        source: MapError,
    },
    #[error("cannot remove ClusterIP {addr}")]
    ServiceAddrRemoval {
        addr: std::net::IpAddr,
        #[source]
        source: MapError,
    },
    #[error("cannot write slot {endpoint_id} of the endpoints-by-id map")]
    EndpointIdWrite {
        endpoint_id: u32,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

impl UpdateError {
    /// Whether the update failed because its map is full (`E2BIG` from hash maps, `ENOSPC` from
    /// LPM tries).
    pub fn is_map_full(&self) -> bool {
        let source = match self {
            UpdateError::PolicyUpsert { source, .. }
            | UpdateError::PeerUpsert { source, .. }
            | UpdateError::EndpointUpsert { source, .. }
            | UpdateError::HostAddrUpsert { source, .. }
            | UpdateError::ServiceAddrUpsert { source, .. } => source,
            _ => return false,
        };
        matches!(
            source,
            MapError::SyscallError(aya::sys::SyscallError { io_error, .. })
                if matches!(io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
        )
    }
}

/// The failures of one [`super::Datapath::apply`] call, and the endpoints it denied all traffic
/// to because of them.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} map update(s) failed, {} endpoint(s) now deny all traffic until the next successful update; first: {}",
    failures.len(),
    fenced.len(),
    failures.first().map(ToString::to_string).unwrap_or_default()
)]
pub struct ApplyError {
    pub failures: Vec<UpdateError>,
    pub fenced: Vec<PodRef>,
}

/// Whether a map error says the key was not there (a removal of something already gone).
pub(crate) fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}
