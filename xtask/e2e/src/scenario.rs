//! Scenarios: `xtask/e2e/scenarios/NN-name/scenario.yaml` and the manifests it applies on top of the
//! base cluster in `xtask/e2e/scenarios/base/`.
//!
//! ```yaml
//! description: what the spec says and why the expectation follows
//! steps:
//!   - apply: [deny-all.yaml]                 # copied into the lab's manifest directory
//!     probes:
//!       - { port: 80, protocol: TCP, via: pod, family: 4, expect: "deny all" }
//!   - note: x/b gets the label role=client   # printed while the suite runs
//!     apply: [{ file: pod-x-b-client.yaml, as: pod-x-b.yaml }]   # replaces a base file
//!     remove: [deny-all.yaml]                # deletes a file from the directory
//!     restore: [ns-y.yaml]                   # puts a base file back as it was
//!     probes: [...]
//! ```
//!
//! The manifest directory starts as the base cluster for every scenario; steps change it in order.
//! A probe has `port` and `protocol` (TCP or UDP), `via` (`pod`, the default, `service`, or
//! `nodeport`: the client's own node address on the node port of the Service port),
//! `family` (4, the default, or 6) and `expect` (see [`super::expect`]). `port` is the server
//! pod's port, also for Service probes, which go to the Service port that targets it. The agent's
//! `explain` is asked for the same port; `explain: false` skips it. `explain` has no address family: it decides by
//! a pod's first address, IPv4 in the dual-stack lab, which is the same decision for both
//! families except for ipBlocks; so ipBlock scenarios set `explain: false` on their IPv6 probes.
//!
//! Loading checks everything that can be checked without a lab: the files exist, every manifest
//! is well formed and names a declared namespace, no object is declared twice, and every
//! expectation parses and names pods that exist in that step.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail, ensure};
use policy_core::{explain, matrix::Matrix};
use serde::Deserialize;
use serde_json::Value;

use super::expect::Expectation;

/// The directory of the base cluster, inside the scenarios directory.
pub const BASE: &str = "base";
/// The file that describes a scenario, inside its directory.
pub const SCENARIO_FILE: &str = "scenario.yaml";

/// The scenarios directory of the source tree.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        self.model().name()
    }

    /// The protocol of the policy core's model: scenarios probe two of its three.
    pub fn model(self) -> policy_core::policy::model::Protocol {
        match self {
            Self::Tcp => policy_core::policy::model::Protocol::Tcp,
            Self::Udp => policy_core::policy::model::Protocol::Udp,
        }
    }
}

/// How a probe reaches the server: its pod IP, its Service's cluster IP, or the client's own
/// node address on the Service's node port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    #[default]
    Pod,
    Service,
    NodePort,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Service => "service",
            Self::NodePort => "nodeport",
        }
    }

    /// How `explain` answers the probe; none for a node port, whose traffic kube-proxy
    /// masquerades to the node before the server's ingress decides it, which explain cannot
    /// know.
    pub fn explained(self) -> Option<explain::Via> {
        match self {
            Self::Pod => Some(explain::Via::Pod),
            Self::Service => Some(explain::Via::Service),
            Self::NodePort => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u8")]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn number(self) -> u8 {
        match self {
            Self::V4 => 4,
            Self::V6 => 6,
        }
    }
}

impl TryFrom<u8> for Family {
    type Error = String;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            4 => Ok(Self::V4),
            6 => Ok(Self::V6),
            other => Err(format!("family {other}: expected 4 or 6")),
        }
    }
}

/// A probe of a step, with the matrix it must produce.
#[derive(Clone, Debug)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
    pub via: Via,
    pub family: Family,
    /// Whether `explain` is asked too.
    pub explain: bool,
    pub expected: Matrix,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} via {} IPv{}",
            self.protocol.as_str(),
            self.port,
            self.via.as_str(),
            self.family.number()
        )
    }
}

/// One step: the whole manifest directory after its changes, and its probes.
#[derive(Clone, Debug)]
pub struct Step {
    pub note: Option<String>,
    /// File name -> content.
    pub manifests: BTreeMap<String, String>,
    pub probes: Vec<Probe>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    /// The directory name, `NN-short-name`.
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Whether a step describes nodes: a Node document or a hostNetwork pod, whose addresses
    /// and labels only the lab gives as the scenario's expectations assume.
    pub fn describes_nodes(&self) -> bool {
        self.steps.iter().any(|step| {
            step.manifests.iter().any(|(name, text)| {
                policy_core::manifest::objects(std::path::Path::new(name), text).is_ok_and(
                    |objects| {
                        objects.iter().any(|object| {
                            object.get("kind").and_then(|kind| kind.as_str()) == Some("Node")
                                || object.pointer("/spec/hostNetwork")
                                    == Some(&serde_json::Value::Bool(true))
                        })
                    },
                )
            })
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioSpec {
    description: String,
    steps: Vec<StepSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    apply: Vec<ApplySpec>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    restore: Vec<String>,
    probes: Vec<ProbeSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ApplySpec {
    Same(String),
    Renamed {
        file: String,
        #[serde(rename = "as")]
        target: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSpec {
    port: u16,
    protocol: Protocol,
    #[serde(default)]
    via: Via,
    #[serde(default)]
    family: Family,
    expect: String,
    #[serde(default = "yes")]
    explain: bool,
}

fn yes() -> bool {
    true
}

/// The manifest files of a directory (`.yaml` files only), by file name.
pub fn read_manifest_dir(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            bail!("{} has no UTF-8 file name", path.display());
        };
        if path.extension().is_some_and(|ext| ext == "yaml") && name != SCENARIO_FILE {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            files.insert(name.to_owned(), text);
        }
    }
    Ok(files)
}

/// The base cluster and every scenario under `dir`, in name order; `filter` keeps the scenarios
/// whose name contains it.
pub fn load_all(
    dir: &Path,
    filter: Option<&str>,
) -> anyhow::Result<(BTreeMap<String, String>, Vec<Scenario>)> {
    let base_dir = dir.join(BASE);
    let base = read_manifest_dir(&base_dir)?;
    cluster(&base).with_context(|| format!("in the base cluster {}", base_dir.display()))?;
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.join(SCENARIO_FILE).is_file() {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .with_context(|| format!("{} has no UTF-8 name", path.display()))?;
            names.push(name.to_owned());
        }
    }
    names.sort();
    let scenarios = names
        .iter()
        .filter(|name| filter.is_none_or(|filter| name.contains(filter)))
        .map(|name| load(&dir.join(name), &base).with_context(|| format!("scenario {name}")))
        .collect::<anyhow::Result<_>>()?;
    Ok((base, scenarios))
}

/// Loads and checks one scenario directory against the base cluster.
pub fn load(dir: &Path, base: &BTreeMap<String, String>) -> anyhow::Result<Scenario> {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} has no UTF-8 name", dir.display()))?
        .to_owned();
    let spec_path = dir.join(SCENARIO_FILE);
    let text = fs::read_to_string(&spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    let spec: ScenarioSpec = serde_norway::from_str(&text)
        .with_context(|| format!("parsing {}", spec_path.display()))?;
    ensure!(!spec.steps.is_empty(), "{SCENARIO_FILE} has no steps");
    let files = read_manifest_dir(dir)?;
    let mut unused: BTreeSet<&String> = files.keys().collect();
    let mut manifests = base.clone();
    let mut steps = Vec::new();
    for (index, step) in spec.steps.into_iter().enumerate() {
        let context = || format!("step {}", index + 1);
        for file in &step.remove {
            ensure!(
                manifests.remove(file).is_some(),
                "step {}: cannot remove {file}: the manifest directory has no such file",
                index + 1
            );
        }
        for file in &step.restore {
            let text = base
                .get(file)
                .with_context(|| format!("step {}: the base cluster has no {file}", index + 1))?;
            manifests.insert(file.clone(), text.clone());
        }
        for apply in &step.apply {
            let (source, target) = match apply {
                ApplySpec::Same(file) => (file, file),
                ApplySpec::Renamed { file, target } => (file, target),
            };
            let text = files.get(source).with_context(|| {
                format!("step {}: {source} is not in {}", index + 1, dir.display())
            })?;
            unused.remove(source);
            manifests.insert(target.clone(), text.clone());
        }
        let pods = cluster(&manifests).with_context(context)?;
        ensure!(!step.probes.is_empty(), "step {} has no probes", index + 1);
        let probes = step
            .probes
            .into_iter()
            .enumerate()
            .map(|(number, probe)| {
                probe_from_spec(probe, &pods)
                    .with_context(|| format!("step {}, probe {}", index + 1, number + 1))
            })
            .collect::<anyhow::Result<_>>()?;
        steps.push(Step {
            note: step.note,
            manifests: manifests.clone(),
            probes,
        });
    }
    if let Some(file) = unused.first() {
        bail!("{file} in {} is never applied", dir.display());
    }
    Ok(Scenario {
        name,
        description: spec.description.trim().to_owned(),
        steps,
    })
}

fn probe_from_spec(spec: ProbeSpec, pods: &[String]) -> anyhow::Result<Probe> {
    ensure!(
        !spec.explain || spec.via.explained().is_some(),
        "a `via: {}` probe needs `explain: false`: explain cannot know what the server's ingress \
         sees of it",
        spec.via.as_str()
    );
    let expected = Expectation::parse(&spec.expect)
        .and_then(|expectation| expectation.expand(pods))
        .context("in `expect`")?;
    Ok(Probe {
        port: spec.port,
        protocol: spec.protocol,
        via: spec.via,
        family: spec.family,
        explain: spec.explain,
        expected,
    })
}

/// Checks the manifests of a directory and returns its pods that are peers (not terminated), as
/// `namespace/name`, sorted.
fn cluster(manifests: &BTreeMap<String, String>) -> anyhow::Result<Vec<String>> {
    let mut objects = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    for (file, text) in manifests {
        for (index, document) in documents(text)
            .with_context(|| format!("parsing {file}"))?
            .into_iter()
            .enumerate()
        {
            let field = |pointer: &str| document.pointer(pointer).and_then(Value::as_str);
            let (Some(kind), Some(name)) = (field("/kind"), field("/metadata/name")) else {
                bail!(
                    "{file}: document {} has no kind or metadata.name",
                    index + 1
                );
            };
            let namespace = if kind == "Namespace" {
                namespaces.insert(name.to_owned());
                None
            } else {
                Some(field("/metadata/namespace").unwrap_or("default"))
            };
            let key = format!(
                "{kind} {}{name}",
                namespace.map(|ns| format!("{ns}/")).unwrap_or_default()
            );
            if let Some(other) = objects.insert(key.clone(), (file.clone(), document.clone())) {
                bail!("{key} is declared twice: in {} and in {file}", other.0);
            }
        }
    }
    let mut pods = Vec::new();
    for (key, (file, document)) in objects {
        let kind = document.pointer("/kind").and_then(Value::as_str);
        if let Some(namespace) = document
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            ensure!(
                namespaces.contains(namespace),
                "{file}: {key} is in namespace {namespace}, which no Namespace declares"
            );
        }
        let phase = document.pointer("/status/phase").and_then(Value::as_str);
        if kind == Some("Pod") && !matches!(phase, Some("Succeeded" | "Failed")) {
            pods.push(key.trim_start_matches("Pod ").to_owned());
        }
    }
    pods.sort();
    Ok(pods)
}

/// The YAML documents of a manifest file; empty documents are skipped.
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    serde_norway::Deserializer::from_str(text)
        .enumerate()
        .map(|(index, deserializer)| {
            Value::deserialize(deserializer).with_context(|| format!("document {}", index + 1))
        })
        .filter(|document| !matches!(document, Ok(Value::Null)))
        .collect()
}

#[cfg(test)]
mod tests {
    use policy_core::matrix::Cell;

    use super::*;

    const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";

    fn pod(name: &str, labels: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{{labels}}}}}\nspec: {{containers: [{{name: c}}]}}\n"
        )
    }

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";

    /// A scratch directory of this test process, emptied first.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("xtask-e2e-{}", std::process::id()))
            .join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn base() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ns-x.yaml".to_owned(), NAMESPACE.to_owned()),
            ("pod-x-a.yaml".to_owned(), pod("a", "pod: a")),
            ("pod-x-b.yaml".to_owned(), pod("b", "pod: b")),
        ])
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn steps_change_the_directory_in_order() {
        let dir = scratch("steps");
        let labelled = pod("b", "pod: b, role: client");
        write(
            &dir,
            &[
                (
                    SCENARIO_FILE,
                    r#"
description: deny, relabel, allow again
steps:
  - apply: [deny.yaml]
    probes:
      - { port: 80, protocol: TCP, expect: "deny all" }
  - note: b becomes a client
    apply: [{ file: b-client.yaml, as: pod-x-b.yaml }]
    probes:
      - { port: 81, protocol: UDP, family: 6, via: service, expect: "deny all" }
  - remove: [deny.yaml]
    restore: [pod-x-b.yaml]
    probes:
      - { port: 80, protocol: TCP, explain: false, expect: "allow all" }
"#,
                ),
                ("deny.yaml", POLICY),
                ("b-client.yaml", &labelled),
            ],
        );
        let scenario = load(&dir, &base()).unwrap();
        assert_eq!(scenario.name, "steps");
        assert_eq!(scenario.description, "deny, relabel, allow again");
        let [first, second, third] = scenario.steps.as_slice() else {
            panic!("three steps");
        };
        assert!(first.manifests.contains_key("deny.yaml"));
        assert_eq!(second.manifests["pod-x-b.yaml"], labelled);
        assert_eq!(second.note.as_deref(), Some("b becomes a client"));
        assert_eq!(third.manifests, base());

        let probe = &second.probes[0];
        assert_eq!(
            (probe.port, probe.protocol, probe.via, probe.family),
            (81, Protocol::Udp, Via::Service, Family::V6)
        );
        assert_eq!(probe.expected.get("x/a", "x/b"), Some(Cell::Denied));
        assert_eq!(probe.expected.get("x/b", "x/b"), Some(Cell::Allowed));
        assert_eq!(probe.to_string(), "UDP/81 via service IPv6");
        assert!(first.probes[0].explain);
        assert!(!third.probes[0].explain);
        assert_eq!(first.probes[0].expected.pods(), ["x/a", "x/b"]);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = scratch("missing");
        write(
            &dir,
            &[(
                SCENARIO_FILE,
                "description: d\nsteps:\n  - apply: [nowhere.yaml]\n    probes: [{port: 80, protocol: TCP, expect: allow all}]\n",
            )],
        );
        let error = load(&dir, &base()).unwrap_err();
        assert!(format!("{error:#}").contains("nowhere.yaml"), "{error:#}");
    }

    #[test]
    fn an_unused_file_is_an_error() {
        let dir = scratch("unused");
        write(
            &dir,
            &[
                (
                    SCENARIO_FILE,
                    "description: d\nsteps:\n  - probes: [{port: 80, protocol: TCP, expect: allow all}]\n",
                ),
                ("deny.yaml", POLICY),
            ],
        );
        let error = load(&dir, &base()).unwrap_err();
        assert!(format!("{error:#}").contains("never applied"), "{error:#}");
    }

    #[test]
    fn an_expectation_naming_an_absent_pod_is_an_error() {
        let dir = scratch("absent-pod");
        write(
            &dir,
            &[(
                SCENARIO_FILE,
                "description: d\nsteps:\n  - probes: [{port: 80, protocol: TCP, expect: \"deny all\\nallow x/c -> x/a\"}]\n",
            )],
        );
        let error = load(&dir, &base()).unwrap_err();
        assert!(
            format!("{error:#}").contains("x/c matches no pod"),
            "{error:#}"
        );
    }

    #[test]
    fn a_bad_probe_is_an_error() {
        let dir = scratch("bad-probe");
        for probe in [
            "{port: 80, protocol: SCTP, expect: allow all}",
            "{port: 80, protocol: TCP, family: 5, expect: allow all}",
            "{port: 80, protocol: TCP, expected: allow all}",
            "{port: 80, protocol: TCP, via: nodeport, expect: allow all}",
        ] {
            write(
                &dir,
                &[(
                    SCENARIO_FILE,
                    &format!("description: d\nsteps:\n  - probes: [{probe}]\n"),
                )],
            );
            assert!(load(&dir, &base()).is_err(), "{probe}");
        }
    }

    #[test]
    fn an_object_declared_twice_is_an_error() {
        let mut manifests = base();
        manifests.insert("again.yaml".to_owned(), pod("a", "pod: a"));
        let error = cluster(&manifests).unwrap_err();
        assert!(
            error.to_string().contains("Pod x/a is declared twice"),
            "{error}"
        );
    }

    #[test]
    fn an_undeclared_namespace_is_an_error() {
        let mut manifests = base();
        manifests.remove("ns-x.yaml");
        let error = cluster(&manifests).unwrap_err();
        assert!(
            error.to_string().contains("no Namespace declares"),
            "{error}"
        );
    }

    #[test]
    fn terminated_pods_are_no_peers() {
        let mut manifests = base();
        let done = pod("c", "pod: c") + "status: {phase: Succeeded}\n";
        manifests.insert("pod-x-c.yaml".to_owned(), done);
        manifests.insert(
            "multi.yaml".to_owned(),
            format!("{POLICY}---\n{}", pod("d", "pod: d")),
        );
        assert_eq!(cluster(&manifests).unwrap(), ["x/a", "x/b", "x/d"]);
    }
}
