//! Endpoint lifecycle against the real agent binary: the agent runs in a node namespace on a
//! manifest directory while pods' veths appear, disappear and are replaced, and real TCP traffic
//! shows what it enforces. Each test prints how long the agent took from the interface
//! appearing to enforcement.

#[expect(
    dead_code,
    reason = "the namespace helpers serve several test crates; this one uses part"
)]
mod netns;

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use jiff::Timestamp;
use netns::{EchoServer, Node, Pod, tcp_works};
use policy_agent::{
    agent::status::{self, EndpointPhase},
    datapath::HELD,
    manifest,
};
use policy_common::{
    maps::{ENDPOINT_NOT_READY, EndpointInfo, HostAddrKey},
    names::{ENDPOINTS_MAP, FROM_POD_PROG, HOST_ADDRS_MAP, TO_POD_PROG},
};
use policy_testbed::wire::{Bridge, Gateway, Neighbours, Wiring};

/// Far below the agent's periodic pass (10 s): only a reaction to the kernel's notifications
/// is this fast.
const REACTION_LIMIT: Duration = Duration::from_secs(2);

/// A manifest directory, pin directory and state directory for one agent.
struct Dirs {
    root: PathBuf,
    manifests: PathBuf,
    state: PathBuf,
    pins: PathBuf,
}

impl Dirs {
    fn new(tag: &str) -> Dirs {
        let root = std::env::temp_dir().join(format!("lifecycle-{tag}"));
        let _ = fs::remove_dir_all(&root);
        let manifests = root.join("manifests");
        fs::create_dir_all(&manifests).expect("create manifest dir");
        Dirs {
            manifests,
            state: root.join("state"),
            pins: PathBuf::from(format!("/sys/fs/bpf/lifecycle-{tag}")),
            root,
        }
    }

    fn write(&self, file: &str, text: &str) {
        let path = self.manifests.join(file);
        let temporary = self.root.join(file);
        fs::write(&temporary, text).expect("write manifest");
        fs::rename(&temporary, &path).expect("rename manifest");
    }

    fn remove(&self, file: &str) {
        fs::remove_file(self.manifests.join(file)).expect("remove manifest");
    }

    /// The endpoint-map entry of `ifindex`, read from the agent's pinned map.
    fn endpoint(&self, ifindex: u32) -> Option<EndpointInfo> {
        let data = MapData::from_pin(self.pins.join("maps").join(ENDPOINTS_MAP)).ok()?;
        let map: HashMap<MapData, u32, EndpointInfo> =
            HashMap::try_from(Map::HashMap(data)).ok()?;
        map.get(&ifindex, 0).ok()
    }

    /// Writes (`Some`) or removes (`None`) the endpoint-map entry of `ifindex` behind the
    /// agent's back.
    fn set_endpoint(&self, ifindex: u32, info: Option<EndpointInfo>) {
        let data = MapData::from_pin(self.pins.join("maps").join(ENDPOINTS_MAP)).expect("pin");
        let mut map: HashMap<MapData, u32, EndpointInfo> =
            HashMap::try_from(Map::HashMap(data)).expect("endpoint map");
        match info {
            Some(info) => map.insert(&ifindex, &info, 0).expect("insert"),
            None => map.remove(&ifindex).expect("remove"),
        }
    }

    fn status(&self) -> status::Status {
        status::read(&self.state).expect("status.json")
    }

    /// The status of the agent started at `since` or later, once its first reconcile is in.
    fn status_of_start(&self, since: Timestamp) -> status::Status {
        wait_for("the restarted agent's first reconcile", self, || {
            status::read(&self.state).is_ok_and(|status| {
                status.first_reconcile.is_some()
                    && status.start.is_some_and(|start| start.time >= since)
            })
        });
        self.status()
    }

    /// How many addresses the host address map holds.
    fn host_addrs(&self) -> usize {
        let Some(data) = MapData::from_pin(self.pins.join("maps").join(HOST_ADDRS_MAP)).ok() else {
            return 0;
        };
        HashMap::<MapData, HostAddrKey, u8>::try_from(Map::HashMap(data))
            .map_or(0, |map| map.keys().filter_map(Result::ok).count())
    }

    /// Whether both pod programs of `ifindex` have a pinned link.
    fn linked(&self, ifindex: u32) -> bool {
        [FROM_POD_PROG, TO_POD_PROG].iter().all(|program| {
            self.pins
                .join("links")
                .join(format!("{ifindex}-{program}"))
                .exists()
        })
    }

    /// Whether either pod program of `ifindex` has a pinned link.
    fn pod_program(&self, ifindex: u32) -> bool {
        [FROM_POD_PROG, TO_POD_PROG].iter().any(|program| {
            self.pins
                .join("links")
                .join(format!("{ifindex}-{program}"))
                .exists()
        })
    }

    /// Link pins of `ifindex`, whatever the hook.
    fn any_link(&self, ifindex: u32) -> bool {
        let prefix = format!("{ifindex}-");
        fs::read_dir(self.pins.join("links"))
            .map(|entries| {
                entries.filter_map(Result::ok).any(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(prefix.as_str())
                })
            })
            .unwrap_or(false)
    }

    fn flows(&self) -> String {
        fs::read_to_string(self.state.join("flows.jsonl")).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pins);
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The agent binary running in a node namespace; killed on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(node: &Node, dirs: &Dirs, extra: &[&str]) -> Agent {
        Agent::start_with_capabilities(node, dirs, extra, None)
    }

    /// Starts the agent as root with only `capabilities` (names as in a Pod's
    /// `securityContext`) when given, with every capability otherwise.
    fn start_with_capabilities(
        node: &Node,
        dirs: &Dirs,
        extra: &[&str],
        capabilities: Option<&[String]>,
    ) -> Agent {
        let log = fs::File::create(dirs.root.join("agent.log")).expect("agent log");
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", node.netns.name()));
        if let Some(capabilities) = capabilities {
            // Root's capabilities after exec are its bounding set.
            let bounding: Vec<String> = std::iter::once("-all".to_owned())
                .chain(
                    capabilities
                        .iter()
                        .map(|name| format!("+{}", name.to_lowercase())),
                )
                .collect();
            command
                .arg("setpriv")
                .arg(format!("--bounding-set={}", bounding.join(",")))
                .arg("--");
        }
        let child = command
            .arg(env!("CARGO_BIN_EXE_policy-agent"))
            .arg("run")
            .arg(format!("--source=files:{}", dirs.manifests.display()))
            .args(["--node-name", "node"])
            .arg("--pin-dir")
            .arg(&dirs.pins)
            .arg("--state-dir")
            .arg(&dirs.state)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the agent");
        Agent { child }
    }

    /// Waits until the agent has applied what the manifest directory holds now.
    fn wait_applied(&mut self, dirs: &Dirs) {
        let generation = manifest::generation(&dirs.manifests).expect("generation");
        wait_for("the agent to apply the manifests", dirs, || {
            fs::read_to_string(dirs.state.join("generation"))
                .is_ok_and(|applied| applied.trim() == generation)
        });
        assert!(
            self.child.try_wait().expect("agent status").is_none(),
            "the agent exited:\n{}",
            dirs.log()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` without terminal colour sequences (`ESC [ ... m`), as the agent's log has them.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Polls `condition` every millisecond; returns how long it took to hold.
fn wait_for(what: &str, dirs: &Dirs, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}; agent log:\n{}",
            dirs.log()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A running pod on the node with the addresses `Node::add_pod(n)` gives.
fn pod_manifest(name: &str, labels: &str, n: u8) -> String {
    let v4 = Ipv4Addr::new(10, 70, 0, n);
    let v6 = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, u16::from(n));
    manifest_with_ips(name, labels, v4, v6)
}

/// A running pod on the node with the addresses of `pod`.
fn manifest_of(name: &str, labels: &str, pod: &Pod) -> String {
    manifest_with_ips(name, labels, pod.v4, pod.v6)
}

fn manifest_with_ips(name: &str, labels: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> String {
    format!(
        "
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{{labels}}}
spec:
  nodeName: node
  containers:
  - name: main
    image: serve
status:
  phase: Running
  podIPs:
  - ip: {v4}
  - ip: {v6}
"
    )
}

/// Pods labelled `role: locked` accept ingress only from pods labelled `role: client`, on TCP 80.
const LOCKED_POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: locked
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: locked
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: client
    ports:
    - port: 80
";

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n";

fn to(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.v4), port)
}

/// A client pod, a locked pod's object first and its interface later, its wiring withdrawn and
/// restored, then the veth deleted.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn late_interface_is_enforced_and_a_deleted_veth_is_forgotten() {
    let tag = netns::unique_tag("lc-late");
    let node = Node::new(&tag);
    let dirs = Dirs::new(&tag);
    let client = node.add_pod(2);
    dirs.write("namespace.yaml", NAMESPACE);
    dirs.write("policy.yaml", LOCKED_POLICY);
    dirs.write("client.yaml", &pod_manifest("client", "role: client", 2));
    // The server's object names the addresses its interface will have.
    dirs.write("server.yaml", &pod_manifest("server", "role: locked", 3));
    let mut agent = Agent::start(&node, &dirs, &[]);
    agent.wait_applied(&dirs);

    let appearing = Instant::now();
    let server = node.add_pod(3);
    let wired = appearing.elapsed();
    let ifindex = server.ifindex;
    let enforced = wait_for("the server's endpoint", &dirs, || {
        dirs.endpoint(ifindex)
            .is_some_and(|info| info.endpoint_id != 0)
            && dirs.linked(ifindex)
    });
    eprintln!(
        "late interface: wiring the pod took {} ms; enforced {} ms after the wiring was complete \
         ({} ms after the veth was created)",
        wired.as_millis(),
        enforced.as_millis(),
        (wired + enforced).as_millis()
    );
    assert!(enforced < REACTION_LIMIT, "enforced after {enforced:?}");
    let http = EchoServer::tcp(&server.netns, 80);
    let other = EchoServer::tcp(&server.netns, 81);
    assert!(
        tcp_works(&client.netns, to(&server, 80)),
        "allowed port; flows:\n{}\nagent log:\n{}",
        dirs.flows(),
        dirs.log()
    );
    assert!(
        !tcp_works(&client.netns, to(&server, 81)),
        "a port no rule allows"
    );

    // An established binding lasts until its interface is gone: neither the route withdrawn
    // nor the pod removing its own addresses unbinds it, so a pod cannot shed its policy.
    let node_netns = &node.netns.name();
    let v4 = format!("{}/32", server.v4);
    let v6 = format!("{}/128", server.v6);
    let host_if = &server.host_if;
    let pod_netns = &server.netns.name();
    let routes = |verb: &str| {
        netns::ip(&["-n", node_netns, "route", verb, &v4, "dev", host_if]);
        netns::ip(&["-n", node_netns, "-6", "route", verb, &v6, "dev", host_if]);
    };
    let addresses = |verb: &str| {
        netns::ip(&["-n", pod_netns, "addr", verb, &v4, "dev", "eth0"]);
        netns::ip(&["-n", pod_netns, "addr", verb, &v6, "dev", "eth0"]);
    };
    let entry = dirs.endpoint(ifindex);
    routes("del");
    addresses("del");
    // A source change forces a reconcile that sees the wiring as it is now.
    dirs.write("other.yaml", &NAMESPACE.replace("default", "other"));
    agent.wait_applied(&dirs);
    assert_eq!(
        dirs.endpoint(ifindex),
        entry,
        "the binding outlives its claim"
    );
    assert!(dirs.linked(ifindex));
    addresses("add");
    // The pod's IPv4 routes went with its last IPv4 address.
    let gateway = netns::GATEWAY_V4.to_string();
    netns::ip(&[
        "-n", pod_netns, "route", "add", &gateway, "dev", "eth0", "scope", "link",
    ]);
    netns::ip(&["-n", pod_netns, "route", "add", "default", "via", &gateway]);
    routes("add");
    assert!(
        tcp_works(&client.netns, to(&server, 80)),
        "allowed port after the wiring came back"
    );
    assert!(
        !tcp_works(&client.netns, to(&server, 81)),
        "denied port after the wiring came back"
    );

    // The servers' sockets keep the pod's namespace, and so its veth, alive.
    drop((http, other));
    drop(server);
    let forgotten = wait_for("the deleted veth's endpoint to be forgotten", &dirs, || {
        dirs.endpoint(ifindex).is_none() && !dirs.any_link(ifindex)
    });
    eprintln!(
        "deleted veth: entry and links removed {} ms after the deletion",
        forgotten.as_millis()
    );
    assert!(forgotten < REACTION_LIMIT, "forgotten after {forgotten:?}");
    let record = fs::read_to_string(dirs.state.join("datapath.json")).expect("record");
    assert!(!record.contains("\"server\""), "record: {record}");
}

/// A pod deleted and its IP given to a new pod on a new veth with another policy.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn reused_pod_ip_gets_the_new_pods_policy() {
    let tag = netns::unique_tag("lc-reuse");
    let node = Node::new(&tag);
    let dirs = Dirs::new(&tag);
    let client = node.add_pod(2);
    let old = node.add_pod(3);
    let old_server = EchoServer::tcp(&old.netns, 81);
    dirs.write("namespace.yaml", NAMESPACE);
    dirs.write("policy.yaml", LOCKED_POLICY);
    dirs.write("client.yaml", &pod_manifest("client", "role: client", 2));
    dirs.write("pod-old.yaml", &pod_manifest("old", "role: open", 3));
    let mut agent = Agent::start(&node, &dirs, &[]);
    agent.wait_applied(&dirs);
    let old_ifindex = old.ifindex;
    let old_info = dirs.endpoint(old_ifindex).expect("old endpoint");
    assert!(
        tcp_works(&client.netns, to(&old, 81)),
        "the old pod is open"
    );

    // The Pod goes first, its veth stays: its pod programs go (the veth is an uplink now, with
    // `svc_egress` alone, until it is deleted).
    dirs.remove("pod-old.yaml");
    wait_for("the deleted pod's programs to go", &dirs, || {
        dirs.endpoint(old_ifindex).is_none() && !dirs.pod_program(old_ifindex)
    });
    let record = fs::read_to_string(dirs.state.join("datapath.json")).expect("record");
    assert!(!record.contains("\"old\""), "record: {record}");
    // The server's socket keeps the pod's namespace, and so its veth, alive.
    drop(old_server);
    let old_veth = old.host_if.clone();
    drop(old);
    // The kernel deletes a namespace, and the veth with it, in the background.
    let node_netns = node.netns.name().to_owned();
    wait_for("the old veth to be deleted", &dirs, || {
        !Command::new("ip")
            .args(["-n", &node_netns, "link", "show", &old_veth])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    let appearing = Instant::now();
    let new = node.add_pod(3);
    dirs.write("pod-new.yaml", &pod_manifest("new", "role: locked", 3));
    let new_ifindex = new.ifindex;
    assert_ne!(new_ifindex, old_ifindex);
    let enforced = wait_for("the new pod's endpoint", &dirs, || {
        dirs.endpoint(new_ifindex)
            .is_some_and(|info| info.endpoint_id != 0)
            && dirs.linked(new_ifindex)
            && dirs.endpoint(old_ifindex).is_none()
    });
    eprintln!(
        "reused IP: the new pod enforced {} ms after its veth was created",
        (appearing.elapsed()).as_millis()
    );
    assert!(enforced < REACTION_LIMIT, "enforced after {enforced:?}");
    agent.wait_applied(&dirs);
    assert!(!dirs.any_link(old_ifindex), "the old veth's links are gone");
    let new_info = dirs.endpoint(new_ifindex).expect("new endpoint");
    assert_ne!(new_info.flags, old_info.flags, "the new pod is isolated");
    let _http = EchoServer::tcp(&new.netns, 80);
    let _other = EchoServer::tcp(&new.netns, 81);
    assert!(tcp_works(&client.netns, to(&new, 80)), "allowed port");
    assert!(
        !tcp_works(&client.netns, to(&new, 81)),
        "the old pod's open port is closed for the new pod"
    );
    let record = fs::read_to_string(dirs.state.join("datapath.json")).expect("record");
    assert!(!record.contains("\"old\""), "record: {record}");
}

/// `--new-endpoints deny`: a veth that appears before its pod is known drops everything, with
/// reason not-ready, and follows its pod's policy once the pod is known.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn deny_mode_holds_a_new_interface_until_its_pod_is_programmed() {
    let tag = netns::unique_tag("lc-deny");
    let node = Node::new(&tag);
    let dirs = Dirs::new(&tag);
    let client = node.add_pod(2);
    dirs.write("namespace.yaml", NAMESPACE);
    dirs.write("policy.yaml", LOCKED_POLICY);
    dirs.write("client.yaml", &pod_manifest("client", "role: client", 2));
    let deny = &[
        "--new-endpoints",
        "deny",
        "--endpoint-interface-prefix",
        "hv-",
    ];
    let mut agent = Agent::start(&node, &dirs, deny);
    agent.wait_applied(&dirs);
    assert!(
        dirs.endpoint(client.ifindex)
            .is_some_and(|info| info.endpoint_id != 0),
        "a known pod is programmed, not held"
    );

    let appearing = Instant::now();
    let server = node.add_pod(3);
    let ifindex = server.ifindex;
    let held = wait_for("the new interface to be held", &dirs, || {
        dirs.endpoint(ifindex) == Some(HELD) && dirs.linked(ifindex)
    });
    eprintln!(
        "deny mode: held {} ms after the veth was created",
        (appearing.elapsed()).as_millis()
    );
    assert!(held < REACTION_LIMIT, "held after {held:?}");
    let _http = EchoServer::tcp(&server.netns, 80);
    assert!(
        !tcp_works(&client.netns, to(&server, 80)),
        "a held interface receives nothing"
    );
    assert!(
        !tcp_works(&server.netns, to(&client, 80)),
        "a held interface sends nothing"
    );
    wait_for("not-ready drops in the flow log", &dirs, || {
        dirs.flows().contains("not-ready")
    });

    dirs.write("server.yaml", &pod_manifest("server", "role: locked", 3));
    agent.wait_applied(&dirs);
    let info = dirs.endpoint(ifindex).expect("endpoint");
    assert_ne!(info, HELD, "the pod's endpoint replaced the held entry");
    let _other = EchoServer::tcp(&server.netns, 81);
    // While held, the pod's ARP could not be checked against an address (its Pod was not
    // known) and was dropped, so the node may need one more round of address resolution.
    let answered = wait_for("the allowed port to answer", &dirs, || {
        tcp_works(&client.netns, to(&server, 80))
    });
    assert!(
        answered < Duration::from_secs(3),
        "allowed port answered only after {answered:?}; flows:\n{}",
        dirs.flows()
    );
    assert!(
        !tcp_works(&client.netns, to(&server, 81)),
        "a port no rule allows"
    );

    // A held interface stays held while the agent is down, and the restarted agent adopts it
    // with the rest: its first reconcile writes nothing.
    let stray = node.add_pod(4);
    let stray_ifindex = stray.ifindex;
    wait_for("the stray interface to be held", &dirs, || {
        dirs.endpoint(stray_ifindex) == Some(HELD)
    });
    // The new veth brings the node an IPv6 link-local address once its pod side is up; the
    // agent must have programmed it before it is killed, or its successor rightly writes it.
    wait_for("the node's addresses to be programmed", &dirs, || {
        dirs.host_addrs() == node_addresses(&node)
    });
    drop(agent);
    assert!(
        !tcp_works(&stray.netns, to(&client, 80)),
        "a held interface sends nothing while the agent is down"
    );
    let restarted = Timestamp::now();
    let mut agent = Agent::start(&node, &dirs, deny);
    fs::remove_file(dirs.state.join("generation")).expect("remove the applied generation");
    agent.wait_applied(&dirs);
    let first = dirs
        .status_of_start(restarted)
        .first_reconcile
        .expect("the first reconcile");
    assert_eq!((first.writes, first.held), (0, 1), "{first:?}");
    assert_eq!(dirs.endpoint(stray_ifindex), Some(HELD));
    assert!(
        tcp_works(&client.netns, to(&server, 80)),
        "the programmed pod still follows its policy"
    );

    // A held interface that goes away leaves nothing behind.
    drop(stray);
    wait_for("the stray interface to be released", &dirs, || {
        dirs.endpoint(stray_ifindex).is_none() && !dirs.any_link(stray_ifindex)
    });
}

/// The distinct addresses of the node's interfaces, as the agent counts them.
fn node_addresses(node: &Node) -> usize {
    let output = Command::new("ip")
        .args(["-n", node.netns.name(), "-o", "addr", "show"])
        .output()
        .expect("ip addr show");
    let text = String::from_utf8_lossy(&output.stdout);
    let addresses: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|address| address.split('/').next())
        .collect();
    addresses.len()
}

/// The capabilities `deploy/20-daemonset.yaml` adds to the agent's container, which drops all
/// others.
fn daemonset_capabilities() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/20-daemonset.yaml");
    let text = fs::read_to_string(path).expect("the DaemonSet manifest");
    let daemonset: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
    let container = daemonset["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|container| container["name"].as_str() == Some("policy-agent"))
        .expect("the policy-agent container");
    let capabilities = &container["securityContext"]["capabilities"];
    let names = |list: &serde_norway::Value| -> Vec<String> {
        list.as_sequence()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&capabilities["drop"]), ["ALL"], "{path}");
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(false),
        "{path}"
    );
    names(&capabilities["add"])
}

/// The effective capability set of a process, from `/proc/<pid>/status`.
fn effective_capabilities(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .expect("CapEff line")
        .trim();
    u64::from_str_radix(hex, 16).expect("hex capability set")
}

/// The bit of a capability named as in a Pod's `securityContext`.
fn capability_bit(name: &str) -> u64 {
    let number = match name {
        "NET_BROADCAST" => 11,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} is not in this table"),
    };
    1 << number
}

/// The agent as the DaemonSet runs it: root with the manifest's capabilities and no others, on
/// a node whose bpffs is mounted. It loads, pins and attaches, enforces, serves metrics, and
/// survives a restart into maps of another layout.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn the_agent_needs_no_more_than_the_daemonsets_capabilities() {
    let capabilities = daemonset_capabilities();
    let tag = netns::unique_tag("lc-caps");
    let node = Node::new(&tag);
    let dirs = Dirs::new(&tag);
    let client = node.add_pod(2);
    let server = node.add_pod(3);
    dirs.write("namespace.yaml", NAMESPACE);
    dirs.write("policy.yaml", LOCKED_POLICY);
    dirs.write("client.yaml", &pod_manifest("client", "role: client", 2));
    dirs.write("server.yaml", &pod_manifest("server", "role: locked", 3));
    let _http = EchoServer::tcp(&server.netns, 80);
    let _other = EchoServer::tcp(&server.netns, 81);
    let metrics = &["--metrics-addr", "127.0.0.1:9402"];
    let mut agent = Agent::start_with_capabilities(&node, &dirs, metrics, Some(&capabilities));
    agent.wait_applied(&dirs);
    let expected = capabilities
        .iter()
        .fold(0, |set, name| set | capability_bit(name));
    assert_eq!(
        effective_capabilities(agent.child.id()),
        expected,
        "the agent runs with exactly {capabilities:?}"
    );
    assert!(tcp_works(&client.netns, to(&server, 80)), "allowed port");
    assert!(!tcp_works(&client.netns, to(&server, 81)), "denied port");
    let log = strip_ansi(&dirs.log());
    assert!(!log.contains(" WARN "), "{log}");
    let response = node
        .netns
        .run(|| {
            let mut stream = std::net::TcpStream::connect("127.0.0.1:9402").ok()?;
            std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut head = [0; 12];
            std::io::Read::read_exact(&mut stream, &mut head).ok()?;
            Some(String::from_utf8_lossy(&head).into_owned())
        })
        .expect("run in the network namespace");
    assert_eq!(
        response.as_deref(),
        Some("HTTP/1.1 200"),
        "metrics are served"
    );

    // An upgrade whose endpoint map has another layout: the pin is replaced, the links are
    // switched to the new programs, and the endpoints are held closed until the reconcile.
    drop(agent);
    let path = dirs.pins.join("maps").join(ENDPOINTS_MAP);
    fs::remove_file(&path).expect("unpin");
    HashMap::<MapData, u32, [u8; 24]>::create(16, 0)
        .expect("create map")
        .pin(&path)
        .expect("pin");
    let restarted = Timestamp::now();
    let mut agent = Agent::start_with_capabilities(&node, &dirs, &[], Some(&capabilities));
    fs::remove_file(dirs.state.join("generation")).expect("remove the applied generation");
    agent.wait_applied(&dirs);
    let start = dirs.status_of_start(restarted).start.expect("the start");
    assert_eq!(start.replaced_maps, [ENDPOINTS_MAP], "{start:?}");
    assert_eq!(
        BTreeSet::from_iter(start.held_closed),
        BTreeSet::from([client.ifindex, server.ifindex]),
        "every managed interface is held closed until the first reconcile"
    );
    assert!(tcp_works(&client.netns, to(&server, 80)), "allowed port");
    assert!(!tcp_works(&client.netns, to(&server, 81)), "denied port");
}

/// Waits until each pod's interface has its endpoint entry and programs.
fn wait_programmed(dirs: &Dirs, pods: &[&Pod]) {
    for pod in pods {
        let ifindex = pod.ifindex;
        wait_for("the pods' endpoints", dirs, || {
            dirs.endpoint(ifindex)
                .is_some_and(|info| info.endpoint_id != 0)
                && dirs.linked(ifindex)
        });
    }
}

/// The node's bridge of bridged pods, and its addresses: their gateway.
const BRIDGE: &str = "br0";
const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 1);
const BRIDGE_V6: Ipv6Addr = Ipv6Addr::new(0xfd71, 0, 0, 0, 0, 0, 0, 1);

/// How a ptp node wires its bridged pods: behind [`BRIDGE`], in `10.71.0.0/24` and
/// `fd71::/64`.
fn pod_bridge() -> Wiring {
    Wiring::Bridge {
        bridge: Bridge {
            name: BRIDGE.to_owned(),
            gateways: vec![
                Gateway {
                    address: BRIDGE_V4.into(),
                    prefix: 24,
                },
                Gateway {
                    address: BRIDGE_V6.into(),
                    prefix: 64,
                },
            ],
            mac: None,
        },
        neighbours: Neighbours::Learned,
    }
}

/// Adds pod number `n` (2 to 254) behind the node's bridge, as the bridge CNI wires it:
/// `10.71.0.n/24` and `fd71::n/64` on its `eth0`, its veth `hb-<n>` a port of the bridge
/// (created with the first such pod), the bridge as its default gateway.
fn add_bridged_pod(node: &Node, n: u8) -> Pod {
    let wiring = pod_bridge();
    let Wiring::Bridge { bridge, .. } = &wiring else {
        unreachable!("a bridge wiring")
    };
    let has_bridge = node.netns.ifindex(&bridge.name).is_ok();
    if !has_bridge {
        bridge.create(node.netns.name()).expect("create the bridge");
    }
    node.attach(
        &wiring,
        &format!("b{n}"),
        &format!("hb-{n}"),
        Ipv4Addr::new(10, 71, 0, n),
        Ipv6Addr::new(0xfd71, 0, 0, 0, 0, 0, 0, u16::from(n)),
    )
}

/// Sends raw Ethernet frames out of the pod's `eth0`, as a pod with CAP_NET_RAW can.
fn send_frames(pod: &Pod, frames: Vec<Vec<u8>>) {
    pod.netns
        .run(move || {
            let ifindex = nix::net::if_::if_nametoindex("eth0").expect("eth0");
            // SAFETY: plain socket call; the descriptor is closed below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                )
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            for frame in frames {
                // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
                let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                address.sll_family = libc::AF_PACKET as u16;
                address.sll_ifindex = ifindex as i32;
                address.sll_halen = 6;
                address.sll_addr[..6].copy_from_slice(&frame[..6]);
                // SAFETY: the frame and address outlive the call; the lengths are theirs.
                let sent = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        std::ptr::from_ref(&address).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: the descriptor is ours and not used after.
            unsafe { libc::close(fd) };
        })
        .expect("run in the network namespace");
}

/// Sends a datagram from the pod to its bridge: the node learns the pod's neighbour entries
/// and the bridge its MAC, as they would with any bridge CNI's traffic.
fn greet_bridge(pod: &Pod) {
    pod.netns
        .run(|| {
            for to in [
                SocketAddr::new(IpAddr::V4(BRIDGE_V4), 9),
                SocketAddr::new(IpAddr::V6(BRIDGE_V6), 9),
            ] {
                let local: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .expect("address");
                let socket = std::net::UdpSocket::bind(local).expect("bind");
                socket.send_to(b"hello", to).expect("send");
            }
        })
        .expect("run in the network namespace");
    thread::sleep(Duration::from_millis(100));
}

/// Forces a reconcile through the source, and waits for it.
fn reconcile_now(agent: &mut Agent, dirs: &Dirs, name: &str) {
    dirs.write(
        &format!("{name}.yaml"),
        &NAMESPACE.replace("name: default", &format!("name: {name}")),
    );
    agent.wait_applied(dirs);
}

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// A gratuitous ARP of `operation` announcing that `ip` is at `mac`, sent from `mac`.
fn garp(mac: [u8; 6], ip: Ipv4Addr, operation: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend([0xff; 6]);
    frame.extend(mac);
    frame.extend(0x0806_u16.to_be_bytes());
    frame.extend(1_u16.to_be_bytes());
    frame.extend(0x0800_u16.to_be_bytes());
    frame.extend([6, 4]);
    frame.extend(operation.to_be_bytes());
    frame.extend(mac);
    frame.extend(ip.octets());
    frame.extend([0xff; 6]);
    frame.extend(ip.octets());
    frame
}

/// An unsolicited neighbour advertisement (override set) to all nodes announcing that `ip` is
/// at `mac`, sent from `ip` and `mac`.
fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend(ip.octets());
    icmp.extend([2, 1]);
    icmp.extend(mac);
    let mut pseudo = Vec::new();
    pseudo.extend(ip.octets());
    pseudo.extend(all_nodes.octets());
    pseudo.extend((icmp.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, 58]);
    pseudo.extend(&icmp);
    let checksum = internet_checksum(&pseudo);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = vec![0x33, 0x33, 0, 0, 0, 1];
    frame.extend(mac);
    frame.extend(0x86dd_u16.to_be_bytes());
    frame.extend([0x60, 0, 0, 0]);
    frame.extend((icmp.len() as u16).to_be_bytes());
    frame.extend([58, 255]);
    frame.extend(ip.octets());
    frame.extend(all_nodes.octets());
    frame.extend(icmp);
    frame
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// The endpoint status of `pod` (`default/<name>`).
fn endpoint_status(status: &status::Status, name: &str) -> status::EndpointStatus {
    let pod = format!("default/{name}");
    status
        .endpoints
        .iter()
        .find(|endpoint| endpoint.pod == pod)
        .unwrap_or_else(|| panic!("{pod} not in {status:?}"))
        .clone()
}

/// Pods behind a bridge; one sends gratuitous ARP (request and reply) and unsolicited
/// neighbour advertisements claiming another's addresses, from its own MAC and then from the
/// victim's. The datapath drops those claims; an ARP from the victim's MAC that announces only
/// the attacker's own address passes, so the bridge learns the victim's MAC on the attacker's
/// port. The endpoints stay where the CNI's wiring put them.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn neighbour_frames_do_not_move_a_bridged_endpoint() {
    let tag = netns::unique_tag("lc-garp");
    let node = Node::new(&tag);
    let dirs = Dirs::new(&tag);
    let victim = add_bridged_pod(&node, 2);
    let attacker = add_bridged_pod(&node, 3);
    dirs.write("namespace.yaml", NAMESPACE);
    dirs.write("policy.yaml", LOCKED_POLICY);
    dirs.write(
        "victim.yaml",
        &manifest_of("victim", "role: locked", &victim),
    );
    dirs.write(
        "attacker.yaml",
        &manifest_of("attacker", "role: attacker", &attacker),
    );
    greet_bridge(&victim);
    greet_bridge(&attacker);
    let mut agent = Agent::start(&node, &dirs, &[]);
    agent.wait_applied(&dirs);
    wait_programmed(&dirs, &[&victim, &attacker]);
    let before = [
        dirs.endpoint(victim.ifindex),
        dirs.endpoint(attacker.ifindex),
    ];

    let victim_mac = netns::mac(victim.netns.name(), "eth0");
    let mut frames = vec![garp(victim_mac, attacker.v4, ARP_REQUEST)];
    for mac in [netns::mac(attacker.netns.name(), "eth0"), victim_mac] {
        frames.push(garp(mac, victim.v4, ARP_REQUEST));
        frames.push(garp(mac, victim.v4, ARP_REPLY));
        frames.push(unsolicited_na(mac, victim.v6));
    }
    send_frames(&attacker, frames);
    let fdb = Command::new("bridge")
        .args(["-n", node.netns.name(), "fdb", "show", "br", BRIDGE])
        .output()
        .expect("bridge fdb show");
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(
        fdb.contains(&format!(
            "{} dev {}",
            mac_text(victim_mac),
            attacker.host_if
        )),
        "the bridge did not learn the spoofed MAC on the attacker's port:\n{fdb}"
    );

    // Past the pacing of netlink-triggered reconciles, then one more through the source.
    thread::sleep(Duration::from_millis(1500));
    reconcile_now(&mut agent, &dirs, "later");
    assert_eq!(
        [
            dirs.endpoint(victim.ifindex),
            dirs.endpoint(attacker.ifindex)
        ],
        before,
        "an endpoint moved; agent log:\n{}",
        dirs.log()
    );
    let status = dirs.status();
    assert_eq!(
        endpoint_status(&status, "victim").ifindex,
        Some(victim.ifindex)
    );
    assert_eq!(
        endpoint_status(&status, "attacker").ifindex,
        Some(attacker.ifindex)
    );
    assert!(status.conflicts.is_empty(), "{:?}", status.conflicts);
}

/// A bridged pod puts another pod's address on its own interface: the other pod keeps its
/// binding, the claiming interface is held closed and the conflict reported, until the
/// address goes.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_pod_claiming_another_pods_address_is_held_closed_and_reported() {
    let tag = netns::unique_tag("lc-claim");
    let node = Node::new(&tag);
    let dirs = Dirs::new(&tag);
    let victim = add_bridged_pod(&node, 2);
    let attacker = add_bridged_pod(&node, 3);
    let server = add_bridged_pod(&node, 4);
    dirs.write("namespace.yaml", NAMESPACE);
    for (name, pod) in [
        ("victim", &victim),
        ("attacker", &attacker),
        ("server", &server),
    ] {
        dirs.write(
            &format!("{name}.yaml"),
            &manifest_of(name, &format!("role: {name}"), pod),
        );
    }
    let _echo = EchoServer::tcp(&server.netns, 80);
    let mut agent = Agent::start(&node, &dirs, &[]);
    agent.wait_applied(&dirs);
    wait_programmed(&dirs, &[&victim, &attacker, &server]);
    assert!(tcp_works(&attacker.netns, to(&server, 80)), "before");
    let victim_entry = dirs.endpoint(victim.ifindex);
    let attacker_entry = dirs.endpoint(attacker.ifindex);

    let claim = format!("{}/32", victim.v4);
    let attacker_ns = attacker.netns.name().to_owned();
    netns::ip(&["-n", &attacker_ns, "addr", "add", &claim, "dev", "eth0"]);
    let held = wait_for("the claiming interface to be held", &dirs, || {
        dirs.endpoint(attacker.ifindex)
            .is_some_and(|info| info.flags & ENDPOINT_NOT_READY != 0)
    });
    eprintln!(
        "claim of another pod's address: held {} ms after it",
        held.as_millis()
    );
    assert_eq!(dirs.endpoint(victim.ifindex), victim_entry);
    wait_for("the conflict in status.json", &dirs, || {
        !dirs.status().conflicts.is_empty()
    });
    let status = dirs.status();
    let conflict = &status.conflicts[0];
    assert_eq!(status.conflicts.len(), 1, "{:?}", status.conflicts);
    assert_eq!(conflict.pod, "default/victim");
    assert_eq!(
        conflict.bound.as_ref().map(|bound| bound.ifindex),
        Some(victim.ifindex)
    );
    assert_eq!(
        conflict
            .claimants
            .iter()
            .map(|claimant| (claimant.ifindex, claimant.interface.clone()))
            .collect::<Vec<_>>(),
        [(attacker.ifindex, Some(attacker.host_if.clone()))]
    );
    assert_eq!(
        endpoint_status(&status, "attacker").state,
        EndpointPhase::Conflict
    );
    assert_eq!(
        endpoint_status(&status, "victim").state,
        EndpointPhase::Programmed
    );
    let log = strip_ansi(&dirs.log());
    assert!(
        log.contains("binding conflict") && log.contains(&attacker.host_if),
        "{log}"
    );
    assert!(
        !tcp_works(&attacker.netns, to(&server, 80)),
        "a held interface passed traffic"
    );

    netns::ip(&["-n", &attacker_ns, "addr", "del", &claim, "dev", "eth0"]);
    wait_for("the conflict to go away", &dirs, || {
        dirs.endpoint(attacker.ifindex) == attacker_entry && dirs.status().conflicts.is_empty()
    });
    assert!(strip_ansi(&dirs.log()).contains("binding conflict resolved"));
    assert!(tcp_works(&attacker.netns, to(&server, 80)), "after");
}

/// Endpoint-map entries deleted, moved and overwritten behind the agent's back: the periodic
/// pass restores them, and status.json agrees with the kernel.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn the_periodic_pass_repairs_the_endpoint_map() {
    let tag = netns::unique_tag("lc-repair");
    let node = Node::new(&tag);
    let dirs = Dirs::new(&tag);
    let a = node.add_pod(2);
    let b = node.add_pod(3);
    // A veth no pod is bound to.
    netns::ip(&[
        "-n",
        node.netns.name(),
        "link",
        "add",
        "stray0",
        "type",
        "veth",
        "peer",
        "name",
        "stray1",
    ]);
    let stray = node.netns.ifindex("stray0").expect("interface index");
    dirs.write("namespace.yaml", NAMESPACE);
    dirs.write("policy.yaml", LOCKED_POLICY);
    dirs.write("a.yaml", &pod_manifest("a", "role: locked", 2));
    dirs.write("b.yaml", &pod_manifest("b", "role: client", 3));
    let mut agent = Agent::start(&node, &dirs, &["--resync-interval", "300ms"]);
    agent.wait_applied(&dirs);
    wait_programmed(&dirs, &[&a, &b]);
    let entry_a = dirs.endpoint(a.ifindex);
    let entry_b = dirs.endpoint(b.ifindex);

    dirs.set_endpoint(a.ifindex, None);
    let restored = wait_for("the deleted entry to be restored", &dirs, || {
        dirs.endpoint(a.ifindex) == entry_a
    });
    eprintln!(
        "deleted endpoint entry restored after {} ms",
        restored.as_millis()
    );

    dirs.set_endpoint(b.ifindex, None);
    dirs.set_endpoint(stray, entry_b);
    wait_for("the moved entry to be put back", &dirs, || {
        dirs.endpoint(b.ifindex) == entry_b && dirs.endpoint(stray).is_none()
    });

    dirs.set_endpoint(a.ifindex, entry_b);
    wait_for("the overwritten entry to be rewritten", &dirs, || {
        dirs.endpoint(a.ifindex) == entry_a
    });

    // What status.json says is what the kernel holds.
    reconcile_now(&mut agent, &dirs, "later");
    let status = dirs.status();
    for endpoint in &status.endpoints {
        assert_eq!(endpoint.state, EndpointPhase::Programmed, "{endpoint:?}");
        let ifindex = endpoint.ifindex.expect("an interface");
        assert_eq!(
            dirs.endpoint(ifindex).map(|info| info.endpoint_id),
            Some(endpoint.endpoint_id),
            "{endpoint:?}"
        );
    }
    let log = strip_ansi(&dirs.log());
    for said in [
        "endpoint entry missing from the kernel's map; restoring it",
        "endpoint entry on an interface no programmed pod is bound to; removing it",
        "endpoint entry differs from what was programmed; rewriting it",
        "endpoint map repaired",
    ] {
        assert!(log.contains(said), "no `{said}` in the log:\n{log}");
    }
}
