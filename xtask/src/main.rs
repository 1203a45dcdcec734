//! `cargo xtask`: the project's build, check, test, lab, demo and benchmark tasks.

mod bench;
mod build;
mod check;
mod demo;
mod deploy;
mod e2e;
mod kind_e2e;
mod lab;
mod run;
mod schema;
mod setup;
mod test;

use clap::{Parser, Subcommand};

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
    Bench(bench::Args),
    /// Network-namespace cluster: nodes, pods, Services and one agent per node.
    Lab(lab::Args),
    /// The end-to-end NetworkPolicy scenarios against the lab (root).
    E2e(e2e::Args),
    /// The end-to-end scenarios against a kind cluster running the agent from `deploy/` (needs
    /// docker, kind and kubectl).
    KindE2e(kind_e2e::Args),
    /// A two-minute tour (root): the example policies applied one by one in the lab, the real
    /// connections next to what `explain` predicts, and the drops the kernel reported.
    Demo(demo::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(args) => setup::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Check => check::run(),
        Command::Test(args) => test::run(&args),
        Command::Lab(args) => lab::run(args),
        Command::Bench(args) => bench::run(args),
        Command::E2e(args) => e2e::run(&args),
        Command::KindE2e(args) => kind_e2e::run(&args),
        Command::Demo(args) => demo::run(&args),
    }
}
