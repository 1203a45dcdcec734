//! TC programs that give every packet of a managed pod its NetworkPolicy and
//! ClusterNetworkPolicy verdict.
//!
//! Both pod programs run the same decision, [`decide`], from the pod's point of view: `from_pod`
//! for what the pod sends (its egress), `to_pod` for what it receives (its ingress).
//!
//! # Tiers
//! The agent compiles the tiers (Admin, NetworkPolicy, Baseline) into policy entries that each
//! say what they decide (`PolicyAction`): allowed, or dropped by an Admin or Baseline `Deny` or
//! by NetworkPolicy isolation. The first packet of a flow costs one lookup either way. Where a
//! ClusterNetworkPolicy applies to a pod (`ENDPOINT_*_TIERED`), its entries are read even
//! where nothing isolates the pod, and for the traffic NetworkPolicy exempts (with the pod's own
//! node, and the pod through its own Service), which only a `Deny` drops.
//!
//! # Services
//! kube-proxy rewrites a ClusterIP to a backend after the packet left the client's veth, so
//! `from_pod` does not decide a packet to a ClusterIP (`SERVICES_MAP`): it tracks the flow on the
//! ClusterIP tuple with `CT_SERVICE` (so replies, which come back from the ClusterIP, pass as
//! replies), and passes the packet with `skb->mark` carrying "egress pending" and the client's
//! endpoint id (`policy_common::maps::svc_mark`). The first hook that sees the packet after DNAT
//! decides the client's egress on the post-DNAT tuple exactly as `from_pod` decides a direct
//! packet, with the client's endpoint from `ENDPOINT_IDS_MAP`, counting and reporting for the
//! client:
//! - `svc_egress` in front of `to_pod` on a local backend's host veth, before the backend's own
//!   ingress decision; a client reaching itself through its own Service passes (`OwnService`)
//!   unless a ClusterNetworkPolicy denies it;
//! - `svc_egress` on TC egress of the node's other interfaces, for remote backends.
//!
//! It clears the pending bits once it decided. Keeping this out of `to_pod` keeps the direct
//! path as it was and each program small enough for the verifier.
#![no_std]
#![no_main]

mod conntrack;
mod events;
mod headers;
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
        CT_HOST, CT_SERVICE, CtKey, ENDPOINT_ANY_SOURCE, ENDPOINT_LOG_ALLOWED, ENDPOINT_NOT_READY,
        EndpointInfo, FAMILY_V4, FAMILY_V6, SVC_MARK_BITS, exempt_outcome, policy_outcome,
        same_address, svc_mark, svc_pending,
    },
    verdict::{Direction, DropReason, Verdict, outcome},
};

use crate::{
    conntrack::Tracked,
    headers::{ND_NEIGHBOUR_ADVERTISEMENT, ND_NEIGHBOUR_SOLICITATION, ND_ROUTER_SOLICITATION},
    maps::{ENDPOINT_IDS_MAP, ENDPOINTS_MAP},
    parse::{FRAGMENT_FIRST, Packet, ParseError, Shape},
};

/// The pod's egress, on the host veth's TC ingress.
///
/// Passes (`TC_ACT_UNSPEC`, so later programs and the stack still decide):
/// - packets on an interface that is not in `ENDPOINTS_MAP` (not counted);
/// - ARP from the pod's own address or probing from 0.0.0.0, and neighbour discovery that stays
///   on the link (see [`neighbour`]), isolated or not ready (`Exempt`);
/// - packets to a ClusterIP (`Service`) or to an address of this node (`Host`): marked
///   "egress pending", decided after DNAT (see the crate documentation), and their flow
///   tracked on the original tuple; what the node itself terminates passes;
/// - packets of a flow this endpoint allowed (`Established`), replies to flows it allowed
///   inbound (`Reply`), and ICMP/ICMPv6 errors (unreachable, packet too big, time exceeded,
///   parameter problem) quoting a packet the pod received, of either (`Related`);
/// - ICMP errors to an address of this node (`Host`), untracked;
/// - non-first fragments whose first fragment passed (`Fragment`);
/// - the first packet of a flow a rule allows (`Policy`), or any packet when the pod is not
///   egress-isolated (`NotIsolated`), and non-IP frames other than ARP there. Both track the
///   flow, so its replies pass an isolated other direction.
///
/// Drops (`TC_ACT_SHOT`), each counted and reported with its reason:
/// - every packet whose source is not the pod's (`Spoofed`): an IP source other than the pod's
///   addresses (IPv6 link-local, and the unspecified address to a multicast group, excepted),
///   an ARP sender other than the pod's IPv4 address, a neighbour advertisement for an address
///   that is neither the pod's nor link-local; unless the operator exempted the endpoint
///   (`ENDPOINT_ANY_SOURCE`);
/// - every other packet while the endpoint is flagged not ready (`NotReady`);
/// - truncated or malformed headers (`Malformed`: a short Ethernet, VLAN, IP, extension or L4
///   header, an IP version that contradicts the ethertype, IHL below 5 or above the total
///   length, a TCP data offset below 5, an authentication header of length 0); IPv6 extension
///   chains longer than the six headers the parser walks, and stacked VLAN tags (`Unparsed`):
///   isolated or not, since their source cannot be checked;
/// - in an egress-isolated pod: packets no rule allows (`PolicyDenied`); non-IP frames other
///   than ARP (`NotIp`); non-first fragments whose first fragment was not seen
///   (`FragmentUnknown`, also where a ClusterNetworkPolicy applies);
/// - packets a ClusterNetworkPolicy `Deny` decides (`AdminDenied`, `BaselineDenied`), whether
///   or not NetworkPolicy isolates the pod, traffic to its own node's addresses included;
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
    run(&ctx, Hook::FromPod)
}

/// The pod's ingress, on the host veth's TC egress.
///
/// The same decision as [`from_pod`] with the roles swapped: the peer is the packet's source,
/// `Host` applies to packets from an address of this node (untracked, or `Reply` to what the
/// pod sent there), and isolation is the ingress flag. Sources are not checked here (the
/// sender's own `from_pod` did), any ARP passes, and a packet that does not parse passes
/// where neither isolation nor a ClusterNetworkPolicy applies to the pod's ingress.
/// A pending Service egress was decided before, by `svc_egress` in front of it on this hook.
#[classifier]
fn to_pod(ctx: TcContext) -> i32 {
    run(&ctx, Hook::ToPod)
}

/// A pod program: the endpoint of the interface decides its packet in `direction`. Only the
/// pod's egress defers packets to a ClusterIP, marking them for `svc_egress`.
#[inline(always)]
fn run(ctx: &TcContext, hook: Hook) -> i32 {
    // SAFETY: the context of a TC program is a `__sk_buff`; ifindex is a readable field.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    let Some(endpoint) = ENDPOINTS_MAP.get_ptr(&ifindex) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a live map value, copied out once.
    let endpoint = unsafe { *endpoint };
    let mut packet = Packet::new();
    let parsed = parse::parse(ctx, &mut packet);
    let decision = decide(ctx, &endpoint, hook, &mut packet, parsed);
    if hook == Hook::FromPod && matches!(decision.result, Ok(Verdict::Service | Verdict::Host)) {
        ctx.set_mark(svc_mark(mark(ctx), endpoint.endpoint_id));
    }
    account(
        ctx,
        &endpoint,
        ifindex,
        hook.direction(),
        &packet,
        &decision,
    )
}

/// Where a decision is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// `from_pod`: checks the pod's source addresses, and defers packets to a ClusterIP or a
    /// node address to the hook that sees them after DNAT.
    FromPod,
    /// `to_pod`.
    ToPod,
    /// `svc_egress`: a deferred egress decision, on the post-DNAT tuple.
    AfterDnat,
}

impl Hook {
    #[inline(always)]
    const fn direction(self) -> Direction {
        match self {
            Hook::ToPod => Direction::Ingress,
            Hook::FromPod | Hook::AfterDnat => Direction::Egress,
        }
    }
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
/// (`OwnService`) unless a ClusterNetworkPolicy `Deny` of the pod's egress or ingress matches
/// its own address; a client that is no longer an endpoint passes.
#[classifier]
fn svc_egress(ctx: TcContext) -> i32 {
    let mark = mark(&ctx);
    let Some(client_id) = svc_pending(mark) else {
        return TC_ACT_UNSPEC;
    };
    ctx.set_mark(mark & !SVC_MARK_BITS);
    // SAFETY: the context of a TC program is a `__sk_buff`; ifindex is a readable field.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    let Some(client) = ENDPOINT_IDS_MAP.get_ptr(client_id) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a live map value, copied out once.
    let client = unsafe { *client };
    if client.endpoint_id != client_id {
        return TC_ACT_UNSPEC;
    }
    let mut packet = Packet::new();
    let parsed = parse::parse(&ctx, &mut packet);
    // Only IP packets are ever marked pending, and neighbour discovery is never exempt here:
    // it is decided like any ICMPv6 packet.
    let parsed = match parsed {
        Ok(Shape::Arp | Shape::NonIp) => return TC_ACT_UNSPEC,
        Ok(Shape::NeighbourDiscovery) => Ok(Shape::Flow),
        other => other,
    };
    let own = ENDPOINTS_MAP
        .get_ptr(&ifindex)
        // SAFETY: a live map value, read once.
        .is_some_and(|endpoint| unsafe { (*endpoint).endpoint_id } == client_id);
    let decision = if own {
        // The pod reaches itself: its egress and its ingress both see its own address, which
        // a masquerade may hide from `to_pod`.
        match exempt(
            &client,
            Direction::Egress,
            &packet,
            &packet.dst_addr,
            Verdict::OwnService,
        ) {
            Decision { result: Ok(_), .. } => exempt(
                &client,
                Direction::Ingress,
                &packet,
                &packet.dst_addr,
                Verdict::OwnService,
            ),
            denied => denied,
        }
    } else {
        decide(&ctx, &client, Hook::AfterDnat, &mut packet, parsed)
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

/// Decides one parsed packet for `endpoint` at `hook`.
#[inline(always)]
fn decide(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    hook: Hook,
    packet: &mut Packet,
    parsed: Result<Shape, ParseError>,
) -> Decision {
    let direction = hook.direction();
    // ARP and neighbour discovery are decided before the not-ready check: a pod cannot reach
    // its node or its neighbours without them.
    let shape = match parsed {
        Ok(Shape::Arp) => return arp(endpoint, hook, packet),
        Ok(Shape::NonIp) => return non_ip(endpoint, direction),
        Ok(Shape::NeighbourDiscovery) => match neighbour(ctx, endpoint, hook, packet) {
            Some(decision) => return decision,
            None => Ok(Shape::Flow),
        },
        other => other,
    };
    if endpoint.flags & ENDPOINT_NOT_READY != 0 {
        return Decision::drop(DropReason::NotReady);
    }
    let decides = endpoint.decides(direction);
    // What the pod sends must parse, isolated or not: a source the parser cannot read cannot
    // be checked.
    let checked = hook == Hook::FromPod;
    if checked && shape.is_ok() && spoofed(endpoint, packet) {
        return Decision::drop(DropReason::Spoofed);
    }
    let shape = match shape {
        Ok(shape) => shape,
        Err(_) if !decides && !checked => return Decision::pass(Verdict::NotIsolated, 0),
        Err(ParseError::Malformed) => return Decision::drop(DropReason::Malformed),
        Err(ParseError::Unparsed) => return Decision::drop(DropReason::Unparsed),
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Established flows go first: the host check costs a lookup, and host traffic is never
    // tracked, so checking it after a conntrack miss gives every packet the same verdict.
    let key = conntrack::flow_key(endpoint.endpoint_id, direction, packet);
    let mut tracking = Tracking::Track;
    if shape == Shape::Flow {
        match conntrack::lookup(&key, packet.tcp_flags, now) {
            Some(Tracked {
                verdict: Verdict::Service | Verdict::Host,
                ..
            }) if hook == Hook::AfterDnat => {
                tracking = Tracking::Untranslated;
            }
            Some(Tracked {
                verdict: verdict @ (Verdict::Service | Verdict::Host),
                rule_id,
            }) if hook == Hook::FromPod => {
                return Decision::pass(verdict, rule_id);
            }
            Some(Tracked { verdict, rule_id }) => {
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
    // The pod's own egress to a node address is deferred with Services (`first_packet`); an
    // ICMP error is never translated to a backend, so it is host traffic at every hook.
    let deferring = hook == Hook::FromPod && shape != Shape::IcmpError;
    if !deferring && policy::is_host(packet, direction) {
        let peer = *policy::peer_addr(packet, direction);
        let host = exempt(endpoint, direction, packet, &peer, Verdict::Host);
        // Node traffic is not tracked, except a flow the node opens to a pod whose egress a
        // ClusterNetworkPolicy decides: only the entry tells the pod's reply from a flow the
        // pod opens to its node, which a `Deny` of the node would drop.
        if hook == Hook::ToPod
            && shape == Shape::Flow
            && host.result.is_ok()
            && endpoint.tiered(Direction::Egress)
        {
            conntrack::insert(&key, 0, packet.tcp_flags, now, 0);
        }
        return host;
    }
    let decision = match shape {
        Shape::LaterFragment => {
            return later_fragment(endpoint, hook, packet);
        }
        Shape::IcmpError => icmp_error(ctx, endpoint, direction, packet),
        _ => first_packet(endpoint, hook, packet, &key, now, tracking),
    };
    if matches!(decision.result, Ok(Verdict::Service | Verdict::Host)) && hook == Hook::FromPod {
        return decision;
    }
    record_first_fragment(endpoint, direction, packet, decision)
}

/// ARP passes both ways (`Exempt`), isolated or not ready, when the pod sends it from its own
/// address (or probes for one from 0.0.0.0); the pod's ARP claiming another address is
/// `Spoofed`.
#[inline(always)]
fn arp(endpoint: &EndpointInfo, hook: Hook, packet: &Packet) -> Decision {
    let probe = u32::from_ne_bytes([
        packet.src_addr[0],
        packet.src_addr[1],
        packet.src_addr[2],
        packet.src_addr[3],
    ]) == 0;
    let own = endpoint.flags & ENDPOINT_ANY_SOURCE != 0
        || probe
        || endpoint.owns(FAMILY_V4, &packet.src_addr);
    if hook == Hook::FromPod && !own {
        return Decision::drop(DropReason::Spoofed);
    }
    Decision::pass(Verdict::Exempt, 0)
}

/// A frame that is neither IP nor ARP: dropped while the endpoint is not ready (`NotReady`) or
/// isolated in `direction` (`NotIp`), else passed (`NotIsolated`).
#[inline(always)]
const fn non_ip(endpoint: &EndpointInfo, direction: Direction) -> Decision {
    if endpoint.flags & ENDPOINT_NOT_READY != 0 {
        Decision::drop(DropReason::NotReady)
    } else if endpoint.isolated(direction) {
        Decision::drop(DropReason::NotIp)
    } else {
        Decision::pass(Verdict::NotIsolated, 0)
    }
}

/// Neighbour discovery a host needs on its link: router and neighbour solicitations and
/// neighbour advertisements of at most this many bytes (the 24-byte message and five 8-byte
/// options; Linux sends at most two), so that nothing rides in them.
const ND_MAX_LEN: u32 = 64;
/// The shortest neighbour solicitation or advertisement: header, flags and target.
const ND_TARGET_LEN: u32 = 24;

/// Neighbour discovery (hop limit 255: never routed) passes without a policy decision
/// (`Exempt`), isolated or not ready, when it is what the protocol sends:
/// - router solicitations, neighbour solicitations and advertisements of at most
///   `ND_MAX_LEN` bytes, either way. Solicitations and advertisements may go to a neighbour's
///   unicast address (reachability checks, and the answer to a solicitation);
/// - router advertisements and redirects to the pod, from a link-local address (as routers
///   send them).
///
/// From the pod, a source or an advertised target that is not the pod's is `Spoofed`. Anything
/// else is not neighbour discovery to the programs (`None`): an ordinary ICMPv6 packet.
#[inline(always)]
fn neighbour(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    hook: Hook,
    packet: &Packet,
) -> Option<Decision> {
    let kind = parse::icmp_type(ctx, packet)?;
    let len = parse::l4_length(ctx, packet);
    let exempt = match kind {
        ND_ROUTER_SOLICITATION => len <= ND_MAX_LEN,
        ND_NEIGHBOUR_SOLICITATION | ND_NEIGHBOUR_ADVERTISEMENT => {
            (ND_TARGET_LEN..=ND_MAX_LEN).contains(&len)
        }
        _ => hook == Hook::ToPod && policy::is_link_local(&packet.src_addr),
    };
    if !exempt {
        return None;
    }
    if hook == Hook::FromPod {
        let target_foreign = kind == ND_NEIGHBOUR_ADVERTISEMENT
            && parse::neighbour_target(ctx, packet)
                .is_none_or(|target| !own_source(endpoint, FAMILY_V6, &target, false));
        if spoofed(endpoint, packet) || target_foreign {
            return Some(Decision::drop(DropReason::Spoofed));
        }
    }
    Some(Decision::pass(Verdict::Exempt, 0))
}

/// Whether a parsed packet from the pod carries a source address that is not the pod's.
#[inline(always)]
fn spoofed(endpoint: &EndpointInfo, packet: &Packet) -> bool {
    if endpoint.flags & ENDPOINT_ANY_SOURCE != 0 {
        return false;
    }
    let to_multicast = packet.family == FAMILY_V6 && policy::is_multicast(&packet.dst_addr);
    !own_source(endpoint, packet.family, &packet.src_addr, to_multicast)
}

/// Whether `source` may be the pod's: one of its addresses, or an IPv6 link-local address
/// (which the agent cannot know and which never leaves the link). With `to_multicast`, also the
/// IPv6 unspecified address, which duplicate address detection and MLD send from before the
/// pod has an address.
#[inline(always)]
fn own_source(endpoint: &EndpointInfo, family: u8, source: &[u8; 16], to_multicast: bool) -> bool {
    if endpoint.owns(family, source) {
        return true;
    }
    family == FAMILY_V6
        && (policy::is_link_local(source) || (to_multicast && same_address(source, &[0; 16])))
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
        conntrack::record_fragment(
            endpoint.endpoint_id,
            direction,
            packet,
            decision.result.is_ok(),
            decision.rule_id,
        );
    }
    decision
}

/// What the first packet of a flow (no live entry for it) leaves in conntrack when allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracking {
    /// A new entry: the flow is tracked from this packet on.
    Track,
    /// Nothing. After DNAT, the packet still matches the entry `from_pod` deferred: no Service
    /// port translated it, so it is decided by policy and that entry stays as it is.
    Untranslated,
}

/// The first packet of a flow (no live entry): decided by policy, and tracked as `tracking`
/// says when allowed.
///
/// From the pod, a flow to a ClusterIP (`Service`) or to a node address (`Host`) is not
/// decided: it is tracked as deferred (`CT_SERVICE`, with `CT_HOST` for a node address) and
/// decided after DNAT. An address that is both is a Service.
#[inline(always)]
fn first_packet(
    endpoint: &EndpointInfo,
    hook: Hook,
    packet: &Packet,
    key: &CtKey,
    now: u64,
    tracking: Tracking,
) -> Decision {
    let direction = hook.direction();
    if hook == Hook::FromPod {
        if policy::is_service(packet) {
            conntrack::insert(key, 0, packet.tcp_flags, now, CT_SERVICE);
            return Decision::pass(Verdict::Service, 0);
        }
        if policy::is_host(packet, direction) {
            // A ClusterNetworkPolicy decides the node's address as written, before any DNAT.
            let host = exempt(endpoint, direction, packet, &packet.dst_addr, Verdict::Host);
            if host.result.is_ok() {
                conntrack::insert(key, 0, packet.tcp_flags, now, CT_SERVICE | CT_HOST);
            }
            return host;
        }
    }
    let allowed = match by_policy(endpoint, direction, packet) {
        allowed @ Decision { result: Ok(_), .. } => allowed,
        denied => return denied,
    };
    if tracking == Tracking::Untranslated {
        return allowed;
    }
    conntrack::insert(key, allowed.rule_id, packet.tcp_flags, now, 0);
    Decision {
        new_flow: true,
        ..allowed
    }
}

/// An ICMP error: passes as `Related` when it quotes a tracked flow and travels back to the
/// quoted packet's sender (from the pod: about a packet sent to the pod), else is decided by
/// policy like an ICMP packet without ports. Errors are not flows: they create no entry.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &Packet,
) -> Decision {
    if let Some(rule_id) = related_flow(ctx, endpoint.endpoint_id, direction, packet) {
        return Decision::pass(Verdict::Related, rule_id);
    }
    by_policy(endpoint, direction, packet)
}

/// The first packet of a flow decided by the endpoint's policy entries, where they decide;
/// allowed elsewhere.
///
/// Not inlined, like the lookup: each program calls it from several places, and inlined
/// copies multiply the paths the verifier walks.
#[inline(never)]
fn by_policy(endpoint: &EndpointInfo, direction: Direction, packet: &Packet) -> Decision {
    if !endpoint.decides(direction) {
        return Decision::pass(Verdict::NotIsolated, 0);
    }
    let hit = policy::lookup(
        endpoint,
        direction,
        packet,
        policy::peer_addr(packet, direction),
    );
    let (result, rule_id) = policy_outcome(endpoint.isolated(direction), hit);
    Decision {
        result,
        rule_id,
        new_flow: false,
    }
}

/// Traffic NetworkPolicy exempts (`verdict`: between the pod and its own node, or the pod
/// through its own Service), with `peer` on the other end: passes unless a
/// ClusterNetworkPolicy `Deny` that applies to the pod in `direction` matches it.
///
/// Not inlined, for the same reason as [`by_policy`].
#[inline(never)]
fn exempt(
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &Packet,
    peer: &[u8; 16],
    verdict: Verdict,
) -> Decision {
    if !endpoint.tiered(direction) {
        return Decision::pass(verdict, 0);
    }
    match exempt_outcome(policy::lookup(endpoint, direction, packet, peer)) {
        Some((reason, rule_id)) => Decision {
            result: Err(reason),
            rule_id,
            new_flow: false,
        },
        None => Decision::pass(verdict, 0),
    }
}

/// The rule of the tracked flow an ICMP error is about, if the error goes back to the quoted
/// packet's sender and (from the pod) is about a packet sent to the pod: a pod does not
/// forward.
///
/// Not inlined: the quote and its keys would otherwise share the programs' frame, which the
/// verifier's 512-byte stack limit does not allow.
#[inline(never)]
fn related_flow(
    ctx: &TcContext,
    endpoint_id: u32,
    direction: Direction,
    packet: &Packet,
) -> Option<u32> {
    let mut quoted = parse::quoted_key(ctx, packet, endpoint_id, direction.opposite())?;
    let back_to_sender = same_address(&packet.dst_addr, &quoted.src_addr)
        && (direction == Direction::Ingress || same_address(&packet.src_addr, &quoted.dst_addr));
    if !back_to_sender {
        return None;
    }
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    conntrack::related(&mut quoted, now)
}

/// A non-first fragment gets what its first fragment got. From the pod, one to a ClusterIP or
/// a node address (whose first fragment was deferred, so left no record here) is deferred too.
///
/// Not inlined, to keep its key out of the common path's frame.
#[inline(never)]
fn later_fragment(endpoint: &EndpointInfo, hook: Hook, packet: &mut Packet) -> Decision {
    let direction = hook.direction();
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
        None if hook == Hook::FromPod && policy::is_service(packet) => {
            Decision::pass(Verdict::Service, 0)
        }
        None if hook == Hook::FromPod && policy::is_host(packet, direction) => {
            Decision::pass(Verdict::Host, 0)
        }
        None if endpoint.decides(direction) => Decision::drop(DropReason::FragmentUnknown),
        None => Decision::pass(Verdict::NotIsolated, 0),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel reads: `Dual MIT/GPL`, this crate's `MIT OR GPL-2.0-only`. Only a
/// program with a GPL-compatible license string may call the kernel's GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
