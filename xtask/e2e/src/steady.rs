//! Steady traffic across a change: a client keeps opening TCP connections (or exchanging UDP
//! datagrams) with a server while the lab and its agents apply the change, and every one of them
//! must get through when the pair is allowed both before and after. Re-programming the maps must
//! never drop what stays allowed.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use policy_core::matrix::{Cell, Matrix};
use policy_lab::{netns, state::State};

/// The port every base pod serves over TCP.
const PORT: u16 = 80;
/// How long one connection (or one datagram's answer) may take before it counts as failed: a
/// dropped SYN is retransmitted after one second, so any drop fails it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between two connections.
const INTERVAL: Duration = Duration::from_millis(5);

/// Connections made and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub attempts: u32,
    pub failures: u32,
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
                Traffic::Udp => {
                    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                        .context("binding the steady UDP client")?;
                    socket
                        .set_read_timeout(Some(CONNECT_TIMEOUT))
                        .context("setting the steady UDP client's timeout")?;
                    Some(socket)
                }
            };
            let mut tally = Tally::default();
            let mut answer = [0_u8; 64];
            while !stopping.load(Ordering::Relaxed) {
                tally.attempts += 1;
                let through = match &udp {
                    None => TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).is_ok(),
                    Some(socket) => {
                        socket.send_to(b"steady", address).is_ok()
                            && socket
                                .recv_from(&mut answer)
                                .is_ok_and(|(_, from)| from == address)
                    }
                };
                if !through {
                    tally.failures += 1;
                }
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
}
