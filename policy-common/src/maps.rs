//! Keys and values of every map, with their sizes.
//!
//! Byte order: IP addresses are in network order (as on the wire); every integer field, ports
//! included, is in host order. The agent's `datapath` module is the only place that converts.
//! An IPv4 address sits in the first 4 bytes of a 16-byte address field; the other 12 are zero.

use core::mem::size_of;

use crate::verdict::{Direction, DropReason, OUTCOMES, Verdict};

/// Endpoint ids run from 1 to `MAX_ENDPOINTS - 1`; 0 is never assigned.
pub const MAX_ENDPOINTS: u32 = 1024;
/// Capacity of the peer-class LPM tries, per family.
pub const MAX_PEER_PREFIXES: u32 = 262_144;
/// Capacity of the policy map, all endpoints together.
pub const MAX_POLICY_ENTRIES: u32 = 524_288;
/// Capacity of the connection-tracking LRU map.
pub const MAX_CONNECTIONS: u32 = 131_072;
/// Capacity of the fragment LRU map.
pub const MAX_FRAGMENTS: u32 = 8192;
/// Capacity of the host address map. ClusterIPs are never in it (an address that is both
/// local and a ClusterIP is a Service), so only the node's own addresses count against it.
pub const MAX_HOST_ADDRS: u32 = 4096;
/// Capacity of the unconfirmed connection-tracking LRU map: flows not yet seen both ways.
pub const MAX_UNCONFIRMED: u32 = 65_536;
/// Capacity of the Service address map (ClusterIPs of both families).
pub const MAX_SERVICE_ADDRS: u32 = 65_536;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// The class of every address no LPM entry covers.
pub const WORLD_CLASS: u32 = 0;
/// In a [`PolicyKey`] only: an entry that matches every peer class.
pub const ANY_PEER_CLASS: u32 = u32::MAX;
/// In a [`PolicyKey`] only: an entry that matches every IP protocol (its port and prefix are 0).
pub const ANY_PROTOCOL: u8 = 0;

/// Address families as they appear in `family` fields.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// `EndpointInfo::flags`: the endpoint is isolated for ingress.
pub const ENDPOINT_INGRESS_ISOLATED: u32 = 1 << 0;
/// `EndpointInfo::flags`: the endpoint is isolated for egress.
pub const ENDPOINT_EGRESS_ISOLATED: u32 = 1 << 1;
/// `EndpointInfo::flags`: report new allowed flows to the event ring, not only drops.
pub const ENDPOINT_LOG_ALLOWED: u32 = 1 << 2;
/// `EndpointInfo::flags`: the endpoint is not programmed yet; drop all its traffic.
pub const ENDPOINT_NOT_READY: u32 = 1 << 3;
/// `EndpointInfo::flags`: the operator exempted the pod from source validation; its packets may
/// carry any source address.
pub const ENDPOINT_ANY_SOURCE: u32 = 1 << 4;
/// `EndpointInfo::flags`: a ClusterNetworkPolicy applies to the pod's ingress, so its policy
/// entries decide also where nothing isolates it, and even traffic NetworkPolicy exempts.
pub const ENDPOINT_INGRESS_TIERED: u32 = 1 << 5;
/// `EndpointInfo::flags`: a ClusterNetworkPolicy applies to the pod's egress.
pub const ENDPOINT_EGRESS_TIERED: u32 = 1 << 6;

/// `PrefixPlan` bits 0 to 16: some entry has that port prefix length.
pub const PLAN_PORT_PREFIX_BITS: u32 = (1 << 17) - 1;
/// `PrefixPlan` bit: some entry has protocol [`ANY_PROTOCOL`].
pub const PLAN_ANY_PROTOCOL: u32 = 1 << 24;

/// Which keys of one kind of peer class can exist: bits 0 to 16 are port prefix lengths, plus
/// [`PLAN_ANY_PROTOCOL`]. Zero: no key at all.
pub type PrefixPlan = u32;

/// Which policy-map keys can exist for one endpoint and direction, so the programs probe only
/// those. The any-peer keys have a plan of their own: the few wildcard rules of a
/// ClusterNetworkPolicy rarely use every port prefix that the class keys do, and a packet no
/// class key matches probes them all. They have a filter too, so that a packet whose protocol
/// and port no wildcard rule names (the common miss) skips them without a probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LookupPlan {
    /// Keys of the packet's own peer class.
    pub class: PrefixPlan,
    /// Keys of [`ANY_PEER_CLASS`].
    pub any_peer: PrefixPlan,
    /// A Bloom filter of the any-peer keys with a protocol: the bit
    /// [`any_peer_filter_bit`] of each key's protocol, port and prefix length. A key whose bit
    /// is clear does not exist; one whose bit is set may.
    pub any_peer_filter: u32,
}

impl LookupPlan {
    /// No key: every probe misses.
    pub const EMPTY: Self = Self {
        class: 0,
        any_peer: 0,
        any_peer_filter: 0,
    };

    /// Adds what probing for `key` needs.
    pub const fn record(&mut self, key: &PolicyKey) {
        let bit = if key.protocol == ANY_PROTOCOL {
            PLAN_ANY_PROTOCOL
        } else {
            1 << key.port_prefix_len
        };
        if key.peer_class == ANY_PEER_CLASS {
            self.any_peer |= bit;
            if key.protocol != ANY_PROTOCOL {
                self.any_peer_filter |=
                    any_peer_filter_bit(key.protocol, key.port, key.port_prefix_len);
            }
        } else {
            self.class |= bit;
        }
    }

    pub const fn is_empty(&self) -> bool {
        self.class == 0 && self.any_peer == 0
    }
}

impl core::ops::BitOrAssign for LookupPlan {
    /// The probes of both plans.
    fn bitor_assign(&mut self, other: Self) {
        self.class |= other.class;
        self.any_peer |= other.any_peer;
        self.any_peer_filter |= other.any_peer_filter;
    }
}

/// The bit of [`LookupPlan::any_peer_filter`] for a key of `protocol` (not [`ANY_PROTOCOL`]),
/// masked `port` and `prefix_len`: a multiplicative hash of the three, cheap enough for every
/// packet that misses its class keys.
#[inline(always)]
pub const fn any_peer_filter_bit(protocol: u8, port: u16, prefix_len: u8) -> u32 {
    let key = (port as u32) | ((protocol as u32) << 16) | ((prefix_len as u32) << 24);
    1 << (key.wrapping_mul(0x9e37_79b1) >> 27)
}

/// Value of [`crate::names::ENDPOINTS_MAP`], keyed by the host-side ifindex (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// 1 to `MAX_ENDPOINTS - 1`, stable while the pod lives.
    pub endpoint_id: u32,
    /// `ENDPOINT_*` bits.
    pub flags: u32,
    /// Probes for packets to the pod.
    pub ingress_plan: LookupPlan,
    /// Probes for packets from the pod.
    pub egress_plan: LookupPlan,
    /// The pod's IPv6 address, network order; all zero when it has none.
    pub addr6: [u8; 16],
    /// The pod's IPv4 address, network order; all zero when it has none.
    pub addr4: [u8; 4],
}

impl EndpointInfo {
    pub const fn plan(&self, direction: Direction) -> LookupPlan {
        match direction {
            Direction::Ingress => self.ingress_plan,
            Direction::Egress => self.egress_plan,
        }
    }

    pub const fn isolated(&self, direction: Direction) -> bool {
        let bit = match direction {
            Direction::Ingress => ENDPOINT_INGRESS_ISOLATED,
            Direction::Egress => ENDPOINT_EGRESS_ISOLATED,
        };
        self.flags & bit != 0
    }

    /// Whether a ClusterNetworkPolicy applies to the pod in this direction.
    pub const fn tiered(&self, direction: Direction) -> bool {
        let bit = match direction {
            Direction::Ingress => ENDPOINT_INGRESS_TIERED,
            Direction::Egress => ENDPOINT_EGRESS_TIERED,
        };
        self.flags & bit != 0
    }

    /// Whether the policy entries decide the pod's first packets in this direction; where
    /// they do not, every packet is allowed.
    pub const fn decides(&self, direction: Direction) -> bool {
        self.isolated(direction) || self.tiered(direction)
    }

    /// Whether `addr` (a 16-byte address field of `family`) is the pod's own address. The
    /// unspecified address is never anyone's.
    #[inline(always)]
    pub fn owns(&self, family: u8, addr: &[u8; 16]) -> bool {
        if family == FAMILY_V4 {
            let own = u32::from_ne_bytes(self.addr4);
            own != 0 && u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]) == own
        } else {
            !same_address(&self.addr6, &[0; 16]) && same_address(addr, &self.addr6)
        }
    }
}

/// Whether two 16-byte address fields are equal, compared as two words each: byte-array
/// equality becomes a `bcmp` call, which BPF programs cannot make.
#[inline(always)]
pub const fn same_address(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a_high, a_low) = halves(a);
    let (b_high, b_low) = halves(b);
    a_high == b_high && a_low == b_low
}

#[inline(always)]
const fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *addr;
    (
        u64::from_ne_bytes([a, b, c, d, e, f, g, h]),
        u64::from_ne_bytes([i, j, k, l, m, n, o, p]),
    )
}

/// Value of the peer-class LPM tries: the set of addresses no policy tells apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerClass {
    pub id: u32,
}

/// Key of [`crate::names::POLICY_MAP`]: one decided (peer class, protocol, port prefix) of one
/// endpoint and direction. `port` keeps only its top `port_prefix_len` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub endpoint_id: u32,
    /// A peer class, or [`ANY_PEER_CLASS`].
    pub peer_class: u32,
    /// Host order, masked to `port_prefix_len` bits.
    pub port: u16,
    /// [`Direction`] as `u8`.
    pub direction: u8,
    /// IP protocol number, or [`ANY_PROTOCOL`].
    pub protocol: u8,
    /// 0 to 16.
    pub port_prefix_len: u8,
    pub _pad: [u8; 3],
}

/// Value of [`crate::names::POLICY_MAP`]: what the first packet of a flow the key matches gets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyValue {
    /// The rule that decided (the agent's rule table names it); 0 where no rule did: an
    /// endpoint no policy isolates (allowed), or one that NetworkPolicy isolates and no rule
    /// allows (denied).
    pub rule_id: u32,
    /// A [`PolicyAction`], as `u8`.
    pub action: u8,
    pub _pad: [u8; 3],
}

/// What a policy entry does with the packets it matches.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyAction {
    /// Allowed: by the rule, or, with rule 0, because nothing isolates the endpoint.
    #[default]
    Allow = 0,
    /// Dropped by an Admin-tier `Deny` rule.
    DenyAdmin = 1,
    /// Dropped by a Baseline-tier `Deny` rule.
    DenyBaseline = 2,
    /// Dropped: NetworkPolicy isolates the endpoint and no rule allows the packet.
    DenyIsolated = 3,
}

impl PolicyAction {
    pub const ALL: [PolicyAction; 4] = [
        PolicyAction::Allow,
        PolicyAction::DenyAdmin,
        PolicyAction::DenyBaseline,
        PolicyAction::DenyIsolated,
    ];

    /// The action of a map value; an unknown code denies, as isolation does.
    #[inline(always)]
    pub const fn from_u8(code: u8) -> PolicyAction {
        match code {
            0 => PolicyAction::Allow,
            1 => PolicyAction::DenyAdmin,
            2 => PolicyAction::DenyBaseline,
            _ => PolicyAction::DenyIsolated,
        }
    }

    /// Why the packets of a denying action drop; `None` for [`PolicyAction::Allow`].
    #[inline(always)]
    pub const fn drop_reason(self) -> Option<DropReason> {
        match self {
            PolicyAction::Allow => None,
            PolicyAction::DenyAdmin => Some(DropReason::AdminDenied),
            PolicyAction::DenyBaseline => Some(DropReason::BaselineDenied),
            PolicyAction::DenyIsolated => Some(DropReason::PolicyDenied),
        }
    }
}

/// What the first packet of a flow gets from the policy map's answer `hit` at an endpoint the
/// entries decide: the verdict or drop reason, and the deciding rule (0 for none). A miss is
/// denied where NetworkPolicy isolates the endpoint, allowed elsewhere.
#[inline(always)]
pub const fn policy_outcome(
    isolated: bool,
    hit: Option<PolicyValue>,
) -> (Result<Verdict, DropReason>, u32) {
    match hit {
        Some(value) => match value.action().drop_reason() {
            Some(reason) => (Err(reason), value.rule_id),
            None if value.rule_id == 0 => (Ok(Verdict::NotIsolated), 0),
            None => (Ok(Verdict::Policy), value.rule_id),
        },
        None if isolated => (Err(DropReason::PolicyDenied), 0),
        None => (Ok(Verdict::NotIsolated), 0),
    }
}

/// Whether the answer `hit` drops traffic NetworkPolicy exempts (between the pod and its own
/// node, or the pod reaching itself through its Service): only a ClusterNetworkPolicy `Deny`
/// does. The drop reason and rule.
#[inline(always)]
pub const fn exempt_outcome(hit: Option<PolicyValue>) -> Option<(DropReason, u32)> {
    match hit {
        Some(value) => match value.action() {
            PolicyAction::DenyAdmin => Some((DropReason::AdminDenied, value.rule_id)),
            PolicyAction::DenyBaseline => Some((DropReason::BaselineDenied, value.rule_id)),
            PolicyAction::Allow | PolicyAction::DenyIsolated => None,
        },
        None => None,
    }
}

impl PolicyValue {
    /// An entry that allows, by `rule_id`.
    pub const fn allow(rule_id: u32) -> PolicyValue {
        PolicyValue::new(PolicyAction::Allow, rule_id)
    }

    pub const fn new(action: PolicyAction, rule_id: u32) -> PolicyValue {
        PolicyValue {
            rule_id,
            action: action as u8,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    pub const fn action(&self) -> PolicyAction {
        PolicyAction::from_u8(self.action)
    }
}

/// Key of [`crate::names::CONNTRACK_MAP`]: a flow as one endpoint saw its first packet.
///
/// For ICMP echo, `src_port` is the identifier of a request and `dst_port` 0, and the other way
/// round for a reply, so a reply's reversed key is its request's key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub endpoint_id: u32,
    /// Host order.
    pub src_port: u16,
    /// Host order.
    pub dst_port: u16,
    /// [`Direction`] of the flow's first packet, as `u8`.
    pub direction: u8,
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: u8,
    /// Network order.
    pub src_addr: [u8; 16],
    /// Network order.
    pub dst_addr: [u8; 16],
}

impl CtKey {
    /// The key a reply to this flow is looked up under, at the same endpoint.
    pub const fn reversed(&self) -> CtKey {
        let direction = match Direction::from_u8(self.direction) {
            Some(direction) => direction.opposite() as u8,
            None => self.direction,
        };
        CtKey {
            endpoint_id: self.endpoint_id,
            src_port: self.dst_port,
            dst_port: self.src_port,
            direction,
            protocol: self.protocol,
            family: self.family,
            _pad: 0,
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
        }
    }
}

/// `CtValue::flags`: a FIN or RST was seen; the entry expires after [`CT_CLOSING_TIMEOUT_NS`].
pub const CT_CLOSING: u32 = 1 << 0;
/// `CtValue::flags`: a flow from the pod to a ClusterIP. Its packets are not decided on this
/// tuple but deferred to the backend; replies from the ClusterIP pass by it.
pub const CT_SERVICE: u32 = 1 << 1;
/// `CtValue::flags`, with [`CT_SERVICE`]: the deferred flow goes to an address of this node.
pub const CT_HOST: u32 = 1 << 2;
/// `CtValue::flags`, in the unconfirmed map only: a packet came back the other way.
pub const CT_REPLIED: u32 = 1 << 3;

/// `skb->mark` bits 28 to 31 of a packet whose egress decision is pending: `from_pod` saw it go
/// to a ClusterIP. Chosen clear of kube-proxy's 0x4000 (masquerade) and 0x8000 (drop) marks.
pub const SVC_MARK_MAGIC: u32 = 0xa << 28;
/// The bits [`SVC_MARK_MAGIC`] is compared under.
pub const SVC_MARK_MAGIC_MASK: u32 = 0xf << 28;
/// `skb->mark` bits 16 to 25 of a pending packet: the sending endpoint's id.
pub const SVC_MARK_ENDPOINT_SHIFT: u32 = 16;
/// The bits of the endpoint id in a pending mark (10 bits: ids are below [`MAX_ENDPOINTS`]).
pub const SVC_MARK_ENDPOINT_MASK: u32 = (MAX_ENDPOINTS - 1) << SVC_MARK_ENDPOINT_SHIFT;
/// Every bit a pending mark owns; the others belong to whoever else marks packets.
pub const SVC_MARK_BITS: u32 = SVC_MARK_MAGIC_MASK | SVC_MARK_ENDPOINT_MASK;

/// `mark` with the egress of `endpoint_id` pending; bits other than [`SVC_MARK_BITS`] are kept.
pub const fn svc_mark(mark: u32, endpoint_id: u32) -> u32 {
    (mark & !SVC_MARK_BITS)
        | SVC_MARK_MAGIC
        | ((endpoint_id << SVC_MARK_ENDPOINT_SHIFT) & SVC_MARK_ENDPOINT_MASK)
}

/// The endpoint whose egress `mark` says is pending, if any.
pub const fn svc_pending(mark: u32) -> Option<u32> {
    if mark & SVC_MARK_MAGIC_MASK != SVC_MARK_MAGIC {
        return None;
    }
    let endpoint_id = (mark & SVC_MARK_ENDPOINT_MASK) >> SVC_MARK_ENDPOINT_SHIFT;
    if endpoint_id == 0 {
        None
    } else {
        Some(endpoint_id)
    }
}

/// Idle time after which a TCP entry no longer counts (as Linux's established timeout, shorter).
pub const CT_TCP_TIMEOUT_NS: u64 = 6 * 3600 * 1_000_000_000;
/// Idle time after which a UDP, SCTP or ICMP entry no longer counts.
pub const CT_OTHER_TIMEOUT_NS: u64 = 120 * 1_000_000_000;
/// Idle time after which a closing TCP entry no longer counts.
pub const CT_CLOSING_TIMEOUT_NS: u64 = 10 * 1_000_000_000;
/// `last_seen_ns` is refreshed at most this often, to keep map writes off most packets.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Value of [`crate::names::CONNTRACK_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE, within a tick of CLOCK_MONOTONIC) when a
    /// packet of the flow was last seen (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// The rule that allowed the first packet; 0 when the endpoint was not isolated.
    pub rule_id: u32,
    /// `CT_*` bits.
    pub flags: u32,
}

/// Key of [`crate::names::FRAGMENTS_MAP`]: one fragmented datagram at one endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub endpoint_id: u32,
    /// IPv4 identification (zero-extended) or IPv6 fragment identification, host order.
    pub id: u32,
    pub direction: u8,
    pub protocol: u8,
    pub family: u8,
    pub _pad: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

/// Value of [`crate::names::FRAGMENTS_MAP`]: what the first fragment got.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub rule_id: u32,
    /// Host order, from the first fragment's L4 header.
    pub src_port: u16,
    pub dst_port: u16,
    /// 1 when the first fragment passed.
    pub allowed: u8,
    pub _pad: [u8; 3],
}

/// Key of [`crate::names::HOST_ADDRS_MAP`] and of [`crate::names::SERVICES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostAddrKey {
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network order.
    pub addr: [u8; 16],
}

/// One slot of [`crate::names::COUNTERS_MAP`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Number of slots in [`crate::names::COUNTERS_MAP`].
pub const COUNTER_SLOTS: u32 = MAX_ENDPOINTS * 2 * OUTCOMES;

/// The counter slot of an endpoint, a direction and an outcome code (below [`OUTCOMES`]).
pub const fn counter_index(endpoint_id: u32, direction: Direction, outcome: u8) -> u32 {
    (endpoint_id % MAX_ENDPOINTS) * 2 * OUTCOMES
        + (direction as u32) * OUTCOMES
        + (outcome as u32 % OUTCOMES)
}

/// One record of [`crate::names::EVENTS_MAP`]: a drop, or a new allowed flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    pub endpoint_id: u32,
    pub ifindex: u32,
    /// The rule that allowed the flow; 0 for drops and for flows no rule decided.
    pub rule_id: u32,
    /// [`crate::verdict::Outcome`] code.
    pub outcome: u8,
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    /// Host order; 0 where the protocol has no ports.
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad: [u8; 4],
    /// Network order.
    pub src_addr: [u8; 16],
    /// Network order.
    pub dst_addr: [u8; 16],
}

const _: () = assert!(size_of::<LookupPlan>() == 12);
const _: () = assert!(size_of::<EndpointInfo>() == 52);
const _: () = assert!(size_of::<PeerClass>() == 4);
const _: () = assert!(size_of::<PolicyKey>() == 16);
const _: () = assert!(size_of::<PolicyValue>() == 8);
const _: () = assert!(size_of::<CtKey>() == 44);
const _: () = assert!(size_of::<CtValue>() == 16);
const _: () = assert!(size_of::<FragKey>() == 44);
const _: () = assert!(size_of::<FragValue>() == 12);
const _: () = assert!(size_of::<HostAddrKey>() == 20);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<FlowEvent>() == 64);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: each type is `repr(C)`, `Copy`, and made of integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for PeerClass {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for HostAddrKey {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_slots_are_distinct_and_in_range() {
        let a = counter_index(1, Direction::Ingress, 0);
        let b = counter_index(1, Direction::Egress, 0);
        let c = counter_index(2, Direction::Ingress, 0);
        let d = counter_index(1, Direction::Ingress, 19);
        assert_eq!([a, b, c, d], [40, 60, 80, 59]);
        assert!(counter_index(MAX_ENDPOINTS - 1, Direction::Egress, 19) < COUNTER_SLOTS);
    }

    #[test]
    fn svc_mark_keeps_foreign_bits_and_round_trips() {
        let kube_proxy = 0x4000 | 0x8000;
        let mark = svc_mark(kube_proxy, 1023);
        assert_eq!(mark & kube_proxy, kube_proxy);
        assert_eq!(svc_pending(mark), Some(1023));
        assert_eq!(svc_pending(svc_mark(mark, 5)), Some(5));
        assert_eq!(svc_mark(mark, 5) & !SVC_MARK_BITS, kube_proxy);
        assert_eq!(svc_pending(kube_proxy), None);
        assert_eq!(svc_pending(0xb << 28 | 5 << 16), None);
        assert_eq!(svc_pending(SVC_MARK_MAGIC), None);
        assert_eq!(mark & !SVC_MARK_BITS & SVC_MARK_BITS, 0);
    }

    #[test]
    fn reversed_ct_key_swaps_ends_and_direction() {
        let key = CtKey {
            endpoint_id: 7,
            src_port: 40000,
            dst_port: 80,
            direction: Direction::Egress as u8,
            protocol: 6,
            family: FAMILY_V4,
            _pad: 0,
            src_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let reply = key.reversed();
        assert_eq!(reply.src_port, 80);
        assert_eq!(reply.dst_addr[3], 1);
        assert_eq!(reply.direction, Direction::Ingress as u8);
        assert_eq!(reply.reversed(), key);
    }
}
