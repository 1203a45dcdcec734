//! Every map and program name, defined once for both sides.
//!
//! A map name carries its layout version (`_V1`): when a key or value layout changes the name
//! changes too, so a pinned map of an older layout is replaced instead of misread. Names are at
//! most 15 characters, the kernel's limit for object names.
//!
//! Each map name is spelled once, in [`map_name!`]: the agent reads it through the constants
//! below, and the programs export each map static under it. Object names must be literals (the
//! ELF symbol an `export_name` attribute takes), which a macro can expand to and a `const` cannot.
//! The agent's tests parse the built object and check that it defines every name here.

/// The name of the map behind a constant of this module (`map_name!(ENDPOINTS_MAP)`), as a
/// literal: the one place each map name is written.
#[macro_export]
macro_rules! map_name {
    (ENDPOINTS_MAP) => {
        "NP_ENDPOINT_V3"
    };
    (PEERS_V4_MAP) => {
        "NP_PEER4_V1"
    };
    (PEERS_V6_MAP) => {
        "NP_PEER6_V1"
    };
    (POLICY_MAP) => {
        "NP_POLICY_V2"
    };
    (CONNTRACK_MAP) => {
        "NP_CT_V1"
    };
    (UNCONFIRMED_MAP) => {
        "NP_CTNEW_V1"
    };
    (FRAGMENTS_MAP) => {
        "NP_FRAG_V1"
    };
    (HOST_ADDRS_MAP) => {
        "NP_HOSTADDR_V2"
    };
    (SERVICES_MAP) => {
        "NP_SVC_V1"
    };
    (ENDPOINT_IDS_MAP) => {
        "NP_EPID_V3"
    };
    (COUNTERS_MAP) => {
        "NP_COUNTER_V4"
    };
    (EVENTS_MAP) => {
        "NP_EVENTS_V3"
    };
}

/// Endpoints by host-side ifindex: `u32` (host order) -> [`crate::maps::EndpointInfo`]. `_V3`:
/// the value carries the pod's addresses and a lookup plan of its own for the any-peer keys.
pub const ENDPOINTS_MAP: &str = map_name!(ENDPOINTS_MAP);
/// Peer classes of IPv4 prefixes: LPM trie of `[u8; 4]` -> [`crate::maps::PeerClass`].
pub const PEERS_V4_MAP: &str = map_name!(PEERS_V4_MAP);
/// Peer classes of IPv6 prefixes: LPM trie of `[u8; 16]` -> [`crate::maps::PeerClass`].
pub const PEERS_V6_MAP: &str = map_name!(PEERS_V6_MAP);
/// Decided (endpoint, class, direction, protocol, port prefix): [`crate::maps::PolicyKey`] ->
/// [`crate::maps::PolicyValue`]. `_V2`: the value says whether the entry allows or denies.
pub const POLICY_MAP: &str = map_name!(POLICY_MAP);
/// Connection tracking of confirmed flows (seen both ways, then again the first way):
/// [`crate::maps::CtKey`] -> [`crate::maps::CtValue`].
pub const CONNTRACK_MAP: &str = map_name!(CONNTRACK_MAP);
/// Connection tracking of flows not confirmed yet, so a flood of new flows evicts only other
/// new flows: [`crate::maps::CtKey`] -> [`crate::maps::CtValue`].
pub const UNCONFIRMED_MAP: &str = map_name!(UNCONFIRMED_MAP);
/// Verdicts of first fragments, for the fragments that follow: [`crate::maps::FragKey`] -> [`crate::maps::FragValue`].
pub const FRAGMENTS_MAP: &str = map_name!(FRAGMENTS_MAP);
/// This node's own addresses: [`crate::maps::HostAddrKey`] -> `u8` (always 1). `_V2`: larger.
pub const HOST_ADDRS_MAP: &str = map_name!(HOST_ADDRS_MAP);
/// The ClusterIPs of every Service: [`crate::maps::HostAddrKey`] -> `u8` (always 1).
pub const SERVICES_MAP: &str = map_name!(SERVICES_MAP);
/// Endpoints by endpoint id: array of [`crate::maps::EndpointInfo`] indexed by the id; an unused
/// slot has endpoint id 0. `_V3`: as [`ENDPOINTS_MAP`].
pub const ENDPOINT_IDS_MAP: &str = map_name!(ENDPOINT_IDS_MAP);
/// Per-CPU packet and byte counters, indexed by [`crate::maps::counter_index`]. `_V4`: 20
/// outcome codes (verdicts 0 to 9, drops 10 to 19).
pub const COUNTERS_MAP: &str = map_name!(COUNTERS_MAP);
/// Drop events and (when enabled per endpoint) new allowed flows: [`crate::maps::FlowEvent`]
/// records. `_V3`: outcome codes as in [`COUNTERS_MAP`].
pub const EVENTS_MAP: &str = map_name!(EVENTS_MAP);

/// Program on the host veth's TC ingress: decides what the pod sends (the pod's egress).
pub const FROM_POD_PROG: &str = "from_pod";
/// Program on the host veth's TC egress: decides what the pod receives (the pod's ingress).
pub const TO_POD_PROG: &str = "to_pod";
/// Program on TC egress of the node's other interfaces (its uplinks): decides the deferred
/// egress of pod packets to a ClusterIP whose backend is not on this node.
pub const SVC_EGRESS_PROG: &str = "svc_egress";

/// Every map name, for checks that the built object defines them all.
pub const ALL_MAPS: [&str; 12] = [
    ENDPOINTS_MAP,
    PEERS_V4_MAP,
    PEERS_V6_MAP,
    POLICY_MAP,
    CONNTRACK_MAP,
    UNCONFIRMED_MAP,
    FRAGMENTS_MAP,
    HOST_ADDRS_MAP,
    SERVICES_MAP,
    ENDPOINT_IDS_MAP,
    COUNTERS_MAP,
    EVENTS_MAP,
];

/// Every program name.
pub const ALL_PROGRAMS: [&str; 3] = [FROM_POD_PROG, TO_POD_PROG, SVC_EGRESS_PROG];

const _: () = {
    let mut i = 0;
    while i < ALL_MAPS.len() {
        assert!(ALL_MAPS[i].len() <= 15);
        i += 1;
    }
};
