//! TC programs that give every packet of a managed pod its NetworkPolicy verdict.
//!
//! Both programs run the same decision, [`decide`], from the pod's point of view: `from_pod` for
//! what the pod sends (its egress), `to_pod` for what it receives (its ingress).
#![no_std]
#![no_main]

mod conntrack;
mod events;
mod maps;
mod parse;
mod policy;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_coarse_ns,
    macros::classifier,
    programs::TcContext,
};
use policy_common::{
    maps::{CtKey, ENDPOINT_LOG_ALLOWED, ENDPOINT_NOT_READY, EndpointInfo},
    verdict::{Direction, DropReason, Verdict, outcome},
};

use crate::{
    maps::NP_ENDPOINT_V1,
    parse::{FRAGMENT_FIRST, Packet, ParseError, Shape},
};

/// The pod's egress, on the host veth's TC ingress.
///
/// Passes (`TC_ACT_UNSPEC`, so later programs and the stack still decide):
/// - packets on an interface that is not in `NP_ENDPOINT_V1` (not counted);
/// - non-IP frames such as ARP, and ICMPv6 neighbour discovery, types 133 to 137 (`Exempt`);
/// - packets of a flow this endpoint allowed (`Established`), replies to flows it allowed
///   inbound (`Reply`), and ICMP/ICMPv6 errors (unreachable, packet too big, time exceeded,
///   parameter problem) quoting a packet of either (`Related`);
/// - packets to an address of this node (`Host`), untracked;
/// - non-first fragments whose first fragment passed (`Fragment`);
/// - the first packet of a flow a rule allows (`Policy`), or any packet when the pod is not
///   egress-isolated (`NotIsolated`, also for malformed packets: the stack discards those).
///   Both track the flow, so its replies pass an isolated other direction.
///
/// Drops (`TC_ACT_SHOT`), each counted and reported with its reason:
/// - everything while the endpoint is flagged not ready (`NotReady`);
/// - in an egress-isolated pod: packets no rule allows (`PolicyDenied`); truncated or
///   malformed headers (`Malformed`: a short Ethernet, VLAN, IP, extension or L4 header, an IP
///   version that contradicts the ethertype, IHL below 5 or above the total length, a TCP data
///   offset below 5, an authentication header of length 0); IPv6 extension chains longer than
///   the six headers the parser walks, and stacked VLAN tags (`Unparsed`); non-first fragments
///   whose first fragment was not seen (`FragmentUnknown`);
/// - non-first fragments whose first fragment dropped (`FragmentDenied`).
///
/// Parsing: one 802.1Q or 802.1ad tag is parsed through; IPv4 options are skipped; the IPv6
/// walk covers hop-by-hop, routing, fragment, destination options and authentication headers.
/// Ports and policy: TCP, UDP and SCTP are looked up by destination port; ICMP, ICMPv6 and
/// unknown L4 protocols with port 0, so only any-protocol entries and whole-range entries of
/// that protocol match them. ICMP echo is tracked by its identifier; ICMP errors are never
/// tracked themselves, and one quoting no tracked flow is decided by policy. A TCP SYN without
/// ACK on a closing entry (FIN or RST seen) is a new connection and is decided again. Events
/// of packets that failed to parse carry no tuple.
#[classifier]
fn from_pod(ctx: TcContext) -> i32 {
    run(&ctx, Direction::Egress)
}

/// The pod's ingress, on the host veth's TC egress.
///
/// The same decision as [`from_pod`] with the roles swapped: the peer is the packet's source,
/// `Host` applies to packets from an address of this node, and isolation is the ingress flag.
#[classifier]
fn to_pod(ctx: TcContext) -> i32 {
    run(&ctx, Direction::Ingress)
}

/// A packet's decision and what it carries into counters and events.
struct Decision {
    result: Result<Verdict, DropReason>,
    /// The rule behind the verdict; 0 when no rule decided.
    rule_id: u32,
    /// The packet started a tracked flow.
    new_flow: bool,
}

impl Decision {
    #[inline(always)]
    const fn pass(verdict: Verdict, rule_id: u32) -> Decision {
        Decision {
            result: Ok(verdict),
            rule_id,
            new_flow: false,
        }
    }

    #[inline(always)]
    const fn drop(reason: DropReason) -> Decision {
        Decision {
            result: Err(reason),
            rule_id: 0,
            new_flow: false,
        }
    }
}

/// Decides one packet, accounts for it, and turns the decision into a TC action.
#[inline(always)]
fn run(ctx: &TcContext, direction: Direction) -> i32 {
    // SAFETY: the context of a TC program is a `__sk_buff`; ifindex is a readable field.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    let Some(endpoint) = NP_ENDPOINT_V1.get_ptr(&ifindex) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a live map value, copied out once.
    let endpoint = unsafe { *endpoint };
    let mut packet = Packet::new();
    let decision = decide(ctx, &endpoint, direction, &mut packet);
    let code = outcome(decision.result);
    events::count(endpoint.endpoint_id, direction, code, ctx.len());
    let logged = decision.new_flow && endpoint.flags & ENDPOINT_LOG_ALLOWED != 0;
    if decision.result.is_err() || logged {
        events::report(
            endpoint.endpoint_id,
            ifindex,
            direction,
            &packet,
            code,
            decision.rule_id,
        );
    }
    match decision.result {
        Ok(_) => TC_ACT_UNSPEC,
        Err(_) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn decide(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &mut Packet,
) -> Decision {
    if endpoint.flags & ENDPOINT_NOT_READY != 0 {
        return Decision::drop(DropReason::NotReady);
    }
    let isolated = endpoint.isolated(direction);
    let shape = match parse::parse(ctx, packet) {
        Ok(shape) => shape,
        Err(_) if !isolated => return Decision::pass(Verdict::NotIsolated, 0),
        Err(ParseError::Malformed) => return Decision::drop(DropReason::Malformed),
        Err(ParseError::Unparsed) => return Decision::drop(DropReason::Unparsed),
    };
    if shape == Shape::NonIp || shape == Shape::NeighbourDiscovery {
        return Decision::pass(Verdict::Exempt, 0);
    }
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Established flows go first: the host check costs a lookup, and host traffic is never
    // tracked, so checking it after a conntrack miss gives every packet the same verdict.
    let key = conntrack::flow_key(endpoint.endpoint_id, direction, packet);
    if shape == Shape::Flow
        && let Some((verdict, rule_id)) = conntrack::lookup(&key, packet.tcp_flags, now)
    {
        return record_first_fragment(
            endpoint,
            direction,
            packet,
            Decision::pass(verdict, rule_id),
        );
    }
    if policy::is_host(packet, direction) {
        return Decision::pass(Verdict::Host, 0);
    }
    let decision = match shape {
        Shape::LaterFragment => return later_fragment(endpoint, direction, packet, isolated),
        Shape::IcmpError => icmp_error(ctx, endpoint, direction, packet, isolated, now),
        _ => first_packet(endpoint, direction, packet, &key, isolated, now),
    };
    record_first_fragment(endpoint, direction, packet, decision)
}

/// Records what a first fragment got, for the fragments that follow it.
#[inline(always)]
fn record_first_fragment(
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &Packet,
    decision: Decision,
) -> Decision {
    if packet.fragment == FRAGMENT_FIRST {
        let key = conntrack::fragment_key(endpoint.endpoint_id, direction, packet);
        conntrack::record_fragment(&key, packet, decision.result.is_ok(), decision.rule_id);
    }
    decision
}

/// The first packet of a flow (no live entry): decided by policy, and tracked when allowed.
#[inline(always)]
fn first_packet(
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &Packet,
    key: &CtKey,
    isolated: bool,
    now: u64,
) -> Decision {
    let (verdict, rule_id) = if isolated {
        match policy::allowing_rule(endpoint, direction, packet) {
            Some(rule_id) => (Verdict::Policy, rule_id),
            None => return Decision::drop(DropReason::PolicyDenied),
        }
    } else {
        (Verdict::NotIsolated, 0)
    };
    conntrack::insert(key, rule_id, packet.tcp_flags, now);
    Decision {
        result: Ok(verdict),
        rule_id,
        new_flow: true,
    }
}

/// An ICMP error: passes as `Related` when it quotes a tracked flow, else is decided by policy
/// like an ICMP packet without ports. Errors are not flows: they create no entry.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &Packet,
    isolated: bool,
    now: u64,
) -> Decision {
    if let Some(quote) = parse::quoted_tuple(ctx, packet) {
        let quoted = CtKey {
            endpoint_id: endpoint.endpoint_id,
            src_port: quote.src_port,
            dst_port: quote.dst_port,
            direction: direction.opposite() as u8,
            protocol: quote.protocol,
            family: packet.family,
            _pad: 0,
            src_addr: quote.src_addr,
            dst_addr: quote.dst_addr,
        };
        if let Some(rule_id) = conntrack::related(&quoted, now) {
            return Decision::pass(Verdict::Related, rule_id);
        }
    }
    if !isolated {
        return Decision::pass(Verdict::NotIsolated, 0);
    }
    match policy::allowing_rule(endpoint, direction, packet) {
        Some(rule_id) => Decision::pass(Verdict::Policy, rule_id),
        None => Decision::drop(DropReason::PolicyDenied),
    }
}

/// A non-first fragment gets what its first fragment got.
#[inline(always)]
fn later_fragment(
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &mut Packet,
    isolated: bool,
) -> Decision {
    let key = conntrack::fragment_key(endpoint.endpoint_id, direction, packet);
    match conntrack::fragment(&key) {
        Some(first) => {
            packet.src_port = first.src_port;
            packet.dst_port = first.dst_port;
            if first.allowed != 0 {
                Decision::pass(Verdict::Fragment, first.rule_id)
            } else {
                Decision::drop(DropReason::FragmentDenied)
            }
        }
        None if isolated => Decision::drop(DropReason::FragmentUnknown),
        None => Decision::pass(Verdict::NotIsolated, 0),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
