//! Connection tracking: per-endpoint flow entries in `NP_CT_V1`, and the fragment verdicts in
//! `NP_FRAG_V1`.

use policy_common::{
    maps::{
        CT_CLOSING, CT_CLOSING_TIMEOUT_NS, CT_OTHER_TIMEOUT_NS, CT_REFRESH_NS, CT_SERVICE,
        CT_TCP_TIMEOUT_NS, CtKey, CtValue, FAMILY_V4, FragKey, FragValue,
    },
    verdict::{Direction, Verdict},
};

use crate::{
    maps::{NP_CT_V1, NP_FRAG_V1},
    parse::{IPPROTO_TCP, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

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

/// Looks `key` up; on a live hit refreshes it (at most every `CT_REFRESH_NS`, and at once when
/// a FIN or RST starts closing the flow) and returns the rule that allowed the flow and the
/// entry's flags.
#[inline(always)]
fn hit(key: &CtKey, tcp_flags: u8, now: u64) -> Option<(u32, u32)> {
    let entry = NP_CT_V1.get_ptr_mut(key)?;
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
    Some((value.rule_id, value.flags))
}

/// An established packet (same key) or a reply (reversed key), with the flow's rule id. A
/// later packet of a flow to a ClusterIP (`CT_SERVICE`) is `Service`: it is not decided here.
#[inline(always)]
pub fn lookup(key: &CtKey, tcp_flags: u8, now: u64) -> Option<(Verdict, u32)> {
    if let Some((rule_id, flags)) = hit(key, tcp_flags, now) {
        let verdict = if flags & CT_SERVICE != 0 {
            Verdict::Service
        } else {
            Verdict::Established
        };
        return Some((verdict, rule_id));
    }
    hit(&key.reversed(), tcp_flags, now).map(|(rule_id, _)| (Verdict::Reply, rule_id))
}

/// Records an allowed first packet; `service` marks a flow to a ClusterIP (`CT_SERVICE`).
#[inline(always)]
pub fn insert(key: &CtKey, rule_id: u32, tcp_flags: u8, now: u64, service: bool) {
    let closing = if key.protocol == IPPROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_CLOSING
    } else {
        0
    };
    let flags = if service {
        closing | CT_SERVICE
    } else {
        closing
    };
    let value = CtValue {
        last_seen_ns: now,
        rule_id,
        flags,
    };
    // A failed insert leaves the flow untracked: later packets are decided by policy again and
    // replies into an isolated direction drop, which fails closed.
    let _ = NP_CT_V1.insert(key, &value, 0);
}

/// Whether an ICMP error quotes a flow this endpoint tracks, with that flow's rule id.
///
/// `quoted` is the offending packet's tuple, keyed in the direction opposite to the error. If
/// the quoted packet went the flow's original way (the endpoint sent it and the error comes
/// back, or the endpoint received it and reports the error), that is the entry itself. If the
/// quoted packet was a reply, the entry is its reverse, which `reversed` also puts back into the
/// error's own direction.
#[inline(always)]
pub fn related(quoted: &CtKey, now: u64) -> Option<u32> {
    if let Some(rule_id) = live_rule(quoted, now) {
        return Some(rule_id);
    }
    live_rule(&quoted.reversed(), now)
}

#[inline(always)]
fn live_rule(key: &CtKey, now: u64) -> Option<u32> {
    let entry = NP_CT_V1.get_ptr(key)?;
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
#[inline(always)]
pub fn record_fragment(key: &FragKey, packet: &Packet, allowed: bool, rule_id: u32) {
    let value = FragValue {
        rule_id,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        allowed: u8::from(allowed),
        _pad: [0; 3],
    };
    // A failed insert makes the later fragments unknown, and they drop when isolated.
    let _ = NP_FRAG_V1.insert(key, &value, 0);
}

/// What the first fragment of this datagram got, if it was seen.
#[inline(always)]
pub fn fragment(key: &FragKey) -> Option<FragValue> {
    let entry = NP_FRAG_V1.get_ptr(key)?;
    // SAFETY: a live map value, copied out.
    Some(unsafe { *entry })
}
