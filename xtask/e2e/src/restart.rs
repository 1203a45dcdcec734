//! The restart check: every node's agent is killed with SIGKILL and restarted while traffic
//! runs, on the base cluster plus a policy that lets only x/a reach x/c.
//!
//! It passes when:
//! - an established TCP connection x/a -> x/c keeps streaming through the kill and the restart:
//!   no reset, no end, no stall as long as [`STALL_LIMIT`], and bytes arrive while the agents are
//!   down and after they are back;
//! - x/b -> x/c (denied) never connects, before, during and after;
//! - each restarted agent adopted the pinned programs (installed none) and its first reconcile
//!   wrote nothing to the maps (its `status.json` says so).

use std::{
    collections::BTreeMap,
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use nix::sys::signal::{Signal, kill};
use policy_core::manifest::node_name;
use policy_lab::{
    agent, names, netns,
    plan::LabPod,
    state::State,
    telemetry::{self, Status},
};

use super::{lab::Lab, write_manifests};

/// The policy the check adds to the base cluster.
const POLICY_FILE: &str = "restart-only-a-to-c.yaml";
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: restart-only-a-to-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: c
  ingress:
  - from:
    - podSelector:
        matchLabels:
          pod: a
";
/// The port of the streaming server (the pod servers answer on 80 and 81).
const STREAM_PORT: u16 = 7070;
/// How long the agents stay down.
pub const DOWN_FOR: Duration = Duration::from_secs(2);
/// A gap this long between two reads of the stream fails the check.
const STALL_LIMIT: Duration = Duration::from_secs(1);
/// How long a restarted agent may take to publish its first reconcile after applying it.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// What the check measured.
pub struct Outcome {
    pub streamed_bytes: u64,
    pub bytes_while_down: u64,
    pub longest_gap: Duration,
    pub denied_attempts: u32,
    pub restart_applied: Option<Duration>,
}

/// Runs the check on the lab that is up with `base` written in `dir`.
pub fn run(lab: &Lab, dir: &Path, base: &BTreeMap<String, String>) -> anyhow::Result<Outcome> {
    let mut manifests = base.clone();
    manifests.insert(POLICY_FILE.to_owned(), POLICY.to_owned());
    write_manifests(dir, &manifests)?;
    lab.up(dir).context("applying the restart check's policy")?;
    let plan = State::require()?.plan;
    let pod = |name: &str| {
        plan.pods
            .iter()
            .find(|pod| pod.key.to_string() == name)
            .ok_or_else(|| anyhow!("the base cluster has no pod {name}"))
    };
    let (client, server, denied) = (pod("x/a")?, pod("x/c")?, pod("x/b")?);

    let stream = Stream::start(client, server)?;
    let prober = Prober::start(denied, server)?;
    thread::sleep(Duration::from_millis(500));
    ensure!(
        stream.received() > 0,
        "the stream x/a -> x/c carried nothing before the restart"
    );

    kill_agents(plan.nodes)?;
    let down_at = stream.received();
    thread::sleep(DOWN_FOR);
    let bytes_while_down = stream.received() - down_at;
    // What the killed agents published must not pass for what their successors did.
    for k in 1..=plan.nodes {
        for file in [
            agent::generation_file(k),
            state_dir(k).join(telemetry::STATUS_FILE),
        ] {
            match fs::remove_file(&file) {
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    return Err(error).with_context(|| format!("removing {}", file.display()));
                }
                _ => {}
            }
        }
    }
    let restart_applied = lab.up(dir).context("restarting the agents")?;
    let back_at = stream.received();
    thread::sleep(Duration::from_millis(500));
    let bytes_after = stream.received() - back_at;

    let denied_attempts = prober.finish()?;
    let (streamed_bytes, longest_gap) = stream.finish()?;
    ensure!(
        bytes_while_down > 0,
        "the stream x/a -> x/c carried nothing while the agents were down"
    );
    ensure!(
        bytes_after > 0,
        "the stream x/a -> x/c carried nothing after the agents came back"
    );
    ensure!(
        longest_gap < STALL_LIMIT,
        "the stream x/a -> x/c stalled for {} ms",
        longest_gap.as_millis()
    );
    for k in 1..=plan.nodes {
        let published = telemetry::wait(
            &state_dir(k),
            STATUS_TIMEOUT,
            "a first reconcile",
            |published| published.first_reconcile.is_some(),
        )?;
        check_adoption(&published).with_context(|| format!("the restarted agent of node-{k}"))?;
    }
    Ok(Outcome {
        streamed_bytes,
        bytes_while_down,
        longest_gap,
        denied_attempts,
        restart_applied,
    })
}

/// SIGKILLs every node's agent and waits until they are gone.
fn kill_agents(nodes: usize) -> anyhow::Result<()> {
    for k in 1..=nodes {
        let node = names::node_netns(k);
        let pids = netns::pids(&node)?;
        ensure!(!pids.is_empty(), "no agent runs in {node}");
        for pid in pids {
            kill(pid, Signal::SIGKILL).with_context(|| format!("killing {pid} in {node}"))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for k in 1..=nodes {
        let node = names::node_netns(k);
        while !netns::pids(&node)?.is_empty() {
            if Instant::now() > deadline {
                bail!("the agent of {node} survived SIGKILL");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Checks a restarted agent's start: pinned programs adopted, no map written.
fn check_adoption(published: &Status) -> anyhow::Result<()> {
    let start = published
        .start
        .as_ref()
        .context("its status has no start")?;
    ensure!(
        start.installed_programs.is_empty(),
        "it installed programs instead of adopting the pinned ones: {:?}",
        start.installed_programs
    );
    let first = published
        .first_reconcile
        .as_ref()
        .context("its status has no first reconcile")?;
    ensure!(
        first.writes == 0,
        "its first reconcile wrote {} map entries",
        first.writes
    );
    Ok(())
}

/// Where node `k`'s agent keeps its state.
fn state_dir(k: usize) -> PathBuf {
    names::node_run_dir(&node_name(k))
}

/// A server in one pod writing to a client in another, over one TCP connection.
struct Stream {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    longest_gap: Arc<Mutex<Duration>>,
    server: JoinHandle<anyhow::Result<()>>,
    client: JoinHandle<anyhow::Result<()>>,
}

impl Stream {
    fn start(client: &LabPod, server: &LabPod) -> anyhow::Result<Stream> {
        let address = SocketAddr::new(
            server
                .ip(false)
                .with_context(|| format!("{} has no IPv4 address", server.key))?,
            STREAM_PORT,
        );
        let listener = netns::run_inside(&server.netns(), || {
            TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, STREAM_PORT)))
                .context("binding the stream server")
        })?;
        listener
            .set_nonblocking(true)
            .context("making the stream server non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let server = thread::spawn(move || {
            let mut connection = loop {
                match listener.accept() {
                    Ok((connection, _)) => break connection,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        if stopping.load(Ordering::Relaxed) {
                            bail!("the stream client never connected");
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(error) => return Err(error).context("accepting the stream"),
                }
            };
            connection
                .set_nonblocking(false)
                .context("making the stream blocking")?;
            let chunk = [0x5a_u8; 1024];
            while !stopping.load(Ordering::Relaxed) {
                connection
                    .write_all(&chunk)
                    .context("the stream server's write failed")?;
                thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        });
        let received = Arc::new(AtomicU64::new(0));
        let longest_gap = Arc::new(Mutex::new(Duration::ZERO));
        let (stopping, counter, gap) = (
            Arc::clone(&stop),
            Arc::clone(&received),
            Arc::clone(&longest_gap),
        );
        let client_netns = client.netns();
        let client = thread::spawn(move || {
            netns::enter(&client_netns)?;
            let mut connection = TcpStream::connect_timeout(&address, Duration::from_secs(2))
                .with_context(|| format!("connecting to {address}"))?;
            connection
                .set_read_timeout(Some(Duration::from_secs(3)))
                .context("setting a read timeout")?;
            let mut buffer = [0_u8; 8192];
            let mut last = Instant::now();
            loop {
                match connection.read(&mut buffer) {
                    Ok(0) if stopping.load(Ordering::Relaxed) => return Ok(()),
                    Ok(0) => bail!("the stream ended"),
                    Ok(len) => {
                        counter.fetch_add(len as u64, Ordering::Relaxed);
                        let now = Instant::now();
                        if let Ok(mut longest) = gap.lock() {
                            *longest = (*longest).max(now - last);
                        }
                        last = now;
                    }
                    Err(error) => {
                        return Err(error).context("the stream's connection failed");
                    }
                }
            }
        });
        Ok(Stream {
            stop,
            received,
            longest_gap,
            server,
            client,
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the stream; returns the bytes received and the longest gap between two reads.
    fn finish(self) -> anyhow::Result<(u64, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.server
            .join()
            .map_err(|_| anyhow!("the stream server panicked"))??;
        self.client
            .join()
            .map_err(|_| anyhow!("the stream client panicked"))??;
        let gap = *self
            .longest_gap
            .lock()
            .map_err(|_| anyhow!("the stream client panicked"))?;
        Ok((self.received.load(Ordering::Relaxed), gap))
    }
}

/// A client that keeps trying a denied connection; any success fails the check.
struct Prober {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<anyhow::Result<u32>>,
}

impl Prober {
    fn start(client: &LabPod, server: &LabPod) -> anyhow::Result<Prober> {
        let address = SocketAddr::new(
            server
                .ip(false)
                .with_context(|| format!("{} has no IPv4 address", server.key))?,
            80,
        );
        let (from, to) = (client.key.to_string(), server.key.to_string());
        let client_netns = client.netns();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let worker = thread::spawn(move || {
            netns::enter(&client_netns)?;
            let mut attempts = 0;
            while !stopping.load(Ordering::Relaxed) {
                attempts += 1;
                if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                    bail!("the denied connection {from} -> {to} (TCP/80) got through");
                }
                thread::sleep(Duration::from_millis(20));
            }
            Ok(attempts)
        });
        Ok(Prober { stop, worker })
    }

    /// Stops probing; returns the attempts, every one of them refused or dropped.
    fn finish(self) -> anyhow::Result<u32> {
        self.stop.store(true, Ordering::Relaxed);
        self.worker
            .join()
            .map_err(|_| anyhow!("the denied-pair prober panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(installed: &str, writes: usize) -> Status {
        serde_json::from_str(&format!(
            r#"{{"node": "node-1", "source": "files:/m", "time": "2026-11-26T07:00:02Z",
                "applied_generation": "g", "ready": true, "endpoints": [], "maps": [],
                "failures": [], "last_error": null,
                "start": {{"time": "2026-11-26T07:00:00Z", "datapath_open": "2026-11-26T07:00:00Z",
                          "adopted_programs": [], "installed_programs": {installed},
                          "replaced_maps": [], "held_closed": []}},
                "first_reconcile": {{"generation": "g", "started": "2026-11-26T07:00:01Z",
                                    "written": "2026-11-26T07:00:01Z",
                                    "finished": "2026-11-26T07:00:01Z", "writes": {writes},
                                    "endpoints": 0, "waiting": 0, "held": 0, "attached": 0,
                                    "detached": 0, "repaired": 0}},
                "last_update": null}}"#
        ))
        .unwrap()
    }

    #[test]
    fn adoption_needs_adopted_programs_and_zero_writes() {
        check_adoption(&published("[]", 0)).unwrap();
        assert!(check_adoption(&published("[]", 3)).is_err());
        assert!(check_adoption(&published(r#"["from_pod", "to_pod"]"#, 0)).is_err());
    }
}
