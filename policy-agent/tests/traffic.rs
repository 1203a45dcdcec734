//! Real traffic through the datapath: pods in network namespaces wired to a node namespace, the
//! programs attached on the host-side veths through `Datapath`, real TCP and UDP sockets.

#[expect(
    dead_code,
    reason = "the namespace helpers serve several test crates; this one uses part"
)]
mod netns;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData, MapInfo};
use netns::{
    EchoServer, GATEWAY_V4, GATEWAY_V6, Netns, Node, Pod, connect, echoes, tcp_works, udp_works,
};
use policy_agent::{
    datapath::{Datapath, DatapathConfig, Flow, Hook, ensure_bpffs},
    policy::state::{Delta, EndpointState, NodeState, PodRef, PolicyRule, Prefix, RuleRef},
};
use policy_common::{
    maps::{
        CtKey, CtValue, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, ENDPOINT_NOT_READY,
        EndpointInfo, FragKey, FragValue, LookupPlan, MAX_ENDPOINTS, MAX_POLICY_ENTRIES, PolicyKey,
        PolicyValue,
    },
    names::{CONNTRACK_MAP, ENDPOINT_IDS_MAP, ENDPOINTS_MAP, FRAGMENTS_MAP, POLICY_MAP},
    verdict::{Direction, DropReason, Verdict},
};

const TCP: u8 = 6;
const UDP: u8 = 17;
/// One exact port from a peer class: the plan bit of port prefix length 16.
const EXACT_PORT_PLAN: LookupPlan = LookupPlan {
    class: 1 << 16,
    ..LookupPlan::EMPTY
};

const CLASS_A: u32 = 10;
const CLASS_B: u32 = 20;
const CLASS_C: u32 = 30;

/// Three pods on one node:
/// - `a` (endpoint 1): ingress-isolated with no ingress rule, egress open: a client that only
///   replies can reach.
/// - `b` (endpoint 2): ingress-isolated; allows TCP 8080 and UDP 5353 from `a`, TCP 9090 from `c`.
/// - `c` (endpoint 3): egress-isolated; allows TCP 8080 to `b` only.
struct Lab {
    node: Node,
    a: Pod,
    b: Pod,
    c: Pod,
    config: DatapathConfig,
}

impl Lab {
    fn new(test: &str) -> Lab {
        let tag = netns::unique_tag(test);
        let node = Node::new(&tag);
        let a = node.add_pod(2);
        let b = node.add_pod(3);
        let c = node.add_pod(4);
        let config = DatapathConfig {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dpt-{tag}")),
            state_file: std::env::temp_dir().join(format!("dpt-{tag}/datapath.json")),
        };
        Lab {
            node,
            a,
            b,
            c,
            config,
        }
    }

    fn pods(&self) -> [(&Pod, &str, u32, u32); 3] {
        [
            (&self.a, "a", 1, CLASS_A),
            (&self.b, "b", 2, CLASS_B),
            (&self.c, "c", 3, CLASS_C),
        ]
    }

    fn ifindexes(&self) -> BTreeMap<PodRef, u32> {
        self.pods()
            .into_iter()
            .map(|(pod, name, _, _)| (pod_ref(name), pod.ifindex))
            .collect()
    }

    fn desired(&self) -> NodeState {
        let mut state = NodeState::default();
        let flags = [
            (
                ENDPOINT_INGRESS_ISOLATED,
                LookupPlan::EMPTY,
                LookupPlan::EMPTY,
            ),
            (
                ENDPOINT_INGRESS_ISOLATED,
                EXACT_PORT_PLAN,
                LookupPlan::EMPTY,
            ),
            (ENDPOINT_EGRESS_ISOLATED, LookupPlan::EMPTY, EXACT_PORT_PLAN),
        ];
        for ((pod, name, id, class), (flags, ingress_plan, egress_plan)) in
            self.pods().into_iter().zip(flags)
        {
            state.endpoints.insert(
                pod_ref(name),
                EndpointState {
                    pod: pod_ref(name),
                    ips: vec![IpAddr::V4(pod.v4), IpAddr::V6(pod.v6)],
                    info: EndpointInfo {
                        endpoint_id: id,
                        flags,
                        ingress_plan,
                        egress_plan,
                        addr6: pod.v6.octets(),
                        addr4: pod.v4.octets(),
                    },
                },
            );
            state.peers.insert(prefix(IpAddr::V4(pod.v4), 32), class);
            state.peers.insert(prefix(IpAddr::V6(pod.v6), 128), class);
        }
        let entries = [
            (2, Direction::Ingress, CLASS_A, TCP, 8080, 1, "b-ingress", 0),
            (2, Direction::Ingress, CLASS_A, UDP, 5353, 2, "b-ingress", 1),
            (2, Direction::Ingress, CLASS_C, TCP, 9090, 3, "b-ingress", 2),
            (3, Direction::Egress, CLASS_B, TCP, 8080, 4, "c-egress", 0),
        ];
        for (endpoint_id, direction, class, protocol, port, rule_id, policy, index) in entries {
            state.policy.insert(
                policy_key(endpoint_id, direction, class, protocol, port),
                PolicyValue::allow(rule_id),
            );
            state.rules.insert(
                rule_id,
                PolicyRule::Network(RuleRef {
                    namespace: "default".into(),
                    policy: policy.into(),
                    direction,
                    index,
                }),
            );
        }
        state
    }

    /// Opens the datapath in the node namespace, converges it to the desired state and attaches
    /// every pod's interface.
    fn start(&self) -> Datapath {
        let config = self.config.clone();
        let desired = self.desired();
        let ifindexes = self.ifindexes();
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
                datapath
            })
            .expect("run in the network namespace")
    }

    /// Opens the datapath on the existing pins without changing anything.
    fn reopen(&self) -> Datapath {
        let config = self.config.clone();
        self.node
            .netns
            .run(move || Datapath::open(config).expect("reopen datapath"))
            .expect("run in the network namespace")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config.pin_dir);
        if let Some(dir) = self.config.state_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
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

fn policy_key(
    endpoint_id: u32,
    direction: Direction,
    class: u32,
    protocol: u8,
    port: u16,
) -> PolicyKey {
    PolicyKey {
        endpoint_id,
        peer_class: class,
        port,
        direction: direction as u8,
        protocol,
        port_prefix_len: 16,
        _pad: [0; 3],
    }
}

fn v4(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.v4), port)
}

fn v6(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(pod.v6), port)
}

fn skip_without_root() -> bool {
    if netns::is_root() {
        return false;
    }
    eprintln!("skipped: needs root");
    true
}

/// The flows the ring holds now, waiting briefly for the ones still being written.
fn events_matching(
    reader: &mut policy_agent::datapath::EventReader,
    wanted: impl Fn(&Flow) -> bool,
) -> Vec<Flow> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut found = Vec::new();
    while found.is_empty() && Instant::now() < deadline {
        found.extend(
            reader
                .read_available()
                .into_iter()
                .map(|flow| flow.expect("event decodes"))
                .filter(|flow| wanted(flow)),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    found
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn allowed_flows_pass_and_denied_flows_drop() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("fl");
    let _tcp_b8080 = EchoServer::tcp(&lab.b.netns, 8080);
    let _tcp_b9090 = EchoServer::tcp(&lab.b.netns, 9090);
    let _udp_b5353 = EchoServer::udp(&lab.b.netns, 5353);
    let _tcp_a7070 = EchoServer::tcp(&lab.a.netns, 7070);
    // Without the programs every flow passes: the drops below are the datapath's.
    assert!(tcp_works(&lab.c.netns, v4(&lab.b, 9090)));
    assert!(tcp_works(&lab.b.netns, v6(&lab.a, 7070)));

    let mut datapath = lab.start();
    let mut events = datapath.take_events().expect("events");

    for to in [v4(&lab.b, 8080), v6(&lab.b, 8080)] {
        assert!(
            tcp_works(&lab.a.netns, to),
            "a -> {to} TCP is allowed, and replies reach a"
        );
    }
    for to in [v4(&lab.b, 5353), v6(&lab.b, 5353)] {
        assert!(udp_works(&lab.a.netns, to), "a -> {to} UDP is allowed");
    }
    for to in [v4(&lab.b, 9090), v6(&lab.b, 9090)] {
        assert!(
            !tcp_works(&lab.a.netns, to),
            "a -> {to}: b's ingress allows 9090 only from c"
        );
        assert!(
            !tcp_works(&lab.c.netns, to),
            "c -> {to}: c's egress allows only 8080"
        );
    }
    assert!(
        !tcp_works(&lab.c.netns, v4(&lab.b, 8080)),
        "b's ingress allows 8080 only from a"
    );
    assert!(
        !udp_works(&lab.c.netns, v4(&lab.b, 5353)),
        "c's egress allows no UDP"
    );
    for to in [v4(&lab.a, 7070), v6(&lab.a, 7070)] {
        assert!(
            !tcp_works(&lab.b.netns, to),
            "a is ingress-isolated without rules"
        );
    }

    let policy = datapath
        .counter(2, Direction::Ingress, Ok(Verdict::Policy))
        .expect("counter");
    assert!(
        policy.packets >= 4,
        "b's first packets allowed by rule: {policy:?}"
    );
    let replies = datapath
        .counter(1, Direction::Ingress, Ok(Verdict::Reply))
        .expect("counter");
    assert!(
        replies.packets > 0 && replies.bytes > 0,
        "a received replies: {replies:?}"
    );
    let denied = datapath
        .counter(3, Direction::Egress, Err(DropReason::PolicyDenied))
        .expect("counter");
    assert!(
        denied.packets > 0,
        "c's egress drops are counted: {denied:?}"
    );
    assert!(
        datapath
            .endpoint_counters(3)
            .expect("counters")
            .iter()
            .any(|reading| reading.outcome == Err(DropReason::PolicyDenied)
                && reading.direction == Direction::Egress)
    );

    let c_v4 = lab.c.v4;
    let b_v4 = lab.b.v4;
    let drops = events_matching(&mut events, |flow| {
        flow.endpoint_id == 3 && flow.dst == IpAddr::V4(b_v4) && flow.dst_port == 9090
    });
    let drop = drops.first().expect("a drop event for c -> b:9090");
    assert_eq!(drop.outcome, Err(DropReason::PolicyDenied));
    assert_eq!(drop.direction, Direction::Egress);
    assert_eq!(drop.protocol, TCP);
    assert_eq!(drop.src, IpAddr::V4(c_v4));
    assert_eq!(drop.ifindex, lab.c.ifindex);
    assert_eq!(drop.rule_id, 0);

    // The async reader wakes for new events.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let a_v6 = lab.a.v6;
    let flows = runtime.block_on(async {
        let mut events = events.into_async().expect("async reader");
        assert!(!tcp_works(&lab.b.netns, v6(&lab.a, 7070)));
        tokio::time::timeout(Duration::from_secs(2), events.next_batch())
            .await
            .expect("events arrive")
            .expect("ring readable")
    });
    assert!(flows.iter().any(|flow| matches!(
        flow,
        Ok(Flow { endpoint_id: 1, dst, dst_port: 7070, outcome: Err(DropReason::PolicyDenied), direction: Direction::Ingress, .. })
            if *dst == IpAddr::V6(a_v6)
    )), "{flows:?}");

    // c goes away: its freed id starts from zero for the next pod that gets it.
    let before = lab.desired();
    let mut after = before.clone();
    after.endpoints.remove(&pod_ref("c"));
    after.policy.retain(|key, _| key.endpoint_id != 3);
    let ifindexes = lab.ifindexes();
    datapath
        .apply(&Delta::between(&before, &after), |pod| {
            ifindexes.get(pod).copied()
        })
        .expect("remove c");
    assert_eq!(
        datapath.endpoint_counters(3).expect("counters"),
        Vec::new(),
        "the counters of c's freed id are reset"
    );
    assert!(
        !datapath.endpoint_counters(2).expect("counters").is_empty(),
        "b keeps its counters"
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn enforcement_survives_an_agent_restart() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("rs");
    let _tcp_b8080 = EchoServer::tcp(&lab.b.netns, 8080);
    let _tcp_b9090 = EchoServer::tcp(&lab.b.netns, 9090);
    let datapath = lab.start();
    let mut established = connect(&lab.a.netns, v4(&lab.b, 8080)).expect("a -> b:8080 opens");
    assert!(echoes(&mut established, b"before"));
    let ids = datapath.pinned_ids().expect("ids");
    assert_eq!(ids.maps.len(), policy_common::names::ALL_MAPS.len());
    assert_eq!(ids.links.len(), 9);

    // The agent dies: every descriptor closes, the pins stay.
    drop(datapath);
    assert!(
        echoes(&mut established, b"while down"),
        "established connection keeps working"
    );
    assert!(
        !tcp_works(&lab.c.netns, v4(&lab.b, 9090)),
        "denied flow stays denied"
    );
    assert!(
        !tcp_works(&lab.a.netns, v6(&lab.b, 9090)),
        "denied flow stays denied"
    );
    assert!(
        tcp_works(&lab.a.netns, v6(&lab.b, 8080)),
        "new allowed flows still pass"
    );

    let mut datapath = lab.reopen();
    let report = datapath.open_report().clone();
    assert_eq!(report.adopted_programs, Hook::ALL.to_vec());
    assert!(report.installed_programs.is_empty());
    assert!(report.replaced_maps.is_empty() && report.removed_maps.is_empty());
    assert_eq!(report.adopted_links.len(), 9);
    assert_eq!(
        datapath.pinned_ids().expect("ids"),
        ids,
        "same maps, programs and links"
    );
    assert_eq!(datapath.programmed_state().expect("state"), lab.desired());
    assert_eq!(datapath.programmed_ifindexes(), lab.ifindexes());
    let ifindexes = lab.ifindexes();
    let stats = datapath
        .sync(&lab.desired(), |pod| ifindexes.get(pod).copied())
        .expect("sync");
    assert_eq!(stats.writes, 0, "unchanged state is not reprogrammed");
    assert_eq!(
        datapath.rule(3).map(ToString::to_string).as_deref(),
        Some("default/b-ingress, ingress rule 2")
    );

    assert!(echoes(&mut established, b"after"));
    assert!(!tcp_works(&lab.c.netns, v4(&lab.b, 9090)));
    assert!(tcp_works(&lab.a.netns, v4(&lab.b, 8080)));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn pinned_maps_of_another_layout_are_removed_or_replaced() {
    if skip_without_root() {
        return;
    }
    let tag = netns::unique_tag("ly");
    let config = DatapathConfig {
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/dpt-{tag}")),
        state_file: std::env::temp_dir().join(format!("dpt-{tag}/datapath.json")),
    };
    ensure_bpffs(&config.pin_dir).expect("bpffs");
    let maps_dir = config.pin_dir.join("maps");
    std::fs::create_dir_all(&maps_dir).expect("maps dir");
    let old_layout = HashMap::<MapData, u64, u32>::create(16, 0).expect("create map");
    old_layout.pin(maps_dir.join("NP_POLICY_V0")).expect("pin");
    let wrong_key = HashMap::<MapData, u64, u32>::create(16, 0).expect("create map");
    wrong_key.pin(maps_dir.join(POLICY_MAP)).expect("pin");
    let wrong_id = MapInfo::from_pin(maps_dir.join(POLICY_MAP))
        .expect("info")
        .id();

    let mut datapath = Datapath::open(config.clone()).expect("open");
    let report = datapath.open_report().clone();
    assert_eq!(report.removed_maps, vec!["NP_POLICY_V0".to_owned()]);
    assert_eq!(report.replaced_maps, vec![POLICY_MAP.to_owned()]);
    assert!(!maps_dir.join("NP_POLICY_V0").exists());
    let info = MapInfo::from_pin(maps_dir.join(POLICY_MAP)).expect("info");
    assert_ne!(info.id(), wrong_id);
    assert_eq!(info.key_size(), size_of::<PolicyKey>() as u32);

    let key = policy_key(1, Direction::Ingress, CLASS_A, TCP, 80);
    let delta = Delta {
        policy_upserts: vec![(key, PolicyValue::allow(7))],
        ..Delta::default()
    };
    assert_eq!(datapath.apply(&delta, |_| None).expect("apply").writes, 1);
    assert_eq!(
        datapath.programmed_state().expect("state").policy,
        BTreeMap::from([(key, PolicyValue::allow(7))])
    );
    drop(datapath);
    let _ = std::fs::remove_dir_all(&config.pin_dir);
    let _ = std::fs::remove_dir_all(config.state_file.parent().expect("parent"));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn replaced_map_moves_the_links_to_a_new_program() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("up");
    let _tcp_b8080 = EchoServer::tcp(&lab.b.netns, 8080);
    let _tcp_b9090 = EchoServer::tcp(&lab.b.netns, 9090);
    let datapath = lab.start();
    let before = datapath.pinned_ids().expect("ids");
    drop(datapath);
    // A policy map the new programs cannot use: the pinned programs reference the old one.
    std::fs::remove_file(lab.config.pin_dir.join("maps").join(POLICY_MAP)).expect("unpin");

    let mut datapath = lab.reopen();
    let report = datapath.open_report().clone();
    assert_eq!(report.installed_programs, Hook::ALL.to_vec());
    let after = datapath.pinned_ids().expect("ids");
    assert_eq!(
        after.links, before.links,
        "the same links, updated in place"
    );
    for hook in Hook::ALL {
        assert_ne!(after.programs[&hook], before.programs[&hook]);
    }
    // The new programs read the new, empty policy map, and every endpoint is held closed.
    assert!(!tcp_works(&lab.a.netns, v4(&lab.b, 8080)));
    assert_eq!(report.held_closed.len(), 3);
    let ifindexes = lab.ifindexes();
    let stats = datapath
        .sync(&lab.desired(), |pod| ifindexes.get(pod).copied())
        .expect("sync");
    let endpoints = lab.desired().endpoints.len();
    assert_eq!(
        stats.writes,
        4 + 2 * endpoints + (MAX_ENDPOINTS as usize - 1 - endpoints),
        "the policy entries, each endpoint by interface and by id, and the unused id slots"
    );
    assert!(tcp_works(&lab.a.netns, v4(&lab.b, 8080)));
    assert!(!tcp_works(&lab.c.netns, v4(&lab.b, 9090)));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn detach_and_deleted_interfaces_remove_links() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("dt");
    let _tcp_b9090 = EchoServer::tcp(&lab.b.netns, 9090);
    let datapath = lab.start();
    drop(datapath);
    netns::ip(&["-n", lab.node.netns.name(), "link", "del", &lab.c.host_if]);

    let mut datapath = lab.reopen();
    let report = datapath.open_report().clone();
    assert_eq!(
        report.removed_links,
        vec![
            (lab.c.ifindex, Hook::FromPod),
            (lab.c.ifindex, Hook::SvcEgress),
            (lab.c.ifindex, Hook::ToPod)
        ]
    );
    assert_eq!(report.adopted_links.len(), 6);
    let mut attached = vec![lab.a.ifindex, lab.b.ifindex];
    attached.sort_unstable();
    assert_eq!(datapath.attached().expect("attached"), attached);

    assert!(!tcp_works(&lab.a.netns, v4(&lab.b, 9090)));
    datapath.detach(lab.b.ifindex).expect("detach");
    assert_eq!(datapath.attached().expect("attached"), vec![lab.a.ifindex]);
    assert!(
        tcp_works(&lab.a.netns, v4(&lab.b, 9090)),
        "b is no longer enforced"
    );
    datapath.detach(lab.b.ifindex).expect("detach again");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn node_addresses_always_reach_their_pods() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("ha");
    let _tcp_a7070 = EchoServer::tcp(&lab.a.netns, 7070);
    let mut datapath = lab.start();
    let node: &Netns = &lab.node.netns;
    assert!(!tcp_works(node, v4(&lab.a, 7070)), "a is ingress-isolated");

    let addrs = [IpAddr::V4(GATEWAY_V4), IpAddr::V6(GATEWAY_V6)];
    assert_eq!(
        datapath.set_host_addrs(&addrs).expect("host addrs").writes,
        2
    );
    assert_eq!(
        datapath.set_host_addrs(&addrs).expect("host addrs").writes,
        0
    );
    assert_eq!(datapath.host_addrs().expect("read"), addrs.to_vec());
    assert!(tcp_works(node, v4(&lab.a, 7070)));
    assert!(tcp_works(node, v6(&lab.a, 7070)));

    assert_eq!(
        datapath
            .set_host_addrs(&addrs[1..])
            .expect("host addrs")
            .writes,
        1
    );
    assert!(!tcp_works(node, v4(&lab.a, 7070)));
    assert!(tcp_works(node, v6(&lab.a, 7070)));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_full_policy_map_fences_the_endpoint_instead_of_opening_it() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("fu");
    let _tcp_b8080 = EchoServer::tcp(&lab.b.netns, 8080);
    let mut datapath = lab.start();
    assert!(tcp_works(&lab.a.netns, v4(&lab.b, 8080)));

    // Fill the policy map with entries of an endpoint that does not exist.
    let used = lab.desired().policy.len() as u32;
    let filler: Vec<(PolicyKey, PolicyValue)> = (0..MAX_POLICY_ENTRIES - used)
        .map(|n| {
            let key = policy_key(900, Direction::Ingress, n, TCP, 1);
            (key, PolicyValue::allow(99))
        })
        .collect();
    let started = Instant::now();
    let fill = Delta {
        policy_upserts: filler.clone(),
        ..Delta::default()
    };
    assert_eq!(
        datapath.apply(&fill, |_| None).expect("fill").writes,
        filler.len()
    );
    eprintln!(
        "{} policy entries written in {:?}",
        filler.len(),
        started.elapsed()
    );

    let mut desired = lab.desired();
    let extra = policy_key(2, Direction::Ingress, CLASS_A, TCP, 8081);
    desired.policy.insert(extra, PolicyValue::allow(5));
    let ifindexes = lab.ifindexes();
    let error = datapath
        .sync(&desired, |pod| ifindexes.get(pod).copied())
        .expect_err("the map is full");
    assert!(
        error.failures.iter().any(|failure| failure.is_map_full()),
        "{error}"
    );
    assert_eq!(error.fenced, vec![pod_ref("b")]);
    let programmed = datapath.programmed_state().expect("state");
    assert_ne!(
        programmed.endpoints[&pod_ref("b")].info.flags & ENDPOINT_NOT_READY,
        0
    );
    assert_eq!(
        programmed.endpoints[&pod_ref("a")].info.flags & ENDPOINT_NOT_READY,
        0
    );
    assert!(
        !tcp_works(&lab.a.netns, v4(&lab.b, 8080)),
        "the fenced endpoint denies"
    );
    assert!(
        datapath
            .counter(2, Direction::Ingress, Err(DropReason::NotReady))
            .expect("counter")
            .packets
            > 0
    );

    // Room again: the next sync writes the entry and lifts the fence.
    let clear = Delta {
        policy_removals: filler.iter().map(|(key, _)| *key).collect(),
        ..Delta::default()
    };
    datapath.apply(&clear, |_| None).expect("clear");
    datapath
        .sync(&desired, |pod| ifindexes.get(pod).copied())
        .expect("sync");
    assert_eq!(
        datapath.programmed_state().expect("state").endpoints,
        desired.endpoints
    );
    assert!(tcp_works(&lab.a.netns, v4(&lab.b, 8080)));
}

/// What reaches a pod on one port from one peer: UDP datagrams (echoed, so an allowed peer can
/// check the path) and TCP connections.
struct Sink {
    stop: Arc<AtomicBool>,
    reached: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Sink {
    fn start(pod: &Pod, port: u16, peer: &Pod) -> Sink {
        let stop = Arc::new(AtomicBool::new(false));
        let reached = Arc::new(AtomicUsize::new(0));
        let peer_ips = [IpAddr::V4(peer.v4), IpAddr::V6(peer.v6)];
        let is_peer = move |addr: SocketAddr| {
            let ip = match addr.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            peer_ips.contains(&ip)
        };
        let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let (udp, tcp) = pod
            .netns
            .run(move || {
                let udp = UdpSocket::bind(any).expect("bind udp");
                udp.set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("timeout");
                let tcp = TcpListener::bind(any).expect("bind tcp");
                tcp.set_nonblocking(true).expect("nonblocking");
                (udp, tcp)
            })
            .expect("run in the network namespace");
        let (flag, count) = (stop.clone(), reached.clone());
        let udp_thread = thread::spawn(move || {
            let mut buf = [0; 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((len, from)) = udp.recv_from(&mut buf) {
                    if is_peer(from) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = udp.send_to(&buf[..len], from);
                }
            }
        });
        let (flag, count) = (stop.clone(), reached.clone());
        let tcp_thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((_, from)) if is_peer(from) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Sink {
            stop,
            reached,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    fn reached(&self) -> usize {
        self.reached.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A client sending UDP datagrams and opening TCP connections to a server's port without
/// pause, on both families, until stopped.
struct Hammer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Hammer {
    fn start(client: &Pod, server: &Pod, port: u16) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let targets = [v4(server, port), v6(server, port)];
        let (flag, count) = (stop.clone(), sent.clone());
        let udp = client
            .netns
            .spawn(move || {
                let sockets = [
                    UdpSocket::bind("0.0.0.0:0").expect("bind udp v4"),
                    UdpSocket::bind("[::]:0").expect("bind udp v6"),
                ];
                while !flag.load(Ordering::Relaxed) {
                    for (socket, target) in sockets.iter().zip(targets) {
                        if socket.send_to(b"let me in", target).is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    thread::sleep(Duration::from_micros(200));
                }
            })
            .expect("start a thread in the network namespace");
        let (flag, count) = (stop.clone(), sent.clone());
        let tcp = client
            .netns
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    for target in targets {
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = TcpStream::connect_timeout(&target, Duration::from_millis(20));
                    }
                }
            })
            .expect("start a thread in the network namespace");
        Hammer {
            stop,
            sent,
            threads: vec![udp, tcp],
        }
    }

    /// Stops the client; returns how many datagrams and connection attempts it made.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("hammer thread");
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Replaces the pin `name` with a map of another value size, as a build with another layout of
/// that map would find it. The programs attached now keep the map they were loaded with.
fn pin_another_layout(config: &DatapathConfig, name: &str, array: bool) {
    let path = config.pin_dir.join("maps").join(name);
    std::fs::remove_file(&path).expect("unpin");
    if array {
        let map = Array::<MapData, [u8; 24]>::create(MAX_ENDPOINTS, 0).expect("create map");
        map.pin(&path).expect("pin");
    } else {
        let map = HashMap::<MapData, u32, [u8; 24]>::create(MAX_ENDPOINTS, 0).expect("create map");
        map.pin(&path).expect("pin");
    }
}

/// A client whose traffic the policy denies (`c` to `b`, UDP and TCP 5353, both families)
/// sends throughout an upgrade that changes the layout of the endpoint maps, and the new
/// datapath is opened without being reconciled for a while, as when the agent's source does
/// not deliver: not one of its packets gets through, and the first reconcile restores the
/// policy.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_layout_upgrade_under_traffic_never_lets_a_denied_client_through() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("lu");
    let sink = Sink::start(&lab.b, 5353, &lab.c);
    let _tcp_b8080 = EchoServer::tcp(&lab.b.netns, 8080);
    let datapath = lab.start();
    assert!(udp_works(&lab.a.netns, v4(&lab.b, 5353)), "a -> b allowed");
    let hammer = Hammer::start(&lab.c, &lab.b, 5353);
    std::thread::sleep(Duration::from_millis(300));
    let before_upgrade = sink.reached();

    // The agent stops; the new build's endpoint maps have another layout.
    drop(datapath);
    pin_another_layout(&lab.config, ENDPOINTS_MAP, false);
    pin_another_layout(&lab.config, ENDPOINT_IDS_MAP, true);
    std::thread::sleep(Duration::from_millis(200));
    let mut datapath = lab.reopen();
    let report = datapath.open_report().clone();
    assert_eq!(report.installed_programs, Hook::ALL.to_vec());
    assert!(
        report
            .replaced_maps
            .iter()
            .any(|name| name == ENDPOINTS_MAP)
    );
    let mut managed: Vec<u32> = lab.ifindexes().into_values().collect();
    managed.sort_unstable();
    assert_eq!(
        report.held_closed, managed,
        "every managed interface is held closed"
    );

    // No reconcile yet: every endpoint keeps its id and denies everything.
    std::thread::sleep(Duration::from_secs(1));
    let held_state = datapath.programmed_state().expect("state");
    for (_, name, id, _) in lab.pods() {
        assert_eq!(
            held_state.endpoints[&pod_ref(name)].info,
            EndpointInfo {
                endpoint_id: id,
                flags: ENDPOINT_NOT_READY,
                ..EndpointInfo::default()
            }
        );
    }
    assert!(!udp_works(&lab.a.netns, v4(&lab.b, 5353)), "held closed");
    let not_ready = datapath
        .counter(3, Direction::Egress, Err(DropReason::NotReady))
        .expect("counter")
        .packets;
    assert!(not_ready > 0, "the client's packets drop as not ready");
    let during_hold = sink.reached();

    let lab_ifindexes = lab.ifindexes();
    datapath
        .sync(&lab.desired(), |pod| lab_ifindexes.get(pod).copied())
        .expect("first reconcile");
    std::thread::sleep(Duration::from_millis(300));
    let sent = hammer.finish();
    let after = sink.reached();
    eprintln!(
        "layout upgrade: the denied client sent {sent} datagrams and connection attempts; \
         {not_ready} packets dropped as not ready while held"
    );
    assert!(sent > 1000, "the client kept sending ({sent})");
    assert_eq!(
        (before_upgrade, during_hold, after),
        (0, 0, 0),
        "packets of the denied client reached the server"
    );

    assert_eq!(datapath.programmed_state().expect("state"), lab.desired());
    assert!(udp_works(&lab.a.netns, v4(&lab.b, 5353)));
    assert!(udp_works(&lab.a.netns, v6(&lab.b, 5353)));
    assert!(tcp_works(&lab.a.netns, v4(&lab.b, 8080)));
    assert!(!tcp_works(&lab.c.netns, v4(&lab.b, 9090)));
    assert!(!udp_works(&lab.c.netns, v4(&lab.b, 5353)));
    assert_eq!(sink.reached(), 0);
}

/// The conntrack entries of an endpoint id, read from the pinned map.
fn flows_of(config: &DatapathConfig, endpoint_id: u32) -> usize {
    let data = MapData::from_pin(config.pin_dir.join("maps").join(CONNTRACK_MAP)).expect("pin");
    let map = HashMap::<MapData, CtKey, CtValue>::try_from(Map::LruHashMap(data)).expect("map");
    map.keys()
        .filter_map(Result::ok)
        .filter(|key| key.endpoint_id == endpoint_id)
        .count()
}

fn fragment_map(config: &DatapathConfig) -> HashMap<MapData, FragKey, FragValue> {
    let data = MapData::from_pin(config.pin_dir.join("maps").join(FRAGMENTS_MAP)).expect("pin");
    HashMap::try_from(Map::LruHashMap(data)).expect("map")
}

/// A pod goes and its endpoint id is freed; a new pod on the same interface and addresses
/// gets that id: the old pod's established connection must not pass as the new pod's.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_freed_endpoint_id_takes_its_flows_with_it() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("fr");
    let _tcp_b8080 = EchoServer::tcp(&lab.b.netns, 8080);
    let mut datapath = lab.start();
    let mut established = connect(&lab.a.netns, v4(&lab.b, 8080)).expect("a -> b:8080 opens");
    assert!(echoes(&mut established, b"before"));
    assert!(flows_of(&lab.config, 1) > 0, "a tracks its flow");
    let b_flows = flows_of(&lab.config, 2);
    assert!(b_flows > 0, "b tracks its flow");
    let mut fragments = fragment_map(&lab.config);
    for endpoint_id in [1, 2] {
        let key = FragKey {
            endpoint_id,
            id: 7,
            ..FragKey::default()
        };
        fragments
            .insert(&key, &FragValue::default(), 0)
            .expect("fragment");
    }

    let a = lab.desired().endpoints[&pod_ref("a")].clone();
    let ifindexes = lab.ifindexes();
    let removal = Delta {
        endpoint_removals: vec![pod_ref("a")],
        ..Delta::default()
    };
    datapath
        .apply(&removal, |pod| ifindexes.get(pod).copied())
        .expect("remove a");
    assert_eq!(flows_of(&lab.config, 1), 0, "a's flows go with its id");
    assert_eq!(flows_of(&lab.config, 2), b_flows, "b keeps its flows");
    let left: Vec<u32> = fragments
        .keys()
        .filter_map(Result::ok)
        .map(|key| key.endpoint_id)
        .collect();
    assert_eq!(left, vec![2], "only a's fragment verdicts go");

    // A new pod, isolated both ways with no rule, gets the freed id, the interface and the
    // addresses.
    let successor = EndpointState {
        pod: pod_ref("a2"),
        info: EndpointInfo {
            flags: ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED,
            ..a.info
        },
        ..a
    };
    let a_ifindex = lab.a.ifindex;
    datapath
        .apply(
            &Delta {
                endpoint_upserts: vec![successor],
                ..Delta::default()
            },
            |_| Some(a_ifindex),
        )
        .expect("add a2");
    assert!(
        !echoes(&mut established, b"inherited"),
        "the new pod inherited the old pod's connection"
    );
}
