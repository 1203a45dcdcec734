//! The per-node agents: building and finding the binary, starting one inside each node, and
//! waiting until every agent has applied the current rendered manifests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use policy_core::manifest::node_name;

use super::{
    build::{self, Profile},
    names, netns,
};

/// The environment variable that names the agent binary.
pub const AGENT_BIN_ENV: &str = "NETPOL_AGENT_BIN";

/// The agent binary: `--agent-bin`, else `$NETPOL_AGENT_BIN`, else the workspace's debug build.
/// The last one is built first unless `build` is false.
pub fn binary(given: Option<PathBuf>, build: bool) -> Result<PathBuf> {
    if let Some(path) = given.or_else(|| std::env::var_os(AGENT_BIN_ENV).map(PathBuf::from)) {
        return Ok(path);
    }
    if build {
        println!("building policy-agent");
        return build::binary("policy-agent", Profile::Debug);
    }
    Ok(crate::workspace_root().join("target/debug/policy-agent"))
}

/// Whether `binary` has the `run` subcommand (agents that predate it cannot run in the lab).
pub fn supports_run(binary: &Path) -> bool {
    Command::new(binary)
        .args(["run", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The agent of node `k`, if it is running.
fn running_agent(k: usize) -> Result<Option<u32>> {
    let node = names::node_netns(k);
    if !netns::exists(&node) {
        return Ok(None);
    }
    Ok(netns::pids(&node)?
        .first()
        .map(|pid| pid.as_raw().unsigned_abs()))
}

/// Starts the agent of every node that has none running; returns the started ones' nodes and
/// pids.
pub fn start_all(binary: &Path, nodes: usize) -> Result<Vec<(String, u32)>> {
    let mut started = Vec::new();
    for k in 1..=nodes {
        if running_agent(k)?.is_some() {
            continue;
        }
        let node = node_name(k);
        let state_dir = names::node_run_dir(&node);
        fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let pin_dir = Path::new(names::PIN_DIR).join(&node);
        let source = format!("files:{}", names::rendered_dir().display());
        let mut command = Command::new(binary);
        command
            .arg("run")
            .args(["--source", &source, "--node-name", &node])
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            // A pod the lab adds is denied until its agent has programmed it.
            .args(["--new-endpoints", "deny"])
            .args(["--endpoint-interface-prefix", names::HOST_VETH_PREFIX]);
        let pid = netns::spawn_detached(&names::node_netns(k), &mut command, &agent_log(k))?;
        started.push((node, pid));
    }
    Ok(started)
}

/// The generation of the rendered manifests, computed as the agent computes it.
pub fn expected_generation() -> Result<String> {
    let dir = names::rendered_dir();
    policy_core::manifest::generation(&dir)
        .with_context(|| format!("computing the generation of {}", dir.display()))
}

/// Waits until every node's agent reports `generation` as applied; returns how long it took.
pub fn wait_applied(generation: &str, nodes: usize, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut pending: Vec<usize> = (1..=nodes).collect();
    let mut next_liveness_check = start;
    loop {
        pending.retain(|k| {
            fs::read_to_string(generation_file(*k))
                .map_or(true, |applied| applied.trim() != generation)
        });
        if pending.is_empty() {
            return Ok(start.elapsed());
        }
        if Instant::now() >= next_liveness_check {
            next_liveness_check = Instant::now() + Duration::from_millis(200);
            for k in &pending {
                if running_agent(*k)?.is_none() {
                    bail!(
                        "the agent of {} is not running; see {}",
                        node_name(*k),
                        agent_log(*k).display()
                    );
                }
            }
        }
        if start.elapsed() > timeout {
            let lagging: Vec<String> = pending.iter().map(|k| node_name(*k)).collect();
            bail!(
                "after {timeout:?} the agents of {} have not applied generation {generation}; \
                 see {}",
                lagging.join(", "),
                agent_log(pending[0]).display()
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Where node `k`'s agent publishes the generation it applied.
pub fn generation_file(k: usize) -> PathBuf {
    names::node_run_dir(&node_name(k)).join("generation")
}

/// Node `k`'s agent log.
pub fn agent_log(k: usize) -> PathBuf {
    names::node_run_dir(&node_name(k)).join("agent.log")
}

/// Stops the agents of every node.
pub fn stop_all(nodes: usize) -> Result<()> {
    for k in 1..=nodes {
        let node = names::node_netns(k);
        if netns::exists(&node) {
            netns::stop_processes(&node)?;
        }
    }
    Ok(())
}
