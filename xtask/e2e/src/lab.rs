//! The lab the suite runs on, and what `explain` predicts for it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use policy_core::{
    explain,
    manifest::IpFamily,
    matrix::{Matrix, Reachability},
};
use policy_lab::{probe, up::UpArgs};

use super::scenario::{Probe, Protocol, Via};

/// Where the lab renders the manifest directory it was given (pods with nodes and addresses):
/// what the agents and `explain` read.
pub const RENDERED: &str = "/run/netpol-lab/manifests";

/// The lab the suite runs on: two nodes, so that traffic between pods of one node and of two
/// nodes is covered, and both address families, so that every probe can choose one.
pub struct Lab;

impl Lab {
    /// Creates the lab, or brings it to what `dir` now declares. Returns how long the agents
    /// took to apply the manifests after they were written, when `up` waited for them.
    pub fn up(&self, dir: &Path) -> anyhow::Result<Option<Duration>> {
        let up = policy_lab::up::up(&UpArgs {
            dir: dir.to_owned(),
            nodes: 2,
            ip_family: IpFamily::Dual,
            no_agent: false,
            no_build: false,
            agent_bin: None,
        })?;
        Ok(up.applied.map(|(_, latency)| latency))
    }

    /// The reachability matrix, once every agent has applied the manifests.
    pub fn probe(&self, probe: &Probe) -> anyhow::Result<Reachability> {
        let via = match probe.via {
            Via::Pod => probe::Via::Pod,
            Via::Service => probe::Via::Service,
            Via::NodePort => probe::Via::NodePort,
        };
        let probed = probe::probe_pairs(&probe::Probe {
            port: probe.port,
            protocol: probe.protocol.model(),
            via,
            family: Some(probe.family.number().to_string()),
        })?;
        Ok(probed.reachability)
    }

    pub fn down(&self) -> anyhow::Result<()> {
        policy_lab::down::down()?;
        Ok(())
    }
}

/// What `explain` predicts from the rendered manifests: the policy core's compilation of every
/// node, the one `policy-agent explain` prints.
pub struct Explain;

impl Explain {
    /// The matrix for `port`/`protocol` reached `via`; anything in the manifests that could not
    /// be loaded or compiled makes it an error, as it makes `policy-agent explain` fail.
    pub fn matrix(
        &self,
        port: u16,
        protocol: Protocol,
        via: explain::Via,
    ) -> anyhow::Result<Matrix> {
        let answer =
            explain::complete_matrix(&[PathBuf::from(RENDERED)], protocol.model(), port, via)
                .with_context(|| format!("explaining {RENDERED}"))?;
        Ok(answer.matrix)
    }
}
