//! The flip check: 200 changes in a row, each flipping a pod label, a policy or a namespace
//! label, while steady TCP and UDP clients run through pairs that every one of the states
//! allows: on the ptp node, on the bridge node and across them. Every flip moves the clients'
//! addresses to other peer classes, or isolates and opens endpoints, so each delta rewrites
//! what the kernel consults for those very flows; not one connection or datagram may be lost.

use std::{collections::BTreeMap, fs, path::Path, time::Instant};

use anyhow::{Context as _, bail, ensure};
use jiff::Timestamp;
use policy_core::{
    manifest::{MAX_NODES, node_name},
    telemetry::{FLOW_LOG, FlowRecord},
};
use policy_lab::names;

use super::{
    lab::Lab,
    steady::{self, Steady, Traffic},
    write_manifests,
};

/// How many changes the check makes.
pub const FLIPS: usize = 200;

/// The steady pairs: x/c -> x/a on node-1 (ptp), y/c -> x/b on node-2 (bridge), and y/b ->
/// x/a from the bridge node to the ptp node.
const PAIRS: [(&str, &str); 3] = [("x/c", "x/a"), ("y/c", "x/b"), ("y/b", "x/a")];

/// Policies present in every state: x/a and x/b accept pods labelled steady=yes from any
/// namespace, pods labelled flip=on on TCP and UDP 80, and pods of namespaces labelled flip=on.
const ALWAYS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: flip-servers
  namespace: x
spec:
  podSelector:
    matchExpressions:
    - {key: pod, operator: In, values: [a, b]}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchLabels: {steady: \"yes\"}
  - from:
    - namespaceSelector: {}
      podSelector:
        matchLabels: {flip: \"on\"}
    ports:
    - {protocol: TCP, port: 80}
    - {protocol: UDP, port: 80}
  - from:
    - namespaceSelector:
        matchLabels: {flip: \"on\"}
";

/// The policy the policy flips add and remove: the clients' egress is isolated, to namespace x
/// and to the pod range of both nodes but for one address no pod has.
const FLIPPED_POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: flip-client-egress
  namespace: y
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels: {ns: x}
  - to:
    - ipBlock:
        cidr: 10.244.0.0/16
        except: [10.244.2.99/32]
";

/// What one state of the check flips on.
#[derive(Clone, Copy, Default)]
struct Flips {
    pod_label: bool,
    policy: bool,
    namespace_label: bool,
}

/// What the check measured.
pub struct Outcome {
    pub flips: usize,
    /// Connections and datagrams made, by pair and traffic, all of them answered.
    pub exchanges: u32,
    pub seconds: f64,
}

/// Runs the check on the lab that is up with `base` written in `dir`.
pub fn run(lab: &Lab, dir: &Path, base: &BTreeMap<String, String>) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut flips = Flips::default();
    write_manifests(dir, &manifests(base, flips)?)?;
    lab.up(dir).context("applying the flip check's policies")?;
    let mut clients = Vec::new();
    for (from, to) in PAIRS {
        for traffic in [Traffic::Tcp, Traffic::Udp] {
            clients.push((traffic, Steady::start_with(from, to, traffic)?));
        }
    }
    let mut applied = Ok(());
    let mut flip_starts = Vec::with_capacity(FLIPS);
    for flip in 0..FLIPS {
        flip_starts.push(Timestamp::now());
        match flip % 3 {
            0 => flips.pod_label = !flips.pod_label,
            1 => flips.policy = !flips.policy,
            _ => flips.namespace_label = !flips.namespace_label,
        }
        applied = manifests(base, flips)
            .and_then(|files| write_manifests(dir, &files))
            .and_then(|()| lab.up(dir).map(|_| ()))
            .with_context(|| format!("flip {}", flip + 1));
        if applied.is_err() {
            break;
        }
    }
    let mut exchanges = 0;
    let mut lost = Vec::new();
    for (traffic, client) in clients {
        let (from, to) = (client.from.clone(), client.to.clone());
        let tally = client.finish()?;
        exchanges += tally.attempts;
        if tally.failures > 0 {
            let failures: Vec<String> = tally
                .described
                .iter()
                .map(|failure| {
                    let during = flip_starts.partition_point(|start| *start <= failure.started);
                    format!("{failure} during flip {during}")
                })
                .collect();
            let overflows = match steady::listen_overflows(&to) {
                Ok(count) => format!("{to}'s accept queue overflowed {count} times"),
                Err(error) => format!("{error:#}"),
            };
            lost.push(format!(
                "{from} -> {to} ({}/80) lost {} of {} ({}; {overflows})",
                traffic.name(),
                tally.failures,
                tally.attempts,
                failures.join("; ")
            ));
        }
    }
    applied?;
    if !lost.is_empty() {
        bail!(
            "the agents logged these drops of the steady pairs' packets:\n{}\nsteady traffic \
             allowed in every state was lost during {FLIPS} flips: {}",
            logged_drops().join("\n"),
            lost.join("; ")
        );
    }
    ensure!(exchanges > 0, "the steady clients made no exchange");
    Ok(Outcome {
        flips: FLIPS,
        exchanges,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The drops of the steady pairs' packets, either way, that every node's agent logged in its
/// flow log, one line each: what the kernel decided, for a failure to tell a policy drop from a
/// packet lost elsewhere. Drops of packets the agent could not name a pod for come too.
fn logged_drops() -> Vec<String> {
    let steady = |record: &FlowRecord| {
        let (Some(src), Some(dst)) = (&record.src_pod, &record.dst_pod) else {
            return true;
        };
        PAIRS
            .iter()
            .any(|(from, to)| (src == from && dst == to) || (src == to && dst == from))
    };
    let mut drops = Vec::new();
    for k in 1..=MAX_NODES {
        let log = names::node_run_dir(&node_name(k)).join(FLOW_LOG);
        let Ok(text) = fs::read_to_string(&log) else {
            continue;
        };
        drops.extend(
            text.lines()
                .filter_map(|line| serde_json::from_str::<FlowRecord>(line).ok())
                .filter(|record| record.verdict == "dropped" && steady(record))
                .map(|record| record.to_string()),
        );
    }
    if drops.is_empty() {
        drops.push("none".to_owned());
    }
    drops
}

/// The base cluster with the clients labelled steady=yes, and what `flips` turns on.
fn manifests(
    base: &BTreeMap<String, String>,
    flips: Flips,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = base.clone();
    for (from, _) in PAIRS {
        let file = format!("pod-{}.yaml", from.replace('/', "-"));
        let mut labels = vec!["steady: \"yes\""];
        if flips.pod_label {
            labels.push("flip: \"on\"");
        }
        relabel(&mut files, &file, &labels)?;
    }
    if flips.namespace_label {
        relabel(&mut files, "ns-y.yaml", &["flip: \"on\""])?;
    }
    files.insert("flip-servers.yaml".to_owned(), ALWAYS.to_owned());
    if flips.policy {
        files.insert(
            "flip-client-egress.yaml".to_owned(),
            FLIPPED_POLICY.to_owned(),
        );
    }
    Ok(files)
}

/// Adds `labels` (each `key: value`) to the object of a base file.
fn relabel(
    files: &mut BTreeMap<String, String>,
    file: &str,
    labels: &[&str],
) -> anyhow::Result<()> {
    const LABELS: &str = "\n  labels:\n";
    let text = files
        .get_mut(file)
        .with_context(|| format!("the base cluster has no {file}"))?;
    let at = text
        .find(LABELS)
        .with_context(|| format!("{file} has no metadata.labels"))?
        + LABELS.len();
    let added: String = labels
        .iter()
        .map(|label| format!("    {label}\n"))
        .collect();
    text.insert_str(at, &added);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_add_labels_and_the_policy_to_the_base_files() {
        let base: BTreeMap<String, String> = [
            (
                "pod-x-c.yaml",
                "kind: Pod\nmetadata:\n  name: c\n  labels:\n    pod: c\n",
            ),
            (
                "pod-y-c.yaml",
                "kind: Pod\nmetadata:\n  name: c\n  labels:\n    pod: c\n",
            ),
            (
                "pod-y-b.yaml",
                "kind: Pod\nmetadata:\n  name: b\n  labels:\n    pod: b\n",
            ),
            (
                "ns-y.yaml",
                "kind: Namespace\nmetadata:\n  name: y\n  labels:\n    ns: y\n",
            ),
        ]
        .into_iter()
        .map(|(name, text)| (name.to_owned(), text.to_owned()))
        .collect();
        let plain = manifests(&base, Flips::default()).unwrap();
        assert!(plain["pod-x-c.yaml"].contains("  labels:\n    steady: \"yes\"\n    pod: c\n"));
        assert!(!plain["pod-x-c.yaml"].contains("flip"));
        assert!(!plain["ns-y.yaml"].contains("flip"));
        assert!(!plain.contains_key("flip-client-egress.yaml"));
        let all = Flips {
            pod_label: true,
            policy: true,
            namespace_label: true,
        };
        let flipped = manifests(&base, all).unwrap();
        assert!(flipped["pod-y-b.yaml"].contains("    flip: \"on\"\n"));
        assert!(flipped["ns-y.yaml"].contains("    flip: \"on\"\n    ns: y\n"));
        assert!(flipped.contains_key("flip-client-egress.yaml"));
    }
}
