//! `cargo xtask bench`: the benchmarks, written as a report to `target/bench/` (`report.md`,
//! `report.json` and a PNG plot per family of figures).
//!
//! - The resolver: a full resolve of 10,000 pods / 1,000 policies / 100 namespaces for one
//!   node's endpoints, incremental changes to a map delta, peak memory, and the large inputs one
//!   namespace owner can write (8,000 excepts; 65,535 single ports from 9 ipBlocks) (criterion
//!   bench `policy-agent/core/benches/resolve.rs`; its output in `target/bench/resolver.txt`).
//! - The kernel programs (root): ns per packet through BPF_PROG_TEST_RUN for established, new
//!   allowed and new denied flows, IPv4 and IPv6, with 10 to 100,000 policy entries, next to an
//!   empty program (see `testrun.rs`).
//! - Traffic through the lab (root): throughput, latency and new connections per second, same
//!   node and across nodes, without filtering, with an empty TC program, with the agent, with
//!   linear iptables rules and with an nftables set, at 10 to 10,000 rules (see `traffic.rs`).
//! - The control plane (root): the time from a manifest change to the kernel enforcing it, seen
//!   by probing, with 1,000 pods and 500 policies; and the agent's start against 1,000 to 50,000
//!   pods: time to its first published generation, peak RSS and BPF map memory (see
//!   `control.rs`).

mod bed;
mod cluster;
mod control;
mod probe;
pub mod report;
mod rules;
mod tcx;
mod testrun;
pub mod tools;
mod traffic;

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;
use clap::ValueEnum;
use policy_lab::{
    build::{self, Profile},
    cmd as run, workspace_root,
};

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Which parts to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Rounds of the lab measurements.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 1)]
    iperf_seconds: u64,
    /// Milliseconds of each latency and each connection-rate run.
    #[arg(long, default_value_t = 500)]
    run_ms: u64,
    /// The agent binary the lab runs (default: a release build, built first).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// The resolver (criterion).
    Resolver,
    /// BPF_PROG_TEST_RUN per packet (root).
    Testrun,
    /// Traffic through the lab (root).
    Lab,
    /// The agent: change to enforcement, start time and memory (root).
    Control,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let wants = |part| args.only.is_empty() || args.only.contains(&part);
    let out_dir = workspace_root().join("target/bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    if wants(Part::Resolver) {
        println!("bench: the resolver (criterion; a few minutes)");
        let resolver = run::output(Command::new("cargo").args([
            "bench",
            "--package",
            "policy-core",
            "--bench",
            "resolve",
        ]))?;
        print!("{resolver}");
        let resolver_file = out_dir.join("resolver.txt");
        fs::write(&resolver_file, &resolver)
            .with_context(|| format!("writing {}", resolver_file.display()))?;
        println!(
            "bench: resolver figures written to {}",
            resolver_file.display()
        );
    }

    let mut sections = Vec::new();
    if !run::is_root() {
        println!("bench: the datapath figures need root (BPF_PROG_TEST_RUN, the lab); skipped");
    } else {
        if wants(Part::Testrun) {
            println!(
                "bench: the kernel programs (BPF_PROG_TEST_RUN, release build; a minute or two)"
            );
            sections.push(testrun::measure()?);
        }
        if wants(Part::Lab) {
            let agent = release_agent(args.agent_bin.clone())?;
            let durations = traffic::Durations {
                rounds: args.rounds,
                iperf_seconds: args.iperf_seconds,
                run_ms: args.run_ms,
            };
            println!(
                "bench: traffic through the lab ({} rounds; about {} minutes)",
                durations.rounds,
                durations.rounds * 2
            );
            sections.extend(traffic::measure(&agent, &out_dir, durations)?);
        }
        if wants(Part::Control) {
            let agent = release_agent(args.agent_bin.clone())?;
            let figures = control::measure(&agent, control::Settings::FULL)?;
            let figures_file = out_dir.join("control.json");
            fs::write(&figures_file, serde_json::to_string_pretty(&figures)?)
                .with_context(|| format!("writing {}", figures_file.display()))?;
            sections.extend(control::sections(&figures));
        }
    }
    if sections.is_empty() {
        return Ok(());
    }
    let report = report::Report {
        title: "Benchmarks: the datapath and the control plane".to_owned(),
        intro: intro(),
        sections,
    };
    let path = report.write(&out_dir)?;
    println!("bench: report written to {}", path.display());
    Ok(())
}

/// The agent binary: the given one, else a release build, built first.
fn release_agent(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(agent) = given {
        return Ok(agent);
    }
    println!("bench: building the agent (release)");
    build::binary("policy-agent", Profile::Release)
}

/// The machine the figures come from.
fn intro() -> String {
    let kernel = run::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "Written by `cargo xtask bench` on Linux {} with {cpus} CPUs. Each section says how its \
         figures were measured; targets that are missed are listed first.",
        kernel.trim()
    )
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
