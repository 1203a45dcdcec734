//! The lab itself, end to end: nodes of both CNI styles, pods with their servers, Services, probes
//! over both families and protocols, an update, and `down`, without agents; and the lab following
//! edits of its manifest directory, with agents and without. The tests take turns: the lab's names
//! are global.

use std::{
    collections::BTreeSet,
    fs,
    io::Read,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, image: i, ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  nodeName: node-1
  containers: [{name: c, image: i, ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  nodeName: node-2
  containers: [{name: c, image: i, ports: [{containerPort: 3306, name: mysql}, {containerPort: 80}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client}}
spec:
  nodeName: node-2
  containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {selector: {app: db}, ports: [{port: 3306, targetPort: mysql}, {port: 80}, {port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 8080, targetPort: http}]}
"#;

const PODS: [&str; 4] = ["other/client", "shop/api", "shop/db", "shop/web"];

/// Held by the test that has the lab.
static LAB: Mutex<()> = Mutex::new(());

fn run_lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_policy-lab"))
        .args(args)
        .output()
        .expect("run policy-lab")
}

fn policy_lab(args: &[&str]) -> String {
    let output = run_lab(args);
    assert!(
        output.status.success(),
        "policy-lab {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn lab_error(args: &[&str]) -> String {
    let output = run_lab(args);
    assert!(!output.status.success(), "policy-lab {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&policy_lab(args)).expect("JSON output")
}

/// Takes the lab down when the test ends, also when it fails.
struct LabGuard {
    dir: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl LabGuard {
    fn new() -> Self {
        // A test that failed holding the lab took it down on its way out.
        let turn = LAB
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = std::env::temp_dir().join(format!("netpol-lab-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the manifest directory");
        policy_lab(&["down"]);
        Self { dir, _turn: turn }
    }

    fn dir(&self) -> &str {
        self.dir.to_str().expect("UTF-8 path")
    }

    fn write(&self, file: &str, text: &str) {
        fs::write(self.dir.join(file), text).expect("write manifests");
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_policy-lab"))
            .args(["down"])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn root_links() -> BTreeSet<String> {
    let output = Command::new("ip")
        .args(["-br", "link"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn lab_namespaces() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("np-node-") || name == "np-underlay")
                .collect()
        })
        .unwrap_or_default()
}

fn probe(args: &[&str]) -> Value {
    let mut full = vec!["probe", "-o", "json"];
    full.extend_from_slice(args);
    json(&full)
}

/// Every cell of the matrix: `true` where `reachable(client, server)`, `null` where `absent`.
fn assert_matrix(matrix: &Value, pods: &[&str], expect: impl Fn(&str, &str) -> Value) {
    assert_eq!(matrix["pods"], json!(pods));
    for client in pods {
        for server in pods {
            assert_eq!(
                matrix["allowed"][client][server],
                expect(client, server),
                "{client} -> {server} in {matrix}"
            );
        }
    }
}

/// The first line a TCP server at `address` writes, from inside the pod namespace `netns`.
fn reply_from(netns: &str, address: SocketAddr) -> String {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = fs::File::open(Path::new("/run/netns").join(netns)).expect("netns");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let mut stream =
                    TcpStream::connect_timeout(&address, Duration::from_secs(1)).expect("connect");
                let mut reply = String::new();
                stream.read_to_string(&mut reply).expect("read the reply");
                reply.trim().to_owned()
            })
            .join()
            .expect("probe thread")
    })
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn lab_wires_pods_and_services_and_down_leaves_nothing() {
    let links_before = root_links();
    let lab = LabGuard::new();
    let dir = lab.dir.to_str().expect("UTF-8 path");
    fs::write(lab.dir.join("cluster.yaml"), CLUSTER).expect("write manifests");

    let start = Instant::now();
    policy_lab(&["up", "-f", dir, "--no-agent"]);
    let up_time = start.elapsed();

    let status = json(&["status", "-o", "json"]);
    assert_eq!(
        status["nodes"],
        json!([
            {"name": "node-1", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
            {"name": "node-2", "podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]},
        ])
    );
    assert_eq!(
        status["pods"],
        json!([
            {"name": "other/client", "node": "node-2", "ips": ["10.244.2.2", "fd00:10:244:2::2"]},
            {"name": "shop/api", "node": "node-1", "ips": ["10.244.1.2", "fd00:10:244:1::2"]},
            {"name": "shop/db", "node": "node-2", "ips": ["10.244.2.3", "fd00:10:244:2::3"]},
            {"name": "shop/web", "node": "node-1", "ips": ["10.244.1.3", "fd00:10:244:1::3"]},
        ])
    );
    assert_eq!(
        status["services"][0],
        json!({"name": "shop/db", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"], "ports": [
            {"port": 3306, "protocol": "TCP", "targetPort": "mysql"},
            {"port": 80, "protocol": "TCP", "targetPort": 80},
            {"port": 53, "protocol": "UDP", "targetPort": 53},
        ]})
    );
    let rendered = fs::read_to_string("/run/netpol-lab/manifests/cluster.yaml").expect("rendered");
    assert!(rendered.contains("podIP: 10.244.2.3"), "{rendered}");
    assert!(
        fs::read_to_string("/run/netpol-lab/manifests/lab-namespaces.yaml")
            .expect("implied namespaces")
            .contains("name: other")
    );

    let start = Instant::now();
    let mut probes = 0;
    for family in ["4", "6"] {
        for (protocol, port) in [("TCP", "80"), ("UDP", "53")] {
            let matrix = probe(&["--family", family, "--protocol", protocol, "--port", port]);
            assert_eq!(matrix["via"], "pod");
            assert_eq!(matrix["wait_ms"], 0, "no agents to wait for");
            assert_matrix(&matrix, &PODS, |_, _| json!(true));
            probes += 1;
        }
        // A column has a target where a Service sends the port to that pod: shop/db for 80, 53
        // and 3306, shop/web for 80 (from its port 8080). Every client reaches them, from both
        // nodes and through its own Service (hairpin).
        for (protocol, port) in [("TCP", "80"), ("UDP", "53"), ("TCP", "3306")] {
            let matrix = probe(&[
                "--via",
                "service",
                "--family",
                family,
                "--protocol",
                protocol,
                "--port",
                port,
            ]);
            assert_eq!(matrix["via"], "service");
            assert_matrix(&matrix, &PODS, |_, server| {
                let backend = server == "shop/db" || (server == "shop/web" && port == "80");
                if backend { json!(true) } else { Value::Null }
            });
            probes += 1;
        }
    }
    let probe_time = start.elapsed() / probes;

    // The ClusterIP reaches the planned backend (the server answers with its pod's name), on
    // the ptp node and the bridge node.
    for (netns, address) in [
        ("np-node-1-shop-api", "10.96.0.11:8080"),
        ("np-node-2-other-client", "[fd00:10:96::b]:8080"),
        ("np-node-1-shop-web", "10.96.0.11:8080"),
    ] {
        assert_eq!(
            reply_from(netns, address.parse().expect("address")),
            "shop/web"
        );
    }
    assert_eq!(
        reply_from(
            "np-node-1-shop-web",
            "[fd00:10:96::a]:3306".parse().expect("address")
        ),
        "shop/db"
    );

    // A drop inside a pod shows as a denied cell: the probe reports what the network does.
    Command::new("ip")
        .args([
            "netns",
            "exec",
            "np-node-2-shop-db",
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
        ])
        .args(["--dport", "80", "-j", "DROP"])
        .status()
        .expect("iptables")
        .success()
        .then_some(())
        .expect("add a DROP rule in shop/db");
    let matrix = probe(&["--family", "4"]);
    assert_matrix(&matrix, &PODS, |_, server| json!(server != "shop/db"));

    let error = lab_error(&["probe", "--protocol", "SCTP"]);
    assert!(error.contains("no SCTP"), "{error}");

    // A second `up` adds and removes pods to match the directory and keeps the rest.
    let changed = CLUSTER
        .replace(
            "name: client, namespace: other",
            "name: client2, namespace: other",
        )
        .replace(
            "nodeName: node-2\n  containers: [{name: c, image: i, ports: [{containerPort: 80}",
            "nodeName: node-1\n  containers: [{name: c, image: i, ports: [{containerPort: 80}",
        );
    fs::write(lab.dir.join("cluster.yaml"), changed).expect("write manifests");
    policy_lab(&["up", "-f", dir, "--no-agent"]);
    let status = json(&["status", "-o", "json"]);
    assert_eq!(
        status["pods"][0],
        json!({"name": "other/client2", "node": "node-1", "ips": ["10.244.1.2", "fd00:10:244:1::2"]})
    );
    let pods = ["other/client2", "shop/api", "shop/db", "shop/web"];
    assert!(!lab_namespaces().contains(&"np-node-2-other-client".to_owned()));
    assert_matrix(&probe(&["--family", "6"]), &pods, |_, _| json!(true));

    let start = Instant::now();
    policy_lab(&["down"]);
    let down_time = start.elapsed();
    assert_eq!(lab_namespaces(), Vec::<String>::new());
    assert!(!Path::new("/run/netpol-lab").exists());
    assert!(!Path::new("/sys/fs/bpf/netpol-lab").exists());
    assert_eq!(
        root_links(),
        links_before,
        "the root namespace has no lab links"
    );
    policy_lab(&["down"]);
    eprintln!(
        "lab timings: up {} ms, probe {} ms per 16-pair matrix, down {} ms",
        up_time.as_millis(),
        probe_time.as_millis(),
        down_time.as_millis()
    );
}

/// Two pods on two nodes, and a Service in front of x/a.
const FOLLOWED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-2, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {selector: {app: a}, ports: [{port: 8080, targetPort: 80}]}
"#;

/// x/b's ingress: nothing, or only from `app: a` when `allow_a`.
fn policy(allow_a: bool) -> String {
    let ingress = if allow_a {
        "[{from: [{podSelector: {matchLabels: {app: a}}}]}]"
    } else {
        "[]"
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b-ingress, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{app: b}}}}, policyTypes: [Ingress], ingress: {ingress}}}\n"
    )
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn probe_applies_what_was_written_to_the_directory_after_up() {
    let lab = LabGuard::new();
    lab.write("cluster.yaml", FOLLOWED);
    policy_lab(&["up", "-f", lab.dir()]);
    let pods = ["x/a", "x/b"];
    assert_matrix(&probe(&[]), &pods, |_, _| json!(true));

    // Written after `up`, each edit is what the next probe shows: a policy added, then edited,
    // then a label its rule reads changed, then the policy removed.
    lab.write("policy.yaml", &policy(false));
    assert_matrix(&probe(&[]), &pods, |client, server| {
        json!(client == server || server != "x/b")
    });
    lab.write("policy.yaml", &policy(true));
    assert_matrix(&probe(&[]), &pods, |_, _| json!(true));
    lab.write(
        "cluster.yaml",
        &FOLLOWED.replacen("labels: {app: a}", "labels: {app: z}", 1),
    );
    assert_matrix(&probe(&[]), &pods, |client, server| {
        json!(client == server || server != "x/b")
    });
    fs::remove_file(lab.dir.join("policy.yaml")).expect("remove the policy");
    assert_matrix(&probe(&[]), &pods, |_, _| json!(true));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn probe_follows_services_and_asks_for_up_when_pods_change() {
    let lab = LabGuard::new();
    lab.write("cluster.yaml", FOLLOWED);
    policy_lab(&["up", "-f", lab.dir(), "--no-agent"]);
    let pods = ["x/a", "x/b"];
    let via_service = ["--via", "service"];
    assert_matrix(&probe(&via_service), &pods, |_, server| {
        if server == "x/a" {
            json!(true)
        } else {
            Value::Null
        }
    });

    // The Service's new selector is followed without `up`: its ClusterIP now leads to x/b.
    lab.write(
        "cluster.yaml",
        &FOLLOWED.replace("selector: {app: a}", "selector: {app: b}"),
    );
    assert_matrix(&probe(&via_service), &pods, |_, server| {
        if server == "x/b" {
            json!(true)
        } else {
            Value::Null
        }
    });

    // A new pod needs a namespace: probe refuses to report a matrix without it, status warns.
    lab.write(
        "more.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x}\n\
         spec: {nodeName: node-1, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}\n",
    );
    let error = lab_error(&["probe"]);
    assert!(
        error.contains("x/c is new, for node-1")
            && error.contains(&format!("run `cargo xtask lab up -f {}`", lab.dir())),
        "{error}"
    );
    let status = run_lab(&["status", "-o", "json"]);
    assert!(status.status.success());
    let warning = String::from_utf8_lossy(&status.stderr);
    assert!(warning.contains("x/c is new"), "{warning}");

    policy_lab(&["up", "-f", lab.dir(), "--no-agent"]);
    assert_matrix(&probe(&[]), &["x/a", "x/b", "x/c"], |_, _| json!(true));
}
