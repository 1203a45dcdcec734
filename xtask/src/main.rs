//! `cargo xtask`: the project's tasks. Building, checking, testing and installing what they need
//! live here; the lab, the end-to-end scenarios, the demo and the benchmarks are crates of their
//! own (`xtask/lab`, `xtask/e2e`, `xtask/demo`, `xtask/bench`), which this dispatcher calls once
//! it has installed what each needs.

mod build;
mod check;
mod deploy;
mod setup;
mod test;

use clap::{Parser, Subcommand};
use policy_lab::cmd::is_root;
use setup::Task;

#[derive(Parser)]
#[command(about = "Build, check, test and demonstrate the NetworkPolicy enforcer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (bpf-linker against rustc's LLVM, Debian packages).
    Setup(setup::Args),
    /// Build the agent with its embedded eBPF object.
    Build(build::Args),
    /// rustfmt, clippy -D warnings (host and eBPF crates), the policy core's dependencies, and the
    /// manifests, kind config and Dockerfile under deploy/.
    Check,
    /// Every test; the privileged ones need root.
    Test(test::Args),
    /// Benchmarks: the resolver and, as root, the datapath (per packet through
    /// BPF_PROG_TEST_RUN, and traffic through the lab), reported in target/bench/report.md.
    Bench(policy_bench::Args),
    /// Network-namespace cluster: nodes, pods, Services and one agent per node.
    Lab(policy_lab::Args),
    /// The end-to-end NetworkPolicy scenarios against the lab (root).
    E2e(policy_e2e::Args),
    /// The end-to-end scenarios against a kind cluster running the agent from `deploy/` (needs
    /// docker, kind and kubectl).
    KindE2e(policy_e2e::kind::Args),
    /// A two-minute tour (root): the example policies applied one by one in the lab, the real
    /// connections next to what `explain` predicts, and the drops the kernel reported.
    Demo(policy_demo::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(args) => setup::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Check => check::run(),
        Command::Test(args) => test::run(&args),
        Command::Lab(args) => {
            if !args.is_server() {
                install(Task::Lab)?;
            }
            policy_lab::run(args)
        }
        Command::Bench(args) => {
            setup::ensure_bpf_linker(false)?;
            install(Task::Bench)?;
            policy_bench::run(args)
        }
        Command::E2e(args) => {
            install(Task::E2e)?;
            policy_e2e::run(&args)
        }
        Command::KindE2e(args) => policy_e2e::kind::run(&args),
        Command::Demo(args) => {
            setup::ensure_bpf_linker(false)?;
            install(Task::Demo)?;
            policy_demo::run(&args)
        }
    }
}

/// Installs the Debian packages `task` uses. Only root can; without root the task itself says
/// that it needs root.
fn install(task: Task) -> anyhow::Result<()> {
    if is_root() {
        setup::ensure_packages(task)?;
    }
    Ok(())
}
