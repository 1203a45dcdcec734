//! The lab (`cargo xtask lab ...`), driven through its command line, and what `explain` predicts.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use policy_core::{
    explain,
    matrix::{Matrix, Reachability},
    policy::model,
};
use policy_lab::cmd as run;

use super::scenario::{Probe, Protocol};

/// Where the lab renders the manifest directory it was given (pods with nodes and addresses):
/// what the agents and `explain` read.
pub const RENDERED: &str = "/run/netpol-lab/manifests";

/// Two nodes, so that traffic between pods of one node and of two nodes is covered; both address
/// families, so that every probe can choose one.
const UP_ARGS: [&str; 4] = ["--nodes", "2", "--ip-family", "dual"];

/// The lab, through this very xtask binary.
pub struct Lab {
    xtask: PathBuf,
}

impl Lab {
    pub fn new() -> anyhow::Result<Self> {
        let xtask = std::env::current_exe().context("finding the xtask binary")?;
        Ok(Self { xtask })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.xtask);
        command.arg("lab");
        command
    }

    /// `lab up -f DIR`: creates the lab, or brings it to what DIR now declares. Returns how long
    /// the agents took to apply the manifests after they were written, when `up` waited for them
    /// and said so.
    pub fn up(&self, dir: &Path) -> anyhow::Result<Option<Duration>> {
        let mut command = self.command();
        command.arg("up").arg("-f").arg(dir).args(UP_ARGS);
        Ok(applied_after(&run::output(&mut command)?))
    }

    /// `lab probe ... -o json`: the reachability matrix, once every agent has applied the
    /// manifests.
    pub fn probe(&self, probe: &Probe) -> anyhow::Result<Reachability> {
        let mut command = self.command();
        command
            .args(["probe", "--port", &probe.port.to_string()])
            .args(["--protocol", probe.protocol.as_str()])
            .args(["--via", probe.via.as_str()])
            .args(["--family", &probe.family.number().to_string()])
            .args(["-o", "json"]);
        let text = run::output(&mut command)?;
        let json = Reachability::parse(&text)
            .with_context(|| format!("reading the output of `{}`", run::describe(&command)))?;
        ensure!(
            json.port == probe.port
                && json.protocol == probe.protocol.as_str()
                && json.via.as_deref() == Some(probe.via.as_str()),
            "`{}` answered for {}/{} via {}",
            run::describe(&command),
            json.protocol,
            json.port,
            json.via.as_deref().unwrap_or("(none)")
        );
        Ok(json)
    }

    /// `lab down`.
    pub fn down(&self) -> anyhow::Result<()> {
        let mut command = self.command();
        command.arg("down");
        run::output(&mut command)?;
        Ok(())
    }
}

/// The latency in the line `lab up` prints once the agents have applied the manifests:
/// `agents applied generation G N ms after the manifests were written`.
fn applied_after(output: &str) -> Option<Duration> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("agents applied generation ")?;
        let millis = rest
            .strip_suffix(" ms after the manifests were written")?
            .split_whitespace()
            .nth(1)?;
        millis.parse().ok().map(Duration::from_millis)
    })
}

/// What `explain` predicts from the rendered manifests: the policy core's compilation of every
/// node, the one `policy-agent explain` prints.
pub struct Explain;

impl Explain {
    /// The matrix for `port`/`protocol`; anything in the manifests that could not be loaded or
    /// compiled makes it an error, as it makes `policy-agent explain` fail.
    pub fn matrix(&self, port: u16, protocol: Protocol) -> anyhow::Result<Matrix> {
        let protocol = match protocol {
            Protocol::Tcp => model::Protocol::Tcp,
            Protocol::Udp => model::Protocol::Udp,
        };
        let answer = explain::complete_matrix(&[PathBuf::from(RENDERED)], protocol, port)
            .with_context(|| format!("explaining {RENDERED}"))?;
        Ok(answer.matrix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_how_long_the_agents_took_to_apply() {
        let output = "node-1 (ptp style): 5 pods, netns np-node-1\n\
                      lab up in 180 ms: 9 pods (0 added, 0 removed), 9 services\n\
                      agents applied generation 3f2a9c 42 ms after the manifests were written\n";
        assert_eq!(applied_after(output), Some(Duration::from_millis(42)));
    }

    #[test]
    fn without_agents_there_is_no_latency() {
        let output = "lab up in 150 ms: 9 pods (0 added, 0 removed), 9 services; no agents\n";
        assert_eq!(applied_after(output), None);
    }
}
