//! `cargo xtask lab serve` (hidden): the server inside each pod. It answers on each given port
//! over TCP (accepts, writes a line, closes) and UDP (answers every datagram), on IPv4 and IPv6.

use std::{
    fs,
    io::Write,
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    thread,
};

use anyhow::{Context, Result};

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

pub fn run(args: ServeArgs) -> Result<()> {
    let reply = format!("{}\n", args.reply);
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for port in &args.ports {
        // [::] with IPV6_V6ONLY off (the Linux default) serves IPv4 too.
        let address = SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port));
        tcp.push(TcpListener::bind(address).with_context(|| format!("binding TCP port {port}"))?);
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
