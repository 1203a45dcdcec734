//! `cargo xtask lab`: a cluster of network namespaces that behaves like a small Kubernetes cluster.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the lab is not built yet")
}
