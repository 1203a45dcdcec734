//! `cargo xtask lab serve` (hidden): the server inside each pod. It answers on each given port
//! over TCP (accepts, writes a line, closes) and UDP (answers every datagram), on IPv4 and IPv6.

use std::{
    fs,
    io::Write,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    thread,
};

use anyhow::{Context, Result};
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, sockopt,
};

/// Arguments of the pod server.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A port to answer on, over TCP and UDP.
    #[arg(long = "port", required = true)]
    ports: Vec<u16>,
    /// Answer on these addresses only (default: every address, IPv4 and IPv6).
    #[arg(long = "address")]
    addresses: Vec<IpAddr>,
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
    let family = if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let socket = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&socket, sockopt::ReuseAddr, &true)?;
    match address {
        SocketAddr::V4(v4) => socket::bind(socket.as_raw_fd(), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => socket::bind(socket.as_raw_fd(), &SockaddrIn6::from(v6))?,
    }
    socket::listen(&socket, Backlog::new(ACCEPT_BACKLOG)?)?;
    Ok(TcpListener::from(socket))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let reply = format!("{}\n", args.reply);
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    // [::] with IPV6_V6ONLY off (the Linux default) serves IPv4 too.
    let ips = if args.addresses.is_empty() {
        vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
    } else {
        args.addresses.clone()
    };
    for port in &args.ports {
        for &ip in &ips {
            let address = SocketAddr::new(ip, *port);
            tcp.push(listen(address).with_context(|| format!("listening on TCP {address}"))?);
            udp.push(UdpSocket::bind(address).with_context(|| format!("binding UDP {address}"))?);
        }
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
