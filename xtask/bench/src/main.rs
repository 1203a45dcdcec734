//! `policy-bench`: the traffic tools the lab benchmarks run inside the pods (`policy-bench tool
//! ...`). The benchmarks themselves run from `cargo xtask bench`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "The traffic tools of the lab benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A traffic tool, run inside a pod.
    #[command(subcommand)]
    Tool(policy_bench::tools::Tool),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tool(tool) => policy_bench::tools::run(tool),
    }
}
