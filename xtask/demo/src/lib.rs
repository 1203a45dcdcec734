//! `cargo xtask demo`: a two-minute tour for someone seeing the project for the first time.
//!
//! It builds the agent, brings up the lab (network namespaces as two nodes and six pods, one
//! agent per node) with the small shop of `deploy/examples/cluster.yaml`, then applies the
//! example policies one after another, each on top of the ones before. For every policy it
//! shows, for the ports that policy is about, the reachability matrix the lab measured with real
//! connections before and after the change, each next to what `policy-agent explain` predicts,
//! whether the two agree, and the drops the kernel reported with the rule that caused them. It
//! ends with a summary and takes the lab down, also when something fails or on Ctrl-C.

mod flows;
mod matrix;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use policy_core::{explain, manifest::IpFamily, matrix::Matrix, policy::model::Protocol};
use policy_lab::{
    build::{self, Profile},
    cmd as run, probe,
    up::{Up, UpArgs},
    workspace_root,
};

use self::{
    flows::FlowLogs,
    matrix::{Agreement, Snapshot},
};

/// Where the demo writes the manifests it hands to the lab.
const MANIFESTS: &str = "/run/netpol-demo/manifests";
/// The lab's runtime directory: its record, its rendered manifests and each node's flow log.
const LAB_RUN_DIR: &str = "/run/netpol-lab";
/// The lab's record of the cluster that is up.
const LAB_STATE: &str = "/run/netpol-lab/lab.json";
const NODES: usize = 2;

#[derive(clap::Args)]
pub struct Args {
    /// Run the lab without agents: nothing enforces policy (to look at the lab and `explain`).
    #[arg(long)]
    no_agent: bool,
    /// Leave the lab up at the end, to look around.
    #[arg(long)]
    keep_lab: bool,
}

/// A port the demo probes.
struct Port {
    protocol: &'static str,
    number: u16,
}

const fn tcp(number: u16) -> Port {
    Port {
        protocol: "TCP",
        number,
    }
}

const fn udp(number: u16) -> Port {
    Port {
        protocol: "UDP",
        number,
    }
}

/// One policy file of `deploy/examples/policies` and what it means to an operator.
struct Step {
    file: &'static str,
    title: &'static str,
    ports: &'static [Port],
}

const STEPS: [Step; 5] = [
    Step {
        file: "01-db-from-api-only.yaml",
        title: "The database takes connections only from the API tier, on 3306; the web tier \
                is refused",
        ports: &[tcp(3306)],
    },
    Step {
        file: "02-shop-default-deny-ingress.yaml",
        title: "Default deny in `shop`: nothing gets in unless a policy says so; anyone may \
                reach the web tier, and only the web tier the API",
        ports: &[tcp(80), tcp(8080)],
    },
    Step {
        file: "03-api-egress-dns-and-db.yaml",
        title: "The API tier may only send DNS queries and talk to the database",
        ports: &[udp(53), tcp(3306), tcp(80)],
    },
    Step {
        file: "04-metrics-from-monitoring.yaml",
        title: "Prometheus, in another namespace, may scrape the API's metrics on 9090",
        ports: &[tcp(9090)],
    },
    Step {
        file: "05-cluster-tiers.yaml",
        title: "The operator's ClusterNetworkPolicies: an Admin Deny keeps other namespaces out \
                of production whatever its owners allow, a Pass hands Prometheus back to them, \
                and a Baseline default deny covers the namespaces without policies",
        ports: &[tcp(80), tcp(9090), udp(53)],
    },
];

/// Set by the SIGINT handler so the demo can say why it stopped.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !run::is_root() {
        bail!(
            "cargo xtask demo needs root: the lab creates network namespaces and its agents load \
             eBPF programs; run `sudo -E cargo xtask demo`"
        );
    }
    if Path::new(LAB_STATE).exists() {
        bail!(
            "a lab is up already ({LAB_STATE}); the demo brings up its own: take it down first \
             with `cargo xtask lab down`"
        );
    }
    let start = Instant::now();
    let examples = workspace_root().join("deploy/examples");
    println!("demo: building the agent and its eBPF programs (the first build takes minutes)");
    let agent = build::binary("policy-agent", Profile::Debug)?;
    catch_interrupt()?;

    let lab = Lab {
        no_agent: args.no_agent,
        agent,
    };
    let dir = Path::new(MANIFESTS);
    reset_dir(dir)?;
    copy(&examples.join("cluster.yaml"), dir)?;
    println!();
    println!(
        "demo: bringing up the lab: a shop on {NODES} nodes (deploy/examples/cluster.yaml), every \
         pod in its own network namespace"
    );
    let guard = LabGuard {
        lab: &lab,
        armed: !args.keep_lab,
    };
    let result = tour(&lab, &examples, dir);
    if let Ok(tour) = &result {
        summarise(tour);
    }
    let down = guard.disarm();
    let cleaned = fs::remove_dir_all("/run/netpol-demo").context("removing /run/netpol-demo");
    match &down {
        Ok(_) if args.keep_lab => {
            println!("the lab stays up (`cargo xtask lab down` removes it)");
        }
        Ok(taken) => println!("lab torn down in {} ms", taken.as_millis()),
        Err(error) => eprintln!("demo: {error:#}"),
    }
    println!("the demo took {:.1} s", start.elapsed().as_secs_f64());
    let tour = match result {
        Ok(tour) => tour,
        Err(error) if INTERRUPTED.load(Ordering::SeqCst) => {
            return Err(error.context("interrupted"));
        }
        Err(error) => return Err(error),
    };
    down?;
    cleaned?;
    let disagreements: usize = tour
        .steps
        .iter()
        .flat_map(|step| &step.agreements)
        .map(|agreement| agreement.disagreements.len())
        .sum();
    if tour.enforcing && disagreements > 0 {
        bail!("the lab and explain disagreed on {disagreements} pairs");
    }
    Ok(())
}

/// What the tour measured.
struct Tour {
    /// Whether agents enforced policy in the lab (else only `explain` knows what it means).
    enforcing: bool,
    steps: Vec<StepResult>,
}

/// What one step measured, for the summary.
struct StepResult {
    file: &'static str,
    agreements: Vec<Agreement>,
    drops: Option<usize>,
    applied: Option<Duration>,
}

fn tour(lab: &Lab, examples: &Path, dir: &Path) -> anyhow::Result<Tour> {
    let up = lab.up(dir)?;
    for line in up.to_string().lines() {
        println!("  {line}");
    }
    let enforcing = up.agents;
    if !enforcing {
        println!(
            "  no agent runs: nothing enforces policy, so the lab allows everything and only \
             `explain` shows what the policies mean"
        );
    }
    println!();
    println!(
        "Each step applies one policy on top of the ones before. Matrices: rows are clients, \
         columns servers;"
    );
    println!(
        "`.` the connection got through, `X` it was dropped. `lab` is what real connections in \
         the lab did (denied"
    );
    println!(
        "ones time out after 1 s); `explain` is what `policy-agent explain` predicts from the \
         same manifests."
    );

    let mut results = Vec::new();
    for (index, step) in STEPS.iter().enumerate() {
        stop_if_interrupted()?;
        println!();
        println!("Step {} of {}: {}", index + 1, STEPS.len(), step.title);
        println!("  policy: deploy/examples/policies/{}", step.file);
        let before: Vec<(Matrix, Matrix)> = step
            .ports
            .iter()
            .map(|port| Ok((lab.probe(port)?, explain(port)?)))
            .collect::<anyhow::Result<_>>()?;
        // Drops from here on are the ones the new policy decided (with those before it).
        let logs = FlowLogs::mark(Path::new(LAB_RUN_DIR), NODES)?;
        copy(&examples.join("policies").join(step.file), dir)?;
        let applied = lab.up(dir)?.applied.map(|(_, latency)| latency);
        if let Some(applied) = applied {
            println!(
                "  the agents enforced it {} ms after the lab wrote the manifests",
                applied.as_millis()
            );
        }
        let mut agreements = Vec::new();
        for (port, (probed_before, predicted_before)) in step.ports.iter().zip(&before) {
            let probed_after = lab.probe(port)?;
            let predicted_after = explain(port)?;
            println!();
            println!("  {} {}", port.protocol, port.number);
            let snapshots = [
                Snapshot {
                    label: "before",
                    probed: probed_before,
                    predicted: predicted_before,
                },
                Snapshot {
                    label: "after",
                    probed: &probed_after,
                    predicted: &predicted_after,
                },
            ];
            print!(
                "{}",
                indent(&matrix::render(probed_after.pods(), &snapshots))
            );
            for snapshot in &snapshots {
                let agreement = Agreement::of(snapshot.probed, snapshot.predicted);
                let verdict = if enforcing {
                    agreement.describe()
                } else {
                    format!(
                        "no agent enforces, the lab lets all through; explain denies {} of {} \
                         pairs",
                        agreement.disagreements.len(),
                        agreement.compared
                    )
                };
                println!("  {:<8}{verdict}", format!("{}:", snapshot.label));
                agreements.push(agreement);
            }
        }
        println!();
        let drops = if enforcing {
            let parsed = logs.read_since_mark()?;
            let drops = flows::summarise(&parsed.events);
            if drops.is_empty() {
                println!("  the kernel reported no drops");
            } else {
                println!("  drops the kernel reported since the policy was applied, and why:");
                print!("{}", indent(&indent(&flows::render(&drops))));
            }
            if parsed.unreadable > 0 {
                println!(
                    "  ({} unreadable lines in the flow logs)",
                    parsed.unreadable
                );
            }
            Some(drops.iter().map(|drop| drop.packets).sum())
        } else {
            println!("  no agents: no drops to report");
            None
        };
        results.push(StepResult {
            file: step.file,
            agreements,
            drops,
            applied,
        });
    }
    Ok(Tour {
        enforcing,
        steps: results,
    })
}

/// Ctrl-C reaches the command that runs, which fails; a signal to the demo alone stops it here.
fn stop_if_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("stopped between two steps");
    }
    Ok(())
}

fn summarise(tour: &Tour) {
    let results = &tour.steps;
    println!();
    println!("Summary");
    let width = results
        .iter()
        .map(|step| step.file.len())
        .max()
        .unwrap_or(0);
    println!(
        "  {:<width$}  {:>9}  {:>13}  {:>12}",
        "policy", "enforced", "lab = explain", "drops seen"
    );
    for step in results {
        let compared: usize = step.agreements.iter().map(|a| a.compared).sum();
        let agreed: usize = step.agreements.iter().map(Agreement::agreed).sum();
        let enforced = step.applied.map_or_else(
            || "-".to_owned(),
            |applied| format!("{} ms", applied.as_millis()),
        );
        let drops = step
            .drops
            .map_or_else(|| "-".to_owned(), |drops| format!("{drops} packets"));
        let agreement = if tour.enforcing {
            format!("{agreed}/{compared}")
        } else {
            "-".to_owned()
        };
        println!(
            "  {:<width$}  {enforced:>9}  {agreement:>13}  {drops:>12}",
            step.file
        );
    }
    let compared: usize = results
        .iter()
        .flat_map(|step| &step.agreements)
        .map(|agreement| agreement.compared)
        .sum();
    if tour.enforcing {
        let agreed: usize = results
            .iter()
            .flat_map(|step| &step.agreements)
            .map(Agreement::agreed)
            .sum();
        println!(
            "  the lab's real connections matched explain's prediction on {agreed} of {compared} \
             pairs"
        );
    } else {
        println!("  no agent ran: nothing was enforced, so the lab was not compared with explain");
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {line}\n")
            }
        })
        .collect()
}

/// Lets Ctrl-C stop the command that runs (it gets the signal too) while the demo itself lives
/// on to take the lab down.
fn catch_interrupt() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGINT, &action) }.context("installing the Ctrl-C handler")?;
    Ok(())
}

fn reset_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn copy(file: &Path, dir: &Path) -> anyhow::Result<()> {
    let name = file
        .file_name()
        .with_context(|| format!("{} names no file", file.display()))?;
    fs::copy(file, dir.join(name))
        .with_context(|| format!("copying {} to {}", file.display(), dir.display()))?;
    Ok(())
}

/// The demo's lab: the agents it was given, or none.
struct Lab {
    no_agent: bool,
    agent: PathBuf,
}

impl Lab {
    fn up(&self, dir: &Path) -> anyhow::Result<Up> {
        let mut up = policy_lab::up::up(&UpArgs {
            dir: dir.to_owned(),
            nodes: NODES,
            ip_family: IpFamily::Dual,
            no_agent: self.no_agent,
            no_build: true,
            agent_bin: (!self.no_agent).then(|| self.agent.clone()),
        })?;
        // Which pid each agent got is not part of the tour.
        up.started.clear();
        Ok(up)
    }

    fn probe(&self, port: &Port) -> anyhow::Result<Matrix> {
        let protocol = match port.protocol {
            "UDP" => Protocol::Udp,
            _ => Protocol::Tcp,
        };
        let probed = probe::probe_pairs(&probe::Probe {
            port: port.number,
            protocol,
            via: probe::Via::Pod,
            family: Some("4".to_owned()),
        })?;
        Ok(probed.reachability.matrix)
    }

    fn down(&self) -> anyhow::Result<Duration> {
        Ok(policy_lab::down::down()?.elapsed)
    }
}

/// Takes the lab down when dropped, unless it was disarmed: the demo leaves nothing behind
/// when a step fails.
struct LabGuard<'a> {
    lab: &'a Lab,
    armed: bool,
}

impl LabGuard<'_> {
    /// Takes the lab down now (if armed) and reports how long that took.
    fn disarm(mut self) -> anyhow::Result<Duration> {
        let armed = std::mem::replace(&mut self.armed, false);
        if armed {
            self.lab.down().context("taking the lab down")
        } else {
            Ok(Duration::ZERO)
        }
    }
}

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Err(error) = self.lab.down()
        {
            eprintln!("demo: taking the lab down failed: {error:#}");
        }
    }
}

/// What `policy-agent explain` predicts from the manifests the lab rendered.
fn explain(port: &Port) -> anyhow::Result<Matrix> {
    let rendered = Path::new(LAB_RUN_DIR).join("manifests");
    let protocol = match port.protocol {
        "UDP" => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    let answer = explain::complete_matrix(
        std::slice::from_ref(&rendered),
        protocol,
        port.number,
        explain::Via::Pod,
    )
    .with_context(|| format!("explaining {}", rendered.display()))?;
    Ok(answer.matrix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_names_an_example_policy_and_every_example_has_a_step() {
        let dir = workspace_root().join("deploy/examples/policies");
        let mut files: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .collect();
        files.sort();
        let steps: Vec<&str> = STEPS.iter().map(|step| step.file).collect();
        assert_eq!(files, steps);
    }

    #[test]
    fn every_step_probes_a_port() {
        for step in &STEPS {
            assert!(!step.ports.is_empty(), "{} probes nothing", step.file);
        }
    }

    #[test]
    fn indents_lines_but_not_blank_ones() {
        assert_eq!(indent("a\n\nb\n"), "  a\n\n  b\n");
    }
}
