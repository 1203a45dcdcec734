//! Random and mutated packets against both programs, checked against a reference decision.
//!
//! A fixed-seed random policy (several endpoints, peer CIDRs with excepts, any-peer and
//! any-protocol rules, port ranges) is encoded into the maps the way the agent does it, and
//! 100,000 packets of every kind (valid, forged sources, ARP and neighbour discovery claiming
//! other addresses, then byte flips, truncations and length-field lies) go
//! through `from_pod` and `to_pod`. For every packet the reference below parses the frame with
//! `etherparse` and decides against the rules as CIDRs and port ranges, never through the map
//! encoding; the program's action, the counter slot it bumps and the event it reports must
//! match.
//!
//! Conntrack and fragments are tracked in the reference too. TEST_RUN only runs on `lo`, so the
//! endpoints take turns on it: each epoch binds the next endpoint and clears both the kernel's
//! and the reference's conntrack and fragment state (epochs stay far below the LRU capacities,
//! so no entry is ever evicted behind the reference's back).

#[allow(
    dead_code,
    reason = "each test crate uses a different part of the harness"
)]
mod common;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::{DROP, Datapath, Entry, PASS, packets::*, setup_test_ifindex};
use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};
use policy_common::{
    maps::{
        ANY_PEER_CLASS, ANY_PROTOCOL, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED,
        ENDPOINT_LOG_ALLOWED, ENDPOINT_NOT_READY, EndpointInfo, PolicyAction,
    },
    verdict::{Direction, DropReason, Verdict, outcome},
};
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;

const SEED: u64 = 0x6e70_2d72_616e_6400;
const PACKETS: usize = 100_000;
const EPOCH: usize = 1_000;
/// How many ext headers the programs walk (documented in policy-ebpf's parser).
const WALKED_EXTENSIONS: usize = 6;

const POD4: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 5);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 5);
const HOST4: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 1);

// ---- the policy, as CIDRs and port ranges ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                self.len == 0 || (u32::from(net) ^ u32::from(ip)) >> (32 - u32::from(self.len)) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                self.len == 0
                    || (u128::from(net) ^ u128::from(ip)) >> (128 - u32::from(self.len)) == 0
            }
            _ => false,
        }
    }

    fn within(&self, outer: &Cidr) -> bool {
        self.len >= outer.len && outer.contains(self.addr)
    }
}

fn cidr(text: &str) -> Cidr {
    let (addr, len) = text.split_once('/').expect("addr/len");
    Cidr {
        addr: addr.parse().expect("address"),
        len: len.parse().expect("length"),
    }
}

#[derive(Clone, Debug)]
enum Peer {
    Any,
    Block { cidr: Cidr, except: Vec<Cidr> },
}

#[derive(Clone, Debug)]
struct Rule {
    id: u32,
    direction: Direction,
    peer: Peer,
    /// `None`: every protocol.
    protocol: Option<u8>,
    ports: (u16, u16),
}

impl Rule {
    fn matches(&self, peer: IpAddr, protocol: u8, port: u16) -> bool {
        let peer_ok = match &self.peer {
            Peer::Any => true,
            Peer::Block { cidr, except } => {
                cidr.contains(peer) && !except.iter().any(|e| e.contains(peer))
            }
        };
        let port_ok = match self.protocol {
            None => true,
            Some(p) => p == protocol && (self.ports.0..=self.ports.1).contains(&port),
        };
        peer_ok && port_ok
    }
}

#[derive(Clone, Debug)]
struct Endpoint {
    id: u32,
    flags: u32,
    rules: Vec<Rule>,
}

impl Endpoint {
    fn isolated(&self, direction: Direction) -> bool {
        let bit = match direction {
            Direction::Ingress => ENDPOINT_INGRESS_ISOLATED,
            Direction::Egress => ENDPOINT_EGRESS_ISOLATED,
        };
        self.flags & bit != 0
    }
}

const PREFIXES: [&str; 14] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.128/25",
    "10.1.2.7/32",
    "192.168.5.0/24",
    "172.16.0.0/12",
    "::/0",
    "fd00::/8",
    "fd00:1::/32",
    "fd00:1:2::/48",
    "fd00:1:2:3::/64",
    "2001:db8::/32",
];

const PORTS: [u16; 15] = [
    0, 1, 22, 53, 80, 443, 1000, 5353, 7999, 8000, 8080, 8081, 32768, 65534, 65535,
];

fn random_policy(rng: &mut ChaCha8Rng) -> Vec<Endpoint> {
    let prefixes: Vec<Cidr> = PREFIXES.iter().map(|p| cidr(p)).collect();
    let flag_sets = [
        ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED | ENDPOINT_LOG_ALLOWED,
        ENDPOINT_INGRESS_ISOLATED,
        ENDPOINT_EGRESS_ISOLATED | ENDPOINT_LOG_ALLOWED,
        ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED,
        ENDPOINT_NOT_READY | ENDPOINT_INGRESS_ISOLATED,
    ];
    let mut next_rule = 1;
    let mut endpoints = Vec::new();
    for (i, flags) in flag_sets.into_iter().enumerate() {
        let mut rules = Vec::new();
        for direction in Direction::ALL {
            for _ in 0..rng.random_range(1..=6) {
                let peer = if rng.random_bool(0.15) {
                    Peer::Any
                } else {
                    let outer = *prefixes.choose(rng).expect("prefixes");
                    let inner: Vec<Cidr> = prefixes
                        .iter()
                        .copied()
                        .filter(|p| p.len > outer.len && p.within(&outer))
                        .collect();
                    let mut except = Vec::new();
                    if !inner.is_empty() && rng.random_bool(0.5) {
                        for _ in 0..rng.random_range(1..=2) {
                            except.push(*inner.choose(rng).expect("inner prefixes"));
                        }
                    }
                    Peer::Block {
                        cidr: outer,
                        except,
                    }
                };
                let protocol = match rng.random_range(0..20) {
                    0..3 => None,
                    3..10 => Some(TCP),
                    10..16 => Some(UDP),
                    _ => Some(SCTP),
                };
                let ports = match rng.random_range(0..3) {
                    0 => (0, u16::MAX),
                    1 => {
                        let port = *PORTS.choose(rng).expect("ports");
                        (port, port)
                    }
                    _ => {
                        let first = *PORTS.choose(rng).expect("ports");
                        (first, first.saturating_add(rng.random_range(0..3000)))
                    }
                };
                rules.push(Rule {
                    id: next_rule,
                    direction,
                    peer,
                    protocol,
                    ports,
                });
                next_rule += 1;
            }
        }
        endpoints.push(Endpoint {
            id: i as u32 + 1,
            flags,
            rules,
        });
    }
    endpoints
}

/// Encodes the policy the way the agent does: every CIDR and except is a prefix with its own
/// class; a rule allows the classes of the prefixes inside its CIDR and outside its excepts.
fn program_policy(dp: &mut Datapath, endpoints: &[Endpoint]) -> Vec<EndpointInfo> {
    let mut prefixes: Vec<Cidr> = Vec::new();
    for rule in endpoints.iter().flat_map(|e| &e.rules) {
        if let Peer::Block { cidr, except } = &rule.peer {
            prefixes.push(*cidr);
            prefixes.extend(except.iter().copied());
        }
    }
    prefixes.sort_unstable();
    prefixes.dedup();
    let class_of = |p: &Cidr| prefixes.iter().position(|q| q == p).expect("known") as u32 + 1;
    for prefix in &prefixes {
        dp.set_peer(prefix.addr, u32::from(prefix.len), class_of(prefix));
    }
    let mut infos = Vec::new();
    for endpoint in endpoints {
        let mut allows = Vec::new();
        for rule in &endpoint.rules {
            let classes: Vec<u32> = match &rule.peer {
                Peer::Any => vec![ANY_PEER_CLASS],
                Peer::Block { cidr, except } => prefixes
                    .iter()
                    .filter(|p| p.within(cidr) && !except.iter().any(|e| p.within(e)))
                    .map(class_of)
                    .collect(),
            };
            for class in classes {
                allows.push(Entry {
                    direction: rule.direction,
                    class,
                    protocol: rule.protocol.unwrap_or(ANY_PROTOCOL),
                    ports: rule.ports,
                    action: PolicyAction::Allow,
                    rule_id: rule.id,
                });
            }
        }
        // Parked on an interface index no test runs on until its epoch comes.
        infos.push(dp.setup_endpoint(
            10_000 + endpoint.id,
            endpoint.id,
            &[IpAddr::V4(POD4), IpAddr::V6(POD6)],
            endpoint.flags,
            &allows,
        ));
    }
    dp.set_host(IpAddr::V4(HOST4));
    dp.set_host(IpAddr::V6(HOST6));
    infos
}

// ---- the reference parser ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
}

impl Tuple {
    fn reversed(&self) -> Tuple {
        Tuple {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    fn policy_port(&self) -> u16 {
        match self.protocol {
            TCP | UDP | SCTP => self.dst_port,
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Datagram {
    tuple: Tuple,
    tcp_flags: u8,
    /// Offset 0 with more fragments following.
    first_fragment: bool,
    fragment_id: u32,
}

#[derive(Clone, Copy, Debug)]
enum Parsed {
    NonIp,
    /// ARP for IPv4 over Ethernet, with the sender's address.
    Arp(Ipv4Addr),
    /// ICMPv6 types 133 to 137 with code 0 and hop limit 255.
    NeighbourDiscovery(Neighbour),
    Flow(Datagram),
    /// A non-first fragment: addresses, the protocol field and the id.
    Later(Datagram),
    IcmpError(Datagram, Option<Tuple>),
    Malformed,
    Unparsed,
}

#[derive(Clone, Copy, Debug)]
struct Neighbour {
    datagram: Datagram,
    icmp_type: u8,
    /// Bytes of the ICMPv6 message.
    len: usize,
    /// The target of a solicitation or advertisement, when present.
    target: Option<Ipv6Addr>,
}

fn echo_ports(v4: bool, icmp_type: u8, id: u16) -> (u16, u16) {
    match (v4, icmp_type) {
        (true, 8) | (false, 128) => (id, 0),
        (true, 0) | (false, 129) => (0, id),
        _ => (0, 0),
    }
}

fn reference_parse(frame: &[u8]) -> Parsed {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return Parsed::Malformed;
    };
    let mut ether_type = eth.ether_type();
    let mut rest = &frame[eth.slice().len()..];
    let is_vlan =
        |t: EtherType| t == EtherType::VLAN_TAGGED_FRAME || t == EtherType::PROVIDER_BRIDGING;
    if is_vlan(ether_type) {
        let Ok(vlan) = SingleVlanHeaderSlice::from_slice(rest) else {
            return Parsed::Malformed;
        };
        ether_type = vlan.ether_type();
        rest = &rest[vlan.slice().len()..];
        if is_vlan(ether_type) {
            return Parsed::Unparsed;
        }
    }
    if ether_type == EtherType::IPV4 {
        parse_v4(rest)
    } else if ether_type == EtherType::IPV6 {
        parse_v6(rest)
    } else if ether_type == EtherType::ARP && rest.len() >= 28 && rest[..6] == [0, 1, 8, 0, 6, 4] {
        Parsed::Arp(Ipv4Addr::new(rest[14], rest[15], rest[16], rest[17]))
    } else {
        Parsed::NonIp
    }
}

fn parse_v4(packet: &[u8]) -> Parsed {
    let Ok(ip) = Ipv4HeaderSlice::from_slice(packet) else {
        return Parsed::Malformed;
    };
    if ip.payload_len().is_err() {
        return Parsed::Malformed;
    }
    let mut datagram = Datagram {
        tuple: Tuple {
            protocol: ip.protocol().0,
            src: IpAddr::V4(ip.source_addr()),
            dst: IpAddr::V4(ip.destination_addr()),
            src_port: 0,
            dst_port: 0,
        },
        tcp_flags: 0,
        first_fragment: false,
        fragment_id: u32::from(ip.identification()),
    };
    if ip.fragments_offset().value() != 0 {
        return Parsed::Later(datagram);
    }
    datagram.first_fragment = ip.more_fragments();
    let protocol = datagram.tuple.protocol;
    parse_l4(&packet[ip.slice().len()..], datagram, protocol, None)
}

fn parse_v6(packet: &[u8]) -> Parsed {
    let Ok(ip) = Ipv6HeaderSlice::from_slice(packet) else {
        return Parsed::Malformed;
    };
    let mut datagram = Datagram {
        tuple: Tuple {
            protocol: 0,
            src: IpAddr::V6(ip.source_addr()),
            dst: IpAddr::V6(ip.destination_addr()),
            src_port: 0,
            dst_port: 0,
        },
        tcp_flags: 0,
        first_fragment: false,
        fragment_id: 0,
    };
    let mut next = ip.next_header().0;
    let hop_limit = Some(ip.hop_limit());
    let mut rest = &packet[ip.slice().len()..];
    let is_extension = |n: u8| matches!(n, 0 | 43 | 44 | 51 | 60);
    for _ in 0..WALKED_EXTENSIONS {
        match next {
            0 | 43 | 60 => {
                let Ok(ext) = Ipv6RawExtHeaderSlice::from_slice(rest) else {
                    return Parsed::Malformed;
                };
                next = ext.next_header().0;
                rest = &rest[ext.slice().len()..];
            }
            51 => {
                let Ok(ext) = IpAuthHeaderSlice::from_slice(rest) else {
                    return Parsed::Malformed;
                };
                next = ext.next_header().0;
                rest = &rest[ext.slice().len()..];
            }
            44 => {
                let Ok(fragment) = Ipv6FragmentHeaderSlice::from_slice(rest) else {
                    return Parsed::Malformed;
                };
                datagram.fragment_id = fragment.identification();
                datagram.tuple.protocol = fragment.next_header().0;
                if fragment.fragment_offset().value() != 0 {
                    return Parsed::Later(datagram);
                }
                if fragment.more_fragments() {
                    datagram.first_fragment = true;
                }
                next = fragment.next_header().0;
                rest = &rest[fragment.slice().len()..];
            }
            _ => return parse_l4(rest, datagram, next, hop_limit),
        }
    }
    if is_extension(next) {
        Parsed::Unparsed
    } else {
        parse_l4(rest, datagram, next, hop_limit)
    }
}

/// `hop_limit` is the IPv6 header's, `None` for IPv4.
fn parse_l4(l4: &[u8], mut datagram: Datagram, protocol: u8, hop_limit: Option<u8>) -> Parsed {
    let v4 = hop_limit.is_none();
    datagram.tuple.protocol = protocol;
    match protocol {
        TCP => {
            let Ok(tcp) = TcpHeaderSlice::from_slice(l4) else {
                return Parsed::Malformed;
            };
            datagram.tuple.src_port = tcp.source_port();
            datagram.tuple.dst_port = tcp.destination_port();
            for (set, flag) in [
                (tcp.fin(), FIN),
                (tcp.syn(), SYN),
                (tcp.rst(), RST),
                (tcp.ack(), ACK),
            ] {
                if set {
                    datagram.tcp_flags |= flag;
                }
            }
            Parsed::Flow(datagram)
        }
        UDP => {
            let Ok(udp) = UdpHeaderSlice::from_slice(l4) else {
                return Parsed::Malformed;
            };
            datagram.tuple.src_port = udp.source_port();
            datagram.tuple.dst_port = udp.destination_port();
            Parsed::Flow(datagram)
        }
        SCTP => {
            if l4.len() < 12 {
                return Parsed::Malformed;
            }
            datagram.tuple.src_port = u16::from_be_bytes([l4[0], l4[1]]);
            datagram.tuple.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
            Parsed::Flow(datagram)
        }
        ICMP if v4 => parse_icmp(l4, datagram, None),
        ICMPV6 if !v4 => parse_icmp(l4, datagram, hop_limit),
        _ => Parsed::Flow(datagram),
    }
}

fn parse_icmp(icmp: &[u8], mut datagram: Datagram, hop_limit: Option<u8>) -> Parsed {
    let v4 = hop_limit.is_none();
    if icmp.len() < 8 {
        return Parsed::Malformed;
    }
    let icmp_type = icmp[0];
    if hop_limit == Some(255) && (133..=137).contains(&icmp_type) && icmp[1] == 0 {
        let target = icmp.get(8..24).map(|bytes| {
            let octets: [u8; 16] = bytes.try_into().expect("16 bytes");
            Ipv6Addr::from(octets)
        });
        return Parsed::NeighbourDiscovery(Neighbour {
            datagram,
            icmp_type,
            len: icmp.len(),
            target,
        });
    }
    let error = if v4 {
        matches!(icmp_type, 3 | 11 | 12)
    } else {
        matches!(icmp_type, 1..=4)
    };
    if error {
        return Parsed::IcmpError(datagram, parse_quote(&icmp[8..], v4));
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    (datagram.tuple.src_port, datagram.tuple.dst_port) = echo_ports(v4, icmp_type, id);
    Parsed::Flow(datagram)
}

/// The tuple of the packet an ICMP error quotes: a plain IP header (IPv4 options are skipped,
/// IPv6 extension headers are not walked) and 8 bytes of its L4 header.
fn parse_quote(quote: &[u8], v4: bool) -> Option<Tuple> {
    let (protocol, src, dst, l4) = if v4 {
        if quote.len() < 20 || quote[0] >> 4 != 4 || quote[0] & 0x0f < 5 {
            return None;
        }
        if u16::from_be_bytes([quote[6], quote[7]]) & 0x1fff != 0 {
            return None;
        }
        let header_len = usize::from(quote[0] & 0x0f) * 4;
        let src: [u8; 4] = quote[12..16].try_into().ok()?;
        let dst: [u8; 4] = quote[16..20].try_into().ok()?;
        (
            quote[9],
            IpAddr::from(src),
            IpAddr::from(dst),
            quote.get(header_len..)?,
        )
    } else {
        if quote.len() < 40 || quote[0] >> 4 != 6 {
            return None;
        }
        let src: [u8; 16] = quote[8..24].try_into().ok()?;
        let dst: [u8; 16] = quote[24..40].try_into().ok()?;
        (quote[6], IpAddr::from(src), IpAddr::from(dst), &quote[40..])
    };
    if l4.len() < 8 {
        return None;
    }
    let (src_port, dst_port) = match protocol {
        TCP | UDP | SCTP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        ICMP if v4 => echo_ports(true, l4[0], u16::from_be_bytes([l4[4], l4[5]])),
        ICMPV6 if !v4 => echo_ports(false, l4[0], u16::from_be_bytes([l4[4], l4[5]])),
        _ => (0, 0),
    };
    Some(Tuple {
        protocol,
        src,
        dst,
        src_port,
        dst_port,
    })
}

// ---- the reference decision ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    endpoint: u32,
    direction: Direction,
    tuple: Tuple,
}

#[derive(Clone, Debug)]
struct FlowState {
    closing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragmentKey {
    endpoint: u32,
    direction: Direction,
    id: u32,
    /// IPv4 only: IPv6 datagrams are identified by addresses and id.
    protocol: Option<u8>,
    src: IpAddr,
    dst: IpAddr,
}

#[derive(Clone, Debug)]
struct FragmentState {
    allowed: bool,
    ports: (u16, u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    result: Result<Verdict, DropReason>,
    /// For a new flow, the rules any of which may be the reported one (0: not isolated).
    reported_rules: Option<Vec<u32>>,
    /// Ports a drop event carries, when known.
    event_ports: Option<(u16, u16)>,
}

impl Expected {
    fn of(result: Result<Verdict, DropReason>) -> Expected {
        Expected {
            result,
            reported_rules: None,
            event_ports: None,
        }
    }
}

#[derive(Default)]
struct Reference {
    flows: HashMap<FlowKey, FlowState>,
    fragments: HashMap<FragmentKey, FragmentState>,
}

fn is_host(ip: IpAddr) -> bool {
    ip == IpAddr::V4(HOST4) || ip == IpAddr::V6(HOST6)
}

fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Whether the pod may send from `src` (to `dst`): its own addresses, IPv6 link-local, and the
/// unspecified address to a multicast group.
fn own_source(src: IpAddr, dst: IpAddr) -> bool {
    src == IpAddr::V4(POD4)
        || src == IpAddr::V6(POD6)
        || is_link_local(src)
        || (src == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && dst.is_multicast())
}

/// Neighbour discovery that passes without a policy decision (`Exempt`, or `Spoofed` when the
/// pod claims another address); `None` when it is an ordinary ICMPv6 packet.
fn on_link(neighbour: &Neighbour, direction: Direction) -> Option<Expected> {
    let tuple = &neighbour.datagram.tuple;
    let exempt = match neighbour.icmp_type {
        133 => neighbour.len <= 64,
        135 | 136 => (24..=64).contains(&neighbour.len),
        _ => direction == Direction::Ingress && is_link_local(tuple.src),
    };
    if !exempt {
        return None;
    }
    if direction == Direction::Egress {
        let foreign_target = neighbour.icmp_type == 136
            && neighbour
                .target
                .is_none_or(|target| target != POD6 && !is_link_local(IpAddr::V6(target)));
        if !own_source(tuple.src, tuple.dst) || foreign_target {
            return Some(Expected::of(Err(DropReason::Spoofed)));
        }
    }
    Some(Expected::of(Ok(Verdict::Exempt)))
}

fn peer_of(tuple: &Tuple, direction: Direction) -> IpAddr {
    match direction {
        Direction::Egress => tuple.dst,
        Direction::Ingress => tuple.src,
    }
}

impl Reference {
    fn clear(&mut self) {
        self.flows.clear();
        self.fragments.clear();
    }

    fn decide(&mut self, endpoint: &Endpoint, direction: Direction, frame: &[u8]) -> Expected {
        let from_pod = direction == Direction::Egress;
        let parsed = match reference_parse(frame) {
            Parsed::Arp(sender) => {
                let own = sender == POD4 || sender.is_unspecified();
                return if from_pod && !own {
                    Expected::of(Err(DropReason::Spoofed))
                } else {
                    Expected::of(Ok(Verdict::Exempt))
                };
            }
            Parsed::NonIp => {
                return if endpoint.flags & ENDPOINT_NOT_READY != 0 {
                    Expected::of(Err(DropReason::NotReady))
                } else if endpoint.isolated(direction) {
                    Expected::of(Err(DropReason::NotIp))
                } else {
                    Expected::of(Ok(Verdict::NotIsolated))
                };
            }
            Parsed::NeighbourDiscovery(neighbour) => {
                if let Some(expected) = on_link(&neighbour, direction) {
                    return expected;
                }
                Parsed::Flow(neighbour.datagram)
            }
            other => other,
        };
        if endpoint.flags & ENDPOINT_NOT_READY != 0 {
            return Expected::of(Err(DropReason::NotReady));
        }
        let isolated = endpoint.isolated(direction);
        let datagram = match parsed {
            Parsed::NonIp | Parsed::Arp(_) | Parsed::NeighbourDiscovery(_) => {
                unreachable!("decided above")
            }
            Parsed::Malformed | Parsed::Unparsed if !isolated && !from_pod => {
                return Expected::of(Ok(Verdict::NotIsolated));
            }
            Parsed::Malformed => return Expected::of(Err(DropReason::Malformed)),
            Parsed::Unparsed => return Expected::of(Err(DropReason::Unparsed)),
            Parsed::Flow(d) | Parsed::Later(d) | Parsed::IcmpError(d, _) => d,
        };
        if from_pod && !own_source(datagram.tuple.src, datagram.tuple.dst) {
            return Expected::of(Err(DropReason::Spoofed));
        }
        // The pod's own traffic to a node address is deferred (and tracked) like a Service's;
        // an ICMP error is host traffic either way.
        let deferred = from_pod && !matches!(parsed, Parsed::IcmpError(..));
        if is_host(peer_of(&datagram.tuple, direction)) {
            let is_flow = matches!(parsed, Parsed::Flow(_));
            if deferred {
                return self.deferred_to_host(endpoint, &datagram, is_flow);
            }
            let reply = FlowKey {
                endpoint: endpoint.id,
                direction: direction.opposite(),
                tuple: datagram.tuple.reversed(),
            };
            if is_flow && self.ride(&reply, datagram.tcp_flags) {
                return Expected::of(Ok(Verdict::Reply));
            }
            return Expected::of(Ok(Verdict::Host));
        }
        let fragment_key = FragmentKey {
            endpoint: endpoint.id,
            direction,
            id: datagram.fragment_id,
            protocol: datagram
                .tuple
                .src
                .is_ipv4()
                .then_some(datagram.tuple.protocol),
            src: datagram.tuple.src,
            dst: datagram.tuple.dst,
        };
        let expected = match parsed {
            Parsed::Later(_) => {
                return match self.fragments.get(&fragment_key) {
                    Some(first) if first.allowed => Expected::of(Ok(Verdict::Fragment)),
                    Some(first) => Expected {
                        event_ports: Some(first.ports),
                        ..Expected::of(Err(DropReason::FragmentDenied))
                    },
                    None if isolated => Expected::of(Err(DropReason::FragmentUnknown)),
                    None => Expected::of(Ok(Verdict::NotIsolated)),
                };
            }
            Parsed::IcmpError(_, quote) => {
                self.icmp_error(endpoint, direction, &datagram, quote, isolated)
            }
            _ => self.flow(endpoint, direction, &datagram, isolated),
        };
        if datagram.first_fragment {
            self.fragments.insert(
                fragment_key,
                FragmentState {
                    allowed: expected.result.is_ok(),
                    ports: (datagram.tuple.src_port, datagram.tuple.dst_port),
                },
            );
        }
        expected
    }

    /// A packet from the pod to a node address: deferred; a flow is tracked so replies pass.
    fn deferred_to_host(
        &mut self,
        endpoint: &Endpoint,
        datagram: &Datagram,
        is_flow: bool,
    ) -> Expected {
        let key = FlowKey {
            endpoint: endpoint.id,
            direction: Direction::Egress,
            tuple: datagram.tuple,
        };
        if is_flow && !self.ride(&key, datagram.tcp_flags) {
            let closing = datagram.tuple.protocol == TCP && datagram.tcp_flags & (FIN | RST) != 0;
            self.flows.insert(key, FlowState { closing });
        }
        Expected::of(Ok(Verdict::Host))
    }

    fn allowing_rules(endpoint: &Endpoint, direction: Direction, tuple: &Tuple) -> Vec<u32> {
        let peer = peer_of(tuple, direction);
        endpoint
            .rules
            .iter()
            .filter(|rule| {
                rule.direction == direction
                    && rule.matches(peer, tuple.protocol, tuple.policy_port())
            })
            .map(|rule| rule.id)
            .collect()
    }

    /// A live entry that the packet may ride on (a SYN reopens a closing TCP entry instead).
    fn ride(&mut self, key: &FlowKey, tcp_flags: u8) -> bool {
        let Some(state) = self.flows.get_mut(key) else {
            return false;
        };
        let tcp = key.tuple.protocol == TCP;
        if tcp && state.closing && tcp_flags & (SYN | ACK) == SYN {
            return false;
        }
        if tcp && tcp_flags & (FIN | RST) != 0 {
            state.closing = true;
        }
        true
    }

    fn flow(
        &mut self,
        endpoint: &Endpoint,
        direction: Direction,
        datagram: &Datagram,
        isolated: bool,
    ) -> Expected {
        let key = FlowKey {
            endpoint: endpoint.id,
            direction,
            tuple: datagram.tuple,
        };
        if self.ride(&key, datagram.tcp_flags) {
            return Expected::of(Ok(Verdict::Established));
        }
        let reply = FlowKey {
            endpoint: endpoint.id,
            direction: direction.opposite(),
            tuple: datagram.tuple.reversed(),
        };
        if self.ride(&reply, datagram.tcp_flags) {
            return Expected::of(Ok(Verdict::Reply));
        }
        let (verdict, rules) = if isolated {
            let rules = Self::allowing_rules(endpoint, direction, &datagram.tuple);
            if rules.is_empty() {
                return Expected {
                    event_ports: Some((datagram.tuple.src_port, datagram.tuple.dst_port)),
                    ..Expected::of(Err(DropReason::PolicyDenied))
                };
            }
            (Verdict::Policy, rules)
        } else {
            (Verdict::NotIsolated, vec![0])
        };
        let closing = datagram.tuple.protocol == TCP && datagram.tcp_flags & (FIN | RST) != 0;
        self.flows.insert(key, FlowState { closing });
        Expected {
            result: Ok(verdict),
            reported_rules: Some(rules),
            event_ports: None,
        }
    }

    fn icmp_error(
        &mut self,
        endpoint: &Endpoint,
        direction: Direction,
        datagram: &Datagram,
        quote: Option<Tuple>,
        isolated: bool,
    ) -> Expected {
        let back_to_sender = |quote: &Tuple| {
            datagram.tuple.dst == quote.src
                && (direction == Direction::Ingress || datagram.tuple.src == quote.dst)
        };
        if let Some(quote) = quote.filter(back_to_sender) {
            let as_sent = FlowKey {
                endpoint: endpoint.id,
                direction: direction.opposite(),
                tuple: quote,
            };
            let reversed = FlowKey {
                endpoint: endpoint.id,
                direction,
                tuple: quote.reversed(),
            };
            if self.flows.contains_key(&as_sent) || self.flows.contains_key(&reversed) {
                return Expected::of(Ok(Verdict::Related));
            }
        }
        if !isolated {
            return Expected::of(Ok(Verdict::NotIsolated));
        }
        if Self::allowing_rules(endpoint, direction, &datagram.tuple).is_empty() {
            Expected {
                event_ports: Some((0, 0)),
                ..Expected::of(Err(DropReason::PolicyDenied))
            }
        } else {
            Expected::of(Ok(Verdict::Policy))
        }
    }
}

// ---- packet generation ----

#[derive(Clone, Copy, Debug)]
struct SentFlow {
    direction: Direction,
    tuple: Tuple,
}

const PEERS4: [Ipv4Addr; 9] = [
    Ipv4Addr::new(10, 1, 2, 7),
    Ipv4Addr::new(10, 1, 2, 200),
    Ipv4Addr::new(10, 1, 2, 3),
    Ipv4Addr::new(10, 1, 9, 9),
    Ipv4Addr::new(10, 200, 0, 1),
    Ipv4Addr::new(192, 168, 5, 5),
    Ipv4Addr::new(172, 16, 3, 3),
    Ipv4Addr::new(8, 8, 8, 8),
    HOST4,
];

const PEERS6: [Ipv6Addr; 7] = [
    Ipv6Addr::new(0xfd00, 1, 2, 3, 0, 0, 0, 7),
    Ipv6Addr::new(0xfd00, 1, 2, 4, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 1, 9, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5),
    Ipv6Addr::new(0x2a00, 0, 0, 0, 0, 0, 0, 1),
    HOST6,
];

struct Generator {
    rng: ChaCha8Rng,
    sent: Vec<SentFlow>,
    /// Non-first fragments of datagrams whose first fragment was generated.
    later_fragments: Vec<(Direction, Vec<u8>)>,
}

fn random_direction(rng: &mut ChaCha8Rng) -> Direction {
    if rng.random_bool(0.5) {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

impl Generator {
    fn port(&mut self) -> u16 {
        if self.rng.random_bool(0.6) {
            *PORTS.choose(&mut self.rng).expect("ports")
        } else {
            self.rng.random()
        }
    }

    fn peer(&mut self, v4: bool) -> IpAddr {
        if v4 {
            if self.rng.random_bool(0.85) {
                IpAddr::V4(*PEERS4.choose(&mut self.rng).expect("peers"))
            } else {
                IpAddr::V4(Ipv4Addr::from(self.rng.random::<u32>()))
            }
        } else if self.rng.random_bool(0.85) {
            IpAddr::V6(*PEERS6.choose(&mut self.rng).expect("peers"))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.rng.random::<u128>()))
        }
    }

    fn new_tuple(&mut self, direction: Direction, protocol: u8, v4: bool) -> Tuple {
        let pod = if v4 {
            IpAddr::V4(POD4)
        } else {
            IpAddr::V6(POD6)
        };
        let peer = self.peer(v4);
        let (src, dst) = match direction {
            Direction::Egress => (pod, peer),
            Direction::Ingress => (peer, pod),
        };
        Tuple {
            protocol,
            src,
            dst,
            src_port: self.port(),
            dst_port: self.port(),
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        *[SYN, SYN, ACK, ACK, ACK, SYN | ACK, FIN | ACK, RST, 0]
            .choose(&mut self.rng)
            .expect("flags")
    }

    /// The L4 bytes of a tuple (ICMP echo ports become type and identifier).
    fn l4(&mut self, tuple: &Tuple) -> Vec<u8> {
        let v4 = tuple.src.is_ipv4();
        match tuple.protocol {
            TCP => pkt_tcp(tuple.src_port, tuple.dst_port, self.tcp_flags()),
            UDP => pkt_udp(tuple.src_port, tuple.dst_port, self.rng.random_range(0..32)),
            SCTP => pkt_sctp(tuple.src_port, tuple.dst_port),
            ICMP | ICMPV6 => {
                let (request, reply) = if v4 { (8, 0) } else { (128, 129) };
                if tuple.dst_port == 0 {
                    pkt_icmp(request, 0, tuple.src_port, &[])
                } else {
                    pkt_icmp(reply, 0, tuple.dst_port, &[])
                }
            }
            _ => vec![0; self.rng.random_range(0..16)],
        }
    }

    /// A neighbour discovery message of any type, on the link or not, small or padded, from
    /// and about the pod's own address or not.
    fn neighbour(&mut self, direction: Direction) -> Vec<u8> {
        let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7);
        let pod_side = *[POD6, POD6, link_local, Ipv6Addr::UNSPECIFIED, PEERS6[0]]
            .choose(&mut self.rng)
            .expect("sources");
        let IpAddr::V6(peer) = self.peer(false) else {
            unreachable!("an IPv6 peer")
        };
        let far_side = *[peer, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), link_local]
            .choose(&mut self.rng)
            .expect("destinations");
        let (src, dst) = match direction {
            Direction::Egress => (pod_side, far_side),
            Direction::Ingress => (far_side, pod_side),
        };
        let mut ip = Ip6::new(src, dst, ICMPV6);
        ip.hop_limit = *[255, 255, 255, 64]
            .choose(&mut self.rng)
            .expect("hop limits");
        let icmp_type = self.rng.random_range(133..=137);
        let target = *[POD6, link_local, PEERS6[0]]
            .choose(&mut self.rng)
            .expect("targets");
        let mut body = target.octets().to_vec();
        let padding = *[0, 8, 16, 40, 199].choose(&mut self.rng).expect("paddings");
        body.resize(body.len() + padding, 0x01);
        pkt_ip6(&ip, &pkt_icmp(icmp_type, 0, 0, &body))
    }

    fn frame(&mut self, tuple: &Tuple, l4: &[u8], extensions: Vec<Ext>) -> Vec<u8> {
        match (tuple.src, tuple.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = Ip4::new(src, dst, tuple.protocol);
                if self.rng.random_bool(0.1) {
                    ip.options = vec![1; 4 * self.rng.random_range(1..=10)];
                }
                pkt_ip4(&ip, l4)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ip = Ip6::new(src, dst, tuple.protocol);
                ip.extensions = extensions;
                pkt_ip6(&ip, l4)
            }
            _ => unreachable!("tuples are single-family"),
        }
    }

    fn extensions(&mut self) -> Vec<Ext> {
        let count = *[0, 0, 1, 2, 3, 5, 6, 7, 8]
            .choose(&mut self.rng)
            .expect("counts");
        (0..count)
            .map(|_| match self.rng.random_range(0..5) {
                0 => Ext::HopByHop,
                1 => Ext::Routing,
                2 => Ext::DestinationOptions,
                3 => Ext::Authentication,
                _ => Ext::Fragment {
                    offset: 0,
                    more: false,
                    id: self.rng.random(),
                },
            })
            .collect()
    }

    fn remember(&mut self, direction: Direction, tuple: Tuple) {
        if self.sent.len() >= 64 {
            let victim = self.rng.random_range(0..self.sent.len());
            self.sent.swap_remove(victim);
        }
        self.sent.push(SentFlow { direction, tuple });
    }

    fn valid(&mut self) -> (Direction, Vec<u8>) {
        let kind = self.rng.random_range(0..100);
        let v4 = self.rng.random_bool(0.5);
        let recent = self.sent.choose(&mut self.rng).copied();
        match (kind, recent) {
            (0..30, _) => {
                let direction = random_direction(&mut self.rng);
                let protocol = *[TCP, TCP, UDP, SCTP]
                    .choose(&mut self.rng)
                    .expect("protocols");
                let tuple = self.new_tuple(direction, protocol, v4);
                self.remember(direction, tuple);
                let l4 = self.l4(&tuple);
                (direction, self.frame(&tuple, &l4, Vec::new()))
            }
            (30..45, Some(flow)) => {
                let l4 = self.l4(&flow.tuple);
                (flow.direction, self.frame(&flow.tuple, &l4, Vec::new()))
            }
            (45..60, Some(flow)) => {
                let tuple = flow.tuple.reversed();
                let l4 = self.l4(&tuple);
                (
                    flow.direction.opposite(),
                    self.frame(&tuple, &l4, Vec::new()),
                )
            }
            (60..68, _) => {
                let direction = random_direction(&mut self.rng);
                let protocol = if v4 { ICMP } else { ICMPV6 };
                let mut tuple = self.new_tuple(direction, protocol, v4);
                if self.rng.random_bool(0.5) {
                    tuple.dst_port = 0;
                } else {
                    tuple.src_port = 0;
                }
                self.remember(direction, tuple);
                let l4 = self.l4(&tuple);
                (direction, self.frame(&tuple, &l4, Vec::new()))
            }
            (68..78, Some(flow)) => {
                // An error about a packet of a recent flow, either way round, either direction.
                let quoted_tuple = if self.rng.random_bool(0.5) {
                    flow.tuple
                } else {
                    flow.tuple.reversed()
                };
                let quoted_l4 = self.l4(&quoted_tuple);
                let quoted = self.frame(&quoted_tuple, &quoted_l4, Vec::new());
                let v4 = quoted_tuple.src.is_ipv4();
                let direction = random_direction(&mut self.rng);
                let protocol = if v4 { ICMP } else { ICMPV6 };
                let tuple = self.new_tuple(direction, protocol, v4);
                let types: &[u8] = if v4 { &[3, 11, 12] } else { &[1, 2, 3, 4] };
                let icmp_type = *types.choose(&mut self.rng).expect("types");
                let l4 = pkt_icmp(icmp_type, 0, 0, ip_payload(&quoted));
                (direction, self.frame(&tuple, &l4, Vec::new()))
            }
            (78..82, _) => {
                let direction = random_direction(&mut self.rng);
                match self.rng.random_range(0..4) {
                    0 => {
                        let sender = *[POD4, POD4, Ipv4Addr::UNSPECIFIED, PEERS4[0]]
                            .choose(&mut self.rng)
                            .expect("senders");
                        (direction, pkt_arp_from(sender, PEERS4[1]))
                    }
                    1 => (direction, self.neighbour(direction)),
                    2 => (direction, pkt_eth(0x88b5, &[0; 46])),
                    _ => (direction, pkt_eth(0x9100, &[0; 46])),
                }
            }
            (82..85, _) => {
                let direction = random_direction(&mut self.rng);
                let protocol = *[47, 50, 59, 253].choose(&mut self.rng).expect("protocols");
                let tuple = self.new_tuple(direction, protocol, v4);
                let l4 = self.l4(&tuple);
                (direction, self.frame(&tuple, &l4, Vec::new()))
            }
            (85..93, _) => self.fragment(v4),
            (93..96, _) => {
                // The pod forges its source: a peer's, the node's, any, or the unspecified one.
                let protocol = *[TCP, UDP, ICMP].choose(&mut self.rng).expect("protocols");
                let protocol = if protocol == ICMP && !v4 {
                    ICMPV6
                } else {
                    protocol
                };
                let mut tuple = self.new_tuple(Direction::Egress, protocol, v4);
                tuple.src = match (v4, self.rng.random_range(0..4)) {
                    (true, 0) => IpAddr::V4(HOST4),
                    (false, 0) => IpAddr::V6(HOST6),
                    (true, 1) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    (false, 1) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    _ => self.peer(v4),
                };
                let l4 = self.l4(&tuple);
                (Direction::Egress, self.frame(&tuple, &l4, Vec::new()))
            }
            _ => {
                let direction = random_direction(&mut self.rng);
                let protocol = *[TCP, UDP, SCTP, ICMPV6]
                    .choose(&mut self.rng)
                    .expect("protocols");
                let tuple = self.new_tuple(direction, protocol, false);
                self.remember(direction, tuple);
                let l4 = self.l4(&tuple);
                let extensions = self.extensions();
                (direction, self.frame(&tuple, &l4, extensions))
            }
        }
    }

    /// A first fragment of a new datagram, or a later fragment of a remembered (or unknown) one.
    fn fragment(&mut self, v4: bool) -> (Direction, Vec<u8>) {
        if self.rng.random_bool(0.5)
            && let Some((direction, header)) = self.later_fragments.choose(&mut self.rng).cloned()
        {
            return (direction, header);
        }
        let direction = random_direction(&mut self.rng);
        let protocol = *[TCP, UDP, SCTP].choose(&mut self.rng).expect("protocols");
        let tuple = self.new_tuple(direction, protocol, v4);
        self.remember(direction, tuple);
        let id: u32 = if v4 {
            u32::from(self.rng.random::<u16>())
        } else {
            self.rng.random()
        };
        let l4 = self.l4(&tuple);
        let (first, rest) = match (tuple.src, tuple.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip = Ip4::new(src, dst, protocol);
                ip.id = id as u16;
                ip.more_fragments = true;
                let first = pkt_ip4(&ip, &l4);
                ip.more_fragments = false;
                ip.fragment_offset = self.rng.random_range(1..200);
                (first, pkt_ip4(&ip, &[0; 24]))
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ip = Ip6::new(src, dst, protocol);
                ip.extensions = vec![Ext::Fragment {
                    offset: 0,
                    more: true,
                    id,
                }];
                let first = pkt_ip6(&ip, &l4);
                ip.extensions = vec![Ext::Fragment {
                    offset: self.rng.random_range(1..200),
                    more: self.rng.random_bool(0.5),
                    id,
                }];
                (first, pkt_ip6(&ip, &[0; 24]))
            }
            _ => unreachable!("tuples are single-family"),
        };
        if self.later_fragments.len() >= 32 {
            self.later_fragments.swap_remove(0);
        }
        // A later fragment may also come before its first one: both orders are exercised.
        self.later_fragments.push((direction, rest));
        (direction, first)
    }

    /// A valid packet, then maybe truncated, bit-flipped or lying in a length field.
    fn packet(&mut self) -> (Direction, Vec<u8>, &'static str) {
        let (direction, mut frame) = self.valid();
        if self.rng.random_bool(0.05) && frame.len() >= 14 {
            let ethertype = [frame[12], frame[13]];
            let mut tagged = vec![0, 7, ethertype[0], ethertype[1]];
            tagged.extend_from_slice(&frame[14..]);
            frame = pkt_eth(ETH_P_8021Q, &tagged);
        }
        let mutation = match self.rng.random_range(0..100) {
            0..45 => "valid",
            45..60 => {
                let len = self.rng.random_range(14..frame.len());
                frame.truncate(len);
                "truncated"
            }
            60..80 => {
                for _ in 0..self.rng.random_range(1..=4) {
                    let at = self.rng.random_range(12..frame.len());
                    frame[at] ^= 1 << self.rng.random_range(0..8);
                }
                "flipped"
            }
            _ => {
                self.lie(&mut frame);
                "lying"
            }
        };
        (direction, frame, mutation)
    }

    /// Overwrites one length field (IHL, total length, TCP data offset, IPv6 payload length or
    /// an extension header length) with a random value.
    fn lie(&mut self, frame: &mut [u8]) {
        let l3 = if frame[12..14] == ETH_P_8021Q.to_be_bytes() {
            18
        } else {
            14
        };
        if frame.len() <= l3 + 1 {
            return;
        }
        let v4 = frame[l3] >> 4 == 4;
        let value: u8 = self.rng.random();
        let at = if v4 {
            let header_len = usize::from(frame[l3] & 0x0f) * 4;
            match self.rng.random_range(0..3) {
                0 => {
                    frame[l3] = 0x40 | (value & 0x0f);
                    return;
                }
                1 => l3 + 2 + usize::from(value & 1),
                _ => l3 + header_len + 12,
            }
        } else {
            match self.rng.random_range(0..3) {
                0 => l3 + 4 + usize::from(value & 1),
                1 => l3 + 41,
                _ => l3 + 40 + 12,
            }
        };
        if let Some(byte) = frame.get_mut(at) {
            *byte = value;
        }
    }
}

/// The same Ethernet payload behind an 802.1Q tag: TEST_RUN refuses an IP ethertype whose IP
/// header is short, and the programs parse through one tag.
fn behind_vlan_tag(frame: &[u8]) -> Vec<u8> {
    let mut tagged = vec![0, 9, frame[12], frame[13]];
    tagged.extend_from_slice(&frame[14..]);
    pkt_eth(ETH_P_8021Q, &tagged)
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn random_packets_match_the_reference_decision() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let endpoints = random_policy(&mut rng);
    let mut dp = Datapath::load();
    let infos = program_policy(&mut dp, &endpoints);
    let lo = setup_test_ifindex();
    let mut generator = Generator {
        rng,
        sent: Vec::new(),
        later_fragments: Vec::new(),
    };
    let mut reference = Reference::default();
    let mut expected_counters: HashMap<(u32, Direction, u8), u64> = HashMap::new();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut mutations: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut retagged = 0u64;
    let mut endpoint = &endpoints[0];
    for i in 0..PACKETS {
        if i % EPOCH == 0 {
            let index = (i / EPOCH) % endpoints.len();
            endpoint = &endpoints[index];
            dp.set_endpoint(lo, infos[index]);
            dp.clear_conntrack();
            dp.clear_fragments();
            reference.clear();
        }
        let (direction, mut frame, mutation) = generator.packet();
        *mutations.entry(mutation).or_default() += 1;
        let action = match dp.try_run(direction, &frame) {
            Ok(action) => action,
            Err(_) => {
                frame = behind_vlan_tag(&frame);
                retagged += 1;
                dp.try_run(direction, &frame).unwrap_or_else(|error| {
                    panic!("packet {i}: TEST_RUN refused {frame:02x?}: {error}")
                })
            }
        };
        let expected = reference.decide(endpoint, direction, &frame);
        let context = || {
            format!(
                "packet {i} ({mutation}, endpoint {}, {direction:?}): {frame:02x?}
reference: {:?}",
                endpoint.id,
                reference_parse(&frame)
            )
        };
        let want = if expected.result.is_ok() { PASS } else { DROP };
        assert_eq!(
            action,
            want,
            "action; expected {expected:?}
{}",
            context()
        );
        let code = outcome(expected.result);
        let count = expected_counters
            .entry((endpoint.id, direction, code))
            .or_default();
        *count += 1;
        let counter = dp.counter(endpoint.id, direction, code);
        assert_eq!(
            counter.packets,
            *count,
            "counter of {expected:?}
{}",
            context()
        );
        let events = dp.events();
        let logged =
            endpoint.flags & ENDPOINT_LOG_ALLOWED != 0 && expected.reported_rules.is_some();
        if expected.result.is_err() || logged {
            assert_eq!(
                events.len(),
                1,
                "events {events:?}; expected {expected:?}
{}",
                context()
            );
            let event = events[0];
            assert_eq!(
                event.outcome,
                code,
                "event {event:?}
{}",
                context()
            );
            assert_eq!(
                (event.endpoint_id, event.ifindex, event.direction),
                (endpoint.id, lo, direction as u8)
            );
            match &expected.reported_rules {
                Some(rules) => assert!(
                    rules.contains(&event.rule_id),
                    "event rule {} not in {rules:?}
{}",
                    event.rule_id,
                    context()
                ),
                None => assert_eq!(event.rule_id, 0, "{}", context()),
            }
            if let Some(ports) = expected.event_ports {
                assert_eq!(
                    (event.src_port, event.dst_port),
                    ports,
                    "event ports
{}",
                    context()
                );
            }
        } else {
            assert!(
                events.is_empty(),
                "events {events:?}; expected {expected:?}
{}",
                context()
            );
        }
        let name = match expected.result {
            Ok(verdict) => verdict.name(),
            Err(reason) => reason.name(),
        };
        *outcomes.entry(name).or_default() += 1;
    }
    println!("outcomes: {outcomes:?}");
    println!("mutations: {mutations:?}; retagged for TEST_RUN: {retagged}");
    // The model programs no ClusterIP and runs no svc_egress, so the Service verdicts (covered
    // by testrun.rs and the e2e Service scenarios) are out of its reach.
    for verdict in Verdict::ALL
        .into_iter()
        .filter(|verdict| !matches!(verdict, Verdict::Service | Verdict::OwnService))
    {
        assert!(
            outcomes.contains_key(verdict.name()),
            "no packet got {verdict:?}: {outcomes:?}"
        );
    }
    // Its entries all allow, as NetworkPolicy's do; the denying entries of ClusterNetworkPolicy
    // tiers are covered by testrun.rs and by the core's differential test of compiled tiers.
    for reason in DropReason::ALL
        .into_iter()
        .filter(|reason| !matches!(reason, DropReason::AdminDenied | DropReason::BaselineDenied))
    {
        assert!(
            outcomes.contains_key(reason.name()),
            "no packet got {reason:?}: {outcomes:?}"
        );
    }
}
