//! `cargo xtask kind-e2e [FILTER]`: the end-to-end scenarios of `cargo xtask e2e`, against a
//! real Kubernetes cluster in kind, with the agent deployed from `deploy/`.
//!
//! Needs docker, kind and kubectl, and fails at once, naming what is missing, without them. It
//!
//! 1. creates the cluster of `deploy/kind/cluster.yaml` (one control plane, two workers,
//!    dual-stack, no default CNI) and wires the pod network with the `ptp` plugin (see [`cni`]),
//!    or reuses the cluster of that name if it exists;
//! 2. builds the agent's image with `deploy/Dockerfile`, under the name the DaemonSet uses, loads
//!    it into the nodes, applies `deploy/` and waits for the DaemonSet to be ready on every node;
//! 3. runs every scenario of `xtask/e2e/scenarios`: each step's manifests are made real for kind
//!    (see [`render`]) and brought to the cluster with kubectl (what a step removes is deleted),
//!    the step's pods are waited for, and each probe's matrix of real connections (see [`probe`])
//!    is compared with the scenario's expectation, as `cargo xtask e2e` compares the lab's.
//!    Policies reach the agents through the API server's watches, so a probe is tried again
//!    until it matches or [`ENFORCEMENT_TIMEOUT`] has passed;
//! 4. deletes the cluster, unless `--keep-cluster`.
//!
//! `explain` and the steady traffic of `cargo xtask e2e` belong to the lab and are not part of
//! this run.

mod cni;
pub mod config;
mod probe;
mod render;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use policy_core::{
    manifest::objects,
    matrix::Matrix,
    policy::{
        model::{Pod, Service},
        state::ObjectRef,
    },
};
use policy_lab::{cmd as run, manifest, workspace_root};
use serde_json::{Value, json};

use self::{
    config::{IpFamily, KindCluster},
    probe::Addresses,
};
use crate::scenario::{self, Scenario, Via};

/// The commands kind-e2e drives.
const TOOLS: [&str; 3] = ["docker", "kind", "kubectl"];
const CLUSTER_CONFIG: &str = "deploy/kind/cluster.yaml";
const DAEMONSET: &str = "deploy/20-daemonset.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";
/// How long a probe is tried again before its mismatch counts.
pub const ENFORCEMENT_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_RETRY: Duration = Duration::from_secs(2);
/// How long pods and the agent may take to become ready.
const READY_TIMEOUT: &str = "300s";

#[derive(clap::Args)]
pub struct Args {
    /// Only run the scenarios whose name contains this.
    pub filter: Option<String>,
    /// The kind cluster's name (reused when it exists).
    #[arg(long, default_value = "netpol-e2e")]
    pub name: String,
    /// Leave the cluster up at the end (`kind delete cluster --name NAME` removes it).
    #[arg(long)]
    pub keep_cluster: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_tools(std::env::var_os("PATH"))?;
    let root = workspace_root();
    let config = KindCluster::read(&root.join(CLUSTER_CONFIG))?;
    ensure!(
        config.networking.disable_default_cni,
        "{CLUSTER_CONFIG} keeps kind's default CNI, kindnet, which enforces NetworkPolicy itself: \
         the scenarios would not test the agent"
    );
    ensure!(
        config.networking.ip_family == Some(IpFamily::Dual),
        "{CLUSTER_CONFIG} is not dual-stack: the scenarios probe both families"
    );
    ensure!(
        config.workers() >= 2,
        "{CLUSTER_CONFIG} has {} workers: the scenarios place pods on two",
        config.workers()
    );
    let (_, scenarios) = scenario::load_all(&scenario::scenarios_dir(), args.filter.as_deref())?;
    if scenarios.is_empty() {
        bail!(
            "no scenario name contains {:?}",
            args.filter.as_deref().unwrap_or_default()
        );
    }
    let image = agent_image(&root.join(DAEMONSET))?;
    let cluster = Cluster::up(&args.name, &root)?;
    let outcome = cluster
        .install_agent(&root, &image)
        .and_then(|()| cluster.run_scenarios(&scenarios));
    if args.keep_cluster {
        println!(
            "kind-e2e: the cluster stays up (kubectl --context {}; `kind delete cluster --name {}` removes it)",
            cluster.context, cluster.name
        );
    } else {
        println!("kind-e2e: deleting the cluster {}", cluster.name);
        run::status(Command::new("kind").args(["delete", "cluster", "--name", &cluster.name]))?;
    }
    outcome
}

/// Fails, naming every missing command, unless docker, kind and kubectl are on `path`.
fn require_tools(path: Option<OsString>) -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = path
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|tool| !dirs.iter().any(|dir| dir.join(tool).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "cargo xtask kind-e2e needs docker, kind and kubectl on PATH; missing: {}. Install \
             them (kind's quick start lists the ways), or run the same scenarios in the \
             network-namespace lab, which needs none of them: `sudo -E cargo xtask e2e`",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The image of the agent's container in the DaemonSet: the name kind-e2e builds.
fn agent_image(daemonset: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(daemonset)
        .with_context(|| format!("reading {}", daemonset.display()))?;
    let objects = objects(daemonset, &text)?;
    objects
        .iter()
        .find(|object| object.get("kind").and_then(Value::as_str) == Some("DaemonSet"))
        .and_then(|object| {
            object
                .pointer("/spec/template/spec/containers/0/image")
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{} has no DaemonSet with a container image",
                daemonset.display()
            )
        })
}

/// An object of the cluster kind-e2e created: kind, namespace (empty for Namespaces), name.
type ObjectId = (String, String, String);

struct Cluster {
    name: String,
    context: String,
}

/// What the cluster has of a step, for probing it.
struct Step {
    pods: Vec<Pod>,
    services: Vec<Service>,
    addresses: Addresses,
}

impl Cluster {
    /// Creates the cluster and its pod network, or takes the existing one of that name.
    fn up(name: &str, root: &Path) -> anyhow::Result<Self> {
        let cluster = Self {
            name: name.to_owned(),
            context: format!("kind-{name}"),
        };
        let existing = run::output(Command::new("kind").args(["get", "clusters"]))?;
        if existing.lines().any(|line| line.trim() == name) {
            println!("kind-e2e: reusing the kind cluster {name}");
        } else {
            println!("kind-e2e: creating the kind cluster {name} ({CLUSTER_CONFIG})");
            run::status(
                Command::new("kind")
                    .args(["create", "cluster", "--name", name, "--config"])
                    .arg(root.join(CLUSTER_CONFIG)),
            )?;
        }
        cluster.install_cni()?;
        Ok(cluster)
    }

    fn kubectl(&self) -> Command {
        let mut command = Command::new("kubectl");
        command.args(["--context", &self.context]);
        command
    }

    /// The ptp CNI configuration and the routes between nodes, on every node.
    fn install_cni(&self) -> anyhow::Result<()> {
        let json = run::output(self.kubectl().args(["get", "nodes", "-o", "json"]))?;
        let nodes =
            render::parse_nodes(&serde_json::from_str(&json).context("parsing the node list")?)?;
        for node in &nodes {
            ensure!(
                node.pod_cidrs.len() == 2,
                "node {} has pod CIDRs {:?}: a dual-stack cluster gives each node one per family",
                node.name,
                node.pod_cidrs
            );
            run::output(Command::new("docker").args([
                "exec",
                &node.name,
                "test",
                "-x",
                cni::PTP_PLUGIN,
            ]))
            .with_context(|| format!("node {} has no {}", node.name, cni::PTP_PLUGIN))?;
            let conflist = serde_json::to_string_pretty(&cni::conflist(node))?;
            pipe(
                Command::new("docker").args([
                    "exec",
                    "-i",
                    &node.name,
                    "sh",
                    "-c",
                    &format!("cat > {}", cni::CONFLIST_PATH),
                ]),
                &conflist,
            )?;
            for route in cni::routes(node, &nodes) {
                run::output(
                    Command::new("docker")
                        .args(["exec", &node.name])
                        .args(route),
                )?;
            }
        }
        println!(
            "kind-e2e: ptp pod network on {} nodes; waiting for them",
            nodes.len()
        );
        run::output(self.kubectl().args([
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            &format!("--timeout={READY_TIMEOUT}"),
        ]))?;
        Ok(())
    }

    /// Builds and loads the image, applies `deploy/` and waits for the agent on every node.
    fn install_agent(&self, root: &Path, image: &str) -> anyhow::Result<()> {
        println!("kind-e2e: building {image} ({DOCKERFILE})");
        run::status(
            Command::new("docker")
                .args(["build", "--file"])
                .arg(root.join(DOCKERFILE))
                .args(["--tag", image])
                .arg(root),
        )?;
        run::status(Command::new("kind").args([
            "load",
            "docker-image",
            image,
            "--name",
            &self.name,
        ]))?;
        run::status(
            self.kubectl()
                .arg("apply")
                .arg("--filename")
                .arg(root.join("deploy")),
        )?;
        println!("kind-e2e: waiting for the agent on every node");
        run::status(self.kubectl().args([
            "rollout",
            "status",
            "--namespace",
            "netpol-system",
            "daemonset/policy-agent",
            &format!("--timeout={READY_TIMEOUT}"),
        ]))
    }

    fn run_scenarios(&self, scenarios: &[Scenario]) -> anyhow::Result<()> {
        let json = run::output(self.kubectl().args(["get", "nodes", "-o", "json"]))?;
        let nodes =
            render::parse_nodes(&serde_json::from_str(&json).context("parsing the node list")?)?;
        let node_map = render::node_map(&nodes);
        let mut applied = BTreeSet::new();
        let mut failed = Vec::new();
        let mut waits = Vec::new();
        for scenario in scenarios {
            if scenario.describes_nodes() {
                println!(
                    "skip   {}: it describes nodes (Node documents, hostNetwork pods) whose \
                     addresses and labels only the lab gives; the lab runs it",
                    scenario.name
                );
                continue;
            }
            let started = Instant::now();
            let result = scenario.steps.iter().enumerate().try_fold(
                Vec::new(),
                |mut mismatches, (index, step)| {
                    let context = format!("step {}", index + 1);
                    let cluster_step = self
                        .sync(&step.manifests, &node_map, &mut applied)
                        .with_context(|| context.clone())?;
                    for (number, probe) in step.probes.iter().enumerate() {
                        let what = format!("{context}, probe {} {probe}", number + 1);
                        if probe.via == Via::NodePort {
                            println!("skip   {what}: NodePort probes run in the lab only");
                            continue;
                        }
                        let (observed, waited) = self.converge(probe, &cluster_step).with_context(|| what.clone())?;
                        waits.push(waited);
                        if let Some(difference) = probe.expected.difference(&observed) {
                            mismatches.push(format!(
                                "{what}: the cluster's matrix is not the expected one after {} s\n{}",
                                ENFORCEMENT_TIMEOUT.as_secs(),
                                difference.report(&observed)
                            ));
                        }
                    }
                    anyhow::Ok(mismatches)
                },
            );
            match result {
                Ok(mismatches) if mismatches.is_empty() => println!(
                    "ok     {} ({:.1} s)",
                    scenario.name,
                    started.elapsed().as_secs_f64()
                ),
                Ok(mismatches) => {
                    println!("FAILED {}\n{}", scenario.name, mismatches.join("\n"));
                    failed.push(scenario.name.clone());
                }
                Err(error) => {
                    println!("FAILED {}\n{error:#}", scenario.name);
                    failed.push(scenario.name.clone());
                }
            }
        }
        waits.sort();
        if let (Some(p50), Some(max)) = (waits.get(waits.len().saturating_sub(1) / 2), waits.last())
        {
            println!(
                "kind-e2e: time until a probe matched ({} probes): p50 {} ms, max {} ms",
                waits.len(),
                p50.as_millis(),
                max.as_millis()
            );
        }
        println!(
            "kind-e2e: {} passed, {} failed",
            scenarios.len() - failed.len(),
            failed.len()
        );
        if !failed.is_empty() {
            bail!(
                "{} of {} scenarios failed: {}",
                failed.len(),
                scenarios.len(),
                failed.join(", ")
            );
        }
        Ok(())
    }

    /// Probes until the matrix is the expected one or the time is up; returns the last matrix
    /// and how long it took.
    fn converge(&self, probe: &scenario::Probe, step: &Step) -> anyhow::Result<(Matrix, Duration)> {
        let started = Instant::now();
        loop {
            let observed = probe::observe(
                &self.context,
                probe,
                &step.pods,
                &step.services,
                &step.addresses,
            )?;
            if probe.expected.difference(&observed).is_none()
                || started.elapsed() >= ENFORCEMENT_TIMEOUT
            {
                return Ok((observed, started.elapsed()));
            }
            thread::sleep(PROBE_RETRY);
        }
    }

    /// Brings the cluster to `manifests`: deletes what is gone, applies Namespaces, Pods and
    /// Services, waits for the pods, then applies the NetworkPolicies with the addresses the
    /// pods got.
    fn sync(
        &self,
        manifests: &BTreeMap<String, String>,
        nodes: &BTreeMap<String, &render::KindNode>,
        applied: &mut BTreeSet<ObjectId>,
    ) -> anyhow::Result<Step> {
        let texts: Vec<(String, String)> = manifests
            .iter()
            .map(|(name, text)| (name.clone(), text.clone()))
            .collect();
        let parsed = manifest::from_texts(&texts)?;
        let mut pods: Vec<Pod> = parsed
            .snapshot
            .pods
            .iter()
            .filter(|pod| !pod.phase.is_terminated())
            .cloned()
            .collect();
        pods.sort_by_key(Pod::pod_ref);
        let mut services = parsed.snapshot.services.clone();
        services.sort_by_key(Service::object_ref);
        let mut objects = Vec::new();
        let mut policies = Vec::new();
        for value in parsed.files.iter().flat_map(|file| &file.objects) {
            match value.get("kind").and_then(Value::as_str) {
                Some("Namespace") => objects.push(render::without_status(value)),
                Some("Service") => objects.push(render::service(value)),
                Some("NetworkPolicy" | policy_core::api::KIND) => policies.push(value.clone()),
                Some("Pod") => {}
                other => bail!("kind-e2e does not know how to make {other:?} real"),
            }
        }
        for pod in &pods {
            let lab_node = pod.node.as_deref().unwrap_or_default();
            let node = nodes.get(lab_node).with_context(|| {
                format!(
                    "pod {} is on {lab_node:?}, which no worker stands for",
                    pod.pod_ref()
                )
            })?;
            objects.push(render::pod(pod, &node.name)?);
        }
        let wanted: BTreeSet<ObjectId> = objects.iter().chain(&policies).map(object_id).collect();
        for (kind, namespace, name) in applied.difference(&wanted) {
            let mut delete = self.kubectl();
            delete.args(["delete", kind, name, "--ignore-not-found", "--wait=true"]);
            if !namespace.is_empty() {
                delete.args(["--namespace", namespace]);
            }
            run::output(&mut delete)?;
        }
        self.apply(&objects)?;
        let namespaces: BTreeSet<&str> = pods.iter().map(|pod| pod.namespace.as_str()).collect();
        for namespace in namespaces {
            run::output(self.kubectl().args([
                "wait",
                "--for=condition=Ready",
                "pod",
                "--all",
                "--namespace",
                namespace,
                &format!("--timeout={READY_TIMEOUT}"),
            ]))?;
        }
        let addresses = Addresses {
            pods: self.addresses("pods", "/status/podIPs", "/ip")?,
            services: self.addresses("services", "/spec/clusterIPs", "")?,
        };
        let translation = render::address_map(nodes, &pods, &addresses.pods);
        let policies: Vec<Value> = policies
            .iter()
            .map(|policy| render::policy(policy, &translation))
            .collect();
        self.apply(&policies)?;
        *applied = wanted;
        Ok(Step {
            pods,
            services,
            addresses,
        })
    }

    fn apply(&self, objects: &[Value]) -> anyhow::Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        pipe(
            self.kubectl().args(["apply", "--filename", "-"]),
            &list.to_string(),
        )
    }

    /// The addresses of every object of `resource`: the array at `list` in each item, each
    /// address at `field` of its element.
    fn addresses(
        &self,
        resource: &str,
        list: &str,
        field: &str,
    ) -> anyhow::Result<BTreeMap<ObjectRef, Vec<IpAddr>>> {
        let json =
            run::output(
                self.kubectl()
                    .args(["get", resource, "--all-namespaces", "-o", "json"]),
            )?;
        let value: Value =
            serde_json::from_str(&json).with_context(|| format!("parsing the {resource}"))?;
        addresses_of(&value, list, field)
    }
}

/// See [`Cluster::addresses`].
fn addresses_of(
    value: &Value,
    list: &str,
    field: &str,
) -> anyhow::Result<BTreeMap<ObjectRef, Vec<IpAddr>>> {
    let mut found = BTreeMap::new();
    for item in value
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = |pointer: &str| {
            item.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let key = ObjectRef {
            namespace: text("/metadata/namespace"),
            name: text("/metadata/name"),
        };
        let ips = item
            .pointer(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.pointer(field).and_then(Value::as_str))
            .filter(|text| *text != "None")
            .map(|text| {
                text.parse()
                    .with_context(|| format!("{key}: {text:?} is not an address"))
            })
            .collect::<anyhow::Result<_>>()?;
        found.insert(key, ips);
    }
    Ok(found)
}

fn object_id(object: &Value) -> ObjectId {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (
        text("/kind").to_lowercase(),
        text("/metadata/namespace"),
        text("/metadata/name"),
    )
}

/// Runs `command` with `input` on its standard input; fails with its standard error.
fn pipe(command: &mut Command, input: &str) -> anyhow::Result<()> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not run `{}`", run::describe(command)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to `{}`", run::describe(command)))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", run::describe(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            run::describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_all_named_with_the_way_out() {
        let empty = std::env::temp_dir().join(format!("xtask-kind-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let error = require_tools(Some(empty.clone().into_os_string()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing: docker, kind, kubectl."), "{error}");
        assert!(error.contains("sudo -E cargo xtask e2e"), "{error}");
        for tool in TOOLS {
            std::fs::write(empty.join(tool), "").unwrap();
        }
        require_tools(Some(empty.clone().into_os_string())).unwrap();
        std::fs::remove_file(empty.join("kind")).unwrap();
        let error = require_tools(Some(empty.clone().into_os_string()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing: kind."), "{error}");
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn the_image_built_is_the_daemonset_s() {
        let image = agent_image(&workspace_root().join(DAEMONSET)).unwrap();
        assert_eq!(image, "policy-agent:dev");
    }

    #[test]
    fn addresses_are_read_from_pods_and_services() {
        let pods = json!({"items": [{"metadata": {"namespace": "x", "name": "a"},
            "status": {"podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]}}]});
        let found = addresses_of(&pods, "/status/podIPs", "/ip").unwrap();
        let key = ObjectRef {
            namespace: "x".into(),
            name: "a".into(),
        };
        assert_eq!(found[&key].len(), 2);
        let services = json!({"items": [{"metadata": {"namespace": "x", "name": "s"},
            "spec": {"clusterIPs": ["10.96.0.20", "fd00:10:96::20"]}},
            {"metadata": {"namespace": "x", "name": "headless"}, "spec": {"clusterIPs": ["None"]}}]});
        let found = addresses_of(&services, "/spec/clusterIPs", "").unwrap();
        let headless = ObjectRef {
            namespace: "x".into(),
            name: "headless".into(),
        };
        assert!(found[&headless].is_empty());
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn objects_are_identified_by_kind_namespace_and_name() {
        let policy = json!({"kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "p"}});
        assert_eq!(
            object_id(&policy),
            ("networkpolicy".into(), "x".into(), "p".into())
        );
        let namespace = json!({"kind": "Namespace", "metadata": {"name": "x"}});
        assert_eq!(
            object_id(&namespace),
            ("namespace".into(), String::new(), "x".into())
        );
    }

    /// Every scenario step a kind run applies renders to objects the Kubernetes schemas accept,
    /// once its lab nodes are given kind workers.
    #[test]
    fn every_scenario_renders_to_valid_objects() {
        let mut schemas = crate::schema::Schemas::vendored().unwrap();
        let crd = policy_lab::workspace_root().join("deploy/05-clusternetworkpolicy-crd.yaml");
        let crd: Value = serde_norway::from_str(&std::fs::read_to_string(crd).unwrap()).unwrap();
        schemas.add_custom_resource(&crd).unwrap();
        let (_, scenarios) = scenario::load_all(&scenario::scenarios_dir(), None).unwrap();
        let mut rendered = 0;
        let in_kind = scenarios
            .iter()
            .filter(|scenario| !scenario.describes_nodes());
        for step in in_kind.flat_map(|scenario| &scenario.steps) {
            for text in step.manifests.values() {
                for value in objects(Path::new("step.yaml"), text).unwrap() {
                    let object = match value["kind"].as_str() {
                        Some("Pod") => {
                            let text = serde_json::to_string(&value).unwrap();
                            let parsed =
                                manifest::from_texts(&[("pod.yaml".into(), text)]).unwrap();
                            render::pod(&parsed.snapshot.pods[0], "kind-worker").unwrap()
                        }
                        Some("Service") => render::service(&value),
                        Some("NetworkPolicy" | policy_core::api::KIND) => {
                            render::policy(&value, &BTreeMap::new())
                        }
                        _ => render::without_status(&value),
                    };
                    assert_eq!(schemas.validate(&object).unwrap(), [], "{object}");
                    rendered += 1;
                }
            }
        }
        assert!(rendered > 100, "only {rendered} objects");
    }
}
