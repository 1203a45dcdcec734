//! BPF_PROG_TEST_RUN suite: every parse path, verdict and map side effect of `from_pod`,
//! `to_pod` and `svc_egress`, on packets built in memory. Each test loads its own copy of the
//! programs.

#[allow(
    dead_code,
    reason = "each test crate uses a different part of the harness"
)]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{DROP, Datapath, Entry, PASS, addr16, packets::*, setup_test_ifindex};
use policy_common::{
    maps::{
        ANY_PEER_CLASS, ANY_PROTOCOL, CT_CLOSING, CT_HOST, CT_REPLIED, CT_SERVICE, CtKey,
        ENDPOINT_ANY_SOURCE, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_EGRESS_TIERED,
        ENDPOINT_INGRESS_ISOLATED, ENDPOINT_INGRESS_TIERED, ENDPOINT_LOG_ALLOWED,
        ENDPOINT_NOT_READY, EndpointInfo, FAMILY_V4, FAMILY_V6, FlowEvent, PolicyAction,
        SVC_MARK_MAGIC, WORLD_CLASS, svc_mark, svc_pending,
    },
    names,
    verdict::{Direction, DropReason, Outcome, Verdict},
};

const EP: u32 = 7;
const POD4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 9);
const OTHER4: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const HOST4: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 5);
/// The addresses of the pod of endpoint EP.
const POD: [IpAddr; 2] = [IpAddr::V4(POD4), IpAddr::V6(POD6)];
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 9);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 1);
/// The class of PEER4's /24 and PEER6's /64.
const PEER_CLASS: u32 = 3;
const RULE_WEB: u32 = 11;

const ISOLATED: u32 = ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED;

/// A datapath with endpoint EP on the test interface, isolated both ways, whose ingress allows
/// TCP 80 from the peer class (rule 11), and the peer prefixes mapped to that class.
fn setup_web() -> Datapath {
    setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, TCP, 80, 80, RULE_WEB)],
    )
}

fn setup_with(flags: u32, allows: &[Entry]) -> Datapath {
    let mut dp = Datapath::load();
    dp.setup_endpoint(setup_test_ifindex(), EP, &POD, flags, allows);
    dp.set_peer(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 0)), 24, PEER_CLASS);
    dp.set_peer(
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 0)),
        64,
        PEER_CLASS,
    );
    dp.set_host(IpAddr::V4(HOST4));
    dp.set_host(IpAddr::V6(HOST6));
    dp
}

fn allow(
    direction: Direction,
    class: u32,
    protocol: u8,
    first: u16,
    last: u16,
    rule_id: u32,
) -> Entry {
    Entry {
        direction,
        class,
        protocol,
        ports: (first, last),
        action: PolicyAction::Allow,
        rule_id,
    }
}

fn code(outcome: Result<Verdict, DropReason>) -> Outcome {
    policy_common::verdict::outcome(outcome)
}

/// Asserts that exactly the given (direction, outcome, packets) counters of EP are non-zero.
fn check_only_counters(dp: &Datapath, expected: &[(Direction, Result<Verdict, DropReason>, u64)]) {
    let of_ep: Vec<_> = expected
        .iter()
        .map(|&(direction, outcome, packets)| (EP, direction, outcome, packets))
        .collect();
    check_only_counters_of(dp, &of_ep);
}

/// Asserts that exactly the given (endpoint, direction, outcome, packets) counters are non-zero.
fn check_only_counters_of(
    dp: &Datapath,
    expected: &[(u32, Direction, Result<Verdict, DropReason>, u64)],
) {
    let mut want: Vec<(u32, u64)> = expected
        .iter()
        .map(|&(endpoint_id, direction, outcome, packets)| {
            (
                policy_common::maps::counter_index(endpoint_id, direction, code(outcome)),
                packets,
            )
        })
        .collect();
    want.sort_unstable();
    let got: Vec<(u32, u64)> = dp
        .nonzero_counters()
        .into_iter()
        .map(|(slot, counter)| (slot, counter.packets))
        .collect();
    assert_eq!(got, want, "counters (slot, packets)");
}

/// Asserts one event with this outcome and rule and returns it.
fn check_one_event(
    dp: &mut Datapath,
    outcome: Result<Verdict, DropReason>,
    rule_id: u32,
) -> FlowEvent {
    let events = dp.events();
    assert_eq!(events.len(), 1, "events: {events:?}");
    let event = events[0];
    assert_eq!(event.outcome, code(outcome), "event outcome: {event:?}");
    assert_eq!(event.rule_id, rule_id, "event rule: {event:?}");
    assert_eq!(event.endpoint_id, EP);
    assert_eq!(event.ifindex, setup_test_ifindex());
    event
}

fn check_no_events(dp: &mut Datapath) {
    let events = dp.events();
    assert!(events.is_empty(), "unexpected events: {events:?}");
}

fn ct_key(
    direction: Direction,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
) -> CtKey {
    CtKey {
        endpoint_id: EP,
        src_port,
        dst_port,
        direction: direction as u8,
        protocol,
        family: common::family(src),
        _pad: 0,
        src_addr: addr16(src),
        dst_addr: addr16(dst),
    }
}

fn v4(addr: Ipv4Addr) -> IpAddr {
    IpAddr::V4(addr)
}

fn v6(addr: Ipv6Addr) -> IpAddr {
    IpAddr::V6(addr)
}

fn pkt_tcp4(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    pkt_ip4(
        &Ip4::new(src, dst, TCP),
        &pkt_tcp(src_port, dst_port, flags),
    )
}

fn pkt_tcp6(src: Ipv6Addr, dst: Ipv6Addr, src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    pkt_ip6(
        &Ip6::new(src, dst, TCP),
        &pkt_tcp(src_port, dst_port, flags),
    )
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ingress_tcp_syn_allowed_by_rule_creates_flow() {
    let mut dp = setup_web();
    let frame = pkt_tcp4(PEER4, POD4, 40000, 80, SYN);
    assert_eq!(dp.run(Direction::Ingress, &frame), PASS);
    let flows = dp.conntrack();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        flows[0].0,
        ct_key(Direction::Ingress, TCP, v4(PEER4), v4(POD4), 40000, 80)
    );
    assert_eq!(flows[0].1.rule_id, RULE_WEB);
    assert_eq!(flows[0].1.flags, 0);
    check_only_counters(&dp, &[(Direction::Ingress, Ok(Verdict::Policy), 1)]);
    assert_eq!(
        dp.counter(EP, Direction::Ingress, code(Ok(Verdict::Policy)))
            .bytes,
        frame.len() as u64
    );
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ingress_tcp_to_other_port_is_denied_with_event() {
    let mut dp = setup_web();
    assert_eq!(
        dp.run(Direction::Ingress, &pkt_tcp4(PEER4, POD4, 40000, 81, SYN)),
        DROP
    );
    assert!(dp.conntrack().is_empty());
    check_only_counters(
        &dp,
        &[(Direction::Ingress, Err(DropReason::PolicyDenied), 1)],
    );
    let event = check_one_event(&mut dp, Err(DropReason::PolicyDenied), 0);
    assert_eq!(
        (event.src_port, event.dst_port, event.protocol),
        (40000, 81, TCP)
    );
    assert_eq!(
        (event.family, event.direction),
        (FAMILY_V4, Direction::Ingress as u8)
    );
    assert_eq!(event.src_addr, addr16(v4(PEER4)));
    assert_eq!(event.dst_addr, addr16(v4(POD4)));
}

/// Runs `frame` in `direction` and asserts the action and the single counter it bumps.
fn check_verdict(
    dp: &mut Datapath,
    direction: Direction,
    frame: &[u8],
    expected: Result<Verdict, DropReason>,
) {
    check_verdict_of(dp, "the frame", direction, frame, expected);
}

/// [`check_verdict`] for a named case, named in every failure message.
fn check_verdict_of(
    dp: &mut Datapath,
    case: &str,
    direction: Direction,
    frame: &[u8],
    expected: Result<Verdict, DropReason>,
) {
    let before = dp.counter(EP, direction, code(expected));
    let action = dp.run(direction, frame);
    let want = if expected.is_ok() { PASS } else { DROP };
    assert_eq!(action, want, "{case}: action for {expected:?}");
    let after = dp.counter(EP, direction, code(expected));
    assert_eq!(
        after.packets,
        before.packets + 1,
        "{case}: counter of {expected:?}"
    );
    assert_eq!(
        after.bytes,
        before.bytes + frame.len() as u64,
        "{case}: bytes of {expected:?}"
    );
}

const NOP_OPTIONS: [u8; 8] = [1, 1, 1, 1, 1, 1, 1, 0];

// ---- IPv4 parsing ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv4_with_options_reaches_the_l4_header() {
    let mut dp = setup_web();
    let mut ip = Ip4::new(PEER4, POD4, TCP);
    ip.options = NOP_OPTIONS.to_vec();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&ip, &pkt_tcp(40000, 80, SYN)),
        Ok(Verdict::Policy),
    );
    assert_eq!(
        dp.conntrack()[0].0,
        ct_key(Direction::Ingress, TCP, v4(PEER4), v4(POD4), 40000, 80)
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv4_with_forty_bytes_of_options_reaches_the_l4_header() {
    let mut dp = setup_web();
    let mut ip = Ip4::new(PEER4, POD4, TCP);
    ip.options = [1u8; 40].to_vec();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&ip, &pkt_tcp(40000, 80, SYN)),
        Ok(Verdict::Policy),
    );
    // The same options with port 81 prove the port is read after the options.
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&ip, &pkt_tcp(40000, 81, SYN)),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv4_options_past_the_end_are_malformed() {
    let mut dp = setup_web();
    let mut ip = Ip4::new(PEER4, POD4, TCP);
    ip.options = NOP_OPTIONS.to_vec();
    let frame = pkt_ip4(&ip, &[]);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &frame[..14 + 24],
        Err(DropReason::Malformed),
    );
    check_one_event(&mut dp, Err(DropReason::Malformed), 0);
    assert!(dp.conntrack().is_empty());
}

/// A frame with one header truncated or carrying an impossible value.
struct MalformedCase {
    name: &'static str,
    frame: Vec<u8>,
}

/// Every malformed header drops as `Malformed` into an isolated direction whose rules would allow
/// the frame were it whole, so only the parser can drop it. Every case runs, and the test fails
/// naming each case that did not drop as `Malformed`.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn malformed_headers_are_dropped() {
    let mut dp = setup_with(
        ISOLATED,
        &[
            allow(Direction::Ingress, PEER_CLASS, TCP, 80, 80, RULE_WEB),
            allow(Direction::Ingress, PEER_CLASS, UDP, 53, 53, 21),
            allow(Direction::Ingress, PEER_CLASS, SCTP, 9000, 9000, 31),
            allow(Direction::Ingress, PEER_CLASS, ANY_PROTOCOL, 0, 0, 42),
        ],
    );
    let tcp4 = pkt_tcp4(PEER4, POD4, 40000, 80, SYN);
    let tcp4_with = |offset: usize, bytes: &[u8]| {
        let mut frame = tcp4.clone();
        frame[offset..offset + bytes.len()].copy_from_slice(bytes);
        frame
    };
    let udp = pkt_ip4(&Ip4::new(PEER4, POD4, UDP), &pkt_udp(5353, 53, 0));
    let sctp = pkt_ip4(&Ip4::new(PEER4, POD4, SCTP), &pkt_sctp(1234, 9000));
    let icmp = pkt_ip4(&Ip4::new(PEER4, POD4, ICMP), &pkt_icmp(8, 0, 1, &[]));
    let tcp6 = pkt_tcp6_with(&[], 80);
    let routing = pkt_tcp6_with(&[Ext::Routing], 80);
    let two_extensions = pkt_tcp6_with(&[Ext::HopByHop, Ext::DestinationOptions], 80);
    let mut empty_authentication = pkt_tcp6_with(&[Ext::Authentication], 80);
    empty_authentication[14 + 40 + 1] = 0;
    let truncated = |frame: &[u8], len: usize| frame[..len].to_vec();
    // TEST_RUN refuses an IP ethertype with a short or missing IP header; behind a VLAN tag it
    // runs.
    let cases = [
        MalformedCase {
            name: "IPv4 header length below 20",
            frame: tcp4_with(14, &[0x44]),
        },
        MalformedCase {
            name: "IPv4 ethertype with IP version 6",
            frame: tcp4_with(14, &[0x65]),
        },
        MalformedCase {
            name: "IPv4 total length below the header length",
            frame: tcp4_with(16, &19u16.to_be_bytes()),
        },
        MalformedCase {
            name: "truncated IPv4 header",
            frame: pkt_vlan(10, ETH_P_IPV4, &ip_payload(&tcp4)[..19]),
        },
        MalformedCase {
            name: "IPv4 ethertype without a header",
            frame: pkt_vlan(10, ETH_P_IPV4, &[]),
        },
        MalformedCase {
            name: "IPv6 ethertype without a header",
            frame: pkt_vlan(10, ETH_P_IPV6, &[]),
        },
        MalformedCase {
            name: "VLAN tag without its ethertype",
            frame: pkt_eth(ETH_P_8021Q, &[0, 10]),
        },
        MalformedCase {
            name: "truncated TCP header",
            frame: truncated(&tcp4, tcp4.len() - 1),
        },
        MalformedCase {
            name: "TCP data offset below 5",
            frame: tcp4_with(14 + 20 + 12, &[0x40]),
        },
        MalformedCase {
            name: "truncated UDP header",
            frame: truncated(&udp, udp.len() - 1),
        },
        MalformedCase {
            name: "truncated SCTP header",
            frame: truncated(&sctp, 14 + 20 + 11),
        },
        MalformedCase {
            name: "truncated ICMP header",
            frame: truncated(&icmp, icmp.len() - 1),
        },
        MalformedCase {
            name: "truncated IPv6 extension header",
            frame: truncated(&routing, 14 + 40 + 12),
        },
        MalformedCase {
            name: "truncated IPv6 header",
            frame: pkt_vlan(10, ETH_P_IPV6, &ip_payload(&tcp6)[..39]),
        },
        MalformedCase {
            name: "truncated TCP header after IPv6 extension headers",
            frame: truncated(&two_extensions, two_extensions.len() - 2),
        },
        MalformedCase {
            name: "authentication header of length 0",
            frame: empty_authentication,
        },
    ];
    let failed: Vec<&str> = cases
        .iter()
        .filter(|case| {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_verdict_of(
                    &mut dp,
                    case.name,
                    Direction::Ingress,
                    &case.frame,
                    Err(DropReason::Malformed),
                );
            }));
            run.is_err()
        })
        .map(|case| case.name)
        .collect();
    assert!(failed.is_empty(), "not dropped as Malformed: {failed:?}");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn malformed_packet_of_a_direction_that_is_not_isolated_passes() {
    let mut dp = setup_with(ENDPOINT_EGRESS_ISOLATED, &[]);
    let frame = pkt_tcp4(PEER4, POD4, 40000, 80, SYN);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &frame[..14 + 30],
        Ok(Verdict::NotIsolated),
    );
    assert!(dp.conntrack().is_empty());
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn malformed_packet_from_the_pod_is_dropped_even_where_not_isolated() {
    let mut dp = setup_with(0, &[]);
    let frame = pkt_tcp4(POD4, PEER4, 40000, 80, SYN);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &frame[..14 + 30],
        Err(DropReason::Malformed),
    );
    assert!(dp.conntrack().is_empty());
}

// ---- L4 parsing ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn tcp_options_past_the_end_are_malformed() {
    let mut dp = setup_web();
    let mut frame = pkt_tcp4(PEER4, POD4, 40000, 80, SYN);
    frame[14 + 20 + 12] = 0x60;
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &frame,
        Err(DropReason::Malformed),
    );
    frame.extend_from_slice(&[1, 1, 1, 0]);
    check_verdict(&mut dp, Direction::Ingress, &frame, Ok(Verdict::Policy));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn udp_flow_is_allowed_and_tracked() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, UDP, 53, 53, 21)],
    );
    let frame = pkt_ip4(&Ip4::new(PEER4, POD4, UDP), &pkt_udp(5353, 53, 12));
    check_verdict(&mut dp, Direction::Ingress, &frame, Ok(Verdict::Policy));
    assert_eq!(
        dp.conntrack()[0].0,
        ct_key(Direction::Ingress, UDP, v4(PEER4), v4(POD4), 5353, 53)
    );
    assert_eq!(dp.conntrack()[0].1.rule_id, 21);
    let reply = pkt_ip4(&Ip4::new(POD4, PEER4, UDP), &pkt_udp(53, 5353, 40));
    check_verdict(&mut dp, Direction::Egress, &reply, Ok(Verdict::Reply));
    assert_eq!(dp.conntrack().len(), 1);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn sctp_v4_is_decided_by_its_ports() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, SCTP, 9000, 9000, 31)],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, SCTP), &pkt_sctp(1234, 9000)),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, SCTP), &pkt_sctp(1234, 9001)),
        Err(DropReason::PolicyDenied),
    );
    assert_eq!(
        dp.conntrack()[0].0,
        ct_key(Direction::Ingress, SCTP, v4(PEER4), v4(POD4), 1234, 9000)
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn sctp_v6_is_decided_by_its_ports() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Egress, PEER_CLASS, SCTP, 9000, 9000, 32)],
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_ip6(&Ip6::new(POD6, PEER6, SCTP), &pkt_sctp(1234, 9000)),
        Ok(Verdict::Policy),
    );
    assert_eq!(
        dp.conntrack()[0].0,
        ct_key(Direction::Egress, SCTP, v6(POD6), v6(PEER6), 1234, 9000)
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip6(&Ip6::new(PEER6, POD6, SCTP), &pkt_sctp(9000, 1234)),
        Ok(Verdict::Reply),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_echo_is_tracked_by_identifier_and_its_reply_passes() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Egress, PEER_CLASS, ANY_PROTOCOL, 0, 0, 41)],
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_ip4(&Ip4::new(POD4, PEER4, ICMP), &pkt_icmp(8, 0, 777, &[])),
        Ok(Verdict::Policy),
    );
    assert_eq!(
        dp.conntrack()[0].0,
        ct_key(Direction::Egress, ICMP, v4(POD4), v4(PEER4), 777, 0)
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, ICMP), &pkt_icmp(0, 0, 777, &[])),
        Ok(Verdict::Reply),
    );
    // A reply with another identifier is no reply, and ingress allows nothing.
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, ICMP), &pkt_icmp(0, 0, 778, &[])),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmpv6_echo_is_tracked_by_identifier_and_its_reply_passes() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(
            Direction::Ingress,
            ANY_PEER_CLASS,
            ANY_PROTOCOL,
            0,
            0,
            42,
        )],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip6(&Ip6::new(OTHER6, POD6, ICMPV6), &pkt_icmp(128, 0, 9, &[])),
        Ok(Verdict::Policy),
    );
    assert_eq!(
        dp.conntrack()[0].0,
        ct_key(Direction::Ingress, ICMPV6, v6(OTHER6), v6(POD6), 9, 0)
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_ip6(&Ip6::new(POD6, OTHER6, ICMPV6), &pkt_icmp(129, 0, 9, &[])),
        Ok(Verdict::Reply),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_is_looked_up_with_port_zero_so_port_rules_do_not_match() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, TCP, 0, 65535, 51)],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, ICMP), &pkt_icmp(8, 0, 1, &[])),
        Err(DropReason::PolicyDenied),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 1, 0, SYN),
        Ok(Verdict::Policy),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn unknown_protocol_matches_only_any_protocol_and_whole_range_entries() {
    const GRE: u8 = 47;
    let mut dp = setup_with(
        ISOLATED,
        &[
            allow(Direction::Ingress, PEER_CLASS, GRE, 0, 65535, 61),
            allow(Direction::Egress, PEER_CLASS, GRE, 80, 80, 62),
        ],
    );
    let frame = pkt_ip4(&Ip4::new(PEER4, POD4, GRE), &[0; 8]);
    check_verdict(&mut dp, Direction::Ingress, &frame, Ok(Verdict::Policy));
    assert_eq!(
        dp.conntrack()[0].0,
        ct_key(Direction::Ingress, GRE, v4(PEER4), v4(POD4), 0, 0)
    );
    let out = pkt_ip4(&Ip4::new(POD4, OTHER4, GRE), &[0; 8]);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &out,
        Err(DropReason::PolicyDenied),
    );
}

// ---- IPv6 parsing ----

fn pkt_tcp6_with(extensions: &[Ext], dst_port: u16) -> Vec<u8> {
    let mut ip = Ip6::new(PEER6, POD6, TCP);
    ip.extensions = extensions.to_vec();
    pkt_ip6(&ip, &pkt_tcp(40000, dst_port, SYN))
}

fn check_ipv6_chain(extensions: &[Ext]) {
    let mut dp = setup_web();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6_with(extensions, 80),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6_with(extensions, 81),
        Err(DropReason::PolicyDenied),
    );
    let flows = dp.conntrack();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        flows[0].0,
        ct_key(Direction::Ingress, TCP, v6(PEER6), v6(POD6), 40000, 80)
    );
    assert!(dp.fragments().is_empty());
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_without_extension_headers() {
    check_ipv6_chain(&[]);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_hop_by_hop_header_is_walked() {
    check_ipv6_chain(&[Ext::HopByHop]);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_routing_header_is_walked() {
    check_ipv6_chain(&[Ext::Routing]);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_destination_options_header_is_walked() {
    check_ipv6_chain(&[Ext::DestinationOptions]);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_authentication_header_is_walked() {
    check_ipv6_chain(&[Ext::Authentication]);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_atomic_fragment_is_not_a_fragment() {
    check_ipv6_chain(&[Ext::Fragment {
        offset: 0,
        more: false,
        id: 5,
    }]);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_chain_of_six_headers_is_walked() {
    check_ipv6_chain(&[
        Ext::HopByHop,
        Ext::DestinationOptions,
        Ext::Routing,
        Ext::Authentication,
        Ext::DestinationOptions,
        Ext::DestinationOptions,
    ]);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_chain_longer_than_the_walk_is_unparsed() {
    let mut dp = setup_web();
    let chain = [Ext::DestinationOptions; 8];
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6_with(&chain, 80),
        Err(DropReason::Unparsed),
    );
    check_one_event(&mut dp, Err(DropReason::Unparsed), 0);
    assert!(dp.conntrack().is_empty());
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_long_chain_passes_where_not_isolated() {
    let mut dp = setup_with(ENDPOINT_EGRESS_ISOLATED, &[]);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6_with(&[Ext::HopByHop; 7], 80),
        Ok(Verdict::NotIsolated),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn udp_over_ipv6_is_allowed_by_range() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(
            Direction::Egress,
            ANY_PEER_CLASS,
            UDP,
            5000,
            5999,
            71,
        )],
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_ip6(&Ip6::new(POD6, OTHER6, UDP), &pkt_udp(4000, 5500, 3)),
        Ok(Verdict::Policy),
    );
    assert_eq!(dp.conntrack()[0].1.rule_id, 71);
}

// ---- VLAN, exemptions, host, readiness, unmanaged ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn one_vlan_tag_is_parsed_through() {
    let mut dp = setup_web();
    let inner = pkt_tcp4(PEER4, POD4, 40000, 80, SYN);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_vlan(10, ETH_P_IPV4, ip_payload(&inner)),
        Ok(Verdict::Policy),
    );
    let denied = pkt_tcp4(PEER4, POD4, 40000, 81, SYN);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_vlan(10, ETH_P_IPV4, ip_payload(&denied)),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn stacked_vlan_tags_are_unparsed() {
    let mut dp = setup_web();
    let inner = pkt_tcp4(PEER4, POD4, 40000, 80, SYN);
    let mut tagged = 20u16.to_be_bytes().to_vec();
    tagged.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    tagged.extend_from_slice(ip_payload(&inner));
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_vlan(10, ETH_P_8021Q, &tagged),
        Err(DropReason::Unparsed),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn arp_to_the_pod_and_from_its_own_address_is_exempt() {
    let mut dp = setup_web();
    check_verdict(&mut dp, Direction::Ingress, &pkt_arp(), Ok(Verdict::Exempt));
    let own = pkt_arp_from(POD4, PEER4);
    check_verdict(&mut dp, Direction::Egress, &own, Ok(Verdict::Exempt));
    let probe = pkt_arp_from(Ipv4Addr::UNSPECIFIED, POD4);
    check_verdict(&mut dp, Direction::Egress, &probe, Ok(Verdict::Exempt));
    assert!(dp.conntrack().is_empty());
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn arp_claiming_another_address_is_spoofed() {
    let mut dp = setup_with(0, &[]);
    let claim = pkt_arp_from(PEER4, PEER4);
    check_verdict(&mut dp, Direction::Egress, &claim, Err(DropReason::Spoofed));
    let event = check_one_event(&mut dp, Err(DropReason::Spoofed), 0);
    assert_eq!(event.src_addr, addr16(v4(PEER4)));
}

/// An ICMPv6 neighbour discovery message of `icmp_type` with hop limit 255 and `body` after
/// the 4-byte header.
fn pkt_nd(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, body: &[u8]) -> Vec<u8> {
    let mut ip = Ip6::new(src, dst, ICMPV6);
    ip.hop_limit = 255;
    let mut message = vec![icmp_type, 0, 0, 0];
    message.extend_from_slice(body);
    pkt_ip6(&ip, &message)
}

/// A neighbour advertisement for `target` (flags, target, a target link-layer option).
fn pkt_na(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![0x20, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[2, 1, 0x02, 0, 0, 0, 0, 0x01]);
    pkt_nd(src, dst, 136, &body)
}

const LINK_LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn neighbour_discovery_on_the_link_is_exempt() {
    let mut dp = setup_web();
    let solicit_body = [[0; 4].as_slice(), &PEER6.octets()].concat();
    for icmp_type in 133..=137 {
        let frame = pkt_nd(LINK_LOCAL6, POD6, icmp_type, &solicit_body);
        check_verdict(&mut dp, Direction::Ingress, &frame, Ok(Verdict::Exempt));
    }
    let solicit = pkt_nd(POD6, OTHER6, 135, &solicit_body);
    check_verdict(&mut dp, Direction::Egress, &solicit, Ok(Verdict::Exempt));
    let dad = pkt_nd(Ipv6Addr::UNSPECIFIED, ALL_NODES6, 135, &solicit_body);
    check_verdict(&mut dp, Direction::Egress, &dad, Ok(Verdict::Exempt));
    let router = pkt_nd(LINK_LOCAL6, ALL_NODES6, 133, &[0; 4]);
    check_verdict(&mut dp, Direction::Egress, &router, Ok(Verdict::Exempt));
    for target in [POD6, LINK_LOCAL6] {
        let advert = pkt_na(POD6, PEER6, target);
        check_verdict(&mut dp, Direction::Egress, &advert, Ok(Verdict::Exempt));
    }
    assert!(dp.conntrack().is_empty());
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn neighbour_discovery_off_the_link_or_with_a_payload_is_decided_by_policy() {
    let mut dp = setup_web();
    let target = [[0; 4].as_slice(), &PEER6.octets()].concat();
    let mut routed = Ip6::new(POD6, PEER6, ICMPV6);
    routed.hop_limit = 64;
    let hop_limit_64 = pkt_ip6(&routed, &pkt_icmp(135, 0, 0, &PEER6.octets()));
    let padded = [target.as_slice(), &[0xaa; 199]].concat();
    let frames = [
        hop_limit_64,
        pkt_nd(POD6, PEER6, 135, &padded),
        pkt_nd(POD6, PEER6, 136, &padded),
        // Router advertisements and redirects are routers' to send, not a pod's.
        pkt_nd(LINK_LOCAL6, ALL_NODES6, 134, &[0; 12]),
        pkt_nd(
            LINK_LOCAL6,
            PEER6,
            137,
            &[[0; 4].as_slice(), &[0; 32]].concat(),
        ),
    ];
    for frame in &frames {
        check_verdict(
            &mut dp,
            Direction::Egress,
            frame,
            Err(DropReason::PolicyDenied),
        );
    }
    let into_pod = pkt_nd(PEER6, POD6, 135, &padded);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &into_pod,
        Err(DropReason::PolicyDenied),
    );
    let redirect_from_global = pkt_nd(OTHER6, POD6, 137, &[0; 36]);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &redirect_from_global,
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn neighbour_advertisement_claiming_another_address_is_spoofed() {
    let mut dp = setup_with(0, &[]);
    let claim = pkt_na(POD6, ALL_NODES6, PEER6);
    check_verdict(&mut dp, Direction::Egress, &claim, Err(DropReason::Spoofed));
    let forged_source = pkt_na(PEER6, ALL_NODES6, PEER6);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &forged_source,
        Err(DropReason::Spoofed),
    );
    assert_eq!(dp.events().len(), 2);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmpv6_type_138_is_not_neighbour_discovery() {
    let mut dp = setup_web();
    let frame = pkt_ip6(
        &Ip6::new(OTHER6, POD6, ICMPV6),
        &pkt_icmp(138, 0, 0, &[0; 16]),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &frame,
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn traffic_with_host_addresses_passes() {
    let mut dp = setup_web();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(HOST4, POD4, 50000, 8080, SYN),
        Ok(Verdict::Host),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, HOST4, 8080, 50000, SYN | ACK),
        Ok(Verdict::Host),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6(HOST6, POD6, 50000, 8080, SYN),
        Ok(Verdict::Host),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp6(POD6, HOST6, 1, 2, SYN),
        Ok(Verdict::Host),
    );
    // What the node sends is untracked; what the pod sends to a node address is tracked as
    // deferred, in case the node translates it to a pod.
    let mut flows: Vec<_> = dp
        .conntrack()
        .into_iter()
        .map(|(key, value)| (key.direction, key.family, value.flags))
        .collect();
    flows.sort_unstable();
    let egress = Direction::Egress as u8;
    assert_eq!(
        flows,
        [
            (egress, FAMILY_V4, CT_SERVICE | CT_HOST),
            (egress, FAMILY_V6, CT_SERVICE | CT_HOST)
        ]
    );
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn host_address_as_the_pod_side_is_not_host_traffic() {
    let mut dp = setup_web();
    // from_pod: a host source is not the pod's own.
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(HOST4, PEER4, 1, 2, SYN),
        Err(DropReason::Spoofed),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, HOST4, 1, 2, SYN),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn not_ready_endpoint_drops_every_ip_packet_and_passes_arp() {
    let mut dp = setup_with(ENDPOINT_NOT_READY, &[]);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Err(DropReason::NotReady),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, HOST4, 1, 2, SYN),
        Err(DropReason::NotReady),
    );
    let arp = pkt_arp_from(POD4, PEER4);
    check_verdict(&mut dp, Direction::Egress, &arp, Ok(Verdict::Exempt));
    let raw = pkt_eth(0x88b5, &[0; 46]);
    check_verdict(&mut dp, Direction::Egress, &raw, Err(DropReason::NotReady));
    assert!(dp.conntrack().is_empty());
    assert_eq!(dp.events().len(), 3);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn unmanaged_interface_passes_without_accounting() {
    let mut dp = Datapath::load();
    dp.setup_endpoint(setup_test_ifindex() + 1000, EP, &POD, ISOLATED, &[]);
    assert_eq!(
        dp.run(Direction::Ingress, &pkt_tcp4(PEER4, POD4, 40000, 80, SYN)),
        PASS
    );
    assert_eq!(
        dp.run(Direction::Egress, &pkt_tcp4(POD4, PEER4, 40000, 80, SYN)),
        PASS
    );
    assert!(dp.conntrack().is_empty());
    assert!(dp.nonzero_counters().is_empty());
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn endpoint_that_is_not_isolated_allows_and_tracks() {
    let mut dp = setup_with(ENDPOINT_INGRESS_ISOLATED, &[]);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, OTHER4, 40000, 443, SYN),
        Ok(Verdict::NotIsolated),
    );
    let flows = dp.conntrack();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        flows[0].0,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(OTHER4), 40000, 443)
    );
    assert_eq!(flows[0].1.rule_id, 0);
    // The reply enters an ingress-isolated pod that allows nothing, as a reply.
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(OTHER4, POD4, 443, 40000, SYN | ACK),
        Ok(Verdict::Reply),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(OTHER4, POD4, 443, 40001, SYN | ACK),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn egress_is_denied_without_an_egress_rule() {
    let mut dp = setup_web();
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, PEER4, 40000, 80, SYN),
        Err(DropReason::PolicyDenied),
    );
    let event = check_one_event(&mut dp, Err(DropReason::PolicyDenied), 0);
    assert_eq!(event.direction, Direction::Egress as u8);
    assert_eq!((event.src_port, event.dst_port), (40000, 80));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn logged_endpoint_reports_new_flows_with_their_rule() {
    let mut dp = setup_with(
        ENDPOINT_INGRESS_ISOLATED | ENDPOINT_LOG_ALLOWED,
        &[allow(Direction::Ingress, PEER_CLASS, TCP, 80, 80, RULE_WEB)],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    check_one_event(&mut dp, Ok(Verdict::Policy), RULE_WEB);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, ACK),
        Ok(Verdict::Established),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, PEER4, 80, 40000, ACK),
        Ok(Verdict::Reply),
    );
    check_no_events(&mut dp);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, OTHER4, 1, 2, SYN),
        Ok(Verdict::NotIsolated),
    );
    check_one_event(&mut dp, Ok(Verdict::NotIsolated), 0);
}

// ---- conntrack ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn established_packets_ride_on_the_entry() {
    let mut dp = setup_web();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    for _ in 0..3 {
        check_verdict(
            &mut dp,
            Direction::Ingress,
            &pkt_tcp4(PEER4, POD4, 40000, 80, ACK),
            Ok(Verdict::Established),
        );
    }
    check_only_counters(
        &dp,
        &[
            (Direction::Ingress, Ok(Verdict::Policy), 1),
            (Direction::Ingress, Ok(Verdict::Established), 3),
        ],
    );
    assert_eq!(dp.conntrack().len(), 1);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn replies_pass_in_the_other_direction_only() {
    let mut dp = setup_web();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, PEER4, 80, 40000, SYN | ACK),
        Ok(Verdict::Reply),
    );
    // The reversed tuple in the flow's own direction is not a reply.
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(POD4, PEER4, 80, 40000, ACK),
        Err(DropReason::PolicyDenied),
    );
    assert_eq!(dp.conntrack().len(), 1);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn tcp_without_syn_and_without_entry_is_decided_by_policy() {
    let mut dp = setup_web();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 81, ACK),
        Err(DropReason::PolicyDenied),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, ACK),
        Ok(Verdict::Policy),
    );
    assert_eq!(dp.conntrack().len(), 1);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn fin_and_rst_mark_the_entry_closing() {
    let mut dp = setup_web();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    assert_eq!(dp.conntrack()[0].1.flags, 0);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, PEER4, 80, 40000, FIN | ACK),
        Ok(Verdict::Reply),
    );
    assert_eq!(dp.conntrack()[0].1.flags, CT_CLOSING | CT_REPLIED);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40001, 80, SYN),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40001, 80, RST),
        Ok(Verdict::Established),
    );
    let closing = dp
        .conntrack()
        .iter()
        .filter(|(_, value)| value.flags & CT_CLOSING != 0)
        .count();
    assert_eq!(closing, 2);
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn syn_on_a_closing_entry_is_decided_again() {
    let mut dp = setup_web();
    let key = ct_key(Direction::Ingress, TCP, v4(PEER4), v4(POD4), 40000, 81);
    let value = policy_common::maps::CtValue {
        last_seen_ns: monotonic_ns(),
        rule_id: 99,
        flags: CT_CLOSING,
    };
    dp.set_conntrack(key, value);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 81, ACK),
        Ok(Verdict::Established),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 81, SYN),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn expired_entry_no_longer_counts() {
    let mut dp = setup_web();
    let now = monotonic_ns();
    let idle = policy_common::maps::CT_OTHER_TIMEOUT_NS + 1_000_000_000;
    assert!(
        now > idle,
        "the clock must have run longer than the UDP timeout"
    );
    let key = ct_key(Direction::Ingress, UDP, v4(PEER4), v4(POD4), 5000, 53);
    dp.set_conntrack(
        key,
        policy_common::maps::CtValue {
            last_seen_ns: now - idle,
            rule_id: 5,
            flags: 0,
        },
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, UDP), &pkt_udp(5000, 53, 0)),
        Err(DropReason::PolicyDenied),
    );
    dp.set_conntrack(
        key,
        policy_common::maps::CtValue {
            last_seen_ns: now,
            rule_id: 5,
            flags: 0,
        },
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, UDP), &pkt_udp(5000, 53, 0)),
        Ok(Verdict::Established),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn last_seen_is_refreshed_at_most_once_a_second() {
    let mut dp = setup_web();
    let key = ct_key(Direction::Ingress, TCP, v4(PEER4), v4(POD4), 40000, 80);
    let recent = monotonic_ns();
    dp.set_conntrack(
        key,
        policy_common::maps::CtValue {
            last_seen_ns: recent,
            rule_id: 5,
            flags: 0,
        },
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, ACK),
        Ok(Verdict::Established),
    );
    assert_eq!(dp.conntrack()[0].1.last_seen_ns, recent);
    let old = recent - 5_000_000_000;
    dp.set_conntrack(
        key,
        policy_common::maps::CtValue {
            last_seen_ns: old,
            rule_id: 5,
            flags: 0,
        },
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, ACK),
        Ok(Verdict::Established),
    );
    let refreshed = dp.conntrack()[0].1.last_seen_ns;
    assert!(
        // The programs read the coarse clock, which trails CLOCK_MONOTONIC by at most a tick.
        refreshed > old + 4_000_000_000 && refreshed <= monotonic_ns(),
        "refreshed to {refreshed}"
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn entries_of_another_endpoint_do_not_match() {
    let mut dp = setup_web();
    let mut key = ct_key(Direction::Ingress, TCP, v4(PEER4), v4(POD4), 40000, 81);
    key.endpoint_id = EP + 1;
    dp.set_conntrack(
        key,
        policy_common::maps::CtValue {
            last_seen_ns: monotonic_ns(),
            rule_id: 5,
            flags: 0,
        },
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 81, ACK),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn udp_over_ipv6_reply_passes() {
    let mut dp = setup_with(ENDPOINT_INGRESS_ISOLATED, &[]);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_ip6(&Ip6::new(POD6, PEER6, UDP), &pkt_udp(3000, 53, 0)),
        Ok(Verdict::NotIsolated),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip6(&Ip6::new(PEER6, POD6, UDP), &pkt_udp(53, 3000, 0)),
        Ok(Verdict::Reply),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip6(&Ip6::new(PEER6, POD6, UDP), &pkt_udp(54, 3000, 0)),
        Err(DropReason::PolicyDenied),
    );
}

// ---- related ICMP errors ----

/// An ICMP error of `icmp_type` from `router` to `to` quoting `quoted` (a frame).
fn pkt_icmp4_error(router: Ipv4Addr, to: Ipv4Addr, icmp_type: u8, quoted: &[u8]) -> Vec<u8> {
    pkt_ip4(
        &Ip4::new(router, to, ICMP),
        &pkt_icmp(icmp_type, 0, 0, ip_payload(quoted)),
    )
}

fn pkt_icmp6_error(router: Ipv6Addr, to: Ipv6Addr, icmp_type: u8, quoted: &[u8]) -> Vec<u8> {
    pkt_ip6(
        &Ip6::new(router, to, ICMPV6),
        &pkt_icmp(icmp_type, 0, 0, ip_payload(quoted)),
    )
}

/// A pod whose egress allows TCP 443 anywhere (rule 81) and whose ingress allows TCP 80 from
/// the peer class (rule 11).
fn setup_client_and_server() -> Datapath {
    setup_with(
        ISOLATED,
        &[
            allow(Direction::Egress, ANY_PEER_CLASS, TCP, 443, 443, 81),
            allow(Direction::Ingress, PEER_CLASS, TCP, 80, 80, RULE_WEB),
            allow(Direction::Ingress, PEER_CLASS, UDP, 53, 53, 12),
        ],
    )
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_about_a_packet_the_pod_sent_is_related() {
    let mut dp = setup_client_and_server();
    let syn = pkt_tcp4(POD4, OTHER4, 40000, 443, SYN);
    check_verdict(&mut dp, Direction::Egress, &syn, Ok(Verdict::Policy));
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp4_error(OTHER4, POD4, 3, &syn),
        Ok(Verdict::Related),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp4_error(PEER4, POD4, 11, &syn),
        Ok(Verdict::Related),
    );
    assert_eq!(dp.conntrack().len(), 1);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_about_a_reply_the_pod_sent_is_related() {
    let mut dp = setup_client_and_server();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    let reply = pkt_tcp4(POD4, PEER4, 80, 40000, SYN | ACK);
    check_verdict(&mut dp, Direction::Egress, &reply, Ok(Verdict::Reply));
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp4_error(OTHER4, POD4, 3, &reply),
        Ok(Verdict::Related),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_the_pod_sends_about_a_packet_it_received_is_related() {
    let mut dp = setup_client_and_server();
    let query = pkt_ip4(&Ip4::new(PEER4, POD4, UDP), &pkt_udp(5353, 53, 0));
    check_verdict(&mut dp, Direction::Ingress, &query, Ok(Verdict::Policy));
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_icmp4_error(POD4, PEER4, 3, &query),
        Ok(Verdict::Related),
    );
    let event_free = dp.events();
    assert!(event_free.is_empty(), "{event_free:?}");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_the_pod_sends_about_a_reply_it_received_is_related() {
    let mut dp = setup_client_and_server();
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, OTHER4, 40000, 443, SYN),
        Ok(Verdict::Policy),
    );
    let reply = pkt_tcp4(OTHER4, POD4, 443, 40000, SYN | ACK);
    check_verdict(&mut dp, Direction::Ingress, &reply, Ok(Verdict::Reply));
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_icmp4_error(POD4, OTHER4, 12, &reply),
        Ok(Verdict::Related),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_about_an_unknown_flow_is_decided_by_policy() {
    let mut dp = setup_client_and_server();
    let syn = pkt_tcp4(POD4, OTHER4, 40000, 443, SYN);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp4_error(OTHER4, POD4, 3, &syn),
        Err(DropReason::PolicyDenied),
    );
    check_verdict(&mut dp, Direction::Egress, &syn, Ok(Verdict::Policy));
    let other_port = pkt_tcp4(POD4, OTHER4, 40001, 443, SYN);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp4_error(OTHER4, POD4, 3, &other_port),
        Err(DropReason::PolicyDenied),
    );
    // The error of a tracked flow arriving in the flow's own direction quotes nothing tracked.
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_icmp4_error(POD4, OTHER4, 3, &syn),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_quoting_an_echo_request_is_related() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(
            Direction::Egress,
            ANY_PEER_CLASS,
            ANY_PROTOCOL,
            0,
            0,
            9,
        )],
    );
    let ping = pkt_ip4(&Ip4::new(POD4, OTHER4, ICMP), &pkt_icmp(8, 0, 4242, &[]));
    check_verdict(&mut dp, Direction::Egress, &ping, Ok(Verdict::Policy));
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp4_error(PEER4, POD4, 11, &ping),
        Ok(Verdict::Related),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_with_a_truncated_quote_is_decided_by_policy() {
    let mut dp = setup_client_and_server();
    let syn = pkt_tcp4(POD4, OTHER4, 40000, 443, SYN);
    check_verdict(&mut dp, Direction::Egress, &syn, Ok(Verdict::Policy));
    let error = pkt_icmp4_error(OTHER4, POD4, 3, &syn);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &error[..14 + 20 + 8 + 20 + 7],
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmpv6_packet_too_big_about_a_packet_the_pod_sent_is_related() {
    let mut dp = setup_client_and_server();
    let syn = pkt_tcp6(POD6, OTHER6, 40000, 443, SYN);
    check_verdict(&mut dp, Direction::Egress, &syn, Ok(Verdict::Policy));
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp6_error(PEER6, POD6, 2, &syn),
        Ok(Verdict::Related),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp6_error(PEER6, POD6, 1, &syn),
        Ok(Verdict::Related),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmpv6_errors_about_received_packets_and_replies_are_related() {
    let mut dp = setup_client_and_server();
    let request = pkt_tcp6(PEER6, POD6, 40000, 80, SYN);
    check_verdict(&mut dp, Direction::Ingress, &request, Ok(Verdict::Policy));
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_icmp6_error(POD6, PEER6, 4, &request),
        Ok(Verdict::Related),
    );
    let reply = pkt_tcp6(POD6, PEER6, 80, 40000, SYN | ACK);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_icmp6_error(OTHER6, POD6, 3, &reply),
        Ok(Verdict::Related),
    );
    let stranger = pkt_tcp6(PEER6, POD6, 40001, 80, SYN);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_icmp6_error(POD6, PEER6, 4, &stranger),
        Err(DropReason::PolicyDenied),
    );
}

// ---- port ranges ----

fn check_range_port(port: u16, expected: Result<Verdict, DropReason>) {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, TCP, 8000, 8080, 91)],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 1234, port, SYN),
        expected,
    );
    if expected.is_ok() {
        assert_eq!(dp.conntrack()[0].1.rule_id, 91);
    } else {
        assert!(dp.conntrack().is_empty());
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn port_below_the_range_is_denied() {
    check_range_port(7999, Err(DropReason::PolicyDenied));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn first_port_of_the_range_is_allowed() {
    check_range_port(8000, Ok(Verdict::Policy));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn end_port_of_the_range_is_allowed() {
    check_range_port(8080, Ok(Verdict::Policy));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn port_above_the_range_is_denied() {
    check_range_port(8081, Err(DropReason::PolicyDenied));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn longest_port_prefix_rule_wins() {
    let mut dp = setup_with(
        ISOLATED,
        &[
            allow(Direction::Ingress, PEER_CLASS, TCP, 0, 65535, 1),
            allow(Direction::Ingress, PEER_CLASS, TCP, 443, 443, 2),
        ],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 1, 443, SYN),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 1, 444, SYN),
        Ok(Verdict::Policy),
    );
    let mut rules: Vec<(u16, u32)> = dp
        .conntrack()
        .iter()
        .map(|(key, value)| (key.dst_port, value.rule_id))
        .collect();
    rules.sort_unstable();
    assert_eq!(rules, vec![(443, 2), (444, 1)]);
}

// ---- peer classes: prefixes and excepts ----

/// 10.9.0.0/16 is class 5 and allowed; its except 10.9.1.0/24 is class 6 and not.
fn setup_except() -> Datapath {
    let mut dp = setup_with(ISOLATED, &[allow(Direction::Egress, 5, TCP, 443, 443, 101)]);
    dp.set_peer(v4(Ipv4Addr::new(10, 9, 0, 0)), 16, 5);
    dp.set_peer(v4(Ipv4Addr::new(10, 9, 1, 0)), 24, 6);
    dp.set_peer(v6(Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 0)), 32, 5);
    dp.set_peer(v6(Ipv6Addr::new(0xfd09, 0, 1, 0, 0, 0, 0, 0)), 48, 6);
    dp
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn address_in_the_allowed_prefix_is_allowed() {
    let mut dp = setup_except();
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, Ipv4Addr::new(10, 9, 2, 1), 1, 443, SYN),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, Ipv4Addr::new(10, 9, 0, 255), 1, 443, SYN),
        Ok(Verdict::Policy),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn address_in_the_except_prefix_is_denied() {
    let mut dp = setup_except();
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, Ipv4Addr::new(10, 9, 1, 1), 1, 443, SYN),
        Err(DropReason::PolicyDenied),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, Ipv4Addr::new(10, 10, 0, 1), 1, 443, SYN),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_except_prefix_is_denied_inside_the_allowed_prefix() {
    let mut dp = setup_except();
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp6(
            POD6,
            Ipv6Addr::new(0xfd09, 0, 2, 0, 0, 0, 0, 1),
            1,
            443,
            SYN,
        ),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp6(
            POD6,
            Ipv6Addr::new(0xfd09, 0, 1, 0, 0, 0, 0, 1),
            1,
            443,
            SYN,
        ),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn unmapped_address_is_the_world_class() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Egress, WORLD_CLASS, UDP, 53, 53, 111)],
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_ip4(&Ip4::new(POD4, OTHER4, UDP), &pkt_udp(1, 53, 0)),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_ip4(&Ip4::new(POD4, PEER4, UDP), &pkt_udp(1, 53, 0)),
        Err(DropReason::PolicyDenied),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn any_peer_entry_matches_every_class() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, ANY_PEER_CLASS, TCP, 22, 22, 121)],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 1, 22, SYN),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(OTHER4, POD4, 1, 22, SYN),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6(OTHER6, POD6, 1, 22, SYN),
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6(OTHER6, POD6, 1, 23, SYN),
        Err(DropReason::PolicyDenied),
    );
}

// ---- fragments ----

fn fragments4(dst_port: u16, id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first = Ip4::new(PEER4, POD4, UDP);
    first.id = id;
    first.more_fragments = true;
    let mut rest = first.clone();
    rest.fragment_offset = 3;
    rest.more_fragments = false;
    (
        pkt_ip4(&first, &pkt_udp(5000, dst_port, 16)),
        pkt_ip4(&rest, &[0; 24]),
    )
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn later_fragments_follow_an_allowed_first_fragment() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, UDP, 53, 53, 131)],
    );
    let (first, rest) = fragments4(53, 0x4321);
    check_verdict(&mut dp, Direction::Ingress, &first, Ok(Verdict::Policy));
    let fragments = dp.fragments();
    assert_eq!(fragments.len(), 1);
    assert_eq!(fragments[0].0.id, 0x4321);
    assert_eq!(fragments[0].0.protocol, UDP);
    assert_eq!((fragments[0].1.allowed, fragments[0].1.rule_id), (1, 131));
    assert_eq!(
        (fragments[0].1.src_port, fragments[0].1.dst_port),
        (5000, 53)
    );
    check_verdict(&mut dp, Direction::Ingress, &rest, Ok(Verdict::Fragment));
    check_verdict(&mut dp, Direction::Ingress, &rest, Ok(Verdict::Fragment));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn later_fragments_follow_a_denied_first_fragment() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, UDP, 53, 53, 131)],
    );
    let (first, rest) = fragments4(54, 0x4322);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &first,
        Err(DropReason::PolicyDenied),
    );
    assert_eq!(dp.fragments()[0].1.allowed, 0);
    dp.events();
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &rest,
        Err(DropReason::FragmentDenied),
    );
    let event = check_one_event(&mut dp, Err(DropReason::FragmentDenied), 0);
    assert_eq!((event.src_port, event.dst_port), (5000, 54));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn later_fragment_without_a_first_is_unknown() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, UDP, 53, 53, 131)],
    );
    let (first, rest) = fragments4(53, 0x4323);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &rest,
        Err(DropReason::FragmentUnknown),
    );
    // Another datagram's first fragment does not vouch for this one.
    let (other_first, _) = fragments4(53, 0x4324);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &other_first,
        Ok(Verdict::Policy),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &rest,
        Err(DropReason::FragmentUnknown),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &first,
        Ok(Verdict::Established),
    );
    check_verdict(&mut dp, Direction::Ingress, &rest, Ok(Verdict::Fragment));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn later_fragment_without_a_first_passes_where_not_isolated() {
    let mut dp = setup_with(ENDPOINT_EGRESS_ISOLATED, &[]);
    let (_, rest) = fragments4(53, 0x4325);
    check_verdict(&mut dp, Direction::Ingress, &rest, Ok(Verdict::NotIsolated));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_fragments_follow_their_first_fragment() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, UDP, 53, 53, 141)],
    );
    let mut first = Ip6::new(PEER6, POD6, UDP);
    first.extensions = vec![Ext::Fragment {
        offset: 0,
        more: true,
        id: 0xabcdef,
    }];
    let mut rest = first.clone();
    rest.extensions = vec![Ext::Fragment {
        offset: 2,
        more: false,
        id: 0xabcdef,
    }];
    let rest = pkt_ip6(&rest, &[0; 16]);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &rest,
        Err(DropReason::FragmentUnknown),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip6(&first, &pkt_udp(7, 53, 8)),
        Ok(Verdict::Policy),
    );
    let fragments = dp.fragments();
    assert_eq!(fragments.len(), 1);
    assert_eq!(
        (fragments[0].0.id, fragments[0].0.family),
        (0xabcdef, FAMILY_V6)
    );
    check_verdict(&mut dp, Direction::Ingress, &rest, Ok(Verdict::Fragment));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_fragments_after_other_extension_headers() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Ingress, PEER_CLASS, TCP, 80, 80, 151)],
    );
    let mut first = Ip6::new(PEER6, POD6, TCP);
    first.extensions = vec![
        Ext::HopByHop,
        Ext::Fragment {
            offset: 0,
            more: true,
            id: 77,
        },
        Ext::DestinationOptions,
    ];
    let mut rest = first.clone();
    rest.extensions = vec![
        Ext::HopByHop,
        Ext::Fragment {
            offset: 9,
            more: true,
            id: 77,
        },
    ];
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip6(&first, &pkt_tcp(1, 81, SYN)),
        Err(DropReason::PolicyDenied),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip6(&rest, &[0; 32]),
        Err(DropReason::FragmentDenied),
    );
}

// ---- measurements ----

/// Repetitions per BPF_PROG_TEST_RUN in the measurements.
const REPEAT: u32 = 100_000;
/// The policy-entry counts measured.
const SIZES: [u32; 5] = [10, 100, 1_000, 10_000, 100_000];
/// Rounds: each measures every family and size once, so a slow spell of a busy machine is
/// spread over all figures rather than falling on one; `cargo xtask bench` reports medians.
const ROUNDS: u32 = 5;
/// Denied packets are timed in batches of this many, with the event ring drained in between,
/// so that every drop reserves and submits its event as on a live interface.
const DENIED_BATCH: u32 = 2_000;

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    /// The address of peer class `class` (one /32 or /128 per class).
    fn peer(self, class: u32) -> IpAddr {
        match self {
            Self::V4 => v4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 100, 0, 0)) + class,
            )),
            Self::V6 => v6(Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0)) + u128::from(class),
            )),
        }
    }
}

/// A TCP packet from `peer` to the pod of the peer's family.
fn pkt_tcp_from(peer: IpAddr, src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    match peer {
        IpAddr::V4(peer) => pkt_tcp4(peer, POD4, src_port, dst_port, flags),
        IpAddr::V6(peer) => pkt_tcp6(peer, POD6, src_port, dst_port, flags),
    }
}

/// What the sized endpoints' entries stand for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tiers {
    /// NetworkPolicy only: allows, and isolation denies the rest.
    NetworkPolicy,
    /// ClusterNetworkPolicies too: the endpoint reads its entries as compiled verdicts of
    /// every tier.
    Cluster,
}

impl Tiers {
    /// The prefix of the figures' case names.
    fn prefix(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "",
            Self::Cluster => "cluster-",
        }
    }
}

/// An endpoint isolated both ways with `entries` policy entries in each direction: half as
/// many peer classes (one address each), every class allowing TCP 80 to and from the pod and,
/// with NetworkPolicy only, TCP 8000-8007, so the plans probe two prefix lengths whatever the
/// size. With ClusterNetworkPolicies, an Admin `Deny` takes 8000-8007 instead, and one more
/// Admin `Deny` of TCP 22 from any peer gives the endpoint an any-peer key, which a packet no
/// class key matches probes unless the any-peer filter rules its port out (as it does for the
/// denied flow's port 81). Returns the peer address of the middle class.
fn setup_sized(family: Family, entries: u32, tiers: Tiers) -> (Datapath, IpAddr) {
    let classes = entries / 2;
    let mut allows = Vec::new();
    for class in 1..=classes {
        for direction in Direction::ALL {
            allows.push(allow(direction, class, TCP, 80, 80, class));
            allows.push(match tiers {
                Tiers::NetworkPolicy => allow(direction, class, TCP, 8000, 8007, class),
                Tiers::Cluster => decided(
                    direction,
                    class,
                    TCP,
                    (8000, 8007),
                    PolicyAction::DenyAdmin,
                    RULE_ADMIN,
                ),
            });
        }
    }
    let flags = match tiers {
        Tiers::NetworkPolicy => ISOLATED,
        Tiers::Cluster => {
            for direction in Direction::ALL {
                allows.push(decided(
                    direction,
                    ANY_PEER_CLASS,
                    TCP,
                    (22, 22),
                    PolicyAction::DenyAdmin,
                    RULE_ADMIN,
                ));
            }
            ISOLATED | TIERED
        }
    };
    let mut dp = Datapath::load();
    dp.setup_endpoint(setup_test_ifindex(), EP, &POD, flags, &allows);
    let prefix_len = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    for class in 1..=classes {
        dp.set_peer(family.peer(class), prefix_len, class);
    }
    (dp, family.peer(classes / 2))
}

/// A TCP packet from the pod of the peer's family to `peer`.
fn pkt_tcp_to(peer: IpAddr, src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    match peer {
        IpAddr::V4(peer) => pkt_tcp4(POD4, peer, src_port, dst_port, flags),
        IpAddr::V6(peer) => pkt_tcp6(POD6, peer, src_port, dst_port, flags),
    }
}

/// Prints one figure line for `cargo xtask bench`: family, policy entries, case, round and ns
/// per packet as the kernel timed it.
fn print_figure(family: Family, entries: u32, case: &str, round: u32, ns: f64) {
    println!("figure {} {entries} {case} {round} {ns:.2}", family.name());
}

/// Prints the programs' sizes, then ns per packet through BPF_PROG_TEST_RUN for the
/// established, new allowed and new denied paths, IPv4 and IPv6, at every size of `SIZES`,
/// with NetworkPolicy only and with ClusterNetworkPolicies (`cluster-` cases), next to an
/// empty classifier (the floor: what TEST_RUN itself costs per repetition), over
/// `ROUNDS` interleaved rounds, each on freshly loaded programs and maps. Checks that every
/// repetition took the path it is named after; timing is left to the bench's report.
///
/// Established and new denied packets leave no new state, so one TEST_RUN of `REPEAT`
/// repetitions times them. A new allowed packet creates its flow, so a plain repeat would time
/// the established path after the first run; a SYN+FIN is repeated instead: the flow it
/// creates is closing, and a SYN on a closing flow is decided by policy again and re-inserted,
/// so every repetition takes the whole new-flow path.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn measure_instructions_and_ns_per_packet() {
    let dp = Datapath::load();
    for name in policy_common::names::ALL_PROGRAMS {
        let info = dp.info(name);
        let xlated = info.size_translated().expect("xlated size");
        let jited = info.size_jitted();
        let verified = info.verified_instruction_count().unwrap_or(0);
        println!("program {name} {} {jited} {verified}", xlated / 8);
        assert!(xlated > 0 && jited > 0);
    }
    drop(dp);
    for round in 0..ROUNDS {
        for family in [Family::V4, Family::V6] {
            let floor =
                common::empty_classifier_ns(&pkt_tcp_from(family.peer(1), 999, 80, ACK), REPEAT);
            print_figure(family, 0, "empty", round, f64::from(floor));
            for entries in SIZES {
                for tiers in [Tiers::NetworkPolicy, Tiers::Cluster] {
                    measure_sized(family, entries, tiers, round);
                }
            }
        }
    }
}

fn measure_sized(family: Family, entries: u32, tiers: Tiers, round: u32) {
    let (mut dp, peer) = setup_sized(family, entries, tiers);
    let case = |name: &str| format!("{}{name}", tiers.prefix());
    // A handshake confirms the flow, as every established connection is.
    assert_eq!(
        dp.run(Direction::Ingress, &pkt_tcp_from(peer, 999, 80, SYN)),
        PASS
    );
    assert_eq!(
        dp.run(Direction::Egress, &pkt_tcp_to(peer, 80, 999, SYN | ACK)),
        PASS
    );
    assert_eq!(
        dp.run(Direction::Ingress, &pkt_tcp_from(peer, 999, 80, ACK)),
        PASS
    );
    let (action, per_run) = dp.run_repeat(
        Direction::Ingress,
        &pkt_tcp_from(peer, 999, 80, ACK),
        REPEAT,
    );
    assert_eq!(action, PASS);
    check_counter_is(&dp, Ok(Verdict::Established), 1 + u64::from(REPEAT));
    print_figure(
        family,
        entries,
        &case("established"),
        round,
        per_run.as_nanos() as f64,
    );

    let reopening = pkt_tcp_from(peer, 998, 80, SYN | FIN);
    let (action, per_run) = dp.run_repeat(Direction::Ingress, &reopening, REPEAT);
    assert_eq!(action, PASS);
    check_counter_is(&dp, Ok(Verdict::Policy), 1 + u64::from(REPEAT));
    print_figure(
        family,
        entries,
        &case("new-allowed"),
        round,
        per_run.as_nanos() as f64,
    );

    let denied = pkt_tcp_from(peer, 999, 81, SYN);
    let mut denied_total = 0u128;
    for batch in 0..REPEAT / DENIED_BATCH {
        let (action, per_run) = dp.run_repeat(Direction::Ingress, &denied, DENIED_BATCH);
        assert_eq!(action, DROP, "denied batch {batch}");
        denied_total += per_run.as_nanos() * u128::from(DENIED_BATCH);
        assert_eq!(
            dp.events().len(),
            DENIED_BATCH as usize,
            "one drop event per denied run"
        );
    }
    check_counter_is(&dp, Err(DropReason::PolicyDenied), u64::from(REPEAT));
    print_figure(
        family,
        entries,
        &case("new-denied"),
        round,
        denied_total as f64 / f64::from(REPEAT),
    );

    if tiers == Tiers::NetworkPolicy {
        measure_source_check(&mut dp, family, entries, round, peer);
    }
}

/// What `from_pod` costs with the source check and with it skipped (`ENDPOINT_ANY_SOURCE`), on
/// the same maps: an established flow the pod opened (a confirmed flow's ACK) and a new allowed
/// flow (a repeated SYN+FIN, as for ingress).
fn measure_source_check(dp: &mut Datapath, family: Family, entries: u32, round: u32, peer: IpAddr) {
    let checked = dp.endpoint(setup_test_ifindex());
    for (suffix, flags, port) in [
        ("", checked.flags, 41000),
        ("-exempt", checked.flags | ENDPOINT_ANY_SOURCE, 42000),
    ] {
        dp.set_endpoint(setup_test_ifindex(), EndpointInfo { flags, ..checked });
        let handshake = [
            (Direction::Egress, pkt_tcp_to(peer, port, 80, SYN)),
            (Direction::Ingress, pkt_tcp_from(peer, 80, port, SYN | ACK)),
            (Direction::Egress, pkt_tcp_to(peer, port, 80, ACK)),
        ];
        for (direction, frame) in &handshake {
            assert_eq!(dp.run(*direction, frame), PASS);
        }
        let (action, per_run) =
            dp.run_repeat(Direction::Egress, &pkt_tcp_to(peer, port, 80, ACK), REPEAT);
        assert_eq!(action, PASS);
        print_figure(
            family,
            entries,
            &format!("egress-established{suffix}"),
            round,
            per_run.as_nanos() as f64,
        );
        let reopening = pkt_tcp_to(peer, port + 1, 80, SYN | FIN);
        let (action, per_run) = dp.run_repeat(Direction::Egress, &reopening, REPEAT);
        assert_eq!(action, PASS);
        print_figure(
            family,
            entries,
            &format!("egress-new-allowed{suffix}"),
            round,
            per_run.as_nanos() as f64,
        );
    }
    let allowed = dp
        .counter(EP, Direction::Egress, code(Ok(Verdict::Policy)))
        .packets;
    assert_eq!(
        allowed,
        2 * (1 + u64::from(REPEAT)),
        "every new egress flow by policy"
    );
}

fn check_counter_is(dp: &Datapath, outcome: Result<Verdict, DropReason>, packets: u64) {
    let counter = dp.counter(EP, Direction::Ingress, code(outcome));
    assert_eq!(counter.packets, packets, "{outcome:?} packets");
}

/// A Service's ClusterIP.
const CLUSTER4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The endpoint of a local backend on the test interface, in the Service cases.
const BACKEND_EP: u32 = 8;
/// The rule that allows the client's egress to the backends' TCP 8080.
const RULE_BACKEND: u32 = 21;
/// The client's host veth where it is not the test interface (a map key only).
const CLIENT_IFINDEX: u32 = 100_000;
/// kube-proxy's masquerade bit: a mark bit the Service path must keep.
const KUBE_PROXY_MARK: u32 = 0x4000;

/// A datapath with client EP on the test interface with `flags` and `allows`, and CLUSTER4 a
/// ClusterIP.
fn setup_service_client(flags: u32, allows: &[Entry]) -> Datapath {
    let mut dp = setup_with(flags, allows);
    dp.set_service(v4(CLUSTER4));
    dp
}

/// A datapath as `svc_egress` meets it on a local backend's veth: client EP on another
/// interface and by id, with `flags` and `allows`; the test interface is the backend BACKEND_EP's, isolated both
/// ways with no rule; CLUSTER4 a ClusterIP; PEER4's /24 in PEER_CLASS.
fn setup_service_backend(flags: u32, allows: &[Entry]) -> Datapath {
    let mut dp = setup_service_client(flags, allows);
    let client = dp.setup_endpoint(CLIENT_IFINDEX, EP, &POD, flags, allows);
    dp.set_endpoint_id(client);
    dp.setup_endpoint(
        setup_test_ifindex(),
        BACKEND_EP,
        &[v4(PEER4)],
        ISOLATED,
        &[],
    );
    dp
}

/// Asserts that `key` is the one conntrack entry, with this rule and these flags.
fn check_one_flow(dp: &Datapath, key: CtKey, rule_id: u32, flags: u32) {
    let flows = dp.conntrack();
    assert_eq!(flows.len(), 1, "flows: {flows:?}");
    assert_eq!(flows[0].0, key);
    assert_eq!(flows[0].1.rule_id, rule_id, "rule of {key:?}");
    assert_eq!(flows[0].1.flags, flags, "flags of {key:?}");
}

fn egress_to_backends() -> Entry {
    allow(Direction::Egress, PEER_CLASS, TCP, 8080, 8080, RULE_BACKEND)
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn syn_to_a_cluster_ip_is_deferred_with_a_pending_mark() {
    let mut dp = setup_service_client(ENDPOINT_EGRESS_ISOLATED, &[]);
    let frame = pkt_tcp4(POD4, CLUSTER4, 40000, 80, SYN);
    let (action, mark) = dp.run_with_mark(names::FROM_POD_PROG, &frame, KUBE_PROXY_MARK);
    assert_eq!(action, PASS);
    assert_eq!(mark, svc_mark(KUBE_PROXY_MARK, EP));
    assert_eq!(mark, 0xa007_4000);
    assert_eq!(svc_pending(mark), Some(EP));
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(CLUSTER4), 40000, 80),
        0,
        CT_SERVICE,
    );
    check_only_counters(&dp, &[(Direction::Egress, Ok(Verdict::Service), 1)]);
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn later_packet_to_a_cluster_ip_is_deferred_again() {
    let mut dp = setup_service_client(ENDPOINT_EGRESS_ISOLATED, &[]);
    let (action, _) = dp.run_with_mark(
        names::FROM_POD_PROG,
        &pkt_tcp4(POD4, CLUSTER4, 40000, 80, SYN),
        0,
    );
    assert_eq!(action, PASS);
    let (action, mark) = dp.run_with_mark(
        names::FROM_POD_PROG,
        &pkt_tcp4(POD4, CLUSTER4, 40000, 80, ACK),
        0,
    );
    assert_eq!(action, PASS);
    assert_eq!(mark, svc_mark(0, EP));
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(CLUSTER4), 40000, 80),
        0,
        CT_SERVICE,
    );
    check_only_counters(&dp, &[(Direction::Egress, Ok(Verdict::Service), 2)]);
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn unmarked_packet_passes_svc_egress_untouched() {
    let mut dp = setup_service_backend(ENDPOINT_EGRESS_ISOLATED, &[]);
    let frame = pkt_tcp4(POD4, PEER4, 40000, 9090, SYN);
    // No pending magic, and the magic with endpoint id 0: neither is a pending mark.
    for mark in [KUBE_PROXY_MARK, SVC_MARK_MAGIC | KUBE_PROXY_MARK] {
        assert_eq!(
            dp.run_with_mark(names::SVC_EGRESS_PROG, &frame, mark),
            (PASS, mark)
        );
    }
    assert!(dp.conntrack().is_empty());
    check_only_counters_of(&dp, &[]);
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn marked_packet_allowed_after_dnat_is_tracked_and_counted_for_the_client() {
    let mut dp = setup_service_backend(ENDPOINT_EGRESS_ISOLATED, &[egress_to_backends()]);
    let frame = pkt_tcp4(POD4, PEER4, 40000, 8080, SYN);
    let (action, mark) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &frame,
        svc_mark(KUBE_PROXY_MARK, EP),
    );
    assert_eq!(action, PASS);
    assert_eq!(mark, KUBE_PROXY_MARK);
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(PEER4), 40000, 8080),
        RULE_BACKEND,
        0,
    );
    check_only_counters_of(&dp, &[(EP, Direction::Egress, Ok(Verdict::Policy), 1)]);
    assert_eq!(
        dp.counter(EP, Direction::Egress, code(Ok(Verdict::Policy)))
            .bytes,
        frame.len() as u64
    );
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn marked_packet_denied_after_dnat_drops_with_an_event_for_the_client() {
    let mut dp = setup_service_backend(ENDPOINT_EGRESS_ISOLATED, &[egress_to_backends()]);
    let (action, mark) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &pkt_tcp4(POD4, PEER4, 40000, 9090, SYN),
        svc_mark(KUBE_PROXY_MARK, EP),
    );
    assert_eq!(action, DROP);
    assert_eq!(mark, KUBE_PROXY_MARK);
    assert!(dp.conntrack().is_empty());
    check_only_counters_of(
        &dp,
        &[(EP, Direction::Egress, Err(DropReason::PolicyDenied), 1)],
    );
    let event = check_one_event(&mut dp, Err(DropReason::PolicyDenied), 0);
    assert_eq!(event.direction, Direction::Egress as u8);
    assert_eq!(event.family, FAMILY_V4);
    assert_eq!(event.protocol, TCP);
    assert_eq!((event.src_port, event.dst_port), (40000, 9090));
    assert_eq!(event.src_addr, addr16(v4(POD4)));
    assert_eq!(event.dst_addr, addr16(v4(PEER4)));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn marked_packet_of_a_client_not_egress_isolated_passes_as_not_isolated() {
    let mut dp = setup_service_backend(ENDPOINT_INGRESS_ISOLATED, &[]);
    let (action, mark) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &pkt_tcp4(POD4, PEER4, 40000, 9090, SYN),
        svc_mark(0, EP),
    );
    assert_eq!((action, mark), (PASS, 0));
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(PEER4), 40000, 9090),
        0,
        0,
    );
    check_only_counters_of(&dp, &[(EP, Direction::Egress, Ok(Verdict::NotIsolated), 1)]);
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn marked_packet_back_on_the_clients_own_interface_passes_as_own_service() {
    // Isolated both ways with no rule: only the hairpin verdict lets the packet through.
    let mut dp = setup_service_client(ISOLATED, &[]);
    let client = dp.setup_endpoint(setup_test_ifindex(), EP, &POD, ISOLATED, &[]);
    dp.set_endpoint_id(client);
    let (action, mark) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &pkt_tcp4(POD4, POD4, 40000, 8080, SYN),
        svc_mark(KUBE_PROXY_MARK, EP),
    );
    assert_eq!((action, mark), (PASS, KUBE_PROXY_MARK));
    assert!(dp.conntrack().is_empty());
    check_only_counters(&dp, &[(Direction::Egress, Ok(Verdict::OwnService), 1)]);
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn reply_from_a_cluster_ip_passes_an_ingress_isolated_client() {
    let mut dp = setup_service_client(ISOLATED, &[]);
    let (action, _) = dp.run_with_mark(
        names::FROM_POD_PROG,
        &pkt_tcp4(POD4, CLUSTER4, 40000, 80, SYN),
        0,
    );
    assert_eq!(action, PASS);
    let (action, mark) = dp.run_with_mark(
        names::TO_POD_PROG,
        &pkt_tcp4(CLUSTER4, POD4, 80, 40000, SYN | ACK),
        KUBE_PROXY_MARK,
    );
    assert_eq!((action, mark), (PASS, KUBE_PROXY_MARK));
    // The entry is what let it through: another port of the ClusterIP is no reply.
    assert_eq!(
        dp.run(
            Direction::Ingress,
            &pkt_tcp4(CLUSTER4, POD4, 81, 40000, SYN | ACK)
        ),
        DROP
    );
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(CLUSTER4), 40000, 80),
        0,
        CT_SERVICE | CT_REPLIED,
    );
    check_only_counters(
        &dp,
        &[
            (Direction::Egress, Ok(Verdict::Service), 1),
            (Direction::Ingress, Ok(Verdict::Reply), 1),
            (Direction::Ingress, Err(DropReason::PolicyDenied), 1),
        ],
    );
    let event = check_one_event(&mut dp, Err(DropReason::PolicyDenied), 0);
    assert_eq!(event.direction, Direction::Ingress as u8);
    assert_eq!(event.src_port, 81);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn marked_packet_of_a_stale_endpoint_id_passes_unaccounted() {
    let mut dp = setup_service_backend(ENDPOINT_EGRESS_ISOLATED, &[]);
    let stale = EP + 2;
    let (action, mark) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &pkt_tcp4(POD4, PEER4, 40000, 9090, SYN),
        svc_mark(KUBE_PROXY_MARK, stale),
    );
    assert_eq!(action, PASS);
    // The pending bits go, so no later hook decides it again; the other bits stay.
    assert_eq!(mark, KUBE_PROXY_MARK);
    assert!(dp.conntrack().is_empty());
    check_only_counters_of(&dp, &[]);
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn later_marked_packet_rides_on_the_post_dnat_entry() {
    let mut dp = setup_service_backend(ENDPOINT_EGRESS_ISOLATED, &[egress_to_backends()]);
    for flags in [SYN, ACK] {
        let (action, mark) = dp.run_with_mark(
            names::SVC_EGRESS_PROG,
            &pkt_tcp4(POD4, PEER4, 40000, 8080, flags),
            svc_mark(0, EP),
        );
        assert_eq!((action, mark), (PASS, 0));
    }
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(PEER4), 40000, 8080),
        RULE_BACKEND,
        0,
    );
    check_only_counters_of(
        &dp,
        &[
            (EP, Direction::Egress, Ok(Verdict::Policy), 1),
            (EP, Direction::Egress, Ok(Verdict::Established), 1),
        ],
    );
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn marked_packet_still_to_the_cluster_ip_is_decided_by_policy_and_leaves_the_entry() {
    let mut dp = setup_service_backend(ENDPOINT_EGRESS_ISOLATED, &[egress_to_backends()]);
    // from_pod runs on the client's veth; here the test interface stands in for it.
    let client = dp.setup_endpoint(
        setup_test_ifindex(),
        EP,
        &POD,
        ENDPOINT_EGRESS_ISOLATED,
        &[],
    );
    let frame = pkt_tcp4(POD4, CLUSTER4, 40000, 80, SYN);
    let (action, mark) = dp.run_with_mark(names::FROM_POD_PROG, &frame, 0);
    assert_eq!((action, mark), (PASS, svc_mark(0, EP)));
    dp.setup_endpoint(
        setup_test_ifindex(),
        BACKEND_EP,
        &[v4(PEER4)],
        ISOLATED,
        &[],
    );
    dp.set_endpoint_id(client);
    // No Service port matched, so kube-proxy left the ClusterIP in place: the uplink's
    // svc_egress sees the packet as from_pod did, and no rule allows the ClusterIP.
    let (action, mark) = dp.run_with_mark(names::SVC_EGRESS_PROG, &frame, mark);
    assert_eq!((action, mark), (DROP, 0));
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(CLUSTER4), 40000, 80),
        0,
        CT_SERVICE,
    );
    check_only_counters_of(
        &dp,
        &[
            (EP, Direction::Egress, Ok(Verdict::Service), 1),
            (EP, Direction::Egress, Err(DropReason::PolicyDenied), 1),
        ],
    );
    let event = check_one_event(&mut dp, Err(DropReason::PolicyDenied), 0);
    assert_eq!(event.dst_addr, addr16(v4(CLUSTER4)));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn logged_client_reports_the_flow_svc_egress_allowed() {
    let flags = ENDPOINT_EGRESS_ISOLATED | ENDPOINT_LOG_ALLOWED;
    let mut dp = setup_service_backend(flags, &[egress_to_backends()]);
    let (action, _) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &pkt_tcp4(POD4, PEER4, 40000, 8080, SYN),
        svc_mark(0, EP),
    );
    assert_eq!(action, PASS);
    let event = check_one_event(&mut dp, Ok(Verdict::Policy), RULE_BACKEND);
    assert_eq!(event.direction, Direction::Egress as u8);
    assert_eq!(event.dst_addr, addr16(v4(PEER4)));
    assert_eq!(event.dst_port, 8080);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_cluster_ip_is_deferred_and_decided_after_dnat() {
    const CLUSTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10);
    let allows = [allow(
        Direction::Egress,
        PEER_CLASS,
        TCP,
        8080,
        8080,
        RULE_BACKEND,
    )];
    let mut dp = setup_service_client(ENDPOINT_EGRESS_ISOLATED, &allows);
    dp.set_service(v6(CLUSTER6));
    let (action, mark) = dp.run_with_mark(
        names::FROM_POD_PROG,
        &pkt_tcp6(POD6, CLUSTER6, 40000, 80, SYN),
        0,
    );
    assert_eq!((action, mark), (PASS, svc_mark(0, EP)));
    let client = dp.setup_endpoint(CLIENT_IFINDEX, EP, &POD, ENDPOINT_EGRESS_ISOLATED, &allows);
    dp.set_endpoint_id(client);
    dp.setup_endpoint(
        setup_test_ifindex(),
        BACKEND_EP,
        &[v4(PEER4)],
        ISOLATED,
        &[],
    );
    let (action, mark) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &pkt_tcp6(POD6, PEER6, 40000, 8080, SYN),
        mark,
    );
    assert_eq!((action, mark), (PASS, 0));
    let mut flows = dp.conntrack();
    flows.sort_by_key(|(key, _)| key.dst_port);
    let keys: Vec<CtKey> = flows.iter().map(|(key, _)| *key).collect();
    assert_eq!(
        keys,
        [
            ct_key(Direction::Egress, TCP, v6(POD6), v6(CLUSTER6), 40000, 80),
            ct_key(Direction::Egress, TCP, v6(POD6), v6(PEER6), 40000, 8080),
        ]
    );
    assert_eq!(
        (flows[0].1.flags, flows[1].1.flags, flows[1].1.rule_id),
        (CT_SERVICE, 0, RULE_BACKEND)
    );
    check_only_counters_of(
        &dp,
        &[
            (EP, Direction::Egress, Ok(Verdict::Service), 1),
            (EP, Direction::Egress, Ok(Verdict::Policy), 1),
        ],
    );
    check_no_events(&mut dp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn hairpin_through_the_own_service_reaches_an_isolated_client() {
    let mut dp = setup_service_client(ISOLATED, &[]);
    let client = dp.setup_endpoint(setup_test_ifindex(), EP, &POD, ISOLATED, &[]);
    dp.set_endpoint_id(client);
    // kube-proxy masquerades a hairpin to a node address, so the client's ingress is host
    // traffic once svc_egress in front of to_pod passed it.
    let frame = pkt_tcp4(HOST4, POD4, 40000, 8080, SYN);
    let (action, mark) = dp.run_with_mark(names::SVC_EGRESS_PROG, &frame, svc_mark(0, EP));
    assert_eq!((action, mark), (PASS, 0));
    let (action, mark) = dp.run_with_mark(names::TO_POD_PROG, &frame, mark);
    assert_eq!((action, mark), (PASS, 0));
    assert!(dp.conntrack().is_empty());
    check_only_counters(
        &dp,
        &[
            (Direction::Egress, Ok(Verdict::OwnService), 1),
            (Direction::Ingress, Ok(Verdict::Host), 1),
        ],
    );
    check_no_events(&mut dp);
}

// ---- source validation ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn packets_from_another_source_are_spoofed_isolated_or_not() {
    for flags in [0, ISOLATED] {
        let mut dp = setup_with(
            flags,
            &[allow(
                Direction::Egress,
                ANY_PEER_CLASS,
                ANY_PROTOCOL,
                0,
                0,
                1,
            )],
        );
        let frames = [
            pkt_tcp4(PEER4, OTHER4, 40000, 80, SYN),
            pkt_tcp4(HOST4, PEER4, 40000, 80, SYN),
            pkt_tcp6(PEER6, OTHER6, 40000, 80, SYN),
            pkt_tcp6(Ipv6Addr::UNSPECIFIED, OTHER6, 40000, 80, SYN),
            pkt_ip4(&Ip4::new(OTHER4, PEER4, UDP), &pkt_udp(53, 53, 8)),
        ];
        for frame in &frames {
            check_verdict(&mut dp, Direction::Egress, frame, Err(DropReason::Spoofed));
        }
        assert!(dp.conntrack().is_empty(), "a spoofed packet tracks nothing");
        let events = dp.events();
        assert_eq!(events.len(), frames.len());
        assert!(events.iter().all(|event| event.endpoint_id == EP));
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn own_and_link_local_sources_pass() {
    let mut dp = setup_with(0, &[]);
    let frames = [
        pkt_tcp4(POD4, PEER4, 40000, 80, SYN),
        pkt_tcp6(POD6, PEER6, 40000, 80, SYN),
        pkt_tcp6(LINK_LOCAL6, PEER6, 40000, 80, SYN),
    ];
    for frame in &frames {
        check_verdict(&mut dp, Direction::Egress, frame, Ok(Verdict::NotIsolated));
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_forged_reply_does_not_ride_on_another_flow() {
    let mut dp = setup_web();
    // PEER4 -> POD4:80 is an allowed, tracked flow of EP.
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    // The pod cannot answer as someone else, even on that flow's tuple.
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(OTHER4, PEER4, 80, 40000, SYN | ACK),
        Err(DropReason::Spoofed),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn an_exempted_endpoint_may_send_from_any_source() {
    let mut dp = setup_with(ENDPOINT_ANY_SOURCE, &[]);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(OTHER4, PEER4, 40000, 80, SYN),
        Ok(Verdict::NotIsolated),
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_arp_from(OTHER4, PEER4),
        Ok(Verdict::Exempt),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn frames_that_are_not_ip_drop_where_isolated() {
    let raw = pkt_eth(0x88b5, &[0; 46]);
    let mut dp = setup_with(ENDPOINT_EGRESS_ISOLATED, &[]);
    check_verdict(&mut dp, Direction::Egress, &raw, Err(DropReason::NotIp));
    check_verdict(&mut dp, Direction::Ingress, &raw, Ok(Verdict::NotIsolated));
    let mut dp = setup_with(ENDPOINT_INGRESS_ISOLATED, &[]);
    check_verdict(&mut dp, Direction::Ingress, &raw, Err(DropReason::NotIp));
    check_one_event(&mut dp, Err(DropReason::NotIp), 0);
}

// ---- node addresses ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn egress_to_a_node_address_is_deferred_and_its_replies_pass() {
    let mut dp = setup_with(ISOLATED, &[]);
    let frame = pkt_tcp4(POD4, HOST4, 40000, 30080, SYN);
    let (action, mark) = dp.run_with_mark(names::FROM_POD_PROG, &frame, 0);
    assert_eq!(action, PASS);
    assert_eq!(svc_pending(mark), Some(EP));
    check_one_flow(
        &dp,
        ct_key(Direction::Egress, TCP, v4(POD4), v4(HOST4), 40000, 30080),
        0,
        CT_SERVICE | CT_HOST,
    );
    let (action, mark) = dp.run_with_mark(
        names::FROM_POD_PROG,
        &pkt_tcp4(POD4, HOST4, 40000, 30080, ACK),
        0,
    );
    assert_eq!((action, svc_pending(mark)), (PASS, Some(EP)));
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(HOST4, POD4, 30080, 40000, SYN | ACK),
        Ok(Verdict::Reply),
    );
    check_only_counters(
        &dp,
        &[
            (Direction::Egress, Ok(Verdict::Host), 2),
            (Direction::Ingress, Ok(Verdict::Reply), 1),
        ],
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_node_address_translated_to_a_denied_backend_drops_after_dnat() {
    let dp = setup_service_backend(ENDPOINT_EGRESS_ISOLATED, &[]);
    // kube-proxy translated HOST4:30080 (deferred by from_pod) to the backend PEER4:8080.
    let (action, _) = dp.run_with_mark(
        names::SVC_EGRESS_PROG,
        &pkt_tcp4(POD4, PEER4, 40000, 8080, SYN),
        svc_mark(0, EP),
    );
    assert_eq!(action, DROP);
    assert_eq!(
        dp.counter(EP, Direction::Egress, code(Err(DropReason::PolicyDenied)))
            .packets,
        1
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_cluster_ip_that_is_also_a_node_address_is_a_service() {
    let mut dp = setup_service_client(ENDPOINT_EGRESS_ISOLATED, &[]);
    dp.set_host(v4(CLUSTER4));
    let (action, mark) = dp.run_with_mark(
        names::FROM_POD_PROG,
        &pkt_tcp4(POD4, CLUSTER4, 40000, 80, SYN),
        0,
    );
    assert_eq!((action, svc_pending(mark)), (PASS, Some(EP)));
    check_only_counters(&dp, &[(Direction::Egress, Ok(Verdict::Service), 1)]);
}

// ---- ICMP errors ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn icmp_error_going_elsewhere_than_the_quoted_sender_is_not_related() {
    let mut dp = setup_with(
        ISOLATED,
        &[allow(Direction::Egress, PEER_CLASS, TCP, 80, 80, 5)],
    );
    let sent = pkt_tcp4(POD4, PEER4, 40000, 80, SYN);
    check_verdict(&mut dp, Direction::Egress, &sent, Ok(Verdict::Policy));
    let right = pkt_icmp4_error(OTHER4, POD4, 3, &sent);
    check_verdict(&mut dp, Direction::Ingress, &right, Ok(Verdict::Related));
    // An error from the pod about a packet the pod sent: a pod only reports errors about
    // packets it received.
    let from_pod = pkt_icmp4_error(POD4, PEER4, 3, &sent);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &from_pod,
        Err(DropReason::PolicyDenied),
    );
}

// ---- conntrack ----

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_flow_is_confirmed_once_seen_both_ways_and_again() {
    let mut dp = setup_web();
    let key = ct_key(Direction::Ingress, TCP, v4(PEER4), v4(POD4), 40000, 80);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    assert_eq!(dp.flows_in(names::UNCONFIRMED_MAP).len(), 1);
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, PEER4, 80, 40000, SYN | ACK),
        Ok(Verdict::Reply),
    );
    assert_eq!(dp.flows_in(names::UNCONFIRMED_MAP)[0].1.flags, CT_REPLIED);
    assert!(dp.flows_in(names::CONNTRACK_MAP).is_empty());
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, ACK),
        Ok(Verdict::Established),
    );
    assert!(dp.flows_in(names::UNCONFIRMED_MAP).is_empty());
    let confirmed = dp.flows_in(names::CONNTRACK_MAP);
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].0, key);
    assert_eq!(
        (confirmed[0].1.rule_id, confirmed[0].1.flags),
        (RULE_WEB, 0)
    );
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, PEER4, 80, 40000, ACK),
        Ok(Verdict::Reply),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_flood_of_new_flows_evicts_only_unconfirmed_ones() {
    let mut dp = setup_with(0, &[]);
    dp.set_conntrack(
        ct_key(Direction::Egress, TCP, v4(POD4), v4(PEER4), 40000, 80),
        policy_common::maps::CtValue {
            last_seen_ns: monotonic_ns(),
            rule_id: 0,
            flags: 0,
        },
    );
    let capacity = policy_common::maps::MAX_UNCONFIRMED as usize;
    for i in 0..capacity + capacity / 4 {
        let source = Ipv4Addr::from(0x0a64_0000 + i as u32);
        let frame = pkt_tcp4(source, POD4, 1024 + (i % 60000) as u16, 80, SYN);
        assert_eq!(dp.run(Direction::Ingress, &frame), PASS);
    }
    assert_eq!(dp.flows_in(names::CONNTRACK_MAP).len(), 1);
    assert!(dp.flows_in(names::UNCONFIRMED_MAP).len() <= capacity);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(PEER4, POD4, 80, 40000, ACK),
        Ok(Verdict::Reply),
    );
}

/// An entry of a ClusterNetworkPolicy's compiled verdict: `action` for `first..=last` of
/// `protocol` from `class`, decided by `rule_id`.
fn decided(
    direction: Direction,
    class: u32,
    protocol: u8,
    (first, last): (u16, u16),
    action: PolicyAction,
    rule_id: u32,
) -> Entry {
    Entry {
        direction,
        class,
        protocol,
        ports: (first, last),
        action,
        rule_id,
    }
}

const RULE_ADMIN: u32 = 41;
const RULE_BASELINE: u32 = 42;
const TIERED: u32 = ENDPOINT_INGRESS_TIERED | ENDPOINT_EGRESS_TIERED;

/// A tiered endpoint that no NetworkPolicy isolates: an Admin `Deny` of TCP 22 from the peer
/// class, a Baseline `Deny` of everything else from any peer but TCP 80, which an Admin
/// `Accept` lets through, and an explicit default allow of the peer class's UDP.
fn setup_tiers() -> Datapath {
    let ingress = Direction::Ingress;
    setup_with(
        TIERED,
        &[
            decided(
                ingress,
                PEER_CLASS,
                TCP,
                (22, 22),
                PolicyAction::DenyAdmin,
                RULE_ADMIN,
            ),
            decided(
                ingress,
                PEER_CLASS,
                TCP,
                (80, 80),
                PolicyAction::Allow,
                RULE_ADMIN + 10,
            ),
            decided(
                ingress,
                PEER_CLASS,
                UDP,
                (0, u16::MAX),
                PolicyAction::Allow,
                0,
            ),
            decided(
                ingress,
                ANY_PEER_CLASS,
                ANY_PROTOCOL,
                (0, 0),
                PolicyAction::DenyBaseline,
                RULE_BASELINE,
            ),
        ],
    )
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn cluster_policy_verdicts_drop_with_their_tier_and_rule() {
    let mut dp = setup_tiers();
    assert_eq!(
        dp.run(Direction::Ingress, &pkt_tcp4(PEER4, POD4, 40000, 22, SYN)),
        DROP
    );
    check_one_event(&mut dp, Err(DropReason::AdminDenied), RULE_ADMIN);
    assert_eq!(
        dp.run(Direction::Ingress, &pkt_tcp4(OTHER4, POD4, 40000, 443, SYN)),
        DROP
    );
    check_one_event(&mut dp, Err(DropReason::BaselineDenied), RULE_BASELINE);
    // Not isolated, so a drop creates no flow and an allow by rule tracks it.
    assert_eq!(
        dp.run(Direction::Ingress, &pkt_tcp4(PEER4, POD4, 40000, 80, SYN)),
        PASS
    );
    assert_eq!(dp.conntrack().len(), 1);
    assert_eq!(dp.conntrack()[0].1.rule_id, RULE_ADMIN + 10);
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, UDP), &pkt_udp(1234, 53, 0)),
        Ok(Verdict::NotIsolated),
    );
    // The peer class's own entries decide its TCP; its other ports fall to the any-peer row.
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp6(PEER6, POD6, 40000, 443, SYN),
        Err(DropReason::BaselineDenied),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_ip4(&Ip4::new(PEER4, POD4, SCTP), &pkt_sctp(1234, 9000)),
        Err(DropReason::BaselineDenied),
    );
    // The egress of a tiered endpoint without entries of that direction passes.
    check_verdict(
        &mut dp,
        Direction::Egress,
        &pkt_tcp4(POD4, OTHER4, 40000, 22, SYN),
        Ok(Verdict::NotIsolated),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn sctp_is_decided_by_cluster_policy_entries() {
    let egress = Direction::Egress;
    let mut dp = setup_with(
        ENDPOINT_EGRESS_TIERED,
        &[
            decided(
                egress,
                PEER_CLASS,
                SCTP,
                (9003, 9005),
                PolicyAction::Allow,
                RULE_ADMIN,
            ),
            decided(
                egress,
                PEER_CLASS,
                SCTP,
                (0, 9002),
                PolicyAction::DenyAdmin,
                RULE_ADMIN + 1,
            ),
        ],
    );
    for (port, expected) in [
        (9003, Ok(Verdict::Policy)),
        (9005, Ok(Verdict::Policy)),
        (9002, Err(DropReason::AdminDenied)),
        (9006, Ok(Verdict::NotIsolated)),
    ] {
        check_verdict_of(
            &mut dp,
            &format!("SCTP to {port}"),
            egress,
            &pkt_ip6(&Ip6::new(POD6, PEER6, SCTP), &pkt_sctp(1234, port)),
            expected,
        );
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn an_isolation_entry_denies_where_a_class_would_fall_back_to_an_allow() {
    let ingress = Direction::Ingress;
    let mut dp = setup_with(
        ENDPOINT_INGRESS_ISOLATED | ENDPOINT_INGRESS_TIERED,
        &[
            decided(
                ingress,
                PEER_CLASS,
                TCP,
                (80, 80),
                PolicyAction::DenyIsolated,
                0,
            ),
            decided(
                ingress,
                ANY_PEER_CLASS,
                TCP,
                (80, 80),
                PolicyAction::Allow,
                RULE_ADMIN,
            ),
        ],
    );
    check_verdict(
        &mut dp,
        ingress,
        &pkt_tcp4(PEER4, POD4, 40000, 80, SYN),
        Err(DropReason::PolicyDenied),
    );
    check_verdict(
        &mut dp,
        ingress,
        &pkt_tcp4(OTHER4, POD4, 40000, 80, SYN),
        Ok(Verdict::Policy),
    );
    // Isolated: a miss is denied.
    check_verdict(
        &mut dp,
        ingress,
        &pkt_tcp4(OTHER4, POD4, 40000, 81, SYN),
        Err(DropReason::PolicyDenied),
    );
}

/// The node's connection to a pod whose egress an Admin `Deny` of the node decides: the pod's
/// replies pass, its own connections to the node are dropped.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn replies_to_the_node_pass_a_cluster_policy_deny_of_the_node() {
    let egress = Direction::Egress;
    let mut dp = setup_with(
        ENDPOINT_EGRESS_TIERED,
        &[decided(
            egress,
            ANY_PEER_CLASS,
            ANY_PROTOCOL,
            (0, 0),
            PolicyAction::DenyAdmin,
            RULE_ADMIN,
        )],
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(HOST4, POD4, 40000, 8080, SYN),
        Ok(Verdict::Host),
    );
    check_verdict(
        &mut dp,
        egress,
        &pkt_tcp4(POD4, HOST4, 8080, 40000, SYN | ACK),
        Ok(Verdict::Reply),
    );
    check_verdict(
        &mut dp,
        Direction::Ingress,
        &pkt_tcp4(HOST4, POD4, 40000, 8080, ACK),
        Ok(Verdict::Established),
    );
    check_verdict(
        &mut dp,
        egress,
        &pkt_tcp4(POD4, HOST4, 41000, 10250, SYN),
        Err(DropReason::AdminDenied),
    );
    // A pod whose egress no ClusterNetworkPolicy decides leaves node traffic untracked.
    let mut plain = setup_with(0, &[]);
    check_verdict(
        &mut plain,
        Direction::Ingress,
        &pkt_tcp4(HOST4, POD4, 40000, 8080, SYN),
        Ok(Verdict::Host),
    );
    check_verdict(
        &mut plain,
        Direction::Ingress,
        &pkt_tcp4(HOST4, POD4, 40000, 8080, ACK),
        Ok(Verdict::Host),
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn node_traffic_is_exempt_from_isolation_but_not_from_a_cluster_policy_deny() {
    let ingress = Direction::Ingress;
    let mut dp = setup_with(
        ENDPOINT_INGRESS_ISOLATED | ENDPOINT_INGRESS_TIERED,
        &[decided(
            ingress,
            ANY_PEER_CLASS,
            TCP,
            (10250, 10250),
            PolicyAction::DenyBaseline,
            RULE_BASELINE,
        )],
    );
    check_verdict(
        &mut dp,
        ingress,
        &pkt_tcp4(HOST4, POD4, 40000, 8080, SYN),
        Ok(Verdict::Host),
    );
    check_verdict(
        &mut dp,
        ingress,
        &pkt_tcp4(HOST4, POD4, 40000, 10250, SYN),
        Err(DropReason::BaselineDenied),
    );
    // Without the tiered flag the entries are not read for node traffic.
    let mut plain = setup_with(
        ENDPOINT_INGRESS_ISOLATED,
        &[decided(
            ingress,
            ANY_PEER_CLASS,
            TCP,
            (10250, 10250),
            PolicyAction::DenyBaseline,
            RULE_BASELINE,
        )],
    );
    check_verdict(
        &mut plain,
        ingress,
        &pkt_tcp4(HOST4, POD4, 40000, 10250, SYN),
        Ok(Verdict::Host),
    );
}
