//! `cargo xtask lab`: a cluster of network namespaces that behaves like a small Kubernetes cluster:
//! nodes linked by an underlay, pods wired like the ptp and bridge CNI plugins, Services translated
//! like kube-proxy does, and the real agent on every node.

pub(crate) mod agent;
pub(crate) mod assign;
pub(crate) mod cmd;
mod down;
mod follow;
pub(crate) mod manifest;
pub(crate) mod names;
pub(crate) mod netns;
pub(crate) mod plan;
pub(crate) mod probe;
mod render;
mod serve;
mod services;
pub(crate) mod state;
mod status;
pub(crate) mod telemetry;
mod topology;
mod up;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::setup;

/// Arguments of `cargo xtask lab`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab from a manifest directory, or update the lab that is up to match it.
    Up(up::UpArgs),
    /// Bring the lab to its directory's current content, and show its nodes, pods and Services.
    Status(status::StatusArgs),
    /// Bring the lab to its directory's current content, wait until every agent has applied it,
    /// then probe every ordered pod pair and print the reachability matrix.
    Probe(probe::ProbeArgs),
    /// Remove everything the lab created, also after a crash.
    Down,
    /// The server inside each pod.
    #[command(hide = true)]
    Serve(serve::ServeArgs),
}

pub fn run(args: Args) -> Result<()> {
    if !matches!(args.command, LabCommand::Serve(_)) {
        setup::ensure_packages(setup::Task::Lab)?;
    }
    match args.command {
        LabCommand::Up(args) => {
            require_root()?;
            up::run(args)
        }
        LabCommand::Status(args) => {
            require_root()?;
            status::run(args)
        }
        LabCommand::Probe(args) => {
            require_root()?;
            probe::run(args)
        }
        LabCommand::Down => {
            require_root()?;
            down::run()
        }
        LabCommand::Serve(args) => serve::run(args),
    }
}

fn require_root() -> Result<()> {
    if !crate::run::is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    Ok(())
}
