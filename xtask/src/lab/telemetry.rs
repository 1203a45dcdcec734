//! What an agent publishes about its own work in `<state-dir>/status.json`: how it started and
//! what its reconciles wrote, when. The e2e checks and the benchmarks learn these facts here,
//! never from the agent's log.
//!
//! xtask cannot depend on `policy-agent` (its build script builds the eBPF object), so this
//! reads the fields it needs of `policy_agent::agent::status::Status` and ignores the rest.

use std::{
    fs, io,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use jiff::Timestamp;
use serde::Deserialize;

/// The file under the agent's state directory.
pub const STATUS_FILE: &str = "status.json";

/// The telemetry part of an agent's status.
#[derive(Clone, Debug, Deserialize)]
pub struct Telemetry {
    pub applied_generation: Option<String>,
    pub start: Option<Start>,
    pub first_reconcile: Option<Reconcile>,
    pub last_update: Option<Reconcile>,
}

/// How the agent started.
#[derive(Clone, Debug, Deserialize)]
pub struct Start {
    /// When the eBPF object was loaded and the pins adopted or replaced.
    pub datapath_open: Timestamp,
    /// Programs pinned anew; none when the agent adopted what was pinned.
    pub installed_programs: Vec<String>,
}

/// One reconcile that ran to its end.
#[derive(Clone, Debug, Deserialize)]
pub struct Reconcile {
    /// When the maps were written.
    pub written: Timestamp,
    /// When the programs were attached.
    pub finished: Timestamp,
    /// Map entries written or removed.
    pub writes: usize,
}

/// The telemetry in `state_dir`; none while no agent has published there.
pub fn read(state_dir: &Path) -> Result<Option<Telemetry>> {
    let path = state_dir.join(STATUS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not an agent status", path.display()))
}

/// Waits until the status in `state_dir` satisfies `ready` (the agent publishes it after each
/// reconcile, just after the generation file).
pub fn wait(
    state_dir: &Path,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&Telemetry) -> bool,
) -> Result<Telemetry> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(telemetry) = read(state_dir)?
            && ready(&telemetry)
        {
            return Ok(telemetry);
        }
        if Instant::now() > deadline {
            bail!(
                "no status in {} shows {what} within {timeout:?}",
                state_dir.display()
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Milliseconds from `from` to `to`.
pub fn millis_between(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_telemetry_of_a_status_and_ignores_the_rest() {
        let json = r#"{
            "node": "node-1", "applied_generation": "abc", "ready": true, "endpoints": [],
            "start": {"time": "2026-11-26T07:00:00Z", "datapath_open": "2026-11-26T07:00:00.5Z",
                      "adopted_programs": ["from_pod"], "installed_programs": [],
                      "replaced_maps": [], "held_closed": []},
            "first_reconcile": {"generation": "abc", "started": "2026-11-26T07:00:01Z",
                                "written": "2026-11-26T07:00:01.25Z",
                                "finished": "2026-11-26T07:00:01.5Z", "writes": 0,
                                "endpoints": 3, "waiting": 0, "held": 0, "attached": 3,
                                "detached": 0, "repaired": 0},
            "last_update": null
        }"#;
        let telemetry: Telemetry = serde_json::from_str(json).unwrap();
        let start = telemetry.start.unwrap();
        let first = telemetry.first_reconcile.unwrap();
        assert!(start.installed_programs.is_empty());
        assert_eq!(first.writes, 0);
        assert_eq!(millis_between(first.written, first.finished), 250.0);
        assert_eq!(millis_between(start.datapath_open, first.written), 750.0);
        assert!(telemetry.last_update.is_none());
    }

    #[test]
    fn an_agent_that_published_nothing_has_no_telemetry() {
        let dir = std::env::temp_dir().join(format!("xtask-telemetry-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(read(&dir).unwrap().is_none());
        fs::write(dir.join(STATUS_FILE), "{").unwrap();
        assert!(read(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
