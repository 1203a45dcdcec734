//! Every map of the datapath, pinned by name so a restarted agent adopts the maps the programs
//! already enforce with.
//!
//! Each static is named after its constant in `policy_common::names` and exported under the
//! map name that constant holds, so the name the loader and the pins use is written only there.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use policy_common::maps::{
    COUNTER_SLOTS, Counter, CtKey, CtValue, EVENTS_BYTES, EndpointInfo, FragKey, FragValue,
    HostAddrKey, MAX_CONNECTIONS, MAX_ENDPOINTS, MAX_FRAGMENTS, MAX_HOST_ADDRS, MAX_PEER_PREFIXES,
    MAX_POLICY_ENTRIES, MAX_SERVICE_ADDRS, MAX_UNCONFIRMED, PeerClass, PolicyKey, PolicyValue,
};

/// Declares map statics the way aya's `#[map]` does (a `maps` section symbol named after the
/// map), with the name from `policy_common::map_name!`: `#[map]` takes a name only as a string
/// literal written in place.
macro_rules! maps {
    ($($(#[$doc:meta])* $name:ident: $map:ty = $init:expr;)*) => {
        $(
            $(#[$doc])*
            #[unsafe(link_section = "maps")]
            #[unsafe(export_name = policy_common::map_name!($name))]
            pub static $name: $map = $init;
        )*
    };
}

maps! {
    /// Host-side ifindex -> endpoint.
    ENDPOINTS_MAP: HashMap<u32, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, 0);

    /// IPv4 prefix -> peer class.
    PEERS_V4_MAP: LpmTrie<[u8; 4], PeerClass> =
        LpmTrie::pinned(MAX_PEER_PREFIXES, BPF_F_NO_PREALLOC);

    /// IPv6 prefix -> peer class.
    PEERS_V6_MAP: LpmTrie<[u8; 16], PeerClass> =
        LpmTrie::pinned(MAX_PEER_PREFIXES, BPF_F_NO_PREALLOC);

    /// What each endpoint allows.
    POLICY_MAP: HashMap<PolicyKey, PolicyValue> =
        HashMap::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

    /// Confirmed flows each endpoint allowed.
    CONNTRACK_MAP: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

    /// Flows each endpoint allowed, not confirmed yet.
    UNCONFIRMED_MAP: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_UNCONFIRMED, 0);

    /// Verdicts of first fragments.
    FRAGMENTS_MAP: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(MAX_FRAGMENTS, 0);

    /// This node's addresses.
    HOST_ADDRS_MAP: HashMap<HostAddrKey, u8> = HashMap::pinned(MAX_HOST_ADDRS, BPF_F_NO_PREALLOC);

    /// Every Service's ClusterIPs.
    SERVICES_MAP: HashMap<HostAddrKey, u8> = HashMap::pinned(MAX_SERVICE_ADDRS, 0);

    /// Endpoint id -> endpoint, for decisions made away from the endpoint's own interface.
    ENDPOINT_IDS_MAP: Array<EndpointInfo> = Array::pinned(MAX_ENDPOINTS, 0);

    /// Packets and bytes per endpoint, direction and outcome.
    COUNTERS_MAP: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

    /// Drops and logged new flows.
    EVENTS_MAP: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
}
