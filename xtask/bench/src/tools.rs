//! The traffic tools of the lab bench (`policy-bench tool ...`, the crate's binary), run
//! inside the pods and pinned to one CPU each: a server that answers requests and closes
//! connections on demand, a request/response latency client, a new-connections-per-second
//! client, and a probe that tells an open port from a refused and a filtered one.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{sched::CpuSet, unistd::Pid};

/// A request byte after which the server answers and closes: one connection per request.
const CLOSE_AFTER: u8 = b'c';
/// A request byte after which the server answers and waits for the next request.
const KEEP_OPEN: u8 = b'r';

#[derive(clap::Subcommand)]
pub enum Tool {
    /// Answers every request byte with itself; closes after a connection-test request.
    Server {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// One connection, one-byte requests back to back; prints `rr <requests> <p50 µs> <p99 µs>`.
    Latency {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        ms: u64,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// A new connection per request (connect, request, answer, close); prints `cps <per second>`.
    Connections {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        ms: u64,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Prints `open`, `refused` or `filtered` (no answer within the timeout).
    Probe {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 300)]
        timeout_ms: u64,
    },
}

pub fn run(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::Server { port, cpu } => {
            pin(cpu)?;
            serve(port)
        }
        Tool::Latency { to, ms, cpu } => {
            pin(cpu)?;
            let (requests, p50, p99) = latency(to, Duration::from_millis(ms))?;
            println!("rr {requests} {p50:.2} {p99:.2}");
            Ok(())
        }
        Tool::Connections { to, ms, cpu } => {
            pin(cpu)?;
            println!("cps {:.1}", connections(to, Duration::from_millis(ms))?);
            Ok(())
        }
        Tool::Probe { to, timeout_ms } => {
            let outcome = match TcpStream::connect_timeout(&to, Duration::from_millis(timeout_ms)) {
                Ok(_) => "open",
                Err(error) if error.kind() == ErrorKind::ConnectionRefused => "refused",
                Err(error) if error.kind() == ErrorKind::TimedOut => "filtered",
                Err(error) => return Err(error).with_context(|| format!("probing {to}")),
            };
            println!("{outcome}");
            Ok(())
        }
    }
}

fn pin(cpu: Option<usize>) -> anyhow::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

/// Serves one connection at a time: the clients never overlap.
fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding TCP port {port}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        // A client that hangs up mid-request concerns that connection only.
        let _ = answer(&mut stream);
    }
    Ok(())
}

fn answer(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut request = [0u8; 1];
    while stream.read(&mut request)? == 1 {
        stream.write_all(&request)?;
        if request[0] == CLOSE_AFTER {
            break;
        }
    }
    Ok(())
}

/// Requests, and the median and 99th percentile round trip in µs.
fn latency(to: SocketAddr, duration: Duration) -> anyhow::Result<(usize, f64, f64)> {
    let mut stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let mut rounds = Vec::new();
    let start = Instant::now();
    let mut answer = [0u8; 1];
    while start.elapsed() < duration {
        let sent = Instant::now();
        stream
            .write_all(&[KEEP_OPEN])
            .context("sending a request")?;
        stream
            .read_exact(&mut answer)
            .context("reading an answer")?;
        rounds.push(sent.elapsed());
    }
    if rounds.is_empty() {
        bail!("no request completed in {duration:?}");
    }
    rounds.sort_unstable();
    let at = |fraction: f64| {
        let index = ((rounds.len() - 1) as f64 * fraction).round() as usize;
        rounds[index].as_secs_f64() * 1e6
    };
    Ok((rounds.len(), at(0.5), at(0.99)))
}

/// New connections per second, each carrying one request.
fn connections(to: SocketAddr, duration: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut done = 0u32;
    let mut answer = [0u8; 1];
    while start.elapsed() < duration {
        let mut stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        stream
            .write_all(&[CLOSE_AFTER])
            .context("sending a request")?;
        stream
            .read_exact(&mut answer)
            .context("reading an answer")?;
        // The server closes first, so the client's side leaves no TIME_WAIT behind.
        while stream.read(&mut answer).context("waiting for the close")? != 0 {}
        done += 1;
    }
    Ok(f64::from(done) / start.elapsed().as_secs_f64())
}
