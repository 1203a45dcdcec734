//! The lab (`cargo xtask lab`): a cluster of network namespaces that behaves like a small
//! Kubernetes cluster: nodes linked by an underlay, pods wired like the ptp and bridge CNI
//! plugins, Services translated like kube-proxy does, and the real agent on every node. The other
//! tasks reach the test bed it builds on ([`cmd`], [`netns`]) through it.

pub mod agent;
pub mod build;
pub mod down;
mod follow;
pub mod manifest;
pub mod names;
pub mod plan;
pub mod probe;
mod render;
mod serve;
mod services;
pub mod state;
mod status;
pub mod telemetry;
mod topology;
pub mod up;

use anyhow::{Result, bail};
use clap::Subcommand;
pub use policy_testbed::{cmd, netns};

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
    match args.command {
        LabCommand::Up(args) => {
            require_root()?;
            print!("{}", up::up(&args)?);
            Ok(())
        }
        LabCommand::Status(args) => {
            require_root()?;
            status::run(args)
        }
        LabCommand::Probe(args) => {
            require_root()?;
            probe::run(&args)
        }
        LabCommand::Down => {
            require_root()?;
            print!("{}", down::down()?);
            Ok(())
        }
        LabCommand::Serve(args) => serve::run(args),
    }
}

fn require_root() -> Result<()> {
    if !cmd::is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    Ok(())
}

/// The workspace root, two levels above this crate.
pub fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

impl Args {
    /// Whether this is the server the lab starts inside a pod, which needs no installed tools.
    pub fn is_server(&self) -> bool {
        matches!(self.command, LabCommand::Serve(_))
    }
}
