//! What an agent publishes about its own work in `<state-dir>/status.json`: how it started and
//! what its reconciles wrote, when. The e2e checks and the benchmarks learn these facts here,
//! never from the agent's log.
//!
//! The types are policy-core's, the agent's own.

use std::{
    io,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use jiff::Timestamp;
use policy_core::telemetry::{self, StatusReadError};
pub use policy_core::telemetry::{STATUS_FILE, Status};

/// The status in `state_dir`; none while no agent has published there.
pub fn read(state_dir: &Path) -> Result<Option<Status>> {
    match telemetry::read(state_dir) {
        Ok(status) => Ok(Some(status)),
        Err(StatusReadError::Missing { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// Waits until the status in `state_dir` satisfies `ready` (the agent publishes it after each
/// reconcile, just after the generation file).
pub fn wait(
    state_dir: &Path,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&Status) -> bool,
) -> Result<Status> {
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
    use std::fs;

    use super::*;

    #[test]
    fn an_agent_that_published_nothing_has_no_status() {
        let dir = std::env::temp_dir().join(format!("lab-telemetry-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(read(&dir).unwrap().is_none());
        fs::write(dir.join(STATUS_FILE), "{").unwrap();
        assert!(read(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
