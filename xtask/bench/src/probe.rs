//! Timing a policy change by real traffic: a client pod opens TCP connections to a server pod in
//! a tight loop, the change is written, and the loop watches for the verdict to flip.
//!
//! An attempt counts as allowed when the server's kernel answered (connected or refused), and as
//! denied when nothing came back within [`ATTEMPT_TIMEOUT`] (a dropped SYN). Attempts start every
//! [`PERIOD`] at most. The enforcement time is the start of the first attempt of a run of
//! [`STABLE`] attempts that all see the new verdict, measured from the moment just before the
//! change is written; so a flip is seen at most one attempt late: by [`PERIOD`] plus a connection
//! (denied to allowed: the attempt in flight waits out [`ATTEMPT_TIMEOUT`]).

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use policy_lab::netns;

/// How long an attempt waits for the server before it counts as denied.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(3);
/// The shortest time between the starts of two attempts.
pub const PERIOD: Duration = Duration::from_micros(500);
/// Consecutive attempts with one verdict that make it the verdict in force.
pub const STABLE: usize = 3;
/// How long the verdict before a change may take to show (the previous change settling).
const BEFORE_TIMEOUT: Duration = Duration::from_secs(10);

/// One attempt: whether the server's kernel answered.
fn attempt(target: SocketAddr) -> Result<bool> {
    match TcpStream::connect_timeout(&target, ATTEMPT_TIMEOUT) {
        Ok(stream) => {
            reset_on_close(&stream)?;
            Ok(true)
        }
        Err(error) if error.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(error) if matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            Ok(false)
        }
        Err(error) => Err(error).with_context(|| format!("connecting to {target}")),
    }
}

/// Makes closing the connection send a reset, so thousands of attempts a second leave no
/// TIME_WAIT sockets behind to use up the client's ports.
fn reset_on_close(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is the stream's open socket, and the option value is a `linger`
    // whose exact size is passed along.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_LINGER");
    }
    Ok(())
}

/// Attempts in order: (start, allowed).
struct Attempts {
    target: SocketAddr,
    log: Vec<(Instant, bool)>,
}

impl Attempts {
    fn next(&mut self) -> Result<bool> {
        if let Some((last, _)) = self.log.last()
            && let Some(wait) = PERIOD.checked_sub(last.elapsed())
        {
            thread::sleep(wait);
        }
        let start = Instant::now();
        let allowed = attempt(self.target)?;
        self.log.push((start, allowed));
        Ok(allowed)
    }

    /// Whether the last [`STABLE`] attempts all saw `allowed`.
    fn settled(&self, allowed: bool) -> bool {
        self.log.len() >= STABLE
            && self.log[self.log.len() - STABLE..]
                .iter()
                .all(|(_, seen)| *seen == allowed)
    }
}

/// From inside `client_netns`: waits until connections to `target` are `before` (allowed or
/// denied), runs `change`, and returns the time from just before `change` to the first attempt
/// that saw the verdict flip for good; `None` when it did not flip within `timeout`.
pub fn time_flip(
    client_netns: &str,
    target: SocketAddr,
    before: bool,
    change: impl FnOnce() -> Result<()> + Send,
    timeout: Duration,
) -> Result<Option<Duration>> {
    netns::run_inside(client_netns, || {
        let mut attempts = Attempts {
            target,
            log: Vec::new(),
        };
        let waiting = Instant::now();
        while !attempts.settled(before) {
            attempts.next()?;
            if waiting.elapsed() > BEFORE_TIMEOUT {
                bail!(
                    "connections from {client_netns} to {target} are not {} before the change",
                    if before { "allowed" } else { "denied" }
                );
            }
        }
        let written = Instant::now();
        change()?;
        attempts.log.clear();
        while !attempts.settled(!before) {
            attempts.next()?;
            if written.elapsed() > timeout {
                return Ok(None);
            }
        }
        let (first, _) = attempts.log[attempts.log.len() - STABLE];
        Ok(Some(first.duration_since(written)))
    })
}

/// Nearest-rank percentile `p` (0 to 100) of `samples`, which must be sorted; `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_verdict_is_settled_after_enough_agreeing_attempts() {
        let now = Instant::now();
        let mut attempts = Attempts {
            target: "127.0.0.1:1".parse().unwrap(),
            log: vec![(now, true), (now, false), (now, false)],
        };
        assert!(!attempts.settled(false));
        attempts.log.push((now, false));
        assert!(attempts.settled(false));
        assert!(!attempts.settled(true));
    }
}
