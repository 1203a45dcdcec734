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
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use netns::{EchoServer, Node, Pod, tcp_works};
use policy_agent::{datapath::HELD, manifest};
use policy_common::{
    maps::{EndpointInfo, HostAddrKey},
    names::{ENDPOINTS_MAP, FROM_POD_PROG, HOST_ADDRS_MAP, TO_POD_PROG},
};

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
        let log = fs::File::create(dirs.root.join("agent.log")).expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns.name))
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
    let node_netns = &node.netns.name;
    let v4 = format!("{}/32", server.v4);
    let v6 = format!("{}/128", server.v6);
    let host_if = &server.host_if;
    let pod_netns = &server.netns.name;
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
    let node_netns = node.netns.name.clone();
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
    let mut agent = Agent::start(&node, &dirs, deny);
    fs::remove_file(dirs.state.join("generation")).expect("remove the applied generation");
    agent.wait_applied(&dirs);
    let log = strip_ansi(&dirs.log());
    let first = log
        .lines()
        .find(|line| line.contains("first reconcile since start"))
        .expect("the first reconcile's log line");
    assert!(first.contains(" writes=0 "), "{first}");
    assert!(first.contains(" held=1"), "{first}");
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
        .args(["-n", &node.netns.name, "-o", "addr", "show"])
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
