//! TC programs that give every packet of a managed pod its NetworkPolicy verdict.
//!
//! Both pod programs run the same decision, [`decide`], from the pod's point of view: `from_pod`
//! for what the pod sends (its egress), `to_pod` for what it receives (its ingress).
//!
//! # Services
//! kube-proxy rewrites a ClusterIP to a backend after the packet left the client's veth, so
//! `from_pod` does not decide a packet to a ClusterIP (`NP_SVC_V1`): it tracks the flow on the
//! ClusterIP tuple with `CT_SERVICE` (so replies, which come back from the ClusterIP, pass as
//! replies), and passes the packet with `skb->mark` carrying "egress pending" and the client's
//! endpoint id (`policy_common::maps::svc_mark`). The first hook that sees the packet after DNAT
//! decides the client's egress on the post-DNAT tuple exactly as `from_pod` decides a direct
//! packet, with the client's endpoint from `NP_EPID_V1`, counting and reporting for the client:
//! - `svc_egress` in front of `to_pod` on a local backend's host veth, before the backend's own
//!   ingress decision; a client reaching itself through its own Service passes (`OwnService`);
//! - `svc_egress` on TC egress of the node's other interfaces, for remote backends.
//!
//! It clears the pending bits once it decided. Keeping this out of `to_pod` keeps the direct
//! path as it was and each program small enough for the verifier.
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
    maps::{
        CtKey, ENDPOINT_LOG_ALLOWED, ENDPOINT_NOT_READY, EndpointInfo, SVC_MARK_BITS, svc_mark,
        svc_pending,
    },
    verdict::{Direction, DropReason, Verdict, outcome},
};

use crate::{
    maps::{NP_ENDPOINT_V1, NP_EPID_V1},
    parse::{FRAGMENT_FIRST, Packet, ParseError, Shape},
};

/// The pod's egress, on the host veth's TC ingress.
///
/// Passes (`TC_ACT_UNSPEC`, so later programs and the stack still decide):
/// - packets on an interface that is not in `NP_ENDPOINT_V1` (not counted);
/// - non-IP frames such as ARP, and ICMPv6 neighbour discovery, types 133 to 137 (`Exempt`);
/// - packets to a ClusterIP (`Service`): marked "egress pending", decided after DNAT (see the
///   crate documentation), and their flow tracked on the ClusterIP tuple;
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
/// - every IP packet while the endpoint is flagged not ready (`NotReady`); the exempt frames
///   above still pass;
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
/// A pending Service egress was decided before, by `svc_egress` in front of it on this hook.
#[classifier]
fn to_pod(ctx: TcContext) -> i32 {
    run(&ctx, Direction::Ingress)
}

/// A pod program: the endpoint of the interface decides its packet in `direction`. Only the
/// pod's egress defers packets to a ClusterIP, marking them for `svc_egress`.
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
    let parsed = parse::parse(ctx, &mut packet);
    let services = direction == Direction::Egress;
    let decision = decide(ctx, &endpoint, direction, &mut packet, parsed, services);
    if decision.result == Ok(Verdict::Service) {
        ctx.set_mark(svc_mark(mark(ctx), endpoint.endpoint_id));
    }
    account(ctx, &endpoint, ifindex, direction, &packet, &decision)
}

/// The deferred egress of pod packets to a ClusterIP, on TC egress of every interface a packet
/// can leave by after DNAT: first on each pod's host veth (before `to_pod`, for a local
/// backend), and on the node's other interfaces (not loopback, bridges or bridge ports, for a
/// remote backend).
///
/// Passes every packet without a pending mark, untouched and uncounted. A pending packet gets
/// its client's egress decision on the post-DNAT tuple, exactly as [`from_pod`] decides a
/// direct packet, counted and reported for the client (direction egress); it passes or drops
/// by it. A packet that reaches its own client (a pod through its own Service) passes
/// (`OwnService`); a client that is no longer an endpoint passes.
#[classifier]
fn svc_egress(ctx: TcContext) -> i32 {
    let mark = mark(&ctx);
    let Some(client_id) = svc_pending(mark) else {
        return TC_ACT_UNSPEC;
    };
    ctx.set_mark(mark & !SVC_MARK_BITS);
    // SAFETY: the context of a TC program is a `__sk_buff`; ifindex is a readable field.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    let Some(client) = NP_EPID_V1.get_ptr(client_id) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a live map value, copied out once.
    let client = unsafe { *client };
    if client.endpoint_id != client_id {
        return TC_ACT_UNSPEC;
    }
    let mut packet = Packet::new();
    let parsed = parse::parse(&ctx, &mut packet);
    let own = NP_ENDPOINT_V1
        .get_ptr(&ifindex)
        // SAFETY: a live map value, read once.
        .is_some_and(|endpoint| unsafe { (*endpoint).endpoint_id } == client_id);
    let decision = if own {
        Decision::pass(Verdict::OwnService, 0)
    } else {
        decide(&ctx, &client, Direction::Egress, &mut packet, parsed, false)
    };
    account(
        &ctx,
        &client,
        ifindex,
        Direction::Egress,
        &packet,
        &decision,
    )
}

#[inline(always)]
fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: the context of a TC program is a `__sk_buff`; mark is a readable field.
    unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark }
}

/// Counts a decision, reports drops (and new flows where the endpoint asks), and turns it into
/// a TC action: the one place a decision becomes `TC_ACT_*`.
#[inline(always)]
fn account(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    ifindex: u32,
    direction: Direction,
    packet: &Packet,
    decision: &Decision,
) -> i32 {
    let code = outcome(decision.result);
    events::count(endpoint.endpoint_id, direction, code, ctx.len());
    let logged = decision.new_flow && endpoint.flags & ENDPOINT_LOG_ALLOWED != 0;
    if decision.result.is_err() || logged {
        events::report(
            endpoint.endpoint_id,
            ifindex,
            direction,
            packet,
            code,
            decision.rule_id,
        );
    }
    match decision.result {
        Ok(_) => TC_ACT_UNSPEC,
        Err(_) => TC_ACT_SHOT,
    }
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

/// Decides one parsed packet for `endpoint` in `direction`. With `services`, a packet to a
/// ClusterIP is not decided but gets `Service`; without, it is decided as any other.
#[inline(always)]
fn decide(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &mut Packet,
    parsed: Result<Shape, ParseError>,
    services: bool,
) -> Decision {
    // Exempt before the not-ready check: a bridge learns a held pod's MAC from its ARP and
    // neighbour discovery, and the agent finds the pod's bridge port through that MAC.
    if let Ok(Shape::NonIp | Shape::NeighbourDiscovery) = parsed {
        return Decision::pass(Verdict::Exempt, 0);
    }
    if endpoint.flags & ENDPOINT_NOT_READY != 0 {
        return Decision::drop(DropReason::NotReady);
    }
    let isolated = endpoint.isolated(direction);
    let shape = match parsed {
        Ok(shape) => shape,
        Err(_) if !isolated => return Decision::pass(Verdict::NotIsolated, 0),
        Err(ParseError::Malformed) => return Decision::drop(DropReason::Malformed),
        Err(ParseError::Unparsed) => return Decision::drop(DropReason::Unparsed),
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Established flows go first: the host check costs a lookup, and host traffic is never
    // tracked, so checking it after a conntrack miss gives every packet the same verdict.
    let key = conntrack::flow_key(endpoint.endpoint_id, direction, packet);
    let mut track = true;
    if shape == Shape::Flow {
        match conntrack::lookup(&key, packet.tcp_flags, now) {
            // After DNAT, a packet that still matches a Service entry was not translated (no
            // Service port matched): decided by policy, untracked so the entry stays.
            Some((Verdict::Service, _)) if !services => track = false,
            Some((Verdict::Service, rule_id)) => return Decision::pass(Verdict::Service, rule_id),
            Some((verdict, rule_id)) => {
                return record_first_fragment(
                    endpoint,
                    direction,
                    packet,
                    Decision::pass(verdict, rule_id),
                );
            }
            None => {}
        }
    }
    if policy::is_host(packet, direction) {
        return Decision::pass(Verdict::Host, 0);
    }
    let decision = match shape {
        Shape::LaterFragment => {
            return later_fragment(endpoint, direction, packet, isolated, services);
        }
        Shape::IcmpError => icmp_error(ctx, endpoint, direction, packet, isolated, now),
        _ => first_packet(
            endpoint, direction, packet, &key, isolated, now, services, track,
        ),
    };
    if decision.result == Ok(Verdict::Service) {
        return decision;
    }
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

/// The first packet of a flow (no live entry): decided by policy, and tracked when allowed
/// (unless `track` is false).
///
/// With `services`, a flow to a ClusterIP is tracked with `CT_SERVICE` and gets `Service`.
#[expect(
    clippy::too_many_arguments,
    reason = "an always-inlined step of `decide`, taking its locals"
)]
#[inline(always)]
fn first_packet(
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &Packet,
    key: &CtKey,
    isolated: bool,
    now: u64,
    services: bool,
    track: bool,
) -> Decision {
    if services && direction == Direction::Egress && policy::is_service(packet) {
        conntrack::insert(key, 0, packet.tcp_flags, now, true);
        return Decision::pass(Verdict::Service, 0);
    }
    let (verdict, rule_id) = if isolated {
        match policy::allowing_rule(endpoint, direction, packet) {
            Some(rule_id) => (Verdict::Policy, rule_id),
            None => return Decision::drop(DropReason::PolicyDenied),
        }
    } else {
        (Verdict::NotIsolated, 0)
    };
    if !track {
        return Decision::pass(verdict, rule_id);
    }
    conntrack::insert(key, rule_id, packet.tcp_flags, now, false);
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

/// A non-first fragment gets what its first fragment got. With `services`, one to a ClusterIP
/// (whose first fragment was deferred, so left no record here) is deferred too.
#[inline(always)]
fn later_fragment(
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &mut Packet,
    isolated: bool,
    services: bool,
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
        None if services && direction == Direction::Egress && policy::is_service(packet) => {
            Decision::pass(Verdict::Service, 0)
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
