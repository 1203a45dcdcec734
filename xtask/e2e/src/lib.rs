//! `cargo xtask e2e [FILTER]`: the end-to-end NetworkPolicy suite, run against the lab as root.
//!
//! The cluster is the one of the upstream Kubernetes netpol e2e tests: namespaces x, y and z with
//! pods a, b and c in each, spread over two nodes, each pod serving TCP and UDP on ports 80 and
//! 81 (named `serve-80-tcp` and so on) and exposed by a Service `s-NS-POD` (TCP 80, UDP 80 and
//! 81, and TCP 8081 to the named port `serve-81-tcp`). Every scenario (see [`scenario`]) starts from
//! that base cluster and changes it step by step: policies written, edited and deleted, labels
//! added to pods and namespaces, pods added. After every change the runner brings the lab to the
//! new manifests (`lab up -f DIR`) and, for each probe of the step, compares the lab's matrix of
//! real connections with the matrix the scenario expects (see [`expect`]) and with what
//! `policy-agent explain` says.
//!
//! The time from writing a change to its enforcement is what `lab up` reports it waited for the
//! agents to apply the rendered manifests, plus what the first probe after the change waited for
//! them (each waits until every node's agent has applied them; whichever comes first does the
//! waiting). It is summarised at the end as p50 and max over all changes.
//!
//! Updates happen while traffic runs: during every change, a client keeps opening TCP connections
//! to a server that the step before and the step after both allow (see [`steady`]), and a single
//! lost connection fails the scenario.
//!
//! Then comes the flip check (see [`stress`]): 200 pod-label, policy and namespace-label flips in
//! a row while steady TCP and UDP clients run through pairs every state allows, on both node
//! styles and across them; not one exchange may be lost. Last comes the restart check (see
//! [`restart`]): the agents are killed with SIGKILL and restarted while a TCP stream runs through
//! an allowed pair and a denied pair keeps knocking. A FILTER runs either check only when its
//! name ("flips", "restart") contains it.

mod expect;
pub mod kind;
mod lab;
mod restart;
pub mod scenario;
pub mod schema;
mod steady;
mod stress;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use policy_core::matrix::Matrix;
use policy_lab::cmd as run;

use self::{
    lab::{Explain, Lab},
    scenario::{Family, Probe, Protocol, Scenario, Via},
    steady::Steady,
};

/// The name of the restart check, as FILTER matches it.
const RESTART: &str = "restart";
/// The name of the flip check, as FILTER matches it.
const FLIPS: &str = "flips";
/// The manifest directory the suite writes and the lab renders from.
const MANIFESTS: &str = "/run/netpol-e2e/manifests";

#[derive(clap::Args)]
pub struct Args {
    /// Only run the scenarios whose name contains this.
    pub filter: Option<String>,
    /// Leave the lab up at the end, to look around.
    #[arg(long)]
    pub keep_lab: bool,
    /// Do not compare with what `explain` predicts (to try the lab on its own).
    #[arg(long)]
    pub no_explain: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !run::is_root() {
        bail!(
            "cargo xtask e2e needs root: the lab creates network namespaces and its agents load \
             eBPF programs; run `sudo -E cargo xtask e2e`"
        );
    }
    let (base, scenarios) = scenario::load_all(&scenario::scenarios_dir(), args.filter.as_deref())?;
    let check_restart = args
        .filter
        .as_deref()
        .is_none_or(|filter| RESTART.contains(filter));
    let check_flips = args
        .filter
        .as_deref()
        .is_none_or(|filter| FLIPS.contains(filter));
    if scenarios.is_empty() && !check_restart && !check_flips {
        bail!(
            "no scenario name contains {:?}",
            args.filter.as_deref().unwrap_or_default()
        );
    }
    let explain = if args.no_explain { None } else { Some(Explain) };
    let lab = Lab;
    let dir = Path::new(MANIFESTS);
    println!("e2e: bringing up the lab with the base cluster ({MANIFESTS})");
    write_manifests(dir, &base)?;
    lab.up(dir)
        .context("bringing up the lab with the base cluster")?;
    let mut suite = Suite {
        lab: &lab,
        explain: explain.as_ref(),
        dir,
        written: base.clone(),
        enforced: Vec::new(),
        ups: Vec::new(),
        last_tcp80: None,
        steady_connections: 0,
        steady_changes: 0,
    };
    let mut failed = Vec::new();
    for scenario in &scenarios {
        let started = Instant::now();
        match suite.run(scenario) {
            Ok(()) => println!(
                "ok     {} ({:.1} s)",
                scenario.name,
                started.elapsed().as_secs_f64()
            ),
            Err(error) => {
                println!("FAILED {}", scenario.name);
                println!("{}", indent(&scenario.description));
                println!("{}", indent(&format!("{error:#}")));
                failed.push(scenario.name.clone());
            }
        }
    }
    if check_flips {
        match stress::run(&lab, dir, &base) {
            Ok(outcome) => {
                println!("ok     {FLIPS} ({:.1} s)", outcome.seconds);
                println!(
                    "e2e: {FLIPS}: {} pod-label, policy and namespace-label flips; {} steady TCP \
                     connections and UDP exchanges on the ptp node, the bridge node and across \
                     them, none lost",
                    outcome.flips, outcome.exchanges
                );
            }
            Err(error) => {
                println!("FAILED {FLIPS}");
                println!("{}", indent(&format!("{error:#}")));
                failed.push(FLIPS.to_owned());
            }
        }
    }
    if check_restart {
        let started = Instant::now();
        match restart::run(&lab, dir, &base) {
            Ok(outcome) => {
                println!(
                    "ok     {RESTART} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                println!(
                    "e2e: {RESTART}: agents SIGKILLed for {} ms and restarted; the stream x/a -> \
                     x/c carried {} bytes ({} while the agents were down), longest gap {} ms; \
                     x/b -> x/c refused {} times; restarted agents adopted the pins and wrote 0 \
                     map entries{}",
                    restart::DOWN_FOR.as_millis(),
                    outcome.streamed_bytes,
                    outcome.bytes_while_down,
                    outcome.longest_gap.as_millis(),
                    outcome.denied_attempts,
                    outcome
                        .restart_applied
                        .map(|applied| format!(
                            "; they applied the manifests {} ms after starting",
                            applied.as_millis()
                        ))
                        .unwrap_or_default()
                );
            }
            Err(error) => {
                println!("FAILED {RESTART}");
                println!("{}", indent(&format!("{error:#}")));
                failed.push(RESTART.to_owned());
            }
        }
    }
    let checks = scenarios.len() + usize::from(check_flips) + usize::from(check_restart);
    let down = if args.keep_lab {
        println!("e2e: the lab stays up (`cargo xtask lab down` removes it)");
        Ok(())
    } else {
        lab.down().context("taking the lab down")
    };
    println!(
        "e2e: time from writing a change to its enforcement ({} changes): {}; target p50 under 100 ms",
        suite.enforced.len(),
        summary(&suite.enforced)
    );
    println!(
        "e2e: steady traffic across {} changes: {} connections, each one allowed before and after",
        suite.steady_changes, suite.steady_connections
    );
    println!(
        "e2e: time to bring the lab to a change (`lab up`, {} changes): {}",
        suite.ups.len(),
        summary(&suite.ups)
    );
    if !failed.is_empty() {
        println!("e2e: failed: {}", failed.join(", "));
    }
    println!(
        "e2e: {} passed, {} failed",
        checks - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("{} of {checks} checks failed", failed.len());
    }
    down
}

/// The state the scenarios share: the lab, and what the manifest directory holds.
struct Suite<'a> {
    lab: &'a Lab,
    explain: Option<&'a Explain>,
    dir: &'a Path,
    written: BTreeMap<String, String>,
    /// The time from writing each change to its enforcement.
    enforced: Vec<Duration>,
    /// How long `lab up` took after each change.
    ups: Vec<Duration>,
    /// The expected TCP/80 IPv4 pod matrix of what is enforced now, when the last step had one.
    last_tcp80: Option<Matrix>,
    /// Steady-traffic connections made across changes, and the changes they spanned.
    steady_connections: u32,
    steady_changes: usize,
}

impl Suite<'_> {
    fn run(&mut self, scenario: &Scenario) -> anyhow::Result<()> {
        let mut mismatches = Vec::new();
        for (index, step) in scenario.steps.iter().enumerate() {
            // What `lab up` waited for the agents, while the first probe has yet to add its wait.
            let mut applying = None;
            if step.manifests != self.written {
                write_manifests(self.dir, &step.manifests)?;
                self.written.clone_from(&step.manifests);
                let pair = self
                    .last_tcp80
                    .as_ref()
                    .zip(tcp80(step))
                    .and_then(|(before, after)| steady::stable_pair(before, after));
                let traffic = pair
                    .map(|(from, to)| Steady::start(&from, &to))
                    .transpose()?;
                let started = Instant::now();
                let applied = self.lab.up(self.dir).with_context(|| {
                    format!("step {}: bringing the lab to the change", index + 1)
                })?;
                self.ups.push(started.elapsed());
                applying = Some(applied);
                if let Some(traffic) = traffic {
                    let (from, to) = (traffic.from.clone(), traffic.to.clone());
                    let tally = traffic.finish()?;
                    self.steady_connections += tally.attempts;
                    self.steady_changes += 1;
                    if tally.failures > 0 {
                        let overflows = steady::listen_overflows(&to).map_or_else(
                            |error| format!("{error:#}"),
                            |count| format!("{to}'s accept queue overflowed {count} times"),
                        );
                        mismatches.push(format!(
                            "step {}: steady traffic {from} -> {to} (TCP/80, allowed before and \
                             after) lost {} of {} connections during the change ({}; {overflows})",
                            index + 1,
                            tally.failures,
                            tally.attempts,
                            tally.describe_failures()
                        ));
                    }
                }
                self.last_tcp80 = None;
            }
            for (number, probe) in step.probes.iter().enumerate() {
                let context = || {
                    let note = step
                        .note
                        .as_deref()
                        .map(|note| format!(" ({note})"))
                        .unwrap_or_default();
                    format!("step {}{note}, probe {} {probe}", index + 1, number + 1)
                };
                let json = self.lab.probe(probe).with_context(context)?;
                if let Some(applied) = applying.take() {
                    let waited = json.wait_ms.filter(|millis| *millis > 0);
                    // Neither waited: the lab runs no agents, and nothing was enforced.
                    if applied.is_some() || waited.is_some() {
                        let waited = Duration::from_millis(waited.unwrap_or_default());
                        self.enforced.push(applied.unwrap_or_default() + waited);
                    }
                }
                let observed = json.matrix;
                if let Some(difference) = probe.expected.difference(&observed) {
                    mismatches.push(format!(
                        "{}: the lab's matrix is not the expected one\n{}",
                        context(),
                        difference.report(&observed)
                    ));
                }
                if let Some(mismatch) = self.check_explain(probe).with_context(context)? {
                    mismatches.push(format!("{}: {mismatch}", context()));
                }
            }
            if let Some(expected) = tcp80(step) {
                self.last_tcp80 = Some(expected.clone());
            }
        }
        if !mismatches.is_empty() {
            bail!(
                "{} checks failed\n{}",
                mismatches.len(),
                mismatches.join("\n")
            );
        }
        Ok(())
    }

    /// What `explain` gets wrong for `probe`, if anything.
    fn check_explain(&self, probe: &Probe) -> anyhow::Result<Option<String>> {
        let (Some(explain), Some(via)) = (
            self.explain.filter(|_| probe.explain),
            probe.via.explained(),
        ) else {
            return Ok(None);
        };
        let answer: Matrix = explain
            .matrix(probe.port, probe.protocol, via)?
            .masked_by(&probe.expected);
        Ok(probe.expected.difference(&answer).map(|difference| {
            format!(
                "`explain` for {}/{} is not the expected matrix\n{}",
                probe.protocol.as_str(),
                probe.port,
                difference.report(&answer)
            )
        }))
    }
}

/// The step's expected TCP/80 IPv4 matrix by pod IP, the one steady traffic is chosen from.
fn tcp80(step: &scenario::Step) -> Option<&Matrix> {
    step.probes
        .iter()
        .find(|probe| {
            probe.port == 80
                && probe.protocol == Protocol::Tcp
                && probe.via == Via::Pod
                && probe.family == Family::V4
        })
        .map(|probe| &probe.expected)
}

/// Makes `dir` hold exactly `manifests`: writes what changed, removes what is gone.
fn write_manifests(dir: &Path, manifests: &BTreeMap<String, String>) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if !manifests.contains_key(name) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for (name, text) in manifests {
        let path = dir.join(name);
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// `text` with every line indented, for details under a scenario's name.
fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|line| format!("    {line}").trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `p50 N ms, max N ms` of `samples` (nearest-rank p50), or `no samples`.
fn summary(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match (
        sorted.get(sorted.len().saturating_sub(1) / 2),
        sorted.last(),
    ) {
        (Some(p50), Some(max)) => format!("p50 {} ms, max {} ms", p50.as_millis(), max.as_millis()),
        _ => "no samples".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{
        scenario::{Family, Protocol, Via},
        *,
    };

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn summary_is_the_median_and_the_maximum() {
        assert_eq!(summary(&millis(&[30, 10, 20])), "p50 20 ms, max 30 ms");
        assert_eq!(summary(&millis(&[40, 10, 30, 20])), "p50 20 ms, max 40 ms");
        assert_eq!(summary(&millis(&[7])), "p50 7 ms, max 7 ms");
        assert_eq!(summary(&[]), "no samples");
    }

    #[test]
    fn writing_manifests_makes_the_directory_hold_exactly_them() {
        let dir = std::env::temp_dir().join(format!("xtask-e2e-write-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = BTreeMap::from([
            ("a.yaml".to_owned(), "a: 1\n".to_owned()),
            ("b.yaml".to_owned(), "b: 1\n".to_owned()),
        ]);
        write_manifests(&dir, &first).unwrap();
        let second = BTreeMap::from([
            ("b.yaml".to_owned(), "b: 2\n".to_owned()),
            ("c.yaml".to_owned(), "c: 1\n".to_owned()),
        ]);
        write_manifests(&dir, &second).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["b.yaml", "c.yaml"]);
        assert_eq!(fs::read_to_string(dir.join("b.yaml")).unwrap(), "b: 2\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn all_scenarios() -> Vec<Scenario> {
        scenario::load_all(&scenario::scenarios_dir(), None)
            .unwrap()
            .1
    }

    /// Every scenario loads: its files exist, its manifests are well formed, its expectations
    /// parse and name pods of the cluster.
    #[test]
    fn every_scenario_is_valid() {
        let scenarios = all_scenarios();
        assert!(scenarios.len() >= 30, "only {} scenarios", scenarios.len());
        let numbers: BTreeSet<&str> = scenarios
            .iter()
            .map(|scenario| scenario.name.split('-').next().unwrap_or_default())
            .collect();
        assert_eq!(
            numbers.len(),
            scenarios.len(),
            "two scenarios share a number"
        );
        for scenario in &scenarios {
            assert!(
                !scenario.description.is_empty(),
                "{} has no description",
                scenario.name
            );
        }
    }

    /// The suite covers what the issue asks for: both protocols, both families, pod and Service
    /// probes, and scenarios that change the cluster while it runs.
    #[test]
    fn the_scenarios_cover_protocols_families_services_and_updates() {
        let scenarios = all_scenarios();
        let probes: Vec<&Probe> = scenarios
            .iter()
            .flat_map(|scenario| &scenario.steps)
            .flat_map(|step| &step.probes)
            .collect();
        for (what, covered) in [
            (
                "TCP",
                probes.iter().any(|probe| probe.protocol == Protocol::Tcp),
            ),
            (
                "UDP",
                probes.iter().any(|probe| probe.protocol == Protocol::Udp),
            ),
            (
                "IPv4",
                probes.iter().any(|probe| probe.family == Family::V4),
            ),
            (
                "IPv6",
                probes.iter().any(|probe| probe.family == Family::V6),
            ),
            ("via pod", probes.iter().any(|probe| probe.via == Via::Pod)),
            (
                "via service",
                probes.iter().any(|probe| probe.via == Via::Service),
            ),
        ] {
            assert!(covered, "no probe covers {what}");
        }
        let updates = scenarios
            .iter()
            .filter(|scenario| scenario.steps.len() > 1)
            .count();
        assert!(
            updates >= 5,
            "only {updates} scenarios change the cluster while running"
        );
    }

    /// Every kind of change the issue names happens between two steps of some scenario, and the
    /// policies use named ports, endPort and ipBlock with except.
    #[test]
    fn the_scenarios_cover_every_kind_of_update_and_port() {
        let scenarios = all_scenarios();
        let mut seen = BTreeSet::new();
        for scenario in &scenarios {
            for pair in scenario.steps.windows(2) {
                let (before, after) = (&pair[0].manifests, &pair[1].manifests);
                for (name, text) in after {
                    match before.get(name) {
                        Some(old) if old != text && name.starts_with("pod-") => {
                            seen.insert("a pod's labels change");
                        }
                        Some(old) if old != text && name.starts_with("ns-") => {
                            seen.insert("a namespace's labels change");
                        }
                        Some(old) if old != text => {
                            seen.insert("a policy is edited");
                        }
                        None if name.starts_with("pod-") => {
                            seen.insert("a pod is added");
                        }
                        _ => {}
                    }
                }
                if before.keys().any(|name| !after.contains_key(name)) {
                    seen.insert("a policy is deleted");
                }
            }
            for step in &scenario.steps {
                for text in step.manifests.values() {
                    if text.contains("endPort:") {
                        seen.insert("endPort");
                    }
                    if text.contains("except:") {
                        seen.insert("ipBlock with except");
                    }
                    if text.contains("kind: NetworkPolicy") && text.contains("port: serve-") {
                        seen.insert("a named port");
                    }
                }
            }
        }
        for wanted in [
            "a pod's labels change",
            "a namespace's labels change",
            "a policy is edited",
            "a policy is deleted",
            "a pod is added",
            "endPort",
            "ipBlock with except",
            "a named port",
        ] {
            assert!(seen.contains(wanted), "no scenario covers: {wanted}");
        }
    }
}
