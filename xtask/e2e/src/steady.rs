//! Steady traffic across a change: a client keeps opening TCP connections (or exchanging UDP
//! datagrams) with a server while the lab and its agents apply the change, and every one of them
//! must get through when the pair is allowed both before and after. Re-programming the maps must
//! never drop what stays allowed.

use std::{
    fmt, io,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use jiff::Timestamp;
use policy_core::matrix::{Cell, Matrix};
use policy_lab::{netns, state::State};

/// The port every base pod serves over TCP.
const PORT: u16 = 80;
/// How long one connection (or one datagram's answer) may take before it counts as failed: a
/// dropped SYN is retransmitted after one second, so any drop fails it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between two connections.
const INTERVAL: Duration = Duration::from_millis(5);
/// How many failures a tally describes.
const DESCRIBED_FAILURES: usize = 5;

/// Connections made and failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub attempts: u32,
    pub failures: u32,
    /// The first failures: when the attempt started and how it failed, for a failure to be
    /// matched with the change in progress and the agents' drop records.
    pub described: Vec<Failure>,
}

/// One failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub started: Timestamp,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.started.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.error
        )
    }
}

impl Tally {
    /// The described failures, `; `-separated.
    pub fn describe_failures(&self) -> String {
        let described: Vec<String> = self.described.iter().map(Failure::to_string).collect();
        described.join("; ")
    }

    fn count(&mut self, started: Timestamp, outcome: Result<(), String>) {
        self.attempts += 1;
        if let Err(error) = outcome {
            self.failures += 1;
            if self.described.len() < DESCRIBED_FAILURES {
                self.described.push(Failure { started, error });
            }
        }
    }
}

/// What a steady client exchanges with its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// A new TCP connection each time.
    Tcp,
    /// A UDP datagram and its answer each time, from one socket.
    Udp,
}

impl Traffic {
    pub const fn name(self) -> &'static str {
        match self {
            Traffic::Tcp => "TCP",
            Traffic::Udp => "UDP",
        }
    }
}

/// A client connecting to a server in a loop until [`Steady::finish`].
pub struct Steady {
    pub from: String,
    pub to: String,
    stop: Arc<AtomicBool>,
    worker: JoinHandle<anyhow::Result<Tally>>,
}

/// The first pair of distinct pods that both matrices allow, if any.
pub fn stable_pair(before: &Matrix, after: &Matrix) -> Option<(String, String)> {
    before.pods().iter().find_map(|from| {
        before
            .pods()
            .iter()
            .filter(|to| *to != from)
            .find(|to| {
                before.get(from, to) == Some(Cell::Allowed)
                    && after.get(from, to) == Some(Cell::Allowed)
            })
            .map(|to| (from.clone(), to.clone()))
    })
}

impl Steady {
    /// Starts connecting from pod `from` to pod `to` (both `namespace/name`) over IPv4.
    pub fn start(from: &str, to: &str) -> anyhow::Result<Steady> {
        Steady::start_with(from, to, Traffic::Tcp)
    }

    /// Starts `traffic` from pod `from` to pod `to` (both `namespace/name`) over IPv4.
    pub fn start_with(from: &str, to: &str, traffic: Traffic) -> anyhow::Result<Steady> {
        let plan = State::require()?.plan;
        let find = |name: &str| {
            plan.pods
                .iter()
                .find(|pod| pod.key.to_string() == name)
                .ok_or_else(|| anyhow!("the lab has no pod {name}"))
        };
        let client = find(from)?.netns();
        let server = find(to)?
            .ip(false)
            .with_context(|| format!("{to} has no IPv4 address"))?;
        let address = SocketAddr::new(server, PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let worker = thread::spawn(move || {
            netns::enter(&client)?;
            let udp = match traffic {
                Traffic::Tcp => None,
                Traffic::Udp => Some(
                    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                        .context("binding the steady UDP client")?,
                ),
            };
            let mut tally = Tally::default();
            let mut answer = [0_u8; 64];
            while !stopping.load(Ordering::Relaxed) {
                let started = Timestamp::now();
                let outcome = match &udp {
                    None => TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
                        .map(drop)
                        .map_err(|error| format!("connect: {error}")),
                    Some(socket) => exchange(socket, address, &mut answer),
                };
                tally.count(started, outcome);
                thread::sleep(INTERVAL);
            }
            Ok(tally)
        });
        Ok(Steady {
            from: from.to_owned(),
            to: to.to_owned(),
            stop,
            worker,
        })
    }

    /// Stops the client and returns what it saw.
    pub fn finish(self) -> anyhow::Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.worker
            .join()
            .map_err(|_| anyhow!("the steady-traffic thread panicked"))?
    }
}

/// How often the accept queue of pod `pod`'s listeners overflowed (`TcpExtListenOverflows` of
/// its network namespace): a SYN lost there is the server's, not the datapath's.
pub fn listen_overflows(pod: &str) -> anyhow::Result<u64> {
    let plan = State::require()?.plan;
    let netns = plan
        .pods
        .iter()
        .find(|candidate| candidate.key.to_string() == pod)
        .ok_or_else(|| anyhow!("the lab has no pod {pod}"))?
        .netns();
    let netstat = thread::spawn(move || -> anyhow::Result<String> {
        netns::enter(&netns)?;
        std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")
    })
    .join()
    .map_err(|_| anyhow!("the netstat thread panicked"))??;
    tcp_ext(&netstat, "ListenOverflows")
        .with_context(|| format!("no TcpExt ListenOverflows in {pod}'s /proc/net/netstat"))
}

/// A `TcpExt` counter of `/proc/net/netstat` (a line of names, then a line of values).
fn tcp_ext(netstat: &str, counter: &str) -> Option<u64> {
    let mut lines = netstat
        .lines()
        .filter_map(|line| line.strip_prefix("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == counter)
        .and_then(|(_, value)| value.parse().ok())
}

/// One datagram to `server` and its answer within [`CONNECT_TIMEOUT`]. A receive that a signal
/// interrupts (the kernel never restarts a receive with a timeout, and a stopped and continued
/// process sees the same) waits on for the rest of the time: it says nothing about the datagram.
fn exchange(socket: &UdpSocket, server: SocketAddr, answer: &mut [u8]) -> Result<(), String> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    socket
        .send_to(b"steady", server)
        .map_err(|error| format!("send: {error}"))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("receive: timed out after an interrupted wait".to_owned());
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|error| format!("setting the receive timeout: {error}"))?;
        match socket.recv_from(answer) {
            Ok((_, from)) if from == server => return Ok(()),
            Ok((_, from)) => return Err(format!("an answer from {from}")),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("receive: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_is_allowed_before_and_after_and_not_a_pod_to_itself() {
        let pods: Vec<String> = ["x/a", "x/b", "y/a"]
            .iter()
            .map(|p| p.to_string())
            .collect();
        let mut before = Matrix::filled(&pods, Cell::Allowed);
        let mut after = Matrix::filled(&pods, Cell::Denied);
        after.set("x/a", "x/a", Cell::Allowed);
        after.set("x/b", "y/a", Cell::Allowed);
        assert_eq!(
            stable_pair(&before, &after),
            Some(("x/b".into(), "y/a".into()))
        );
        before.set("x/b", "y/a", Cell::Denied);
        assert_eq!(stable_pair(&before, &after), None);
    }

    #[test]
    fn a_tally_counts_every_failure_and_describes_the_first_ones() {
        let mut tally = Tally::default();
        let started = Timestamp::UNIX_EPOCH;
        tally.count(started, Ok(()));
        for n in 0..7 {
            tally.count(started, Err(format!("failure {n}")));
        }
        assert_eq!((tally.attempts, tally.failures), (8, 7));
        assert_eq!(tally.described.len(), DESCRIBED_FAILURES);
        assert_eq!(
            tally.described[0].to_string(),
            "1970-01-01T00:00:00.000Z: failure 0"
        );
    }

    #[test]
    fn a_tcp_ext_counter_is_read_by_name() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                       TcpExt: 0 7 9\n\
                       IpExt: InNoRoutes\n\
                       IpExt: 3\n";
        assert_eq!(tcp_ext(netstat, "ListenOverflows"), Some(7));
        assert_eq!(tcp_ext(netstat, "InNoRoutes"), None);
    }

    #[test]
    fn an_exchange_needs_the_servers_answer_within_the_timeout() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = server.local_addr().unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let answering = thread::spawn(move || {
            let mut buffer = [0_u8; 16];
            let (_, peer) = server.recv_from(&mut buffer).unwrap();
            server.send_to(b"ok", peer).unwrap();
        });
        let mut answer = [0_u8; 16];
        assert_eq!(exchange(&client, address, &mut answer), Ok(()));
        answering.join().unwrap();
        let started = Instant::now();
        let error = exchange(&client, address, &mut answer).unwrap_err();
        assert!(error.starts_with("receive: "), "{error}");
        assert!(started.elapsed() >= CONNECT_TIMEOUT);
    }
}
