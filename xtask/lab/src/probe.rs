//! `lab probe`: tries every ordered pod pair, self included, from inside the client
//! pod, and prints the matrix in the shape of `policy-agent explain -o json`.
//!
//! It first brings the lab to the current content of its manifest directory (see [`follow`]) and
//! waits until every node's agent has applied it; it fails, saying so, when DIR's pods differ
//! from the lab's.
//!
//! A probe counts as allowed when the server pod's kernel answered: a TCP connection or a UDP
//! reply, and also a refusal (TCP reset, ICMP port unreachable), since a refused packet was let
//! through to the pod. A policy drop shows as silence until the 1 s timeout.

use std::{
    collections::BTreeMap,
    io::{self, ErrorKind},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    ops::Range,
    process,
    sync::{
        Mutex,
        atomic::{AtomicU16, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use policy_core::{
    matrix::{Matrix, Reachability},
    policy::model::Protocol,
};
use socket2::{Domain, Socket, Type};

use super::{
    agent,
    follow::{self, Followed},
    netns,
    plan::{LabPod, Plan},
    state::State,
    topology,
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The source ports of UDP probes: below Linux's ephemeral range (32768-60999), handed out in
/// turn from an offset of the process. With ports the kernel picks at random, a probe now and
/// then reused the 5-tuple of one a minute earlier, rode on the conntrack entry of that flow
/// (established flows outlive a policy change, by design) and read as allowed where the policy
/// now denies.
const UDP_SOURCE_PORTS: Range<u16> = 20_000..32_768;
/// Probes sent from [`UDP_SOURCE_PORTS`] by this process.
static UDP_PROBES: AtomicU16 = AtomicU16::new(0);
/// How long `probe` waits for the agents to apply the manifests.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Probes in flight at once.
const PARALLEL_PROBES: usize = 128;

/// Arguments of `lab probe`.
#[derive(clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    probe: Probe,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

/// What to probe.
#[derive(Clone, Debug, clap::Args)]
pub struct Probe {
    /// The server port to probe.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// The protocol: TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    pub protocol: Protocol,
    /// Target the server pod's IP, or the ClusterIP of a Service that sends the port to it.
    #[arg(long, value_enum, default_value = "pod")]
    pub via: Via,
    /// IP family: 4 or 6 (default: 4 when the lab has IPv4).
    #[arg(long, value_parser = ["4", "6"])]
    pub family: Option<String>,
}

/// What a probe of every pair saw.
pub struct Probed {
    pub reachability: Reachability,
    /// What the probe noticed on the way: a directory that changed, how long the agents took.
    pub notes: Vec<String>,
    plan: Plan,
    v6: bool,
    outcomes: BTreeMap<(usize, usize), Option<Outcome>>,
    elapsed: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Pod,
    Service,
    /// The client's own node address (the node's underlay address) on the node port of a
    /// NodePort Service whose backend is the server.
    #[value(name = "nodeport")]
    NodePort,
}

impl Via {
    /// The name on the command line and in the JSON matrix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Service => "service",
            Self::NodePort => "nodeport",
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// What one probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected, or the UDP server replied.
    Answered,
    /// TCP reset or ICMP port unreachable: the packet reached the pod, nothing listens.
    Refused,
    /// Nothing came back in time: dropped.
    Silent,
    /// The network reported the destination unreachable.
    Unreachable,
}

impl Outcome {
    pub fn allowed(self) -> bool {
        matches!(self, Self::Answered | Self::Refused)
    }

    fn cell(self) -> &'static str {
        match self {
            Self::Answered => "ok",
            Self::Refused => "rst",
            Self::Silent => "--",
            Self::Unreachable => "unr",
        }
    }
}

/// `lab probe`: the matrix, printed as `args` asks.
pub fn run(args: &ProbeArgs) -> Result<()> {
    let probed = probe_pairs(&args.probe)?;
    for note in &probed.notes {
        eprintln!("{note}");
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&probed.reachability)?),
        Output::Table => print_table(
            &probed.plan,
            &args.probe,
            probed.v6,
            &probed.outcomes,
            probed.elapsed,
        ),
    }
    Ok(())
}

/// Brings the lab to its directory's content, waits until every agent has applied it, and
/// probes every ordered pod pair.
pub fn probe_pairs(args: &Probe) -> Result<Probed> {
    let mut notes = Vec::new();
    let mut state = State::require()?;
    if args.protocol == Protocol::Sctp {
        bail!(
            "cannot probe SCTP: this kernel has no SCTP (CONFIG_IP_SCTP is off), so pods can \
             neither send nor answer it; SCTP verdicts are covered by the datapath's packet tests"
        );
    }
    let v6 = match args.family.as_deref() {
        Some("6") => true,
        Some(_) => false,
        None => !state.plan.family.has_v4(),
    };
    if (v6 && !state.plan.family.has_v6()) || (!v6 && !state.plan.family.has_v4()) {
        bail!(
            "the lab runs {:?}: no IPv{} to probe",
            state.plan.family,
            if v6 { 6 } else { 4 }
        );
    }
    match follow::follow(&mut state)? {
        Followed::NeedsUp(changes) => {
            bail!(follow::needs_up_message(&state.plan.source, &changes))
        }
        Followed::Current { rendered: true } => notes.push(format!(
            "{} changed since the lab last read it: the agents are given its new content",
            state.plan.source.display()
        )),
        Followed::Current { rendered: false } => {}
    }
    let wait = match &state.agent {
        Some(_) => {
            let generation = agent::expected_generation()?;
            let waited = agent::wait_applied(&generation, state.plan.nodes, APPLY_TIMEOUT)?;
            notes.push(format!(
                "agents applied generation {generation} in {} ms",
                waited.as_millis()
            ));
            waited
        }
        None => {
            notes.push("no agents run in this lab: nothing enforces policy".to_owned());
            Duration::ZERO
        }
    };
    let start = Instant::now();
    let outcomes = probe_all(&state.plan, args.port, args.protocol, args.via, v6)?;
    let elapsed = start.elapsed();
    let reachability = matrix(
        &state.plan,
        args.port,
        args.protocol,
        args.via,
        &outcomes,
        wait,
    );
    Ok(Probed {
        reachability,
        notes,
        plan: state.plan,
        v6,
        outcomes,
        elapsed,
    })
}

/// Where `client`'s probe of `server` goes: the server's IP; the ClusterIP:port of a Service in
/// its namespace whose backend for `port` is this pod; or the client's own node address on that
/// Service port's node port.
fn target(
    plan: &Plan,
    client: &LabPod,
    server: &LabPod,
    port: u16,
    protocol: Protocol,
    via: Via,
    v6: bool,
) -> Option<SocketAddr> {
    // A NodePort probe needs a Service port with a node port.
    let service_port = || {
        plan.services
            .iter()
            .filter(|service| service.key.namespace == server.key.namespace)
            .find_map(|service| {
                let service_port = service.ports.iter().find(|service_port| {
                    service_port.protocol == protocol
                        && (via != Via::NodePort || service_port.node_port.is_some())
                        && service_port.backend.as_ref().is_some_and(|backend| {
                            backend.pod == server.key && backend.port == port
                        })
                })?;
                Some((service, service_port))
            })
    };
    match via {
        Via::Pod => server.ip(v6).map(|ip| SocketAddr::new(ip, port)),
        Via::Service => {
            let (service, service_port) = service_port()?;
            let ip = service
                .cluster_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv6() == v6)?;
            Some(SocketAddr::new(ip, service_port.port))
        }
        Via::NodePort => {
            let (_, service_port) = service_port()?;
            let ip = if v6 {
                topology::underlay_v6(client.node)
            } else {
                topology::underlay_v4(client.node)
            };
            Some(SocketAddr::new(ip, service_port.node_port?))
        }
    }
}

/// Probes every ordered pair; `None` where the client has no address of the family or the server
/// no target.
pub fn probe_all(
    plan: &Plan,
    port: u16,
    protocol: Protocol,
    via: Via,
    v6: bool,
) -> Result<BTreeMap<(usize, usize), Option<Outcome>>> {
    let mut jobs = Vec::new();
    let mut results = BTreeMap::new();
    for (c, client) in plan.pods.iter().enumerate() {
        for (s, server) in plan.pods.iter().enumerate() {
            match (
                client.ip(v6),
                target(plan, client, server, port, protocol, via, v6),
            ) {
                (Some(ip), Some(address)) => {
                    // A hostNetwork pod speaks from its node address, not from whichever
                    // address of the node the route would pick.
                    let source = client.host_network.then_some(ip);
                    jobs.push(((c, s), client.netns(), source, address));
                }
                _ => {
                    results.insert((c, s), None);
                }
            }
        }
    }
    let queue = Mutex::new(jobs.into_iter());
    let done = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PARALLEL_PROBES {
            scope.spawn(|| {
                loop {
                    let job = queue.lock().ok().and_then(|mut jobs| jobs.next());
                    let Some((pair, netns_name, source, address)) = job else {
                        return;
                    };
                    match netns::enter(&netns_name) {
                        Ok(()) => {
                            let outcome = probe(protocol, source, address);
                            if let Ok(mut done) = done.lock() {
                                done.push((pair, Some(outcome)));
                            }
                        }
                        Err(error) => {
                            if let Ok(mut errors) = errors.lock() {
                                errors.push(error);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = errors.into_inner().unwrap_or_default().into_iter().next() {
        return Err(error.context("probing from a pod"));
    }
    let done = done.into_inner().unwrap_or_default();
    if done.len() + results.len() != plan.pods.len() * plan.pods.len() {
        bail!("a probe thread failed");
    }
    results.extend(done);
    Ok(results)
}

/// One probe from the calling thread's network namespace, from `source` if given.
pub fn probe(protocol: Protocol, source: Option<IpAddr>, address: SocketAddr) -> Outcome {
    let outcome = |error: std::io::Error| match error.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Silent,
        _ => Outcome::Unreachable,
    };
    let local = source.unwrap_or(if address.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let exchange = || -> io::Result<()> {
        match protocol {
            Protocol::Tcp => {
                let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
                if source.is_some() {
                    socket.bind(&SocketAddr::new(local, 0).into())?;
                }
                socket.connect_timeout(&address.into(), PROBE_TIMEOUT)
            }
            Protocol::Udp | Protocol::Sctp => {
                let socket = udp_probe_socket(local)?;
                socket.connect(address)?;
                socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
                socket.send(b"probe")?;
                let mut buffer = [0_u8; 512];
                socket.recv(&mut buffer)?;
                Ok(())
            }
        }
    };
    match exchange() {
        Ok(()) => Outcome::Answered,
        Err(error) => outcome(error),
    }
}

/// A UDP socket on `ip` and the next free port of [`UDP_SOURCE_PORTS`].
fn udp_probe_socket(ip: IpAddr) -> io::Result<UdpSocket> {
    let span = UDP_SOURCE_PORTS.end - UDP_SOURCE_PORTS.start;
    // Processes probing one after the other start far apart.
    let offset = (process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let turn = UDP_PROBES.fetch_add(1, Ordering::Relaxed);
        let port = UDP_SOURCE_PORTS.start + offset.wrapping_add(turn) % span;
        match UdpSocket::bind((ip, port)) {
            Err(error) if error.kind() == ErrorKind::AddrInUse => {}
            bound => return bound,
        }
    }
    Err(io::Error::new(
        ErrorKind::AddrInUse,
        "every source port of the UDP probes is in use",
    ))
}

/// The probe's matrix, in the shape of `policy-agent explain -o json` plus `via` and `wait_ms`.
fn matrix(
    plan: &Plan,
    port: u16,
    protocol: Protocol,
    via: Via,
    outcomes: &BTreeMap<(usize, usize), Option<Outcome>>,
    wait: Duration,
) -> Reachability {
    let index: BTreeMap<String, usize> = plan
        .pods
        .iter()
        .enumerate()
        .map(|(i, pod)| (pod.key.to_string(), i))
        .collect();
    let names: Vec<String> = plan.pods.iter().map(|pod| pod.key.to_string()).collect();
    let matrix = Matrix::from_fn(names, |client, server| {
        outcomes
            .get(&(index[client], index[server]))
            .copied()
            .flatten()
            .map(Outcome::allowed)
            .into()
    });
    Reachability {
        protocol: protocol.name().to_owned(),
        port,
        matrix,
        via: Some(via.name().to_owned()),
        wait_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn print_table(
    plan: &Plan,
    args: &Probe,
    v6: bool,
    outcomes: &BTreeMap<(usize, usize), Option<Outcome>>,
    elapsed: Duration,
) {
    let via = match args.via {
        Via::Pod => "pod IP",
        Via::Service => "Service",
        Via::NodePort => "the client's node port",
    };
    println!(
        "{}/{} via {via}, IPv{}: rows are clients, columns servers ({} ms)",
        args.protocol.name(),
        args.port,
        if v6 { 6 } else { 4 },
        elapsed.as_millis()
    );
    let names: Vec<String> = plan.pods.iter().map(|pod| pod.key.to_string()).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let header: Vec<String> = (1..=names.len()).map(|i| format!("{i:>4}")).collect();
    println!("{:width$}     {}", "", header.join(""));
    for (c, client) in names.iter().enumerate() {
        let cells: Vec<String> = (0..names.len())
            .map(|s| {
                let cell = outcomes
                    .get(&(c, s))
                    .copied()
                    .flatten()
                    .map_or(".", Outcome::cell);
                format!("{cell:>4}")
            })
            .collect();
        println!("{client:width$} {:>3} {}", c + 1, cells.join(""));
    }
    println!(
        "ok: answered   rst: refused (reached the pod, nothing listens)   --: no answer in 1 s   unr: unreachable   .: no target"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_probes_take_ports_in_turn_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                udp_probe_socket(IpAddr::V4(Ipv4Addr::LOCALHOST))
                    .and_then(|socket| socket.local_addr())
                    .map(|address| address.port())
                    .unwrap()
            })
            .collect();
        assert!(
            ports.iter().all(|port| UDP_SOURCE_PORTS.contains(port)),
            "{ports:?}"
        );
        assert!(ports[0] != ports[1] && ports[1] != ports[2], "{ports:?}");
    }
}
