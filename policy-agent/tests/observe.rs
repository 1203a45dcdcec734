//! The real agent, run as an operator runs it, against a manifest directory in a node namespace
//! with pods wired by veths: what `policy-agent status` and `policy-agent flows` print, what a
//! scrape of `/metrics` counts against real denied traffic, and how failures are reported.

#[expect(
    dead_code,
    reason = "the namespace helpers serve several test crates; this one uses part"
)]
mod netns;

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use netns::{EchoServer, Node, Pod, tcp_works, udp_works};
use nix::sched::{CloneFlags, setns};
use policy_agent::{
    agent::{
        FlowRecord,
        status::{EndpointPhase, FailureKind, Status},
    },
    metrics::{DEFAULT_PORT, HEADER_TIMEOUT, MAX_CONNECTIONS},
};
use policy_common::{
    maps::{MAX_POLICY_ENTRIES, PolicyKey, PolicyValue},
    names::{ENDPOINTS_MAP, POLICY_MAP},
};

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");
const NODE: &str = "node-obs";
const ALLOWED_PORT: u16 = 8080;
const DENIED_PORT: u16 = 5353;

/// A node with pods `obs/a` and `obs/b`; `b` admits only TCP 8080 from `a`.
struct Lab {
    node: Node,
    a: Pod,
    b: Pod,
    dir: PathBuf,
    pin_dir: PathBuf,
}

impl Lab {
    fn new(test: &str) -> Lab {
        let tag = netns::unique_tag(test);
        let node = Node::new(&tag);
        let a = node.add_pod(2);
        let b = node.add_pod(3);
        let dir = std::env::temp_dir().join(format!("obs-{tag}"));
        fs::create_dir_all(dir.join("manifests")).expect("manifest dir");
        let lab = Lab {
            node,
            a,
            b,
            dir,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/obs-{tag}")),
        };
        let pods = [("a", &lab.a), ("b", &lab.b)]
            .map(|(name, pod)| pod_yaml(name, pod))
            .join("---\n");
        lab.write(
            "cluster.yaml",
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: obs}}\n---\n{pods}---\n\
                 apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: b-from-a, namespace: obs}}\n\
                 spec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  ingress:\n\
                 \x20   - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]\n\
                 \x20     ports: [{{port: {ALLOWED_PORT}, protocol: TCP}}]\n"
            ),
        );
        lab
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn write(&self, file: &str, text: &str) {
        fs::write(self.manifests().join(file), text).expect("write manifest");
    }

    /// Starts the agent in the node namespace, serving metrics on the node's loopback.
    fn start_agent(&self) -> Agent {
        self.start_agent_with(&[])
    }

    /// [`Lab::start_agent`] with more `run` arguments.
    fn start_agent_with(&self, extra_args: &[&str]) -> Agent {
        let log = self.dir.join("agent.log");
        let stderr = fs::File::create(&log).expect("agent log");
        let target = fs::File::open(format!("/run/netns/{}", self.node.netns.name()))
            .expect("open the node namespace");
        let mut command = Command::new(AGENT);
        // Only the network namespace: the agent pins where the test can see its maps.
        // SAFETY: between fork and exec the closure only makes the setns system call, which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                setns(&target, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        let child = command
            .arg("run")
            .arg("--source")
            .arg(format!("files:{}", self.manifests().display()))
            .args(["--node-name", NODE])
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{DEFAULT_PORT}"))
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the agent");
        Agent { child, log }
    }

    /// Waits until the agent enforces the manifests as they are now; returns its status.
    fn wait_applied(&self) -> Status {
        let generation = policy_agent::manifest::generation(&self.manifests()).expect("generation");
        self.wait_status("the manifests applied", |status| {
            status.applied_generation.as_deref() == Some(generation.as_str())
                && status.last_error.is_none()
                && status.endpoints.len() == 2
                && status
                    .endpoints
                    .iter()
                    .all(|endpoint| endpoint.state == EndpointPhase::Programmed)
        })
    }

    /// Waits for a status `done` accepts. Generous: a reconcile that reads a full policy map
    /// takes seconds on a busy machine.
    fn wait_status(&self, what: &str, done: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(status) = policy_agent::agent::status::read(&self.state_dir())
                && done(&status)
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `policy-agent ARGS --state-dir <state>` and returns its output.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(AGENT)
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .expect("run policy-agent")
    }

    /// `GET path` on the agent's metrics address: the status code and the body.
    fn http_get(&self, path: &str) -> (u16, String) {
        let path = path.to_owned();
        self.node
            .netns
            .run(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", DEFAULT_PORT)).expect("connect");
                write!(
                    stream,
                    "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                .expect("send request");
                let mut response = String::new();
                stream.read_to_string(&mut response).expect("read response");
                let code = response
                    .split(' ')
                    .nth(1)
                    .and_then(|code| code.parse().ok())
                    .expect("status code");
                let body = response
                    .split_once("\r\n\r\n")
                    .map(|(_, body)| body.to_owned())
                    .unwrap_or_default();
                (code, body)
            })
            .expect("run in the network namespace")
    }

    fn scrape(&self) -> String {
        let (code, body) = self.http_get("/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Sends `count` UDP datagrams from `a` to `b` on the denied port; returns when sent.
    fn send_denied(&self, count: usize) {
        let to = SocketAddr::new(IpAddr::V4(self.b.v4), DENIED_PORT);
        self.a
            .netns
            .run(move || {
                let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
                for _ in 0..count {
                    socket.send_to(b"denied", to).expect("send");
                }
            })
            .expect("run in the network namespace");
    }

    /// [`Lab::denied_at_b`] once it reaches `count` (or after five seconds), and after a
    /// moment more, so that a count past `count` shows too.
    fn wait_denied_at_b(&self, count: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.denied_at_b() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.denied_at_b()
    }

    /// b's dropped ingress packets (policy-denied) as the metrics count them.
    fn denied_at_b(&self) -> u64 {
        metric(
            &self.scrape(),
            "netpol_packets_total",
            &[
                ("namespace", "obs"),
                ("pod", "b"),
                ("direction", "ingress"),
                ("verdict", "dropped"),
                ("reason", "policy-denied"),
            ],
        )
        .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The running agent; stopped on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod_yaml(name: &str, pod: &Pod) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: obs, labels: {{app: {name}}}}}\n\
         spec:\n  nodeName: {NODE}\n  containers: [{{name: c}}]\n\
         status:\n  phase: Running\n  podIPs: [{{ip: \"{}\"}}, {{ip: \"{}\"}}]\n",
        pod.v4, pod.v6
    )
}

/// The value of the sample of `name` whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, label_text) = match series.split_once('{') {
            Some((metric_name, label_text)) => (metric_name, label_text),
            None => (series, ""),
        };
        let matches = metric_name == name
            && labels
                .iter()
                .all(|(key, value)| label_text.contains(&format!("{key}=\"{value}\"")));
        matches.then(|| value.parse::<f64>().ok().map(|value| value as u64))?
    })
}

fn skip_without_root() -> bool {
    if netns::is_root() {
        return false;
    }
    eprintln!("skipped: needs root");
    true
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "policy-agent failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The flows of the JSON flow log that `wanted` selects, once there are at least `count`. The
/// agent creates the log with its first record, so a missing log counts as an empty one.
fn wait_flows(lab: &Lab, count: usize, wanted: impl Fn(&FlowRecord) -> bool) -> Vec<FlowRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = if lab.state_dir().join("flows.jsonl").exists() {
            stdout(&lab.cli(&["flows", "-o", "json"]))
        } else {
            String::new()
        };
        let flows: Vec<FlowRecord> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a flow record"))
            .filter(|flow| wanted(flow))
            .collect();
        if flows.len() >= count || Instant::now() > deadline {
            return flows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn status_flows_and_metrics_of_a_running_agent_match_real_traffic() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("obs");
    let _allowed = EchoServer::tcp(&lab.b.netns, ALLOWED_PORT);
    // Answers when nothing drops: the drops below are the datapath's.
    let _denied = EchoServer::udp(&lab.b.netns, DENIED_PORT);
    let agent = lab.start_agent();
    let status = lab.wait_applied();

    // status -o json: what the agent programmed, per endpoint.
    let printed: Status =
        serde_json::from_str(&stdout(&lab.cli(&["status", "-o", "json"]))).expect("status json");
    assert_eq!(printed.node, NODE);
    assert!(printed.ready);
    assert!(printed.failures.is_empty(), "{:?}", printed.failures);
    assert_eq!(printed.applied_generation, status.applied_generation);
    let endpoint = |name: &str| {
        printed
            .endpoints
            .iter()
            .find(|endpoint| endpoint.pod == format!("obs/{name}"))
            .unwrap_or_else(|| panic!("endpoint {name} in {:?}", printed.endpoints))
    };
    for (name, pod, isolated, entries) in [("a", &lab.a, false, 0), ("b", &lab.b, true, 1)] {
        let endpoint = endpoint(name);
        assert_eq!(endpoint.interface.as_deref(), Some(pod.host_if.as_str()));
        assert_eq!(endpoint.ifindex, Some(pod.ifindex));
        assert_eq!(endpoint.ingress_isolated, isolated, "{name}");
        assert!(!endpoint.egress_isolated, "{name}");
        assert_eq!(endpoint.generation, status.applied_generation, "{name}");
        assert_eq!(endpoint.policy_entries, entries, "{name}");
    }
    let endpoints_map = printed
        .maps
        .iter()
        .find(|map| map.map == ENDPOINTS_MAP)
        .expect("endpoint map usage");
    assert_eq!((endpoints_map.entries, endpoints_map.capacity), (2, 1024));
    let table = stdout(&lab.cli(&["status"]));
    assert!(
        table.lines().any(|line| line.starts_with("obs/b")
            && line.contains(&lab.b.host_if)
            && line.contains("isolated")
            && line.contains("programmed")),
        "{table}"
    );

    // Probes.
    assert_eq!(lab.http_get("/healthz").0, 200);
    assert_eq!(lab.http_get("/readyz").0, 200);
    assert_eq!(lab.http_get("/nothing").0, 404);

    // Allowed traffic passes and is counted as allowed; each denied datagram is one drop.
    assert!(tcp_works(
        &lab.a.netns,
        SocketAddr::new(IpAddr::V4(lab.b.v4), ALLOWED_PORT)
    ));
    assert!(!udp_works(
        &lab.a.netns,
        SocketAddr::new(IpAddr::V4(lab.b.v4), DENIED_PORT)
    ));
    let before = lab.denied_at_b();
    lab.send_denied(7);
    assert_eq!(lab.wait_denied_at_b(before + 7), before + 7);
    let text = lab.scrape();
    let allowed = metric(
        &text,
        "netpol_packets_total",
        &[
            ("pod", "b"),
            ("direction", "ingress"),
            ("verdict", "allowed"),
            ("reason", "allowed-by-policy"),
        ],
    );
    assert!(allowed.is_some_and(|packets| packets >= 1), "{text}");
    assert_eq!(
        metric(&text, "netpol_map_entries", &[("map", ENDPOINTS_MAP)]),
        Some(2)
    );
    assert_eq!(
        metric(&text, "netpol_failures_total", &[("kind", "map-full")]),
        Some(0),
        "every failure kind is exposed from zero"
    );
    assert!(
        metric(&text, "netpol_reconcile_duration_seconds_count", &[]).is_some_and(|n| n >= 1),
        "{text}"
    );

    // The flow log names the drops: the pods, the port and the policy that isolates b.
    let drops = wait_flows(&lab, 8, |flow| {
        flow.dst_port == DENIED_PORT && flow.verdict == "dropped"
    });
    assert_eq!(
        drops.len(),
        8,
        "the datagram of udp_works and 7 more: {drops:?}"
    );
    assert!(
        drops
            .iter()
            .all(|flow| flow.src_pod.as_deref() == Some("obs/a")
                && flow.pod.as_deref() == Some("obs/b")
                && flow.decided_by.as_deref() == Some("default deny: isolated by obs/b-from-a")
                && flow.time.is_some())
    );
    let lines = stdout(&lab.cli(&["flows"]));
    let expected = format!(
        "{NODE} dropped UDP obs/a:{} -> obs/b:{DENIED_PORT} ingress of obs/b policy-denied \
         (default deny: isolated by obs/b-from-a)",
        drops[0].src_port
    );
    assert!(lines.contains(&expected), "{expected}\nnot in\n{lines}");

    // --follow prints what is logged after it started.
    let mut follow = Command::new(AGENT)
        .args(["flows", "--follow", "--state-dir"])
        .arg(lab.state_dir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("flows --follow");
    let (sender, lines) = mpsc::channel();
    let reader = BufReader::new(follow.stdout.take().expect("piped stdout"));
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    lab.send_denied(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while Instant::now() < deadline && seen < 9 {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100))
            && line.contains(&format!(
                "-> obs/b:{DENIED_PORT} ingress of obs/b policy-denied"
            ))
        {
            seen += 1;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen, 9, "8 logged before --follow started, 1 after");

    // A change is enforced and timed from its notification to the end of its reconcile.
    lab.write(
        "extra.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: a-deny-all, namespace: obs}\n\
         spec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Ingress]\n",
    );
    let status = lab.wait_applied();
    assert!(
        status
            .endpoints
            .iter()
            .find(|endpoint| endpoint.pod == "obs/a")
            .is_some_and(|endpoint| endpoint.ingress_isolated)
    );
    let text = lab.scrape();
    assert!(
        metric(&text, "netpol_change_to_enforcement_seconds_count", &[]).is_some_and(|n| n >= 1),
        "{text}"
    );
    assert!(!agent.log().contains(" WARN "), "{}", agent.log());
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn failures_are_reported_once_and_never_open_the_endpoint() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("obf");
    let agent = lab.start_agent();
    lab.wait_applied();
    let failures =
        |kind: &str| metric(&lab.scrape(), "netpol_failures_total", &[("kind", kind)]).unwrap_or(0);
    let reconciles = || {
        metric(
            &lab.scrape(),
            "netpol_reconcile_duration_seconds_count",
            &[],
        )
        .unwrap_or(0)
    };

    // An object that cannot be read: it would open b to everyone, and it has a bad CIDR.
    lab.write(
        "opens-b.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: opens-b, namespace: obs}\n\
         spec:\n  podSelector: {matchLabels: {app: b}}\n\
         \x20 ingress: [{}, {from: [{ipBlock: {cidr: 10.0.0.0/99}}]}]\n",
    );
    let status = lab.wait_status("the invalid object reported", |status| {
        !status.failures.is_empty()
    });
    assert_eq!(status.failures.len(), 1, "{:?}", status.failures);
    let failure = &status.failures[0];
    assert_eq!(failure.kind, FailureKind::InvalidObject);
    assert!(failure.object.contains("obs/opens-b"), "{failure:?}");
    assert!(failure.error.contains("10.0.0.0/99"), "{failure:?}");
    assert!(status.last_error.is_some());
    // It is applied as what it still says (b isolated, none of its rules), with the rest of
    // the content; reconciles that find it again log and count it once.
    let generation = policy_agent::manifest::generation(&lab.manifests()).expect("generation");
    lab.wait_status("the content with the rejected policy applied", |status| {
        status.applied_generation.as_deref() == Some(generation.as_str())
    });
    let first = reconciles();
    lab.write("touch.yaml", "# another reconcile\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reconciles() < first + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reconciles() > first, "a change reconciles again");
    assert_eq!(failures("invalid-object"), 1);
    let warnings = agent
        .log()
        .lines()
        .filter(|line| line.contains(" WARN ") && line.contains("opens-b"))
        .count();
    assert_eq!(warnings, 1, "{}", agent.log());
    let table = stdout(&lab.cli(&["status"]));
    assert!(
        table.contains("invalid-object") && table.contains("opens-b"),
        "{table}"
    );
    // b still drops what its policies deny: the rejected one opens nothing.
    let before = lab.denied_at_b();
    lab.send_denied(3);
    assert_eq!(lab.wait_denied_at_b(before + 3), before + 3);

    // Fixed: the failure is resolved and stays counted once.
    fs::remove_file(lab.manifests().join("opens-b.yaml")).expect("remove");
    let status = lab.wait_applied();
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert_eq!(failures("invalid-object"), 1);
    assert!(
        !lab.state_dir().join("last-error").exists(),
        "last-error is removed once reconciles succeed"
    );

    // More endpoints than the endpoint map holds: a map-full failure naming the node, and
    // the last good state keeps enforcing.
    let many: Vec<String> = (0..1100)
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: filler-{n}, namespace: obs}}\n\
                 spec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\n\
                 status: {{phase: Running, podIPs: [{{ip: 10.71.{}.{}}}]}}\n",
                n / 250,
                n % 250 + 1
            )
        })
        .collect();
    lab.write("many.yaml", &many.join("---\n"));
    let status = lab.wait_status("the full endpoint map reported", |status| {
        status
            .failures
            .iter()
            .any(|failure| failure.kind == FailureKind::MapFull)
    });
    let failure = &status.failures[0];
    assert_eq!(failure.object, format!("node {NODE}"), "{failure:?}");
    assert_eq!(failures("map-full"), 1);
    let before = lab.denied_at_b();
    lab.send_denied(2);
    assert_eq!(lab.wait_denied_at_b(before + 2), before + 2);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_full_policy_map_fences_the_endpoint_until_the_agent_heals_it() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("obm");
    let _allowed = EchoServer::tcp(&lab.b.netns, ALLOWED_PORT);
    let agent = lab.start_agent();
    let status = lab.wait_applied();
    let to_b = SocketAddr::new(IpAddr::V4(lab.b.v4), ALLOWED_PORT);
    assert!(tcp_works(&lab.a.netns, to_b));

    // Something else fills the policy map to the last entry.
    let path = lab.pin_dir.join("maps").join(POLICY_MAP);
    let data = MapData::from_pin(&path).expect("open the pinned policy map");
    let mut policy: HashMap<MapData, PolicyKey, PolicyValue> =
        HashMap::try_from(Map::HashMap(data)).expect("policy map");
    let used = status
        .maps
        .iter()
        .find(|map| map.map == POLICY_MAP)
        .expect("policy map usage")
        .entries as u32;
    for n in 0..MAX_POLICY_ENTRIES - used {
        let key = PolicyKey {
            endpoint_id: 900,
            peer_class: n,
            port: 1,
            direction: 0,
            protocol: 6,
            port_prefix_len: 16,
            _pad: [0; 3],
        };
        policy
            .insert(&key, &PolicyValue::allow(99), 0)
            .expect("fill the policy map");
    }

    // A change that needs one more entry for b: b is fenced (denies all), never left open.
    lab.write(
        "more.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: b-more, namespace: obs}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: b}}}}\n\
             \x20 ingress: [{{ports: [{{port: {}, protocol: TCP}}]}}]\n",
            ALLOWED_PORT + 1
        ),
    );
    let fenced = lab.wait_status("b fenced", |status| {
        status
            .endpoints
            .iter()
            .any(|endpoint| endpoint.pod == "obs/b" && endpoint.state == EndpointPhase::Fenced)
    });
    let failure = fenced
        .failures
        .iter()
        .find(|failure| failure.kind == FailureKind::MapFull)
        .unwrap_or_else(|| panic!("a map-full failure in {:?}", fenced.failures));
    assert_eq!(failure.object, "obs/b");
    assert!(
        !tcp_works(&lab.a.netns, to_b),
        "a fenced endpoint denies even what its policy allows"
    );

    // The agent's retry diffs against the maps, removes the entries no endpoint owns, and
    // lifts the fence; the failure was logged and counted once.
    let healed = lab.wait_applied();
    assert!(healed.failures.is_empty(), "{:?}", healed.failures);
    assert!(tcp_works(&lab.a.netns, to_b));
    assert_eq!(
        metric(
            &lab.scrape(),
            "netpol_failures_total",
            &[("kind", "map-full")]
        ),
        Some(1)
    );
    let warnings = agent
        .log()
        .lines()
        .filter(|line| line.contains(" WARN ") && line.contains("map-full"))
        .count();
    assert_eq!(warnings, 1, "{}", agent.log());
}

/// A NetworkPolicy of namespace `big` isolating `big/c` for ingress, admitting TCP `ports`
/// from `b` and from `blocks - 1` documentation addresses, as one ipBlock each.
fn big_policy(b: &Pod, blocks: u8, ports: impl Iterator<Item = u16>) -> String {
    let mut peers = vec![format!("{{ipBlock: {{cidr: {}/32}}}}", b.v4)];
    peers.extend((1..blocks).map(|n| format!("{{ipBlock: {{cidr: 192.0.2.{n}/32}}}}")));
    let ports: Vec<String> = ports.map(|port| format!("{{port: {port}}}")).collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: huge, namespace: big}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: c}}}}\n  ingress:\n\
         \x20 - from: [{}]\n    ports: [{}]\n",
        peers.join(", "),
        ports.join(", ")
    )
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn an_oversized_policy_in_one_namespace_leaves_changes_in_another_enforced() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("obz");
    let c = lab.node.add_pod(4);
    let _a = EchoServer::tcp(&lab.a.netns, ALLOWED_PORT);
    let _c_even = EchoServer::tcp(&c.netns, ALLOWED_PORT);
    let _c_odd = EchoServer::tcp(&c.netns, ALLOWED_PORT + 1);
    lab.write(
        "big.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: big}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: c, namespace: big, labels: {{app: c}}}}\n\
             spec:\n  nodeName: {NODE}\n  containers: [{{name: c}}]\n\
             status:\n  phase: Running\n  podIPs: [{{ip: \"{}\"}}, {{ip: \"{}\"}}]\n",
            c.v4, c.v6
        ),
    );
    let _agent = lab.start_agent();
    let applied = |what: &str| {
        let generation = policy_agent::manifest::generation(&lab.manifests()).expect("generation");
        lab.wait_status(what, |status| {
            status.applied_generation.as_deref() == Some(generation.as_str())
                && status.endpoints.len() == 3
                && status
                    .endpoints
                    .iter()
                    .all(|endpoint| endpoint.state == EndpointPhase::Programmed)
        })
    };
    applied("the first content applied");
    let to_a = SocketAddr::new(IpAddr::V4(lab.a.v4), ALLOWED_PORT);
    let to_c = |port| SocketAddr::new(IpAddr::V4(c.v4), port);
    assert!(tcp_works(&lab.b.netns, to_a));

    // 65,535 single ports from 9 ipBlocks (about 950 KB): 589,815 entries as written, more
    // than the policy map holds; merged into port prefixes, 144. Then a deny-all in obs.
    lab.write("huge.yaml", &big_policy(&lab.b, 9, 1..=u16::MAX));
    lab.write(
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: deny-a, namespace: obs}\nspec: {podSelector: {matchLabels: {app: a}}}\n",
    );
    let status = applied("the large policy and the deny-all applied");
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert!(!tcp_works(&lab.b.netns, to_a), "the deny-all is enforced");
    assert!(tcp_works(&lab.b.netns, to_c(ALLOWED_PORT)));
    assert!(!tcp_works(&lab.a.netns, to_c(ALLOWED_PORT)));

    // Every other port from 17 ipBlocks cannot merge: 557,056 entries, over any one policy's
    // budget. big/c stays isolated with none of its rules; the change in obs still applies.
    lab.write(
        "huge.yaml",
        &big_policy(&lab.b, 17, (1..=u16::MAX).step_by(2)),
    );
    fs::remove_file(lab.manifests().join("deny.yaml")).expect("remove the deny-all");
    let status = applied("the oversized policy and the lifted deny-all applied");
    let failure = status
        .failures
        .iter()
        .find(|failure| failure.kind == FailureKind::MapFull)
        .unwrap_or_else(|| panic!("a map-full failure in {:?}", status.failures));
    assert_eq!(failure.object, "NetworkPolicy big/huge");
    assert!(
        failure.error.contains("557056") && failure.error.contains("big/c"),
        "{failure:?}"
    );
    let c_status = status
        .endpoints
        .iter()
        .find(|endpoint| endpoint.pod == "big/c")
        .expect("big/c");
    assert!(c_status.ingress_isolated);
    assert_eq!(c_status.policy_entries, 0);
    assert!(
        tcp_works(&lab.b.netns, to_a),
        "the lifted deny-all is enforced"
    );
    assert!(
        !tcp_works(&lab.b.netns, to_c(ALLOWED_PORT + 1)),
        "the oversized policy opens nothing"
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn allowed_new_flows_are_logged_with_their_rule_only_when_enabled() {
    if skip_without_root() {
        return;
    }
    let allowed_to_b = |flow: &FlowRecord| {
        flow.dst_port == ALLOWED_PORT
            && flow.verdict == "allowed"
            && flow.pod.as_deref() == Some("obs/b")
    };
    for log_allowed in [false, true] {
        let lab = Lab::new(if log_allowed { "obs-log" } else { "obs-nolog" });
        let _allowed = EchoServer::tcp(&lab.b.netns, ALLOWED_PORT);
        let args: &[&str] = if log_allowed { &["--log-allowed"] } else { &[] };
        let _agent = lab.start_agent_with(args);
        lab.wait_applied();
        let target = SocketAddr::new(IpAddr::V4(lab.b.v4), ALLOWED_PORT);
        assert!(tcp_works(&lab.a.netns, target));
        // A denied datagram after the connection: once it is logged, so is anything before it.
        lab.send_denied(1);
        wait_flows(&lab, 1, |flow| flow.verdict == "dropped");
        let allowed = wait_flows(&lab, 0, allowed_to_b);
        if !log_allowed {
            assert!(allowed.is_empty(), "{allowed:?}");
            continue;
        }
        assert_eq!(allowed.len(), 1, "one record per new flow: {allowed:?}");
        let flow = &allowed[0];
        assert_eq!(flow.src_pod.as_deref(), Some("obs/a"));
        assert_eq!(flow.reason, "allowed-by-policy");
        assert_eq!(
            flow.decided_by.as_deref(),
            Some("obs/b-from-a, ingress rule 0")
        );
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn clients_that_hold_connections_open_cannot_keep_the_metrics_endpoint_from_answering() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("obh");
    let _agent = lab.start_agent();
    lab.wait_applied();
    let (closed, health) = lab
        .node
        .netns
        .run(|| {
            let address = ("127.0.0.1", DEFAULT_PORT);
            // More idle clients than the server serves at once; half send part of a request and
            // never finish its headers.
            let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
                .map(|n| {
                    let mut stream = TcpStream::connect(address).expect("connect");
                    if n % 2 == 1 {
                        stream
                            .write_all(b"GET /metrics HTTP/1.1\r\n")
                            .expect("send");
                    }
                    stream
                })
                .collect();
            let bound = HEADER_TIMEOUT * 4;
            let mut probe = TcpStream::connect(address).expect("connect");
            probe.set_read_timeout(Some(bound)).expect("read timeout");
            write!(
                probe,
                "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .expect("send");
            let mut health = String::new();
            let _ = probe.read_to_string(&mut health);
            let closed = idle
                .iter_mut()
                .map(|stream| {
                    stream.set_read_timeout(Some(bound)).expect("read timeout");
                    // The server ends the connection (whatever it says first) within the bound.
                    match stream.read_to_end(&mut Vec::new()) {
                        Ok(_) => true,
                        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
                    }
                })
                .filter(|&closed| closed)
                .count();
            (closed, health)
        })
        .expect("run in the network namespace");
    assert!(health.starts_with("HTTP/1.1 200"), "{health:?}");
    assert_eq!(
        closed,
        MAX_CONNECTIONS + 4,
        "every idle connection is closed"
    );
}
