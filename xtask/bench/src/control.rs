//! The control-plane benchmarks (root): the real agent binary on a bench node, fed a manifest
//! directory.
//!
//! - Change to enforcement: a synthetic cluster of 1,000 pods and 500 policies plus a probe
//!   namespace; each change kind is written in turn while a client pod probes a server pod, and
//!   the time until the kernel's verdict flips is taken (see [`probe`]).
//! - Start: the agent starts against 1,000, 10,000 and 50,000 pods with 1,000 policies in 100
//!   namespaces and 100 endpoints on its node; the time to its first published generation, its
//!   peak resident memory and the BPF map memory it programmed.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use policy_common::names::{PEERS_V4_MAP, PEERS_V6_MAP, POLICY_MAP};
use policy_lab::{cmd as run, netns};
use serde::Serialize;
use serde_json::json;

use super::{
    bed::{Bed, MapMemory, Phases, Start},
    cluster::{self, ClusterSize, MEASURED_NODE},
    probe::{self, percentile},
    report::{Plot, Section, Series, Table, Target},
};

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Interleaved runs behind every figure.
    pub runs: usize,
    /// Rounds of every change, in both directions, per run.
    pub rounds_per_run: usize,
    /// The pod counts of the start benchmark.
    pub start_pods: &'static [usize],
    /// One more start: at this many pods, with this many ClusterNetworkPolicies.
    pub start_with_cluster_policies: Option<(usize, usize)>,
}

impl Settings {
    /// What `cargo xtask bench` measures: five runs, 100 samples of every change, and starts
    /// at 1,000, 10,000 and 50,000 pods, and at 10,000 pods with 200 ClusterNetworkPolicies.
    pub const FULL: Settings = Settings {
        runs: 5,
        rounds_per_run: 20,
        start_pods: &[1_000, 10_000, 50_000],
        start_with_cluster_policies: Some((10_000, 200)),
    };
}

/// How long a change may take to flip the verdict before it counts as missed.
const FLIP_TIMEOUT: Duration = Duration::from_secs(5);
/// The lab source of the change benchmark.
const CHANGE_CLUSTER: ClusterSize = ClusterSize {
    pods: 1_000,
    policies: 500,
    namespaces: 100,
    cluster_policies: 0,
};
/// The start benchmark's policies and namespaces.
const START_POLICIES: usize = 1_000;
const START_NAMESPACES: usize = 100;
/// The server port of the probe pods.
const PROBE_PORT: u16 = 8080;
/// The namespace of the probe pods.
const PROBE_NAMESPACE: &str = "probe";
/// Where the bench writes its manifest directories.
const WORK_DIR: &str = "/run/netpol-bench/work";

/// Everything the control-plane benchmarks measured.
#[derive(Clone, Debug, Serialize)]
pub struct ControlFigures {
    pub changes: ChangeFigures,
    pub starts: Vec<StartFigures>,
}

/// Change to enforcement, per change.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeFigures {
    pub pods: usize,
    pub policies: usize,
    pub namespaces: usize,
    /// Endpoints on the measured node (sink endpoints and probe pods).
    pub endpoints: usize,
    pub runs: usize,
    pub rounds_per_run: usize,
    pub attempt_timeout_ms: f64,
    pub attempt_period_ms: f64,
    pub changes: Vec<ChangeLatency>,
}

/// One change, in every round of every run.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeLatency {
    /// E.g. "policy added".
    pub change: String,
    /// "allowed" or "denied": the verdict the change brings.
    pub verdict: String,
    /// Milliseconds from writing the change to its enforcement, sorted.
    pub samples_ms: Vec<f64>,
    /// Changes whose verdict did not flip within the flip timeout.
    pub missed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The p50 of each run, in run order: the spread between runs.
    pub run_p50s_ms: Vec<f64>,
    /// From writing the change to the end of the agent's reconcile that wrote it (its maps
    /// written and programs attached), as its `status.json` tells: the agent's share of the time.
    pub agent_p50_ms: f64,
    pub agent_p99_ms: f64,
}

/// One timed change.
#[derive(Clone, Copy, Debug)]
struct Sample {
    change: Change,
    run: usize,
    /// From the write to the flip seen by the probe; `None` when it did not flip in time.
    flip: Option<Duration>,
    /// From the write to the end of the agent's reconcile that wrote it, in milliseconds.
    agent_ms: Option<f64>,
}

/// The agent's start at one cluster size: medians over the runs, and the maps of the median
/// run.
#[derive(Clone, Debug, Serialize)]
pub struct StartFigures {
    pub pods: usize,
    pub policies: usize,
    pub cluster_policies: usize,
    pub namespaces: usize,
    pub endpoints: usize,
    pub first_generation_ms: f64,
    pub peak_rss_bytes: u64,
    pub map_memory_bytes: u64,
    pub runs: Vec<Start>,
    pub maps: Vec<MapMemory>,
}

/// Runs both benchmarks with `agent` (a release build of `policy-agent`).
pub fn measure(agent: &Path, settings: Settings) -> Result<ControlFigures> {
    fs::create_dir_all(WORK_DIR).with_context(|| format!("creating {WORK_DIR}"))?;
    println!(
        "bench: agent start at {:?} pods ({} interleaved runs)",
        settings.start_pods, settings.runs
    );
    let starts = measure_starts(agent, settings)?;
    println!(
        "bench: change to enforcement, {} pods / {} policies ({} runs of {} rounds)",
        CHANGE_CLUSTER.pods, CHANGE_CLUSTER.policies, settings.runs, settings.rounds_per_run
    );
    let changes = measure_changes(agent, settings)?;
    // The generated manifests (tens of MB at 50,000 pods) would otherwise stay in /run.
    fs::remove_dir_all(WORK_DIR).with_context(|| format!("removing {WORK_DIR}"))?;
    Ok(ControlFigures { changes, starts })
}

/// The generation `agent` computes for `dir`.
fn generation(agent: &Path, dir: &Path) -> Result<String> {
    let mut command = Command::new(agent);
    command.arg("generation").arg(dir);
    Ok(run::output(&mut command)?.trim().to_owned())
}

/// Writes `text` to `dir/name` through a rename, so the agent never reads half a file.
fn write_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    let staged = dir.with_extension("staged");
    fs::create_dir_all(&staged).with_context(|| format!("creating {}", staged.display()))?;
    let staged = staged.join(name);
    fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
    let target = dir.join(name);
    fs::rename(&staged, &target)
        .with_context(|| format!("moving {} to {}", staged.display(), target.display()))
}

fn remove_file(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// A fresh manifest directory holding `cluster`.
fn write_cluster(name: &str, cluster: &cluster::Cluster) -> Result<PathBuf> {
    let dir = Path::new(WORK_DIR).join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in &cluster.files {
        write_file(&dir, file, text)?;
    }
    Ok(dir)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

fn measure_starts(agent: &Path, settings: Settings) -> Result<Vec<StartFigures>> {
    struct Scale {
        size: ClusterSize,
        addresses: Vec<Ipv4Addr>,
        dir: PathBuf,
        generation: String,
        endpoints: usize,
        runs: Vec<Start>,
    }
    let mut scales = Vec::new();
    let starts = settings
        .start_pods
        .iter()
        .map(|&pods| (pods, 0))
        .chain(settings.start_with_cluster_policies);
    for (pods, cluster_policies) in starts {
        let size = ClusterSize {
            pods,
            policies: START_POLICIES,
            namespaces: START_NAMESPACES,
            cluster_policies,
        };
        let cluster = cluster::generate(size);
        let dir = write_cluster(&format!("start-{pods}-{cluster_policies}"), &cluster)?;
        let addresses: Vec<Ipv4Addr> = cluster.local_pods.iter().map(|pod| pod.ipv4).collect();
        scales.push(Scale {
            generation: generation(agent, &dir)?,
            endpoints: addresses.len(),
            addresses,
            size,
            dir,
            runs: Vec::new(),
        });
    }
    for run in 1..=settings.runs {
        for scale in &mut scales {
            // A fresh node every time: started again on the same interfaces after the pins of
            // the previous agent were removed, the agent was seconds slower to resolve and
            // write its maps, which is not a first programming.
            let mut bed = Bed::new(&format!("start-{}", scale.size.pods))?;
            let label = scale_label(scale.size.pods, scale.size.cluster_policies);
            bed.add_sink_endpoints(&scale.addresses)?;
            let start = bed.measure_start(agent, &scale.dir, MEASURED_NODE, &scale.generation)?;
            drop(bed);
            println!(
                "  run {run}, {label}: first generation after {:.0} ms, peak RSS {:.1} MB, \
                 map memory {:.1} MB",
                start.first_generation_ms,
                start.peak_rss_bytes as f64 / 1e6,
                map_bytes(&start.maps) as f64 / 1e6
            );
            scale.runs.push(start);
        }
    }
    Ok(scales
        .into_iter()
        .map(|scale| {
            let mut times: Vec<f64> = scale.runs.iter().map(|r| r.first_generation_ms).collect();
            let mut rss: Vec<f64> = scale.runs.iter().map(|r| r.peak_rss_bytes as f64).collect();
            let mut maps: Vec<f64> = scale
                .runs
                .iter()
                .map(|r| map_bytes(&r.maps) as f64)
                .collect();
            let first_generation_ms = median(&mut times);
            let median_run = scale
                .runs
                .iter()
                .find(|r| r.first_generation_ms == first_generation_ms)
                .map(|r| r.maps.clone())
                .unwrap_or_default();
            StartFigures {
                pods: scale.size.pods,
                policies: scale.size.policies,
                cluster_policies: scale.size.cluster_policies,
                namespaces: scale.size.namespaces,
                endpoints: scale.endpoints,
                first_generation_ms,
                peak_rss_bytes: median(&mut rss) as u64,
                map_memory_bytes: median(&mut maps) as u64,
                runs: scale.runs,
                maps: median_run,
            }
        })
        .collect())
}

/// `10000 pods`, or `10000 pods + 200 ClusterNetworkPolicies`.
fn scale_label(pods: usize, cluster_policies: usize) -> String {
    if cluster_policies == 0 {
        format!("{pods} pods")
    } else {
        format!("{pods} pods + {cluster_policies} ClusterNetworkPolicies")
    }
}

/// The report's sections: change to enforcement, then the agent's start.
pub fn sections(figures: &ControlFigures) -> Vec<Section> {
    vec![
        change_section(&figures.changes),
        start_section(&figures.starts),
    ]
}

fn change_section(figures: &ChangeFigures) -> Section {
    let rows = figures
        .changes
        .iter()
        .map(|change| {
            let spread = match (
                change.run_p50s_ms.iter().copied().reduce(f64::min),
                change.run_p50s_ms.iter().copied().reduce(f64::max),
            ) {
                (Some(low), Some(high)) => format!("{low:.1} to {high:.1}"),
                _ => "-".to_owned(),
            };
            vec![
                change.change.clone(),
                change.verdict.clone(),
                change.samples_ms.len().to_string(),
                change.missed.to_string(),
                format!("{:.1}", change.p50_ms),
                format!("{:.1}", change.p99_ms),
                format!("{:.1}", change.max_ms),
                spread,
                format!("{:.1}", change.agent_p50_ms),
                format!("{:.1}", change.agent_p99_ms),
            ]
        })
        .collect();
    let series = figures
        .changes
        .iter()
        .map(|change| Series {
            name: change.change.clone(),
            points: (1..=100)
                .filter_map(|p| {
                    let p = f64::from(p);
                    percentile(&change.samples_ms, p).map(|ms| (p, ms))
                })
                .collect(),
        })
        .collect();
    let targets = figures
        .changes
        .iter()
        .map(|change| Target {
            what: format!("{}: p99 from the write to enforcement", change.change),
            goal: "< 100 ms, none missed".to_owned(),
            measured: format!("{:.1} ms, {} missed", change.p99_ms, change.missed),
            met: change.p99_ms < 100.0 && change.missed == 0,
        })
        .collect();
    Section {
        title: "Control plane: from a manifest change to enforcement".to_owned(),
        setup: format!(
            "The release agent runs in a bench node's network namespace against a manifest \
             directory of {pods} pods, {policies} NetworkPolicies and {namespaces} namespaces: the \
             synthetic cluster of the resolver benchmark (100 pods per node, ten kinds of policy) \
             plus a probe namespace. Pods of other nodes are not materialised: the agent resolves \
             them as peers, as it would in a cluster. The {endpoints} pods of its own node have \
             real interfaces (host-side veths with the programs attached): 100 synthetic pods \
             whose pod side carries no traffic, and four probe pods, each a network namespace \
             wired like the ptp CNI plugin: a server on TCP {port}, isolated by a policy that \
             lets in pods labelled `access: granted`, and one client per kind of change. Each \
             change is written to the directory (a file renamed into place, or removed) while \
             its client opens a TCP connection to the server every {period} ms; a connection \
             counts as denied when the SYN gets no answer within {timeout} ms. The figure is the \
             time from just before the write to the first connection of a run of {stable} that \
             all see the new verdict, so it includes the agent noticing the change (inotify), \
             reading and resolving all manifests, writing the maps and, for a new pod, attaching \
             its programs; it is seen at most one attempt late ({period} ms, or {timeout} ms when \
             a denied connection was in flight). A policy added and deleted toggles a policy \
             that lets one client in; a pod label added and removed toggles `access: granted` on \
             another; a pod added and deleted writes and removes a third client (whose interface \
             was wired before, as when its address reaches the API after the CNI ran). Each run \
             makes every change {rounds} times, all kinds interleaved, and waits for the agent \
             to publish each change before the next; {runs} runs give {samples} samples per \
             change. The percentiles pool all samples (nearest rank); `run p50s` is the spread \
             of the per-run medians. The agent columns are the agent's share: from the write to \
             the end of the reconcile that wrote it (maps written, programs attached), as the \
             agent's `status.json` times it; the rest is the wait for the probe's next attempts. The machine is shared with other builds, so the tail \
             is noisy.",
            pods = figures.pods,
            policies = figures.policies,
            namespaces = figures.namespaces,
            endpoints = figures.endpoints,
            port = PROBE_PORT,
            period = figures.attempt_period_ms,
            timeout = figures.attempt_timeout_ms,
            stable = probe::STABLE,
            rounds = figures.rounds_per_run,
            runs = figures.runs,
            samples = figures.runs * figures.rounds_per_run,
        ),
        tables: vec![Table {
            caption: "Milliseconds from writing a change to the kernel enforcing it".to_owned(),
            columns: [
                "change",
                "verdict after",
                "samples",
                "missed",
                "p50 ms",
                "p99 ms",
                "max ms",
                "run p50s ms",
                "agent p50 ms",
                "agent p99 ms",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        }],
        plots: vec![Plot {
            file: "control-changes.png".to_owned(),
            title: "From a manifest change to enforcement: percentiles".to_owned(),
            x_label: "percentile".to_owned(),
            y_label: "ms".to_owned(),
            log_x: false,
            series,
        }],
        targets,
    }
}

/// The entries of `name` in the maps of a start, or 0.
fn entries(start: &StartFigures, name: &str) -> u64 {
    start
        .maps
        .iter()
        .find(|map| map.name == name)
        .and_then(|map| map.entries)
        .unwrap_or(0)
}

/// Entries that follow the pods and the rules: peer prefixes and policy entries.
fn growing_entries(start: &StartFigures) -> u64 {
    [PEERS_V4_MAP, PEERS_V6_MAP, POLICY_MAP]
        .iter()
        .map(|name| entries(start, name))
        .sum()
}

fn start_section(starts: &[StartFigures]) -> Section {
    let mb = |bytes: u64| format!("{:.1}", bytes as f64 / 1e6);
    let phase = |start: &StartFigures, pick: fn(&Phases) -> f64| {
        let mut values: Vec<f64> = start
            .runs
            .iter()
            .filter_map(|run| run.phases.as_ref().map(pick))
            .collect();
        if values.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}", median(&mut values))
        }
    };
    let rows = starts
        .iter()
        .map(|start| {
            vec![
                start.pods.to_string(),
                start.policies.to_string(),
                start.cluster_policies.to_string(),
                start.endpoints.to_string(),
                format!("{:.0}", start.first_generation_ms),
                phase(start, |p| p.load_ms),
                phase(start, |p| p.resolve_and_write_ms),
                phase(start, |p| p.attach_ms),
                mb(start.peak_rss_bytes),
                mb(start.map_memory_bytes),
            ]
        })
        .collect();
    let mut map_columns = vec!["map".to_owned(), "max entries".to_owned()];
    for start in starts {
        let label = scale_label(start.pods, start.cluster_policies);
        map_columns.push(format!("{label}: entries"));
        map_columns.push(format!("{label}: MB"));
    }
    let map_rows = starts
        .first()
        .map(|first| {
            first
                .maps
                .iter()
                .map(|map| {
                    let mut row = vec![map.name.clone(), map.max_entries.to_string()];
                    for start in starts {
                        let same = start.maps.iter().find(|other| other.name == map.name);
                        row.push(
                            same.and_then(|m| m.entries)
                                .map_or("fixed".to_owned(), |n| n.to_string()),
                        );
                        row.push(same.map_or("-".to_owned(), |m| mb(m.memlock_bytes)));
                    }
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    let pods = |start: &StartFigures| start.pods as f64;
    let all_starts = starts;
    // Curves, targets and growth are about NetworkPolicy only; the start with
    // ClusterNetworkPolicies is compared with the one of the same size.
    let starts: Vec<&StartFigures> = all_starts
        .iter()
        .filter(|start| start.cluster_policies == 0)
        .collect();
    let starts = starts.as_slice();
    let series = vec![
        Series {
            name: "agent peak RSS".to_owned(),
            points: starts
                .iter()
                .map(|s| (pods(s), s.peak_rss_bytes as f64 / 1e6))
                .collect(),
        },
        Series {
            name: "BPF map memory".to_owned(),
            points: starts
                .iter()
                .map(|s| (pods(s), s.map_memory_bytes as f64 / 1e6))
                .collect(),
        },
        Series {
            name: "peer prefixes + policy entries (thousands)".to_owned(),
            points: starts
                .iter()
                .map(|s| (pods(s), growing_entries(s) as f64 / 1e3))
                .collect(),
        },
    ];
    let mut targets = Vec::new();
    if let Some(start) = starts.iter().find(|start| start.pods == 10_000) {
        targets.push(Target {
            what: "10,000 pods: start to first published generation".to_owned(),
            goal: "< 1 s".to_owned(),
            measured: format!("{:.2} s", start.first_generation_ms / 1e3),
            met: start.first_generation_ms < 1_000.0,
        });
        targets.push(Target {
            what: "10,000 pods: agent peak RSS".to_owned(),
            goal: "< 100 MB".to_owned(),
            measured: format!("{} MB", mb(start.peak_rss_bytes)),
            met: start.peak_rss_bytes < 100_000_000,
        });
    }
    if let (Some(small), Some(large)) = (starts.first(), starts.last())
        && large.pods > small.pods
    {
        let pods_ratio = large.pods as f64 / small.pods as f64;
        let entries_ratio = growing_entries(large) as f64 / growing_entries(small).max(1) as f64;
        targets.push(Target {
            what: format!(
                "map entries from {} to {} pods (x{pods_ratio:.0} pods)",
                small.pods, large.pods
            ),
            goal: "grow with pods + rules, not pods x pods".to_owned(),
            measured: format!(
                "peer prefixes + policy entries x{entries_ratio:.1} ({} to {})",
                growing_entries(small),
                growing_entries(large)
            ),
            met: entries_ratio <= pods_ratio,
        });
    }
    for tiered in all_starts.iter().filter(|start| start.cluster_policies > 0) {
        let Some(alone) = starts.iter().find(|start| start.pods == tiered.pods) else {
            continue;
        };
        let policy_entries = |start: &StartFigures| entries(start, POLICY_MAP);
        let added = policy_entries(tiered).saturating_sub(policy_entries(alone));
        targets.push(Target {
            what: format!(
                "{} pods: map memory with {} ClusterNetworkPolicies against without",
                tiered.pods, tiered.cluster_policies
            ),
            goal: "grows with the rules, not pods x pods".to_owned(),
            measured: format!(
                "{} MB against {} MB; {added} more policy entries for {} endpoints",
                mb(tiered.map_memory_bytes),
                mb(alone.map_memory_bytes),
                tiered.endpoints
            ),
            met: added <= (tiered.endpoints * tiered.cluster_policies * 4) as u64,
        });
    }
    Section {
        title: "Control plane: full resolve and first programming".to_owned(),
        setup: format!(
            "The release agent (`policy-agent run --source files:DIR`) starts in a bench node's \
             network namespace with empty pins, against the synthetic cluster of the resolver \
             benchmark at {sizes} pods, each with {policies} NetworkPolicies in {namespaces} \
             namespaces and 100 pods per node. The 100 pods of its node have real interfaces \
             (host-side veths with /32 routes, their pod ends in one namespace and holding the \
             pods' addresses), so the agent attaches its three programs to each. The time runs \
             from starting the process to \
             the agent publishing the manifests' generation as applied, which it does after \
             writing the maps and attaching every program; the phases come from the timestamps \
             the agent publishes in `status.json`: loading the eBPF object (verifier included) \
             until the datapath is open, resolving and writing the maps until its first \
             reconcile has written them, attaching until that reconcile ends. Peak RSS is the agent's `VmHWM` read when the generation is published. \
             Map memory is what the kernel charges for each pinned map (`memlock` in the fdinfo \
             of the map's descriptor, which since Linux 6.4 is the map's actual usage: hash maps \
             created without preallocation and LPM tries grow with their entries; preallocated \
             maps, arrays and the ring buffer have a fixed size); entries are counted by walking \
             each hash map's and trie's keys. Connection tracking and fragments are empty at \
             start but preallocated. Every size is started {runs} times, sizes interleaved, each time \
             on a freshly wired node (an agent started with empty pins on interfaces a previous \
             agent had programmed took about 3 s longer to resolve and write its maps, which \
             is not measured here); the figures are medians, the map table is from the median \
             run. One more start has ClusterNetworkPolicies too (five kinds over both tiers: \
             Admin `Deny`, `Accept` and `Pass`, Baseline `Deny` with networks and port ranges, \
             priorities in turn).{breakdown}",
            breakdown = breakdown(all_starts),
            sizes = starts
                .iter()
                .map(|start| start.pods.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            policies = starts.first().map_or(0, |start| start.policies),
            namespaces = starts.first().map_or(0, |start| start.namespaces),
            runs = starts.first().map_or(0, |start| start.runs.len()),
        ),
        tables: vec![
            Table {
                caption: "Agent start: medians".to_owned(),
                columns: [
                    "pods",
                    "policies",
                    "cluster policies",
                    "endpoints",
                    "first generation ms",
                    "load ms",
                    "resolve + write ms",
                    "attach ms",
                    "peak RSS MB",
                    "map memory MB",
                ]
                .map(String::from)
                .to_vec(),
                rows,
            },
            Table {
                caption: "BPF maps after the first programming: entries in use and kernel-charged \
                          memory"
                    .to_owned(),
                columns: map_columns,
                rows: map_rows,
            },
        ],
        plots: vec![Plot {
            file: "control-start.png".to_owned(),
            title: "Agent start: memory against cluster size".to_owned(),
            x_label: "pods".to_owned(),
            y_label: "MB (entries: thousands)".to_owned(),
            log_x: true,
            series,
        }],
        targets,
    }
}

/// Where the start time goes at the largest size, in a sentence (empty without phases).
fn breakdown(starts: &[StartFigures]) -> String {
    let Some(start) = starts.last() else {
        return String::new();
    };
    let phases: Vec<Phases> = start.runs.iter().filter_map(|run| run.phases).collect();
    if phases.is_empty() || start.endpoints == 0 {
        return String::new();
    }
    let pick = |field: fn(&Phases) -> f64| {
        let mut values: Vec<f64> = phases.iter().map(field).collect();
        median(&mut values)
    };
    let (load, write, attach) = (
        pick(|p| p.load_ms),
        pick(|p| p.resolve_and_write_ms),
        pick(|p| p.attach_ms),
    );
    // Every endpoint gets three TCX links: from_pod, to_pod and svc_egress.
    let per_link = attach / (3 * start.endpoints) as f64;
    format!(
        " At {} pods, loading the object took {load:.0} ms, resolving and writing the maps \
         {write:.0} ms, and attaching {attach:.0} ms: {per_link:.1} ms for each of the {} TCX \
         links (three per endpoint).",
        start.pods,
        3 * start.endpoints
    )
}

/// The kernel-reported memory of all maps.
pub fn map_bytes(maps: &[MapMemory]) -> u64 {
    maps.iter().map(|map| map.memlock_bytes).sum()
}

/// The probe pods: the server, and one client per change kind so that kinds do not disturb
/// each other.
struct ProbePods {
    server: Ipv4Addr,
    policy_client: Ipv4Addr,
    label_client: Ipv4Addr,
    new_client: Ipv4Addr,
}

const PROBE_PODS: ProbePods = ProbePods {
    server: Ipv4Addr::new(10, 245, 0, 2),
    policy_client: Ipv4Addr::new(10, 245, 0, 3),
    label_client: Ipv4Addr::new(10, 245, 0, 4),
    new_client: Ipv4Addr::new(10, 245, 0, 5),
};

/// The probe namespace's base manifests: the namespace, the server, two clients, and the
/// policy that isolates the server and lets in pods labelled `access: granted`. `granted`
/// gives the label client that label.
fn probe_manifests(granted: bool) -> String {
    let probe_pod = |name: &str, labels: serde_json::Value, ip: Ipv4Addr| {
        cluster::pod(
            PROBE_NAMESPACE,
            name,
            labels,
            MEASURED_NODE,
            &[IpAddr::V4(ip)],
            json!([{"name": "http", "containerPort": PROBE_PORT}]),
        )
    };
    let label_client = if granted {
        json!({"role": "label-client", "access": "granted"})
    } else {
        json!({"role": "label-client"})
    };
    cluster::stream([
        cluster::namespace(PROBE_NAMESPACE, json!({"purpose": "bench"})),
        probe_pod("server", json!({"role": "server"}), PROBE_PODS.server),
        probe_pod(
            "policy-client",
            json!({"role": "policy-client"}),
            PROBE_PODS.policy_client,
        ),
        probe_pod("label-client", label_client, PROBE_PODS.label_client),
        cluster::network_policy(
            PROBE_NAMESPACE,
            "allow-granted",
            json!({
                "podSelector": {"matchLabels": {"role": "server"}},
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"access": "granted"}}}],
                    "ports": [{"protocol": "TCP", "port": PROBE_PORT}],
                }],
            }),
        ),
    ])
}

/// The policy the "policy added" change writes: the policy client may reach the server.
fn probe_policy() -> String {
    cluster::stream([cluster::network_policy(
        PROBE_NAMESPACE,
        "allow-policy-client",
        json!({
            "podSelector": {"matchLabels": {"role": "server"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "policy-client"}}}],
                "ports": [{"protocol": "TCP", "port": PROBE_PORT}],
            }],
        }),
    )])
}

/// The pod the "pod added" change writes: a client labelled `access: granted` whose interface
/// is already wired, as when the pod's address reaches the API after the CNI ran.
fn probe_new_client() -> String {
    cluster::stream([cluster::pod(
        PROBE_NAMESPACE,
        "new-client",
        json!({"role": "new-client", "access": "granted"}),
        MEASURED_NODE,
        &[IpAddr::V4(PROBE_PODS.new_client)],
        json!([]),
    )])
}

const PROBE_FILE: &str = "probe.yaml";
const POLICY_FILE: &str = "probe-policy.yaml";
const NEW_CLIENT_FILE: &str = "probe-new-client.yaml";

/// A change of the benchmark, forth (allows the client) or back (denies it again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    PolicyAdded,
    PolicyDeleted,
    LabelAdded,
    LabelRemoved,
    PodAdded,
    PodDeleted,
}

impl Change {
    /// One round, in order: every kind forth, then every kind back.
    const ROUND: [Change; 6] = [
        Change::PolicyAdded,
        Change::LabelAdded,
        Change::PodAdded,
        Change::PolicyDeleted,
        Change::LabelRemoved,
        Change::PodDeleted,
    ];

    fn name(self) -> &'static str {
        match self {
            Change::PolicyAdded => "policy added",
            Change::PolicyDeleted => "policy deleted",
            Change::LabelAdded => "pod label added",
            Change::LabelRemoved => "pod label removed",
            Change::PodAdded => "pod added",
            Change::PodDeleted => "pod deleted",
        }
    }

    /// Whether the client is allowed after the change.
    fn allows(self) -> bool {
        matches!(
            self,
            Change::PolicyAdded | Change::LabelAdded | Change::PodAdded
        )
    }

    fn client(self) -> Ipv4Addr {
        match self {
            Change::PolicyAdded | Change::PolicyDeleted => PROBE_PODS.policy_client,
            Change::LabelAdded | Change::LabelRemoved => PROBE_PODS.label_client,
            Change::PodAdded | Change::PodDeleted => PROBE_PODS.new_client,
        }
    }

    fn apply(self, dir: &Path) -> Result<()> {
        match self {
            Change::PolicyAdded => write_file(dir, POLICY_FILE, &probe_policy()),
            Change::PolicyDeleted => remove_file(dir, POLICY_FILE),
            Change::LabelAdded => write_file(dir, PROBE_FILE, &probe_manifests(true)),
            Change::LabelRemoved => write_file(dir, PROBE_FILE, &probe_manifests(false)),
            Change::PodAdded => write_file(dir, NEW_CLIENT_FILE, &probe_new_client()),
            Change::PodDeleted => remove_file(dir, NEW_CLIENT_FILE),
        }
    }
}

fn measure_changes(agent: &Path, settings: Settings) -> Result<ChangeFigures> {
    let cluster = cluster::generate(CHANGE_CLUSTER);
    let dir = write_cluster("changes", &cluster)?;
    write_file(&dir, PROBE_FILE, &probe_manifests(false))?;
    let mut bed = Bed::new("changes")?;
    let addresses: Vec<Ipv4Addr> = cluster.local_pods.iter().map(|pod| pod.ipv4).collect();
    bed.add_sink_endpoints(&addresses)?;
    let server = bed.add_probe_pod("server", PROBE_PODS.server)?;
    let mut clients = Vec::new();
    for (name, address) in [
        ("policy-client", PROBE_PODS.policy_client),
        ("label-client", PROBE_PODS.label_client),
        ("new-client", PROBE_PODS.new_client),
    ] {
        clients.push((address, bed.add_probe_pod(name, address)?));
    }
    let _server = Server::start(&server)?;
    bed.start_agent(agent, &dir, MEASURED_NODE)?;
    bed.wait_generation(&generation(agent, &dir)?, Duration::from_secs(60))?;

    let target = SocketAddr::new(IpAddr::V4(PROBE_PODS.server), PROBE_PORT);
    let mut samples = Vec::new();
    for run in 1..=settings.runs {
        for _ in 0..settings.rounds_per_run {
            for change in Change::ROUND {
                let client = clients
                    .iter()
                    .find(|(address, _)| *address == change.client())
                    .map(|(_, netns)| netns.as_str())
                    .context("every change has its client")?;
                let written_at = Mutex::new(None);
                let flip = probe::time_flip(
                    client,
                    target,
                    !change.allows(),
                    || {
                        if let Ok(mut written_at) = written_at.lock() {
                            *written_at = Some(SystemTime::now());
                        }
                        change.apply(&dir)
                    },
                    FLIP_TIMEOUT,
                )
                .with_context(|| format!("timing `{}`", change.name()))?;
                // The next change starts from an idle agent that applied this one.
                let applied = generation(agent, &dir)?;
                bed.wait_generation(&applied, Duration::from_secs(30))?;
                let agent_ms = match written_at.into_inner().ok().flatten() {
                    Some(written_at) => bed.updated_after(&applied, written_at)?,
                    None => None,
                };
                samples.push(Sample {
                    change,
                    run,
                    flip,
                    agent_ms,
                });
            }
        }
        println!("  run {run} of {} done", settings.runs);
    }
    let changes = Change::ROUND
        .iter()
        .map(|&change| latency(change, &samples, settings.runs))
        .collect();
    Ok(ChangeFigures {
        pods: CHANGE_CLUSTER.pods + 4,
        policies: CHANGE_CLUSTER.policies + 2,
        namespaces: CHANGE_CLUSTER.namespaces + 1,
        endpoints: bed_endpoints(&cluster),
        runs: settings.runs,
        rounds_per_run: settings.rounds_per_run,
        attempt_timeout_ms: probe::ATTEMPT_TIMEOUT.as_secs_f64() * 1e3,
        attempt_period_ms: probe::PERIOD.as_secs_f64() * 1e3,
        changes,
    })
}

/// The endpoints of the change benchmark's node: its synthetic pods and the four probe pods.
fn bed_endpoints(cluster: &cluster::Cluster) -> usize {
    cluster.local_pods.len() + 4
}

fn latency(change: Change, samples: &[Sample], runs: usize) -> ChangeLatency {
    let of_change: Vec<&Sample> = samples.iter().filter(|s| s.change == change).collect();
    let millis = |sample: &&Sample| sample.flip.map(|d| d.as_secs_f64() * 1e3);
    let mut sorted: Vec<f64> = of_change.iter().filter_map(millis).collect();
    sorted.sort_by(f64::total_cmp);
    let run_p50s_ms = (1..=runs)
        .filter_map(|run| {
            let mut of_run: Vec<f64> = of_change
                .iter()
                .filter(|s| s.run == run)
                .filter_map(millis)
                .collect();
            of_run.sort_by(f64::total_cmp);
            percentile(&of_run, 50.0)
        })
        .collect();
    let mut agent: Vec<f64> = of_change.iter().filter_map(|s| s.agent_ms).collect();
    agent.sort_by(f64::total_cmp);
    ChangeLatency {
        change: change.name().to_owned(),
        verdict: if change.allows() { "allowed" } else { "denied" }.to_owned(),
        missed: of_change.len() - sorted.len(),
        p50_ms: percentile(&sorted, 50.0).unwrap_or(f64::NAN),
        p99_ms: percentile(&sorted, 99.0).unwrap_or(f64::NAN),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        samples_ms: sorted,
        run_p50s_ms,
        agent_p50_ms: percentile(&agent, 50.0).unwrap_or(f64::NAN),
        agent_p99_ms: percentile(&agent, 99.0).unwrap_or(f64::NAN),
    }
}

/// The probe server: a thread inside the server pod that accepts every connection and closes
/// it; stopped when dropped.
struct Server {
    pod_netns: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(pod_netns: &str) -> Result<Self> {
        let listener = netns::run_inside(pod_netns, || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, PROBE_PORT))
                .with_context(|| format!("binding TCP port {PROBE_PORT} in {pod_netns}"))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                // Accepting is the answer; a failed accept concerns one client only.
                drop(stream);
            }
        });
        Ok(Self {
            pod_netns: pod_netns.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // One more connection wakes the accepting thread, which then sees the flag.
        let woken = netns::run_inside(&self.pod_netns, || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, PROBE_PORT)).context("waking the server")
        });
        if woken.is_ok()
            && let Some(thread) = self.thread.take()
        {
            // A panicked server thread has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use policy_core::manifest::objects;

    use super::*;

    fn parse(text: &str) -> Vec<serde_json::Value> {
        objects(Path::new("probe.yaml"), text).unwrap()
    }

    #[test]
    fn every_change_has_its_way_back_and_a_round_flips_each_client_twice() {
        for change in Change::ROUND {
            let back = Change::ROUND
                .iter()
                .filter(|other| other.client() == change.client())
                .filter(|other| other.allows() != change.allows())
                .count();
            assert_eq!(back, 1, "{change:?}");
        }
        let forth = Change::ROUND.iter().filter(|c| c.allows()).count();
        assert_eq!(forth, 3);
    }

    #[test]
    fn probe_manifests_differ_only_in_the_label_client_access() {
        let denied = parse(&probe_manifests(false));
        let granted = parse(&probe_manifests(true));
        assert_eq!(denied.len(), granted.len());
        let changed: Vec<usize> = (0..denied.len())
            .filter(|i| denied[*i] != granted[*i])
            .collect();
        assert_eq!(changed.len(), 1);
        let pod = &granted[changed[0]];
        assert_eq!(pod["metadata"]["name"], "label-client");
        assert_eq!(pod["metadata"]["labels"]["access"], "granted");
        for text in [probe_policy(), probe_new_client()] {
            assert_eq!(parse(&text).len(), 1);
        }
    }

    #[test]
    fn latency_summarises_each_change_and_counts_misses() {
        let sample = |change, run, flip: Option<u64>, agent_ms| Sample {
            change,
            run,
            flip: flip.map(Duration::from_millis),
            agent_ms,
        };
        let samples = vec![
            sample(Change::PodAdded, 1, Some(10), Some(8.0)),
            sample(Change::PodAdded, 1, Some(30), Some(25.0)),
            sample(Change::PodAdded, 2, Some(20), None),
            sample(Change::PodAdded, 2, None, Some(4000.0)),
            sample(Change::PodDeleted, 1, Some(99), Some(1.0)),
        ];
        let figures = latency(Change::PodAdded, &samples, 2);
        assert_eq!((figures.agent_p50_ms, figures.agent_p99_ms), (25.0, 4000.0));
        assert_eq!(figures.samples_ms, vec![10.0, 20.0, 30.0]);
        assert_eq!(figures.missed, 1);
        assert_eq!((figures.p50_ms, figures.max_ms), (20.0, 30.0));
        assert_eq!(figures.run_p50s_ms, vec![10.0, 20.0]);
        assert_eq!(figures.verdict, "allowed");
    }

    #[test]
    fn writing_and_removing_files_go_through_a_rename() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        write_file(&dir, "a.yaml", "a: 1\n").unwrap();
        write_file(&dir, "a.yaml", "a: 2\n").unwrap();
        assert_eq!(fs::read_to_string(dir.join("a.yaml")).unwrap(), "a: 2\n");
        remove_file(&dir, "a.yaml").unwrap();
        assert!(!dir.join("a.yaml").exists());
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(dir.with_extension("staged")).unwrap();
    }

    /// The whole bench on a small scale, against the debug agent: the agent starts and
    /// programs entries that grow with the pods, and every change flips real traffic.
    #[test]
    #[ignore = "needs root: run through cargo xtask test"]
    fn a_small_bench_sees_every_change_flip_real_traffic() {
        let agent = policy_lab::workspace_root().join("target/debug/policy-agent");
        assert!(agent.exists(), "build the agent first: {}", agent.display());
        let settings = Settings {
            runs: 1,
            rounds_per_run: 2,
            start_pods: &[1_000, 2_000],
            start_with_cluster_policies: Some((1_000, 20)),
        };
        let figures = measure(&agent, settings).unwrap();
        for change in &figures.changes.changes {
            assert_eq!(change.missed, 0, "{} did not flip", change.change);
            assert_eq!(change.samples_ms.len(), 2, "{}", change.change);
        }
        let entries = |start: &StartFigures, name: &str| {
            start
                .maps
                .iter()
                .find(|map| map.name == name)
                .and_then(|map| map.entries)
                .unwrap()
        };
        let [small, large, tiered] = &figures.starts[..] else {
            panic!("two start sizes and one with ClusterNetworkPolicies expected");
        };
        use policy_common::names::{ENDPOINTS_MAP, PEERS_V4_MAP};
        assert_eq!(entries(small, ENDPOINTS_MAP), 100);
        assert_eq!(entries(large, ENDPOINTS_MAP), 100);
        assert!(entries(large, PEERS_V4_MAP) > entries(small, PEERS_V4_MAP));
        assert!(small.peak_rss_bytes > 0 && small.map_memory_bytes > 0);
        assert_eq!((tiered.pods, tiered.cluster_policies), (1_000, 20));
        assert!(entries(tiered, POLICY_MAP) > entries(small, POLICY_MAP));
    }

    fn start(pods: usize, ms: f64, rss_mb: u64, peer_entries: u64) -> StartFigures {
        let maps = vec![
            MapMemory {
                name: PEERS_V4_MAP.to_owned(),
                max_entries: 262_144,
                memlock_bytes: 1_000_000,
                entries: Some(peer_entries),
            },
            MapMemory {
                name: policy_common::names::COUNTERS_MAP.to_owned(),
                max_entries: 32_768,
                memlock_bytes: 2_000_000,
                entries: None,
            },
        ];
        let run = Start {
            first_generation_ms: ms,
            phases: Some(Phases {
                load_ms: ms / 4.0,
                resolve_and_write_ms: ms / 4.0,
                attach_ms: ms / 2.0,
            }),
            peak_rss_bytes: rss_mb * 1_000_000,
            maps: maps.clone(),
        };
        StartFigures {
            pods,
            policies: 1_000,
            cluster_policies: 0,
            namespaces: 100,
            endpoints: 100,
            first_generation_ms: ms,
            peak_rss_bytes: rss_mb * 1_000_000,
            map_memory_bytes: 3_000_000,
            runs: vec![run],
            maps,
        }
    }

    #[test]
    fn the_start_section_judges_time_memory_and_growth() {
        let section = start_section(&[
            start(1_000, 600.0, 20, 1_000),
            start(10_000, 1_500.0, 40, 10_000),
            start(50_000, 2_000.0, 120, 50_000),
        ]);
        let verdicts: Vec<(&str, bool)> = section
            .targets
            .iter()
            .map(|target| (target.goal.as_str(), target.met))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("< 1 s", false),
                ("< 100 MB", true),
                ("grow with pods + rules, not pods x pods", true)
            ]
        );
        assert_eq!(section.tables[0].rows.len(), 3);
        assert_eq!(section.tables[1].rows[1][2..4], ["fixed", "2.0"]);
        assert!(
            section
                .setup
                .contains("attaching 1000 ms: 3.3 ms for each of the 300")
        );
        let quadratic = start_section(&[start(1_000, 1.0, 1, 1_000), start(2_000, 1.0, 1, 4_000)]);
        assert!(!quadratic.targets[0].met, "entries x4 for pods x2");
    }

    #[test]
    fn the_change_section_misses_a_slow_or_missed_change() {
        let change = |name: &str, samples: Vec<f64>, missed| ChangeLatency {
            change: name.to_owned(),
            verdict: "allowed".to_owned(),
            p50_ms: percentile(&samples, 50.0).unwrap(),
            p99_ms: percentile(&samples, 99.0).unwrap(),
            max_ms: *samples.last().unwrap(),
            samples_ms: samples,
            missed,
            run_p50s_ms: vec![20.0, 30.0],
            agent_p50_ms: 5.0,
            agent_p99_ms: 9.0,
        };
        let figures = ChangeFigures {
            pods: 1_004,
            policies: 502,
            namespaces: 101,
            endpoints: 104,
            runs: 5,
            rounds_per_run: 20,
            attempt_timeout_ms: 3.0,
            attempt_period_ms: 0.5,
            changes: vec![
                change("fast", vec![10.0, 20.0, 30.0], 0),
                change("slow", vec![10.0, 20.0, 150.0], 0),
                change("missed", vec![10.0], 1),
            ],
        };
        let section = change_section(&figures);
        let met: Vec<bool> = section.targets.iter().map(|target| target.met).collect();
        assert_eq!(met, [true, false, false]);
        assert_eq!(section.tables[0].rows[0][7], "20.0 to 30.0");
        assert_eq!(
            section.plots[0].series[1].points.last(),
            Some(&(100.0, 150.0))
        );
    }
}
