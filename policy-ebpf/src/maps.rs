//! Every map of the datapath. Each static is named after its map name in
//! `policy_common::names` (the name the loader and the pins use), and is pinned by name so a
//! restarted agent adopts the maps the programs already enforce with.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use policy_common::maps::{
    COUNTER_SLOTS, Counter, CtKey, CtValue, EVENTS_BYTES, EndpointInfo, FragKey, FragValue,
    HostAddrKey, MAX_CONNECTIONS, MAX_ENDPOINTS, MAX_FRAGMENTS, MAX_HOST_ADDRS, MAX_PEER_PREFIXES,
    MAX_POLICY_ENTRIES, MAX_SERVICE_ADDRS, MAX_UNCONFIRMED, PeerClass, PolicyKey, PolicyValue,
};

/// `names::ENDPOINTS_MAP`: host-side ifindex -> endpoint.
#[map]
pub static NP_ENDPOINT_V2: HashMap<u32, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// `names::PEERS_V4_MAP`: IPv4 prefix -> peer class.
#[map]
pub static NP_PEER4_V1: LpmTrie<[u8; 4], PeerClass> =
    LpmTrie::pinned(MAX_PEER_PREFIXES, BPF_F_NO_PREALLOC);

/// `names::PEERS_V6_MAP`: IPv6 prefix -> peer class.
#[map]
pub static NP_PEER6_V1: LpmTrie<[u8; 16], PeerClass> =
    LpmTrie::pinned(MAX_PEER_PREFIXES, BPF_F_NO_PREALLOC);

/// `names::POLICY_MAP`: what each endpoint allows.
#[map]
pub static NP_POLICY_V1: HashMap<PolicyKey, PolicyValue> =
    HashMap::pinned(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

/// `names::CONNTRACK_MAP`: confirmed flows each endpoint allowed.
#[map]
pub static NP_CT_V1: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// `names::UNCONFIRMED_MAP`: flows each endpoint allowed, not confirmed yet.
#[map]
pub static NP_CTNEW_V1: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_UNCONFIRMED, 0);

/// `names::FRAGMENTS_MAP`: verdicts of first fragments.
#[map]
pub static NP_FRAG_V1: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(MAX_FRAGMENTS, 0);

/// `names::HOST_ADDRS_MAP`: this node's addresses.
#[map]
pub static NP_HOSTADDR_V2: HashMap<HostAddrKey, u8> =
    HashMap::pinned(MAX_HOST_ADDRS, BPF_F_NO_PREALLOC);

/// `names::SERVICES_MAP`: every Service's ClusterIPs.
#[map]
pub static NP_SVC_V1: HashMap<HostAddrKey, u8> = HashMap::pinned(MAX_SERVICE_ADDRS, 0);

/// `names::ENDPOINT_IDS_MAP`: endpoint id -> endpoint, for decisions made away from the
/// endpoint's own interface.
#[map]
pub static NP_EPID_V2: Array<EndpointInfo> = Array::pinned(MAX_ENDPOINTS, 0);

/// `names::COUNTERS_MAP`: packets and bytes per endpoint, direction and outcome.
#[map]
pub static NP_COUNTER_V3: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// `names::EVENTS_MAP`: drops and logged new flows.
#[map]
pub static NP_EVENTS_V3: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
