//! `cargo xtask build`: the agent with its embedded eBPF object.

use std::process::Command;

use policy_lab::cmd as run;

use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Build with optimizations.
    #[arg(long)]
    pub release: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    setup::ensure_bpf_linker(false)?;
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--package", "policy-agent"]);
    if args.release {
        cargo.arg("--release");
    }
    run::status(&mut cargo)?;
    let profile = if args.release { "release" } else { "debug" };
    println!("build: target/{profile}/policy-agent (the eBPF object is embedded)");
    Ok(())
}
