//! End-to-end NetworkPolicy scenarios in the lab, enforced by the real agent on every node.
//!
//! Each scenario in `xtask/scenarios/` starts from the example cluster in `deploy/examples/`,
//! adds its manifests and goes through its steps: a change (files written or removed, labels
//! set on pods or namespaces), then probes. Every probe's matrix from the lab must match the
//! scenario's expectation and `policy-agent explain` on the lab's rendered manifests. During a
//! change, `steady` connections that the change does not concern must keep working throughout.
//!
//! An expectation lists `deny` patterns (`CLIENT -> SERVER`, each side `ns/pod`, `ns/*` or `*`)
//! and `except` patterns that are allowed nonetheless; everything else is allowed, and a pod
//! always reaches itself. Cells without a target (no Service sends the port to that pod) are
//! `null` in the lab's matrix and are not compared.

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    /// Files of `deploy/examples/` to add, by path under it.
    #[serde(default)]
    examples: Vec<String>,
    /// Files to add, by name.
    #[serde(default)]
    files: BTreeMap<String, String>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    change: Option<Change>,
    /// `CLIENT -> SERVER:PORT` TCP connections over IPv4 that must succeed during the change.
    #[serde(default)]
    steady: Vec<String>,
    probes: Vec<Probe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    write: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    label: Vec<Label>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Label {
    kind: String,
    /// `ns/name` for a Pod, `name` for a Namespace.
    name: String,
    /// A null value removes the label.
    labels: BTreeMap<String, Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    port: u16,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default = "default_via")]
    via: String,
    #[serde(default = "default_family")]
    family: u8,
    deny: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

fn default_via() -> String {
    "pod".to_owned()
}

fn default_family() -> u8 {
    4
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn agent_binary() -> PathBuf {
    std::env::var_os("NETPOL_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/policy-agent"))
}

fn run(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn xtask(args: &[&str]) -> String {
    run(Path::new(env!("CARGO_BIN_EXE_xtask")), args)
}

/// Whether `pattern` (`ns/pod`, `ns/*` or `*`) names `pod`.
fn matches(pattern: &str, pod: &str) -> bool {
    match pattern.strip_suffix("/*") {
        _ if pattern == "*" => true,
        Some(namespace) => pod.split_once('/').is_some_and(|(ns, _)| ns == namespace),
        None => pattern == pod,
    }
}

fn pair_matches(patterns: &[String], client: &str, server: &str) -> bool {
    patterns.iter().any(|pattern| {
        let (from, to) = pattern
            .split_once(" -> ")
            .unwrap_or_else(|| panic!("{pattern:?} is not `CLIENT -> SERVER`"));
        matches(from, client) && matches(to, server)
    })
}

fn expected(probe: &Probe, client: &str, server: &str) -> bool {
    client == server
        || pair_matches(&probe.except, client, server)
        || !pair_matches(&probe.deny, client, server)
}

/// Sets labels on an object in the manifest files of `dir`, rewriting the file that holds it.
fn set_labels(dir: &Path, label: &Label) {
    let (namespace, name) = match label.name.split_once('/') {
        Some((namespace, name)) => (Some(namespace), name),
        None => (None, label.name.as_str()),
    };
    for entry in fs::read_dir(dir).expect("list the manifests").flatten() {
        let path = entry.path();
        let text = fs::read_to_string(&path).expect("read a manifest");
        let mut documents: Vec<Value> = serde_norway::Deserializer::from_str(&text)
            .map(|document| Value::deserialize(document).expect("YAML"))
            .filter(|document| !document.is_null())
            .collect();
        let mut found = false;
        for document in &mut documents {
            let same = document["kind"] == label.kind.as_str()
                && document["metadata"]["name"] == name
                && namespace.is_none_or(|ns| {
                    document["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        == ns
                });
            if !same {
                continue;
            }
            found = true;
            let metadata = document["metadata"].as_object_mut().expect("metadata");
            let labels = metadata
                .entry("labels")
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
                .expect("labels");
            for (key, value) in &label.labels {
                match value {
                    Some(value) => labels.insert(key.clone(), Value::from(value.as_str())),
                    None => labels.remove(key),
                };
            }
        }
        if found {
            let text: String = documents
                .iter()
                .map(|document| {
                    format!("---\n{}", serde_norway::to_string(document).expect("YAML"))
                })
                .collect();
            fs::write(&path, text).expect("rewrite a manifest");
            return;
        }
    }
    panic!("no {} {} in {}", label.kind, label.name, dir.display());
}

/// Connects from `client` to `server:port` over and over until stopped; counts failures.
struct Steady {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    thread: thread::JoinHandle<()>,
    pair: String,
}

impl Steady {
    fn start(pair: &str, status: &Value) -> Self {
        let (client, target) = pair.split_once(" -> ").expect("CLIENT -> SERVER:PORT");
        let (server, port) = target.rsplit_once(':').expect("SERVER:PORT");
        let pod = |name: &str| {
            status["pods"]
                .as_array()
                .expect("pods")
                .iter()
                .find(|pod| pod["name"] == name)
                .unwrap_or_else(|| panic!("no pod {name} in the lab"))
                .clone()
        };
        let client_pod = pod(client);
        let (namespace, name) = client.split_once('/').expect("ns/pod");
        let netns = format!(
            "np-{}-{namespace}-{name}",
            client_pod["node"].as_str().expect("node")
        );
        let address: SocketAddr = format!("{}:{port}", pod(server)["ips"][0].as_str().expect("ip"))
            .parse()
            .expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, attempts, failures) = (stop.clone(), attempts.clone(), failures.clone());
            thread::spawn(move || {
                let file = fs::File::open(Path::new("/run/netns").join(&netns)).expect("netns");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                while !stop.load(Ordering::Relaxed) {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let answered = TcpStream::connect_timeout(&address, Duration::from_secs(1))
                        .and_then(|mut stream| {
                            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                            let mut reply = String::new();
                            stream.read_to_string(&mut reply).map(|_| reply)
                        })
                        .is_ok_and(|reply| !reply.is_empty());
                    if !answered {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Self {
            stop,
            attempts,
            failures,
            thread,
            pair: pair.to_owned(),
        }
    }

    /// Stops and returns a complaint if any connection failed.
    fn finish(self) -> Option<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("steady traffic thread");
        let attempts = self.attempts.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        (failures > 0 || attempts == 0).then(|| {
            format!(
                "steady {}: {failures} of {attempts} connections failed",
                self.pair
            )
        })
    }
}

/// The latency line of `lab up`: how long after the manifests were written all agents applied.
fn applied_latency(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let rest = line.strip_prefix("agents applied generation ")?;
        let (_, rest) = rest.split_once(' ')?;
        rest.strip_suffix(" ms after the manifests were written")?
            .parse()
            .ok()
    })
}

fn check_probe(probe: &Probe, explain: &Path) -> Vec<String> {
    let port = probe.port.to_string();
    let family = probe.family.to_string();
    let matrix: Value = serde_json::from_str(&xtask(&[
        "lab",
        "probe",
        "-o",
        "json",
        "--port",
        &port,
        "--protocol",
        &probe.protocol,
        "--via",
        &probe.via,
        "--family",
        &family,
    ]))
    .expect("probe JSON");
    // explain judges each pair on the server's first address, IPv4 in this dual-stack lab.
    let predicted: Option<Value> = (probe.family == 4).then(|| {
        serde_json::from_str(&run(
            explain,
            &[
                "explain",
                "-f",
                "/run/netpol-lab/manifests",
                "--port",
                &port,
                "--protocol",
                &probe.protocol,
                "-o",
                "json",
            ],
        ))
        .expect("explain JSON")
    });
    let label = format!(
        "{}/{} via {} IPv{}",
        probe.protocol, probe.port, probe.via, probe.family
    );
    let mut problems = Vec::new();
    let mut compared = 0;
    let pods: Vec<String> = matrix["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|pod| pod.as_str().expect("pod name").to_owned())
        .collect();
    for client in &pods {
        for server in &pods {
            let cell = &matrix["allowed"][client][server];
            let Some(seen) = cell.as_bool() else {
                continue;
            };
            compared += 1;
            let want = expected(probe, client, server);
            if seen != want {
                problems.push(format!(
                    "{label}: {client} -> {server}: lab {seen}, expected {want}"
                ));
            }
            if let Some(predicted) = &predicted {
                let said = predicted["allowed"][client][server].as_bool();
                if said != Some(want) {
                    problems.push(format!(
                        "{label}: {client} -> {server}: explain {said:?}, expected {want}"
                    ));
                }
            }
        }
    }
    if compared == 0 {
        problems.push(format!("{label}: no pair had a target"));
    }
    problems
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn scenarios() {
    let agent = agent_binary();
    xtask(&["lab", "down"]);
    // Builds the agent once (unless NETPOL_AGENT_BIN names one); later `up`s reuse it.
    let build_dir = std::env::temp_dir().join(format!("netpol-scenarios-{}", std::process::id()));
    let mut paths: Vec<PathBuf> = fs::read_dir(workspace().join("xtask/scenarios"))
        .expect("the scenarios")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 30,
        "at least 30 scenarios, found {}",
        paths.len()
    );

    let mut failures = Vec::new();
    let mut latencies = Vec::new();
    let mut first = true;
    for path in &paths {
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let scenario: Scenario =
            serde_norway::from_str(&fs::read_to_string(path).expect("read a scenario"))
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        let dir = build_dir.join(&name);
        fs::create_dir_all(&dir).expect("create the manifest directory");
        fs::copy(
            workspace().join("deploy/examples/cluster.yaml"),
            dir.join("cluster.yaml"),
        )
        .expect("copy the example cluster");
        for example in &scenario.examples {
            let source = workspace().join("deploy/examples").join(example);
            let target = dir.join(Path::new(example).file_name().expect("file name"));
            fs::copy(&source, target).expect("copy an example");
        }
        for (file, text) in &scenario.files {
            fs::write(dir.join(file), text).expect("write a manifest");
        }
        let dir_text = dir.to_str().expect("UTF-8 path").to_owned();
        let agent_text = agent.to_str().expect("UTF-8 path").to_owned();
        let mut up = vec!["lab", "up", "-f", &dir_text];
        if std::env::var_os("NETPOL_AGENT_BIN").is_some() || !first {
            up.extend(["--agent-bin", &agent_text]);
        }
        xtask(&up);
        if first {
            let help = Command::new(&agent).args(["run", "--help"]).output();
            assert!(
                help.is_ok_and(|output| output.status.success()),
                "{} has no `run` subcommand: the scenarios need the agent enforcing in the lab",
                agent.display()
            );
            first = false;
        }

        let mut problems = Vec::new();
        for (index, step) in scenario.steps.iter().enumerate() {
            let mut steady = Vec::new();
            if let Some(change) = &step.change {
                let status: Value =
                    serde_json::from_str(&xtask(&["lab", "status", "-o", "json"])).expect("status");
                steady = step
                    .steady
                    .iter()
                    .map(|pair| Steady::start(pair, &status))
                    .collect();
                thread::sleep(Duration::from_millis(100));
                for (file, text) in &change.write {
                    fs::write(dir.join(file), text).expect("write a manifest");
                }
                for file in &change.remove {
                    fs::remove_file(dir.join(file)).expect("remove a manifest");
                }
                for label in &change.label {
                    set_labels(&dir, label);
                }
                let output = xtask(&["lab", "up", "-f", &dir_text, "--agent-bin", &agent_text]);
                match applied_latency(&output) {
                    Some(latency) => latencies.push(latency),
                    None => problems.push(format!("step {index}: `up` did not report enforcement")),
                }
                thread::sleep(Duration::from_millis(100));
            }
            problems.extend(steady.into_iter().filter_map(Steady::finish));
            for probe in &step.probes {
                problems.extend(
                    check_probe(probe, &agent)
                        .into_iter()
                        .map(|problem| format!("step {index}: {problem}")),
                );
            }
        }
        if problems.is_empty() {
            eprintln!("ok   {name}: {}", scenario.description);
        } else {
            eprintln!("FAIL {name}: {}", scenario.description);
            for problem in &problems {
                eprintln!("       {problem}");
            }
            failures.push(name);
        }
    }
    xtask(&["lab", "down"]);
    let _ = fs::remove_dir_all(&build_dir);

    latencies.sort_unstable();
    if let (Some(max), false) = (latencies.last(), latencies.is_empty()) {
        eprintln!(
            "change to enforcement over {} changes: p50 {} ms, max {max} ms",
            latencies.len(),
            latencies[latencies.len() / 2]
        );
    }
    assert!(failures.is_empty(), "failed scenarios: {failures:?}");
}

#[test]
fn expectations_read_as_documented() {
    let probe = Probe {
        port: 80,
        protocol: default_protocol(),
        via: default_via(),
        family: default_family(),
        deny: vec!["* -> shop/*".into(), "dev/tester -> *".into()],
        except: vec!["shop/web -> shop/api".into()],
    };
    assert!(!expected(&probe, "dev/x", "shop/api"));
    assert!(expected(&probe, "shop/web", "shop/api"));
    assert!(
        expected(&probe, "shop/api", "shop/api"),
        "a pod reaches itself"
    );
    assert!(!expected(&probe, "dev/tester", "kube-system/dns"));
    assert!(expected(&probe, "kube-system/dns", "dev/tester"));
}

#[test]
fn every_scenario_parses() {
    let dir = workspace().join("xtask/scenarios");
    let mut count = 0;
    for entry in fs::read_dir(&dir).expect("the scenarios").flatten() {
        let path = entry.path();
        let scenario: Scenario = serde_norway::from_str(&fs::read_to_string(&path).expect("read"))
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        for example in &scenario.examples {
            assert!(
                workspace().join("deploy/examples").join(example).is_file(),
                "{example}"
            );
        }
        for step in &scenario.steps {
            assert!(
                !step.probes.is_empty(),
                "{}: a step without probes",
                path.display()
            );
            assert!(step.steady.is_empty() || step.change.is_some());
        }
        count += 1;
    }
    assert!(count >= 30, "at least 30 scenarios, found {count}");
}
