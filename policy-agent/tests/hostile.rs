//! What a hostile pod can try on the real datapath, on both CNI styles: forged sources (an
//! allowed peer's address, the node's, a forged reply), ARP and neighbour advertisements that
//! claim another pod's address, its own node's address as a way around egress policy (NodePort
//! DNAT the way kube-proxy installs it), neighbour discovery carrying a payload and raw Ethernet
//! between isolated pods, and a random-source SYN flood against connection tracking.
//!
//! The attacker writes whole frames with an AF_PACKET socket inside its own namespace, as a pod
//! with CAP_NET_RAW can; what arrives is captured the same way inside the receiver's namespace,
//! so "not delivered" means the frame never reached the receiver's interface.

#[expect(
    dead_code,
    reason = "the namespace helpers serve several test crates; this one uses part"
)]
mod netns;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use etherparse::{PacketBuilder, PacketBuilderStep, SlicedPacket, TransportSlice};
use netns::{
    BRIDGE, EchoServer, GATEWAY_V4, GATEWAY_V6, Netns, Node, Pod, Style, tcp_works, udp_works,
};
use policy_agent::{
    datapath::{Datapath, DatapathConfig},
    policy::state::{EndpointState, NodeState, PodRef, PolicyRule, Prefix, RuleRef},
};
use policy_common::{
    maps::{
        CtKey, CtValue, ENDPOINT_ANY_SOURCE, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED,
        EndpointInfo, FAMILY_V4, LookupPlan, PolicyKey, PolicyValue,
    },
    names::CONNTRACK_MAP,
    verdict::{Direction, DropReason, Verdict},
};

const TCP: u8 = 6;
const UDP: u8 = 17;
/// One exact port from a peer class: the plan bit of port prefix length 16.
const EXACT_PORT_PLAN: LookupPlan = LookupPlan {
    class: 1 << 16,
    ..LookupPlan::EMPTY
};
/// How long a frame may take to cross the node before it counts as not delivered.
const SETTLE: Duration = Duration::from_millis(400);
const BROADCAST: [u8; 6] = [0xff; 6];
/// A node address that no pod link holds, as a node's IP on its uplink.
const UPLINK_V4: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 1);
const UPLINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd71, 0, 0, 0, 0, 0, 0, 1);

/// One pod of a bed: its number on the node (the last byte of its addresses), isolation flags
/// and the rules of each direction. Its endpoint id is its position in the bed plus one, its
/// peer class ten times that.
struct Spec {
    name: &'static str,
    n: u8,
    flags: u32,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
}

/// Allows one protocol and port from (ingress) or to (egress) the named pod of the bed.
struct Rule {
    peer: &'static str,
    protocol: u8,
    port: u16,
}

impl Spec {
    fn new(name: &'static str, n: u8, flags: u32) -> Spec {
        Spec {
            name,
            n,
            flags,
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }

    fn ingress(mut self, peer: &'static str, protocol: u8, port: u16) -> Spec {
        self.ingress.push(Rule {
            peer,
            protocol,
            port,
        });
        self
    }

    fn egress(mut self, peer: &'static str, protocol: u8, port: u16) -> Spec {
        self.egress.push(Rule {
            peer,
            protocol,
            port,
        });
        self
    }
}

/// A node with its pods and the datapath's pin directory, removed on drop.
struct Bed {
    node: Node,
    pods: Vec<(Spec, Pod)>,
    config: DatapathConfig,
    host_addrs: Vec<IpAddr>,
}

impl Bed {
    fn new(test: &str, style: Style, specs: Vec<Spec>) -> Bed {
        let tag = netns::unique_tag(test);
        let node = Node::with_style(&tag, style);
        let pods = specs
            .into_iter()
            .map(|spec| {
                let pod = node.add_pod(spec.n);
                (spec, pod)
            })
            .collect();
        let config = DatapathConfig {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dpt-{tag}")),
            state_file: std::env::temp_dir().join(format!("dpt-{tag}/datapath.json")),
        };
        Bed {
            node,
            pods,
            config,
            host_addrs: vec![IpAddr::V4(GATEWAY_V4), IpAddr::V6(GATEWAY_V6)],
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        &self.pods[self.index(name)].1
    }

    fn index(&self, name: &str) -> usize {
        self.pods
            .iter()
            .position(|(spec, _)| spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    fn id(&self, name: &str) -> u32 {
        self.index(name) as u32 + 1
    }

    fn class(&self, name: &str) -> u32 {
        self.id(name) * 10
    }

    fn ifindexes(&self) -> BTreeMap<PodRef, u32> {
        self.pods
            .iter()
            .map(|(spec, pod)| (pod_ref(spec.name), pod.ifindex))
            .collect()
    }

    /// The desired state of the bed, with `extra` flags added to the named pods.
    fn state(&self, extra: &[(&str, u32)]) -> NodeState {
        let mut state = NodeState::default();
        let mut rule_id = 0;
        for (spec, pod) in &self.pods {
            let id = self.id(spec.name);
            let extra_flags = extra
                .iter()
                .filter(|(name, _)| *name == spec.name)
                .fold(0, |flags, (_, flag)| flags | flag);
            let plan = |rules: &[Rule]| {
                if rules.is_empty() {
                    LookupPlan::EMPTY
                } else {
                    EXACT_PORT_PLAN
                }
            };
            state.endpoints.insert(
                pod_ref(spec.name),
                EndpointState {
                    pod: pod_ref(spec.name),
                    ips: vec![IpAddr::V4(pod.v4), IpAddr::V6(pod.v6)],
                    info: setup_endpoint_info(
                        id,
                        spec.flags | extra_flags,
                        plan(&spec.ingress),
                        plan(&spec.egress),
                        pod,
                    ),
                },
            );
            let class = self.class(spec.name);
            state.peers.insert(prefix(IpAddr::V4(pod.v4), 32), class);
            state.peers.insert(prefix(IpAddr::V6(pod.v6), 128), class);
            for (direction, rules) in [
                (Direction::Ingress, &spec.ingress),
                (Direction::Egress, &spec.egress),
            ] {
                for (index, rule) in rules.iter().enumerate() {
                    rule_id += 1;
                    let key = PolicyKey {
                        endpoint_id: id,
                        peer_class: self.class(rule.peer),
                        port: rule.port,
                        direction: direction as u8,
                        protocol: rule.protocol,
                        port_prefix_len: 16,
                        _pad: [0; 3],
                    };
                    state.policy.insert(key, PolicyValue::allow(rule_id));
                    state.rules.insert(
                        rule_id,
                        PolicyRule::Network(RuleRef {
                            namespace: "default".into(),
                            policy: spec.name.into(),
                            direction,
                            index,
                        }),
                    );
                }
            }
        }
        state
    }

    /// Opens the datapath in the node namespace, converges it to the bed's state, attaches every
    /// pod's interface and tells it the node's addresses.
    fn start(&self) -> Datapath {
        let config = self.config.clone();
        let desired = self.state(&[]);
        let ifindexes = self.ifindexes();
        let host_addrs = self.host_addrs.clone();
        self.node
            .netns
            .run(move || {
                let mut datapath = Datapath::open(config).expect("open datapath");
                datapath
                    .sync(&desired, |pod| ifindexes.get(pod).copied())
                    .expect("sync");
                for &ifindex in ifindexes.values() {
                    datapath.attach(ifindex).expect("attach");
                }
                datapath.set_host_addrs(&host_addrs).expect("host addrs");
                datapath
            })
            .expect("run in the network namespace")
    }

    /// Converges the datapath to the bed's state with `extra` flags.
    fn resync(&self, datapath: &mut Datapath, extra: &[(&str, u32)]) {
        let ifindexes = self.ifindexes();
        datapath
            .sync(&self.state(extra), |pod| ifindexes.get(pod).copied())
            .expect("sync");
    }

    /// The MAC address a frame from `from` to `to` is sent to: the node's side of the sender's
    /// veth on a routed node, the receiver itself on a bridge.
    fn next_hop(&self, from: &Pod, to: &Pod) -> [u8; 6] {
        match self.node.style {
            Style::Ptp => netns::mac(self.node.netns.name(), &from.host_if),
            Style::Bridge => netns::mac(to.netns.name(), "eth0"),
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config.pin_dir);
        if let Some(dir) = self.config.state_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The endpoint-map value of a pod.
fn setup_endpoint_info(
    endpoint_id: u32,
    flags: u32,
    ingress_plan: LookupPlan,
    egress_plan: LookupPlan,
    pod: &Pod,
) -> EndpointInfo {
    EndpointInfo {
        endpoint_id,
        flags,
        ingress_plan,
        egress_plan,
        addr6: pod.v6.octets(),
        addr4: pod.v4.octets(),
    }
}

fn pod_ref(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn prefix(addr: IpAddr, len: u8) -> Prefix {
    Prefix { addr, len }
}

fn skip_without_root() -> bool {
    if netns::is_root() {
        return false;
    }
    eprintln!("skipped: needs root");
    true
}

fn mac_of(pod: &Pod) -> [u8; 6] {
    netns::mac(pod.netns.name(), "eth0")
}

/// An AF_PACKET socket on one interface of a namespace: it writes whole Ethernet frames out of
/// the interface and reads the frames that arrive on it.
struct RawLink {
    fd: OwnedFd,
}

impl RawLink {
    fn open(netns: &Netns, ifname: &str) -> RawLink {
        let ifname = ifname.to_owned();
        netns
            .run(move || {
                let ifindex =
                    nix::net::if_::if_nametoindex(ifname.as_str()).expect("if_nametoindex");
                let all = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: creates a descriptor that is owned at once below.
                let raw = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        i32::from(all),
                    )
                };
                assert!(
                    raw >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                // SAFETY: `raw` is a fresh descriptor nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: `sockaddr_ll` is plain data; zero is a valid value of every field.
                let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = all;
                addr.sll_ifindex = ifindex as i32;
                // SAFETY: `addr` is a valid `sockaddr_ll` of the length given.
                let bound = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&raw const addr).cast(),
                        mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
                let link = RawLink { fd };
                link.set_option(libc::SO_RCVBUF, 8 << 20);
                link
            })
            .expect("run in the network namespace")
    }

    fn set_option(&self, option: i32, value: i32) {
        // SAFETY: `value` is an int of the size given, as SOL_SOCKET int options take.
        let set = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const value).cast(),
                mem::size_of::<i32>() as u32,
            )
        };
        assert_eq!(set, 0, "setsockopt: {}", std::io::Error::last_os_error());
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for its length; the socket is bound to its interface.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            sent,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The frames that arrived on the interface (not those it sent) until `wait` has passed.
    fn arrived(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        let mut buf = vec![0_u8; 65_536];
        loop {
            // SAFETY: as above; `from` is written by the kernel up to `len`.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut len = mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are valid for the lengths given.
            let received = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            if received > 0 {
                if from.sll_pkttype != libc::PACKET_OUTGOING {
                    frames.push(buf[..received as usize].to_vec());
                }
                continue;
            }
            if Instant::now() >= deadline {
                return frames;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Forgets what arrived so far.
    fn clear(&self) {
        self.arrived(Duration::ZERO);
    }
}

/// An Ethernet and IP header builder of either family.
fn pkt_ip(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    hop_limit: u8,
) -> PacketBuilderStep<etherparse::IpHeaders> {
    let ethernet = PacketBuilder::ethernet2(src_mac, dst_mac);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ethernet.ipv4(src.octets(), dst.octets(), hop_limit),
        (IpAddr::V6(src), IpAddr::V6(dst)) => ethernet.ipv6(src.octets(), dst.octets(), hop_limit),
        _ => panic!("{src} and {dst} are of different families"),
    }
}

/// A UDP frame with correct checksums.
fn pkt_udp(macs: ([u8; 6], [u8; 6]), src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let builder = pkt_ip(macs.0, macs.1, src.ip(), dst.ip(), 64).udp(src.port(), dst.port());
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("build udp");
    frame
}

/// A TCP SYN frame with correct checksums.
fn pkt_syn(macs: ([u8; 6], [u8; 6]), src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let builder = pkt_ip(macs.0, macs.1, src.ip(), dst.ip(), 64)
        .tcp(src.port(), dst.port(), 0x5eed, 64_240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(0));
    builder.write(&mut frame, &[]).expect("build syn");
    frame
}

/// An ICMPv6 frame with hop limit 255, as neighbour discovery is sent.
fn pkt_icmpv6(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    (kind, bytes5to8): (u8, [u8; 4]),
    body: &[u8],
) -> Vec<u8> {
    let builder = pkt_ip(macs.0, macs.1, IpAddr::V6(src), IpAddr::V6(dst), 255)
        .icmpv6_raw(kind, 0, bytes5to8);
    let mut frame = Vec::with_capacity(builder.size(body.len()));
    builder.write(&mut frame, body).expect("build icmpv6");
    frame
}

/// An ARP frame: `op` 1 (request) or 2 (reply).
fn pkt_arp(
    macs: ([u8; 6], [u8; 6]),
    op: u16,
    sender: ([u8; 6], Ipv4Addr),
    target: ([u8; 6], Ipv4Addr),
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&macs.1);
    frame.extend_from_slice(&macs.0);
    frame.extend_from_slice(&0x0806_u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    frame.extend_from_slice(&op.to_be_bytes());
    frame.extend_from_slice(&sender.0);
    frame.extend_from_slice(&sender.1.octets());
    frame.extend_from_slice(&target.0);
    frame.extend_from_slice(&target.1.octets());
    frame
}

/// A frame of any ethertype.
fn pkt_raw(macs: ([u8; 6], [u8; 6]), ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&macs.1);
    frame.extend_from_slice(&macs.0);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An unsolicited neighbour advertisement of `target` for `mac`, to all nodes, with the
/// override flag: what a host sends when its address moves.
fn pkt_unsolicited_na(src_mac: [u8; 6], target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&mac);
    pkt_icmpv6(
        (src_mac, [0x33, 0x33, 0, 0, 0, 1]),
        link_local(src_mac),
        "ff02::1".parse().expect("all nodes"),
        (136, [0x20, 0, 0, 0]),
        &body,
    )
}

/// The EUI-64 link-local address of a MAC.
fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 2,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ])
}

/// A TCP or UDP frame's protocol, source port and destination port.
type Ports = (u8, u16, u16);

fn ports_of(frame: &[u8]) -> Option<Ports> {
    match SlicedPacket::from_ethernet(frame).ok()?.transport? {
        TransportSlice::Tcp(tcp) => Some((TCP, tcp.source_port(), tcp.destination_port())),
        TransportSlice::Udp(udp) => Some((UDP, udp.source_port(), udp.destination_port())),
        _ => None,
    }
}

fn contains(frame: &[u8], marker: &[u8]) -> bool {
    frame.windows(marker.len()).any(|window| window == marker)
}

/// A 199-byte payload that starts with `marker`.
fn payload_199(marker: &[u8]) -> Vec<u8> {
    let mut payload = marker.to_vec();
    payload.resize(199, 0x5a);
    payload
}

fn v4(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.v4), port)
}

fn v6(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(pod.v6), port)
}

fn addr_of(pod: &Pod, v6_family: bool, port: u16) -> SocketAddr {
    if v6_family {
        v6(pod, port)
    } else {
        v4(pod, port)
    }
}

/// How many packets of one outcome the datapath counted.
fn counted(
    datapath: &Datapath,
    endpoint_id: u32,
    direction: Direction,
    outcome: Result<Verdict, DropReason>,
) -> u64 {
    datapath
        .counter(endpoint_id, direction, outcome)
        .expect("counter")
        .packets
}

/// Forged frames from `attacker`: IPv4 and IPv6 UDP and TCP SYNs to the ingress-isolated
/// `victim` with the address of `open` (which the victim allows) and of the node as source,
/// and a forged reply to the victim's UDP flow with `open`. None may reach the victim, and all
/// are counted as spoofed for the attacker, which is itself not isolated: source validation
/// applies to every endpoint. Exempting the attacker lets the same frames through, which shows
/// the frames are deliverable and that it is the source check that stopped them.
fn check_forged_sources(style: Style) {
    let bed = Bed::new(
        if style == Style::Ptp { "sp" } else { "sb" },
        style,
        vec![
            Spec::new("open", 2, 0),
            Spec::new("victim", 3, ENDPOINT_INGRESS_ISOLATED)
                .ingress("open", UDP, 5353)
                .ingress("open", TCP, 8080),
            Spec::new("attacker", 4, 0),
        ],
    );
    let (open, victim, attacker) = (bed.pod("open"), bed.pod("victim"), bed.pod("attacker"));
    let _udp_open = EchoServer::udp(&open.netns, 5353);
    let _tcp_victim = EchoServer::tcp(&victim.netns, 8080);
    let _udp_victim = EchoServer::udp(&victim.netns, 5353);
    let mut datapath = bed.start();

    // The victim's own UDP flows with `open`, whose replies are what the attacker forges.
    let flows: Vec<(UdpSocket, SocketAddr)> = [false, true]
        .into_iter()
        .map(|family| {
            let to = addr_of(open, family, 5353);
            let socket = victim
                .netns
                .run(move || {
                    let local = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
                    let socket = UdpSocket::bind(local).expect("bind");
                    socket.connect(to).expect("connect");
                    socket
                        .set_read_timeout(Some(Duration::from_millis(300)))
                        .expect("timeout");
                    socket
                })
                .expect("run in the network namespace");
            socket.send(b"hello").expect("send");
            let mut buf = [0; 16];
            assert_eq!(
                socket.recv(&mut buf).ok(),
                Some(5),
                "the victim's flow to {to} works"
            );
            let local = socket.local_addr().expect("local addr");
            (socket, local)
        })
        .collect();

    let tx = RawLink::open(&attacker.netns, "eth0");
    let at_victim = RawLink::open(&victim.netns, "eth0");
    let at_open = RawLink::open(&open.netns, "eth0");
    let to_victim = (mac_of(attacker), bed.next_hop(attacker, victim));
    let to_open = (mac_of(attacker), bed.next_hop(attacker, open));

    // Control: the attacker's frames with its own source reach a pod that lets them in.
    at_open.clear();
    for family in [false, true] {
        tx.send(&pkt_udp(
            to_open,
            addr_of(attacker, family, 41_000),
            addr_of(open, family, 5353),
            b"own source",
        ));
    }
    let arrived = at_open.arrived(SETTLE);
    assert_eq!(
        arrived
            .iter()
            .filter(|frame| ports_of(frame) == Some((UDP, 41_000, 5353)))
            .count(),
        2,
        "frames with the attacker's own source arrive"
    );

    let gateway = |family: bool| {
        if family {
            IpAddr::V6(GATEWAY_V6)
        } else {
            IpAddr::V4(GATEWAY_V4)
        }
    };
    let mut forged: Vec<(String, Vec<u8>, Ports)> = Vec::new();
    for (family, (_, local)) in [false, true].into_iter().zip(&flows) {
        let name = if family { "IPv6" } else { "IPv4" };
        let peer = addr_of(open, family, 40_001);
        let dst = addr_of(victim, family, 5353);
        forged.push((
            format!("{name} UDP from the allowed peer's address"),
            pkt_udp(to_victim, peer, dst, b"forged"),
            (UDP, 40_001, 5353),
        ));
        let peer = addr_of(open, family, 40_002);
        let dst = addr_of(victim, family, 8080);
        forged.push((
            format!("{name} TCP SYN from the allowed peer's address"),
            pkt_syn(to_victim, peer, dst),
            (TCP, 40_002, 8080),
        ));
        let node = SocketAddr::new(gateway(family), 40_003);
        let dst = addr_of(victim, family, 5353);
        forged.push((
            format!("{name} UDP from the node's address"),
            pkt_udp(to_victim, node, dst, b"forged"),
            (UDP, 40_003, 5353),
        ));
        let node = SocketAddr::new(gateway(family), 40_004);
        let dst = addr_of(victim, family, 8080);
        forged.push((
            format!("{name} TCP SYN from the node's address"),
            pkt_syn(to_victim, node, dst),
            (TCP, 40_004, 8080),
        ));
        let peer = addr_of(open, family, 5353);
        forged.push((
            format!("{name} UDP reply forged into the victim's flow with {peer}"),
            pkt_udp(to_victim, peer, *local, b"forged reply"),
            (UDP, 5353, local.port()),
        ));
    }

    at_victim.clear();
    let before = counted(
        &datapath,
        bed.id("attacker"),
        Direction::Egress,
        Err(DropReason::Spoofed),
    );
    for (_, frame, _) in &forged {
        tx.send(frame);
    }
    let arrived: Vec<Ports> = at_victim
        .arrived(SETTLE)
        .iter()
        .filter_map(|frame| ports_of(frame))
        .collect();
    let delivered: Vec<&str> = forged
        .iter()
        .filter(|(_, _, ports)| arrived.contains(ports))
        .map(|(name, _, _)| name.as_str())
        .collect();
    assert!(
        delivered.is_empty(),
        "{style:?} node: forged frames reached the victim: {delivered:#?}"
    );
    for (socket, local) in &flows {
        let mut buf = [0; 64];
        assert!(
            socket.recv(&mut buf).is_err(),
            "the victim's socket {local} received a forged reply"
        );
    }
    let spoofed = counted(
        &datapath,
        bed.id("attacker"),
        Direction::Egress,
        Err(DropReason::Spoofed),
    ) - before;
    // Every forged frame ended at the attacker's own program, so none reached the victim's.
    assert_eq!(
        spoofed,
        forged.len() as u64,
        "every forged frame is counted as spoofed at the attacker"
    );

    // The operator's exemption lets the attacker send from the allowed peer's address.
    bed.resync(&mut datapath, &[("attacker", ENDPOINT_ANY_SOURCE)]);
    at_victim.clear();
    for (name, frame, _) in &forged {
        if name.contains("allowed peer") {
            tx.send(frame);
        }
    }
    let arrived: Vec<Ports> = at_victim
        .arrived(SETTLE)
        .iter()
        .filter_map(|frame| ports_of(frame))
        .collect();
    for (name, _, ports) in forged
        .iter()
        .filter(|(name, _, _)| name.contains("allowed peer"))
    {
        assert!(
            arrived.contains(ports),
            "{style:?} node: exempted, the {name} arrives"
        );
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn forged_sources_are_dropped_on_a_ptp_node() {
    if skip_without_root() {
        return;
    }
    check_forged_sources(Style::Ptp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn forged_sources_are_dropped_on_a_bridge_node() {
    if skip_without_root() {
        return;
    }
    check_forged_sources(Style::Bridge);
}

/// The node's neighbour entry for `addr` on the bridge: its MAC, if it has one.
fn neighbour_mac(node: &Netns, addr: IpAddr) -> Option<[u8; 6]> {
    let output = Command::new("ip")
        .args([
            "-n",
            node.name(),
            "neigh",
            "show",
            &addr.to_string(),
            "dev",
            BRIDGE,
        ])
        .output()
        .expect("ip neigh");
    let text = String::from_utf8_lossy(&output.stdout);
    let address = text
        .split_whitespace()
        .skip_while(|word| *word != "lladdr")
        .nth(1)?;
    let mut mac = [0; 6];
    for (byte, part) in mac.iter_mut().zip(address.split(':')) {
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

/// The bridge port the node's bridge forwards `mac` to.
fn fdb_port(node: &Netns, mac: [u8; 6]) -> Option<String> {
    let output = Command::new("bridge")
        .args(["-n", node.name(), "fdb", "show", "br", BRIDGE])
        .output()
        .expect("bridge fdb");
    let mac = mac.map(|byte| format!("{byte:02x}")).join(":");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.starts_with(&mac) && !line.contains("permanent"))
        .and_then(|line| {
            line.split_whitespace()
                .skip_while(|word| *word != "dev")
                .nth(1)
                .map(str::to_owned)
        })
}

/// Makes the node resolve a pod's addresses, as any traffic to it would.
fn setup_neighbours(node: &Netns, pod: &Pod) {
    let targets = [v4(pod, 9), v6(pod, 9)];
    node.run(move || {
        for to in targets {
            let local = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
            let socket = UdpSocket::bind(local).expect("bind");
            let _ = socket.send_to(b"resolve", to);
        }
    })
    .expect("run in the network namespace");
    let deadline = Instant::now() + Duration::from_secs(3);
    while [IpAddr::V4(pod.v4), IpAddr::V6(pod.v6)]
        .iter()
        .any(|addr| neighbour_mac(node, *addr).is_none())
    {
        assert!(Instant::now() < deadline, "the node resolves {}", pod.v4);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// On a bridge, a pod claims another pod's addresses: gratuitous ARP, an ARP reply to the node,
/// and unsolicited neighbour advertisements, with its own MAC and with the victim's. All are
/// dropped at the attacker's interface as spoofed: the victim sees none, the node's neighbour
/// entries and the bridge's forwarding entry for the victim do not move to the attacker.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_pod_cannot_claim_another_pods_address() {
    if skip_without_root() {
        return;
    }
    let bed = Bed::new(
        "ar",
        Style::Bridge,
        vec![Spec::new("victim", 2, 0), Spec::new("attacker", 3, 0)],
    );
    let (victim, attacker) = (bed.pod("victim"), bed.pod("attacker"));
    let datapath = bed.start();
    let node = &bed.node.netns;
    setup_neighbours(node, victim);
    let victim_mac = mac_of(victim);
    let attacker_mac = mac_of(attacker);
    let bridge_mac = netns::mac(node.name(), BRIDGE);
    assert_eq!(
        fdb_port(node, victim_mac).as_deref(),
        Some(victim.host_if.as_str())
    );

    let tx = RawLink::open(&attacker.netns, "eth0");
    let at_victim = RawLink::open(&victim.netns, "eth0");
    at_victim.clear();
    // Control: announcing its own address passes.
    tx.send(&pkt_arp(
        (attacker_mac, BROADCAST),
        1,
        (attacker_mac, attacker.v4),
        ([0; 6], attacker.v4),
    ));
    assert!(
        at_victim
            .arrived(SETTLE)
            .iter()
            .any(|frame| frame.len() >= 42
                && frame[12..14] == [8, 6]
                && frame[28..32] == attacker.v4.octets()),
        "a gratuitous ARP for the attacker's own address arrives"
    );

    let before = counted(
        &datapath,
        bed.id("attacker"),
        Direction::Egress,
        Err(DropReason::Spoofed),
    );
    let mut claims = Vec::new();
    for mac in [attacker_mac, victim_mac] {
        claims.push(pkt_arp(
            (mac, BROADCAST),
            1,
            (mac, victim.v4),
            ([0; 6], victim.v4),
        ));
        claims.push(pkt_arp(
            (mac, bridge_mac),
            2,
            (mac, victim.v4),
            (bridge_mac, GATEWAY_V4),
        ));
        claims.push(pkt_unsolicited_na(mac, victim.v6, mac));
    }
    at_victim.clear();
    for frame in &claims {
        tx.send(frame);
    }
    let arrived = at_victim.arrived(SETTLE);
    let victim_v6 = victim.v6.octets();
    let mut wrong: Vec<String> = arrived
        .iter()
        .filter_map(|frame| {
            let arp =
                frame.len() >= 42 && frame[12..14] == [8, 6] && frame[28..32] == victim.v4.octets();
            let na = frame.len() >= 78
                && frame[12..14] == [0x86, 0xdd]
                && frame[54] == 136
                && frame[62..78] == victim_v6;
            let kind = if arp {
                "ARP"
            } else {
                "neighbour advertisement"
            };
            (arp || na).then(|| {
                format!(
                    "a {kind} claiming the victim's address from {:02x?} reached the victim",
                    &frame[6..12]
                )
            })
        })
        .collect();
    for addr in [IpAddr::V4(victim.v4), IpAddr::V6(victim.v6)] {
        let mac = neighbour_mac(node, addr);
        if mac != Some(victim_mac) {
            wrong.push(format!(
                "the node's neighbour entry for {addr} moved to {mac:02x?}"
            ));
        }
    }
    let port = fdb_port(node, victim_mac);
    if port.as_deref() != Some(victim.host_if.as_str()) {
        wrong.push(format!(
            "the bridge forwards the victim's MAC to {port:?}, not {}",
            victim.host_if
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let spoofed = counted(
        &datapath,
        bed.id("attacker"),
        Direction::Egress,
        Err(DropReason::Spoofed),
    ) - before;
    assert_eq!(
        spoofed,
        claims.len() as u64,
        "every claim is counted as spoofed"
    );
}

/// On a bridge, between an egress-isolated pod `x` and an ingress-isolated pod `y` that allow
/// each other TCP 8080: neighbour solicitations, advertisements and redirects carrying 199
/// bytes to `y`'s global address, and frames of a made-up ethertype, do not arrive; ordinary
/// neighbour discovery and ARP still do, so the allowed traffic still resolves and flows.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn neighbour_discovery_with_a_payload_and_raw_frames_stay_out() {
    if skip_without_root() {
        return;
    }
    let bed = Bed::new(
        "nd",
        Style::Bridge,
        vec![
            Spec::new("x", 2, ENDPOINT_EGRESS_ISOLATED).egress("y", TCP, 8080),
            Spec::new("y", 3, ENDPOINT_INGRESS_ISOLATED).ingress("x", TCP, 8080),
            Spec::new("z", 4, 0),
        ],
    );
    let (x, y, z) = (bed.pod("x"), bed.pod("y"), bed.pod("z"));
    let _tcp_y = EchoServer::tcp(&y.netns, 8080);
    let datapath = bed.start();

    for pod in [x, y] {
        netns::ip(&["-n", pod.netns.name(), "neigh", "flush", "all"]);
    }
    for to in [v4(y, 8080), v6(y, 8080)] {
        assert!(tcp_works(&x.netns, to), "x resolves y and reaches {to}");
    }

    let tx = RawLink::open(&x.netns, "eth0");
    let from_z = RawLink::open(&z.netns, "eth0");
    let at_y = RawLink::open(&y.netns, "eth0");
    let macs = (mac_of(x), mac_of(y));

    // Control: a neighbour solicitation as the protocol sends it, unicast to y's address.
    let mut solicitation = y.v6.octets().to_vec();
    solicitation.extend_from_slice(&[1, 1]);
    solicitation.extend_from_slice(&macs.0);
    at_y.clear();
    tx.send(&pkt_icmpv6(macs, x.v6, y.v6, (135, [0; 4]), &solicitation));
    assert!(
        at_y.arrived(SETTLE).iter().any(|frame| frame.len() >= 62
            && frame[12..14] == [0x86, 0xdd]
            && frame[54] == 135
            && frame[20] == 58),
        "a plain neighbour solicitation arrives"
    );

    let before_denied = counted(
        &datapath,
        bed.id("x"),
        Direction::Egress,
        Err(DropReason::PolicyDenied),
    );
    let before_not_ip = counted(
        &datapath,
        bed.id("x"),
        Direction::Egress,
        Err(DropReason::NotIp),
    );
    let before_y = counted(
        &datapath,
        bed.id("y"),
        Direction::Ingress,
        Err(DropReason::NotIp),
    );
    let mut ns = y.v6.octets().to_vec();
    ns.extend(payload_199(b"hostile-ns"));
    let mut na = x.v6.octets().to_vec();
    na.extend(payload_199(b"hostile-na"));
    let mut redirect = x.v6.octets().to_vec();
    redirect.extend_from_slice(&y.v6.octets());
    redirect.extend(payload_199(b"hostile-redirect"));
    let frames: [(&[u8], Vec<u8>); 5] = [
        (
            b"hostile-ns",
            pkt_icmpv6(macs, x.v6, y.v6, (135, [0; 4]), &ns),
        ),
        (
            b"hostile-na",
            pkt_icmpv6(macs, x.v6, y.v6, (136, [0x60, 0, 0, 0]), &na),
        ),
        (
            b"hostile-redirect",
            pkt_icmpv6(macs, x.v6, y.v6, (137, [0; 4]), &redirect),
        ),
        (
            b"hostile-ethertype-x",
            pkt_raw(macs, 0x88b5, &payload_199(b"hostile-ethertype-x")),
        ),
        (
            b"hostile-ethertype-z",
            pkt_raw(
                (mac_of(z), macs.1),
                0x88b5,
                &payload_199(b"hostile-ethertype-z"),
            ),
        ),
    ];
    at_y.clear();
    for (marker, frame) in &frames {
        if marker.ends_with(b"-z") {
            from_z.send(frame);
        } else {
            tx.send(frame);
        }
    }
    let arrived = at_y.arrived(SETTLE);
    let crossed: Vec<String> = frames
        .iter()
        .filter(|(marker, _)| arrived.iter().any(|frame| contains(frame, marker)))
        .map(|(marker, _)| String::from_utf8_lossy(marker).into_owned())
        .collect();
    assert!(
        crossed.is_empty(),
        "frames reached the isolated pod: {crossed:?}"
    );
    assert_eq!(
        counted(
            &datapath,
            bed.id("x"),
            Direction::Egress,
            Err(DropReason::PolicyDenied)
        ) - before_denied,
        3,
        "the ICMPv6 messages are decided by x's egress policy, which denies them"
    );
    assert_eq!(
        counted(
            &datapath,
            bed.id("x"),
            Direction::Egress,
            Err(DropReason::NotIp)
        ) - before_not_ip,
        1
    );
    assert_eq!(
        counted(
            &datapath,
            bed.id("y"),
            Direction::Ingress,
            Err(DropReason::NotIp)
        ) - before_y,
        1
    );

    // Resolution still works afterwards, both ways.
    for pod in [x, y] {
        netns::ip(&["-n", pod.netns.name(), "neigh", "flush", "all"]);
    }
    for to in [v4(y, 8080), v6(y, 8080)] {
        assert!(
            tcp_works(&x.netns, to),
            "x still resolves y and reaches {to}"
        );
    }
}

/// kube-proxy's NodePort rules, in the node's `nat` tables: every local address sends
/// `tcp_port` and `udp_port` to the backend, masqueraded.
fn setup_node_ports(node: &Netns, backend: &Pod, tcp: (u16, u16), udp: (u16, u16)) {
    for (tool, address) in [
        ("iptables", backend.v4.to_string()),
        ("ip6tables", format!("[{}]", backend.v6)),
    ] {
        let run = |rule: &[&str]| {
            let output = Command::new("ip")
                .args(["netns", "exec", node.name(), tool, "-w", "-t", "nat"])
                .args(rule)
                .output()
                .expect("run iptables");
            assert!(
                output.status.success(),
                "{tool} {rule:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        for (protocol, (node_port, port)) in [("tcp", tcp), ("udp", udp)] {
            let node_port = node_port.to_string();
            let portal = [
                "-A",
                "PREROUTING",
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-p",
                protocol,
                "--dport",
                &node_port,
            ];
            run(&[&portal[..], &["-j", "MARK", "--set-xmark", "0x4000/0x4000"]].concat());
            let destination = format!("{address}:{port}");
            run(&[
                &portal[..],
                &["-j", "DNAT", "--to-destination", &destination],
            ]
            .concat());
        }
        run(&[
            "-A",
            "POSTROUTING",
            "-m",
            "mark",
            "--mark",
            "0x4000/0x4000",
            "-j",
            "MASQUERADE",
        ]);
    }
}

/// Pods reach a backend through their own node's address on a NodePort: an egress-isolated pod
/// whose policy does not allow the backend is denied there as it is directly (decided after
/// DNAT, against the backend); one whose policy allows it gets through; what the node itself
/// terminates on the same addresses passes, isolated or not.
fn check_node_ports(style: Style) {
    let mut bed = Bed::new(
        if style == Style::Ptp { "np" } else { "nb" },
        style,
        vec![
            Spec::new("backend", 2, 0),
            Spec::new("denied", 3, ENDPOINT_EGRESS_ISOLATED),
            Spec::new("allowed", 4, ENDPOINT_EGRESS_ISOLATED)
                .egress("backend", TCP, 8080)
                .egress("backend", UDP, 5353),
            Spec::new("open", 5, 0),
        ],
    );
    bed.node.add_uplink(UPLINK_V4, UPLINK_V6);
    bed.host_addrs
        .extend([IpAddr::V4(UPLINK_V4), IpAddr::V6(UPLINK_V6)]);
    let node = &bed.node.netns;
    let backend = bed.pod("backend");
    setup_node_ports(node, backend, (30_080, 8080), (30_053, 5353));
    let _tcp = EchoServer::tcp(&backend.netns, 8080);
    let _udp = EchoServer::udp(&backend.netns, 5353);
    let _node_tcp = EchoServer::tcp(node, 9000);
    let node_addrs = [
        IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(GATEWAY_V6),
        IpAddr::V4(UPLINK_V4),
        IpAddr::V6(UPLINK_V6),
    ];
    let _node_udp: Vec<EchoServer> = node_addrs
        .iter()
        .map(|addr| EchoServer::udp_at(node, SocketAddr::new(*addr, 9000)))
        .collect();
    let datapath = bed.start();
    let mut wrong = Vec::new();
    let mut expect = |client: &str, protocol: &str, to: SocketAddr, works: bool| {
        let netns = &bed.pod(client).netns;
        let result = if protocol == "tcp" {
            tcp_works(netns, to)
        } else {
            udp_works(netns, to)
        };
        if result != works {
            wrong.push(format!(
                "{client} -> {to} {protocol}: {}",
                if result { "reached" } else { "blocked" }
            ));
        }
    };
    let denied_before = counted(
        &datapath,
        bed.id("denied"),
        Direction::Egress,
        Err(DropReason::PolicyDenied),
    );
    for (client, works) in [("denied", false), ("allowed", true)] {
        for family in [false, true] {
            expect(client, "tcp", addr_of(backend, family, 8080), works);
            expect(client, "udp", addr_of(backend, family, 5353), works);
        }
        for addr in node_addrs {
            expect(client, "tcp", SocketAddr::new(addr, 30_080), works);
            expect(client, "udp", SocketAddr::new(addr, 30_053), works);
        }
    }
    for client in ["open", "denied"] {
        for addr in node_addrs {
            expect(client, "tcp", SocketAddr::new(addr, 9000), true);
            expect(client, "udp", SocketAddr::new(addr, 9000), true);
        }
    }
    assert!(wrong.is_empty(), "{style:?} node: {wrong:#?}");
    // Each denied attempt through a NodePort is counted for the client, after DNAT.
    let denied = counted(
        &datapath,
        bed.id("denied"),
        Direction::Egress,
        Err(DropReason::PolicyDenied),
    ) - denied_before;
    assert!(
        denied >= 4 + 2 * node_addrs.len() as u64,
        "denied attempts counted for the client: {denied}"
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn node_ports_do_not_open_egress_on_a_ptp_node() {
    if skip_without_root() {
        return;
    }
    check_node_ports(Style::Ptp);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn node_ports_do_not_open_egress_on_a_bridge_node() {
    if skip_without_root() {
        return;
    }
    check_node_ports(Style::Bridge);
}

/// The Internet checksum of `data`, folded, not yet inverted.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Rewrites the IPv4 source and TCP source port of a SYN frame (Ethernet, 20-byte IPv4 header,
/// 20-byte TCP header) and its checksums.
fn pkt_rewrite_syn(frame: &mut [u8], src: [u8; 4], src_port: u16) {
    frame[26..30].copy_from_slice(&src);
    frame[34..36].copy_from_slice(&src_port.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let ip = !(sum16(0, &frame[14..34]) as u16);
    frame[24..26].copy_from_slice(&ip.to_be_bytes());
    frame[50..52].copy_from_slice(&[0, 0]);
    let pseudo = sum16(sum16(0, &frame[26..34]), &[0, TCP, 0, 20]);
    let tcp = !(sum16(pseudo, &frame[34..54]) as u16);
    frame[50..52].copy_from_slice(&tcp.to_be_bytes());
}

const FLOOD_PACKETS: u32 = 1_000_000;

/// An isolated pod's established connection survives a million SYNs from random sources at
/// another, unisolated pod of its node: the replies to it still pass (it is ingress-isolated
/// with no rule, so only its conntrack entry lets them in), and the entry is still in the
/// confirmed map.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn an_established_flow_survives_a_syn_flood() {
    if skip_without_root() {
        return;
    }
    let bed = Bed::new(
        "fl",
        Style::Ptp,
        vec![
            Spec::new(
                "isolated",
                2,
                ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED,
            )
            .egress("server", TCP, 8080),
            Spec::new("server", 3, 0),
            Spec::new("target", 4, 0),
        ],
    );
    let (isolated, server, target) = (bed.pod("isolated"), bed.pod("server"), bed.pod("target"));
    let _tcp_target = EchoServer::tcp(&target.netns, 8081);
    let datapath = bed.start();

    let listener = server
        .netns
        .run(|| TcpListener::bind("[::]:8080").expect("bind"))
        .expect("run in the network namespace");
    let to = v4(server, 8080);
    let mut client = isolated
        .netns
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect"))
        .expect("run in the network namespace");
    let (mut accepted, _) = listener.accept().expect("accept");
    for stream in [&client, &accepted] {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    let exchange = |from: &mut TcpStream, to: &mut TcpStream, message: &[u8]| {
        from.write_all(message).expect("write");
        let mut buf = vec![0; message.len()];
        to.read_exact(&mut buf).is_ok() && buf == message
    };
    assert!(exchange(&mut client, &mut accepted, b"before"));
    assert!(exchange(&mut accepted, &mut client, b"before, reply"));
    let local = client.local_addr().expect("local");
    let key = CtKey {
        endpoint_id: bed.id("isolated"),
        src_port: local.port(),
        dst_port: 8080,
        direction: Direction::Egress as u8,
        protocol: TCP,
        family: FAMILY_V4,
        _pad: 0,
        src_addr: addr16(isolated.v4),
        dst_addr: addr16(server.v4),
    };

    // The flood enters the target's veth from the node side, as traffic from outside does.
    let flood = RawLink::open(&bed.node.netns, &target.host_if);
    let template = pkt_syn(
        (
            netns::mac(bed.node.netns.name(), &target.host_if),
            mac_of(target),
        ),
        "192.0.2.1:1".parse().expect("addr"),
        v4(target, 8081),
    );
    let target_before = counted(
        &datapath,
        bed.id("target"),
        Direction::Ingress,
        Ok(Verdict::NotIsolated),
    );
    let started = Instant::now();
    let mut frame = template.clone();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..FLOOD_PACKETS {
        // xorshift64: cheap, and no address repeats often enough to matter.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [a, b, c, d, e, f, ..] = state.to_le_bytes();
        let src = [a | 1, b, c, d];
        pkt_rewrite_syn(&mut frame, src, u16::from_le_bytes([e, f]) | 1024);
        flood.send(&frame);
    }
    eprintln!("{FLOOD_PACKETS} SYNs sent in {:?}", started.elapsed());
    let flooded = counted(
        &datapath,
        bed.id("target"),
        Direction::Ingress,
        Ok(Verdict::NotIsolated),
    ) - target_before;
    // A random source that repeats makes an established packet rather than a new flow.
    assert!(
        flooded >= u64::from(FLOOD_PACKETS) * 99 / 100,
        "the flood went through the target's program: {flooded}"
    );

    // The server speaks first: only the isolated pod's tracked flow lets this in.
    assert!(
        exchange(&mut accepted, &mut client, b"after the flood"),
        "the reply direction of the established flow still passes"
    );
    assert!(exchange(&mut client, &mut accepted, b"after, again"));
    assert_eq!(
        counted(
            &datapath,
            bed.id("isolated"),
            Direction::Ingress,
            Err(DropReason::PolicyDenied)
        ),
        0,
        "no packet of the flow was dropped as policy-denied"
    );
    let pinned = MapData::from_pin(bed.config.pin_dir.join("maps").join(CONNTRACK_MAP))
        .expect("open the confirmed conntrack map");
    let confirmed: HashMap<MapData, CtKey, CtValue> =
        HashMap::try_from(Map::LruHashMap(pinned)).expect("conntrack map");
    assert!(
        confirmed.get(&key, 0).is_ok(),
        "the confirmed map still holds the flow {key:?}"
    );
}

fn addr16(addr: Ipv4Addr) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&addr.octets());
    bytes
}
