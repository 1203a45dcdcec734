//! `policy-lab`: the lab's command line, the one `cargo xtask lab` offers, and the server the lab
//! starts in each pod (`policy-lab serve`).

use clap::Parser;

#[derive(Parser)]
#[command(about = "A cluster of network namespaces with one agent per node")]
struct Cli {
    #[command(flatten)]
    args: policy_lab::Args,
}

fn main() -> anyhow::Result<()> {
    policy_lab::run(Cli::parse().args)
}
