//! BPF_PROG_TEST_RUN suite: every parse path, verdict and map side effect of `from_pod` and
//! `to_pod`, on packets built in memory. Each test loads its own copy of the programs.

#[allow(
    dead_code,
    reason = "each test crate uses a different part of the harness"
)]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{Allow, DROP, Datapath, PASS, addr16, packets::*, setup_test_ifindex};
use policy_common::{
    maps::{
        ANY_PEER_CLASS, ANY_PROTOCOL, CT_CLOSING, CtKey, ENDPOINT_EGRESS_ISOLATED,
        ENDPOINT_INGRESS_ISOLATED, ENDPOINT_LOG_ALLOWED, ENDPOINT_NOT_READY, FAMILY_V4, FAMILY_V6,
        FlowEvent, WORLD_CLASS,
    },
    verdict::{Direction, DropReason, Outcome, Verdict},
};

const EP: u32 = 7;
const POD4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 9);
const OTHER4: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const HOST4: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 5);
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

fn setup_with(flags: u32, allows: &[Allow]) -> Datapath {
    let mut dp = Datapath::load();
    dp.setup_endpoint(setup_test_ifindex(), EP, flags, allows);
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
) -> Allow {
    Allow {
        direction,
        class,
        protocol,
        ports: (first, last),
        rule_id,
    }
}

fn code(outcome: Result<Verdict, DropReason>) -> Outcome {
    policy_common::verdict::outcome(outcome)
}

/// Asserts the counter of `outcome` for EP in `direction` holds `packets` packets.
fn check_counter(
    dp: &Datapath,
    direction: Direction,
    outcome: Result<Verdict, DropReason>,
    packets: u64,
) {
    let counter = dp.counter(EP, direction, code(outcome));
    assert_eq!(
        counter.packets, packets,
        "{direction:?} {outcome:?} packets"
    );
}

/// Asserts that exactly the given (direction, outcome, packets) counters are non-zero.
fn check_only_counters(dp: &Datapath, expected: &[(Direction, Result<Verdict, DropReason>, u64)]) {
    let mut want: Vec<(u32, u64)> = expected
        .iter()
        .map(|&(direction, outcome, packets)| {
            (
                policy_common::maps::counter_index(EP, direction, code(outcome)),
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
