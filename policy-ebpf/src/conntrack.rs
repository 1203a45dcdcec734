//! Connection tracking: per-endpoint flow entries, and the fragment verdicts in
//! `FRAGMENTS_MAP`.
//!
//! A new flow goes into `UNCONFIRMED_MAP`. It moves to `CONNTRACK_MAP` once it is confirmed: a
//! packet came back the other way, and then another went the first way. Whoever floods new flows
//! from forged or random sources never sees the replies, so never confirms a flow, and its
//! entries evict only other unconfirmed ones: the confirmed flows of every endpoint survive the
//! flood.

use aya_ebpf::maps::LruHashMap;
use policy_common::{
    maps::{
        CT_CLOSING, CT_CLOSING_TIMEOUT_NS, CT_HOST, CT_OTHER_TIMEOUT_NS, CT_REFRESH_NS, CT_REPLIED,
        CT_SERVICE, CT_TCP_TIMEOUT_NS, CtKey, CtValue, FAMILY_V4, FragKey, FragValue,
    },
    verdict::{Direction, Verdict},
};

use crate::{
    headers::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{CONNTRACK_MAP, FRAGMENTS_MAP, UNCONFIRMED_MAP},
    parse::Packet,
};

type FlowMap = LruHashMap<CtKey, CtValue>;

/// The key of the flow `packet` starts or continues at this endpoint and direction.
#[inline(always)]
pub fn flow_key(endpoint_id: u32, direction: Direction, packet: &Packet) -> CtKey {
    CtKey {
        endpoint_id,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        direction: direction as u8,
        protocol: packet.protocol,
        family: packet.family,
        _pad: 0,
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
    }
}

/// Whether an entry still counts at `now`. A timestamp ahead of the coarse clock (written by
/// userspace from CLOCK_MONOTONIC) counts as just seen.
#[inline(always)]
fn live(value: &CtValue, protocol: u8, now: u64) -> bool {
    let timeout = if value.flags & CT_CLOSING != 0 {
        CT_CLOSING_TIMEOUT_NS
    } else if protocol == IPPROTO_TCP {
        CT_TCP_TIMEOUT_NS
    } else {
        CT_OTHER_TIMEOUT_NS
    };
    now.saturating_sub(value.last_seen_ns) <= timeout
}

/// A SYN without ACK on a closing entry opens a new connection on a reused port: it is decided
/// by policy again rather than riding on the old entry.
#[inline(always)]
const fn reopens(value: &CtValue, tcp_flags: u8) -> bool {
    value.flags & CT_CLOSING != 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Looks `key` up in `map`; on a live hit refreshes it (at most every `CT_REFRESH_NS`, and at
/// once when a FIN or RST starts closing the flow) and returns the entry.
#[inline(always)]
fn hit(map: &'static FlowMap, key: &CtKey, tcp_flags: u8, now: u64) -> Option<*mut CtValue> {
    let entry = map.get_ptr_mut(key)?;
    // SAFETY: the pointer is to a live map value; a concurrent update can at worst make the
    // timestamp or flags we read stale, which only delays a refresh.
    let value = unsafe { &mut *entry };
    if !live(value, key.protocol, now) || (key.protocol == IPPROTO_TCP && reopens(value, tcp_flags))
    {
        return None;
    }
    let closing = key.protocol == IPPROTO_TCP
        && tcp_flags & (TCP_FIN | TCP_RST) != 0
        && value.flags & CT_CLOSING == 0;
    if closing {
        value.flags |= CT_CLOSING;
        value.last_seen_ns = now;
    } else if now.saturating_sub(value.last_seen_ns) >= CT_REFRESH_NS {
        value.last_seen_ns = now;
    }
    Some(entry)
}

/// The verdict of a later packet of a flow in its own direction: a flow the pod's egress
/// deferred (`CT_SERVICE`) stays deferred, to a ClusterIP (`Service`) or a node address (`Host`).
#[inline(always)]
const fn forward_verdict(flags: u32) -> Verdict {
    if flags & CT_SERVICE == 0 {
        Verdict::Established
    } else if flags & CT_HOST != 0 {
        Verdict::Host
    } else {
        Verdict::Service
    }
}

/// What a packet of a tracked flow is to it, and the rule that allowed the flow.
#[derive(Clone, Copy)]
pub struct Tracked {
    /// `Established` or `Reply`; `Service` or `Host` for a flow the pod's egress deferred.
    pub verdict: Verdict,
    pub rule_id: u32,
}

/// An established packet (same key) or a reply (reversed key) of a tracked flow. Confirmed
/// flows are looked up first: they carry almost every packet.
///
/// Not inlined: its keys would otherwise share the programs' frame, which the verifier's
/// 512-byte stack limit does not allow.
#[inline(never)]
pub fn lookup(key: &CtKey, tcp_flags: u8, now: u64) -> Option<Tracked> {
    if let Some(entry) = hit(&CONNTRACK_MAP, key, tcp_flags, now) {
        // SAFETY: a live map value, read once.
        let value = unsafe { *entry };
        return Some(Tracked {
            verdict: forward_verdict(value.flags),
            rule_id: value.rule_id,
        });
    }
    let reversed = key.reversed();
    if let Some(entry) = hit(&CONNTRACK_MAP, &reversed, tcp_flags, now) {
        return Some(Tracked {
            verdict: Verdict::Reply,
            // SAFETY: a live map value, read once.
            rule_id: unsafe { (*entry).rule_id },
        });
    }
    if let Some(entry) = hit(&UNCONFIRMED_MAP, key, tcp_flags, now) {
        // SAFETY: a live map value, copied out once.
        let value = unsafe { *entry };
        if value.flags & CT_REPLIED != 0 {
            confirm(key, &value);
        }
        return Some(Tracked {
            verdict: forward_verdict(value.flags),
            rule_id: value.rule_id,
        });
    }
    let entry = hit(&UNCONFIRMED_MAP, &reversed, tcp_flags, now)?;
    // SAFETY: a live map value; a lost concurrent flag update only delays the confirmation.
    let value = unsafe { &mut *entry };
    value.flags |= CT_REPLIED;
    Some(Tracked {
        verdict: Verdict::Reply,
        rule_id: value.rule_id,
    })
}

/// Moves a flow seen both ways, then again its own way, to the confirmed map. A failed insert
/// leaves it unconfirmed, still tracked.
#[inline(always)]
fn confirm(key: &CtKey, value: &CtValue) {
    let confirmed = CtValue {
        last_seen_ns: value.last_seen_ns,
        rule_id: value.rule_id,
        flags: value.flags & !CT_REPLIED,
    };
    if CONNTRACK_MAP.insert(key, &confirmed, 0).is_ok() {
        let _ = UNCONFIRMED_MAP.remove(key);
    }
}

/// Records an allowed first packet as an unconfirmed flow; `deferred` is 0, or `CT_SERVICE`
/// (with `CT_HOST` for a node address) for a flow whose egress is decided after DNAT.
#[inline(never)]
pub fn insert(key: &CtKey, rule_id: u32, tcp_flags: u8, now: u64, deferred: u32) {
    let closing = if key.protocol == IPPROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_CLOSING
    } else {
        0
    };
    let flags = closing | deferred;
    let value = CtValue {
        last_seen_ns: now,
        rule_id,
        flags,
    };
    // A failed insert leaves the flow untracked: later packets are decided by policy again and
    // replies into an isolated direction drop, which fails closed.
    let _ = UNCONFIRMED_MAP.insert(key, &value, 0);
}

/// Whether an ICMP error quotes a flow this endpoint tracks, with that flow's rule id.
///
/// `quoted` is the offending packet's tuple, keyed in the direction opposite to the error. If
/// the quoted packet went the flow's original way (the endpoint sent it and the error comes
/// back, or the endpoint received it and reports the error), that is the entry itself. If the
/// quoted packet was a reply, the entry is its reverse, which `reversed` also puts back into the
/// error's own direction.
/// `quoted` is reversed in place for the second lookup, to keep one key on the stack.
#[inline(always)]
pub fn related(quoted: &mut CtKey, now: u64) -> Option<u32> {
    if let Some(rule_id) = live_rule(quoted, now) {
        return Some(rule_id);
    }
    core::mem::swap(&mut quoted.src_addr, &mut quoted.dst_addr);
    core::mem::swap(&mut quoted.src_port, &mut quoted.dst_port);
    quoted.direction = match Direction::from_u8(quoted.direction) {
        Some(direction) => direction.opposite() as u8,
        None => quoted.direction,
    };
    live_rule(quoted, now)
}

#[inline(always)]
fn live_rule(key: &CtKey, now: u64) -> Option<u32> {
    live_rule_in(&CONNTRACK_MAP, key, now).or_else(|| live_rule_in(&UNCONFIRMED_MAP, key, now))
}

#[inline(always)]
fn live_rule_in(map: &'static FlowMap, key: &CtKey, now: u64) -> Option<u32> {
    let entry = map.get_ptr(key)?;
    // SAFETY: a live map value, read once.
    let value = unsafe { &*entry };
    live(value, key.protocol, now).then_some(value.rule_id)
}

/// The key of `packet`'s datagram in the fragment map. IPv6 reassembly identifies a datagram by
/// addresses and identification only, so the protocol is part of the key for IPv4 alone.
#[inline(always)]
pub fn fragment_key(endpoint_id: u32, direction: Direction, packet: &Packet) -> FragKey {
    FragKey {
        endpoint_id,
        id: packet.fragment_id,
        direction: direction as u8,
        protocol: if packet.family == FAMILY_V4 {
            packet.protocol
        } else {
            0
        },
        family: packet.family,
        _pad: 0,
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
    }
}

/// Records what a first fragment got, for the fragments that follow.
///
/// Not inlined (nor is [`insert`]): their keys and values would otherwise share the programs'
/// frame, which the verifier's 512-byte stack limit does not allow.
#[inline(never)]
pub fn record_fragment(
    endpoint_id: u32,
    direction: Direction,
    packet: &Packet,
    allowed: bool,
    rule_id: u32,
) {
    let key = fragment_key(endpoint_id, direction, packet);
    let value = FragValue {
        rule_id,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        allowed: u8::from(allowed),
        _pad: [0; 3],
    };
    // A failed insert makes the later fragments unknown, and they drop when isolated.
    let _ = FRAGMENTS_MAP.insert(&key, &value, 0);
}

/// What the first fragment of this datagram got, if it was seen.
#[inline(always)]
pub fn fragment(key: &FragKey) -> Option<FragValue> {
    let entry = FRAGMENTS_MAP.get_ptr(key)?;
    // SAFETY: a live map value, copied out.
    Some(unsafe { *entry })
}
