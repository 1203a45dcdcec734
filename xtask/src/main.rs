//! `cargo xtask`: the project's build, check, test, lab, demo and benchmark tasks.

mod lab;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, check, test and demonstrate the NetworkPolicy enforcer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Network-namespace cluster: nodes, pods, Services and one agent per node.
    Lab(lab::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Lab(args) => lab::run(args),
    }
}
