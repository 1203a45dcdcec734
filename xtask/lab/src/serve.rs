//! `cargo xtask lab serve` (hidden): the server inside each pod. It answers on each given port
//! over TCP (accepts, writes a line, closes) and UDP (answers every datagram), on IPv4 and IPv6.

use std::{
    fs,
    io::Write,
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    thread,
};

use anyhow::{Context, Result, bail};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, sockopt};

/// Arguments of the pod server.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A port to answer on, over TCP and UDP.
    #[arg(long = "port", required = true)]
    ports: Vec<u16>,
    /// Created once every socket is bound.
    #[arg(long)]
    ready_file: PathBuf,
    /// The text of every answer.
    #[arg(long, default_value = "ok")]
    reply: String,
}

/// The accept queue of every TCP port. The steady clients of the e2e suite open hundreds of
/// connections a second; with std's 128, a server not scheduled for a third of a second (a
/// busy two-core machine is enough) overflows the queue, and the kernel drops the next SYN as
/// if the datapath had. The kernel caps it at `net.core.somaxconn` (4096 by default).
const ACCEPT_BACKLOG: i32 = 4096;

/// A TCP listener on `address` with [`ACCEPT_BACKLOG`].
fn listen(address: SocketAddr) -> Result<TcpListener> {
    let socket = socket::socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&socket, sockopt::ReuseAddr, &true)?;
    socket::bind(
        socket.as_raw_fd(),
        &SockaddrIn6::from(match address {
            SocketAddr::V6(v6) => v6,
            SocketAddr::V4(_) => bail!("the server listens on [::] only"),
        }),
    )?;
    socket::listen(&socket, Backlog::new(ACCEPT_BACKLOG)?)?;
    Ok(TcpListener::from(socket))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let reply = format!("{}\n", args.reply);
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for port in &args.ports {
        // [::] with IPV6_V6ONLY off (the Linux default) serves IPv4 too.
        let address = SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port));
        tcp.push(listen(address).with_context(|| format!("listening on TCP port {port}"))?);
        udp.push(UdpSocket::bind(address).with_context(|| format!("binding UDP port {port}"))?);
    }
    fs::write(&args.ready_file, "")
        .with_context(|| format!("writing {}", args.ready_file.display()))?;
    thread::scope(|scope| {
        for listener in &tcp {
            let reply = reply.as_bytes();
            scope.spawn(move || {
                for stream in listener.incoming().flatten() {
                    let mut stream = stream;
                    // A client that hung up early is not the server's concern.
                    let _ = stream.write_all(reply);
                }
            });
        }
        for socket in &udp {
            let reply = reply.as_bytes();
            scope.spawn(move || {
                let mut buffer = [0_u8; 1500];
                loop {
                    // A failed receive or send concerns one datagram; the server goes on.
                    if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                        let _ = socket.send_to(reply, peer);
                    }
                }
            });
        }
    });
    Ok(())
}
