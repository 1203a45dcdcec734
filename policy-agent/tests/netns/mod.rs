//! Network namespaces for real-traffic tests: a node namespace, pod namespaces wired to it
//! ptp style (a veth per pod, /32 and /128 routes on the node side, the node as each pod's
//! gateway) or bridge style (the pods' host veths enslaved to a bridge that carries the gateway
//! address, pods in one /24 and /64 reaching each other without routing), and sockets run inside
//! a namespace. Everything is owned by guards that delete it on drop, so a failing test leaves
//! nothing behind.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use policy_testbed::{
    cmd, netns,
    wire::{self, Bridge, Gateway, Gateways, Neighbours, PodLink, Wiring},
};

/// The node side of every pod veth: the pods' gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 70, 0, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, 1);

/// How long a connection attempt may take before it counts as dropped.
pub const DROP_TIMEOUT: Duration = Duration::from_millis(600);

pub fn is_root() -> bool {
    cmd::is_root()
}

/// Runs `ip` with the arguments, panicking with what it printed when it fails.
pub fn ip(args: &[&str]) {
    if let Err(error) = cmd::run("ip", args) {
        panic!("{error:#}");
    }
}

/// Sets a sysctl inside a namespace.
pub fn sysctl(netns: &str, key: &str, value: &str) {
    netns::sysctls(netns, &[(key, value)]).expect("set a sysctl");
}

/// A unique short tag for one test's objects, so tests can run in parallel.
pub fn unique_tag(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub use policy_testbed::netns::Netns;

/// A network namespace for one test, removed when dropped.
pub fn new_netns(name: String) -> Netns {
    Netns::create(name).expect("create a network namespace")
}

/// A pod: its namespace, its addresses, and the node side of its veth.
pub struct Pod {
    pub netns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The host-side veth, in the node namespace.
    pub host_if: String,
    pub ifindex: u32,
}

/// How a node wires its pods, as the two CNI styles do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A routed veth per pod (the ptp plugin): every packet between pods is routed by the node.
    Ptp,
    /// Host veths enslaved to [`BRIDGE`] (the bridge plugin): pods of the node share a link, so
    /// their packets to each other are bridged, never routed.
    Bridge,
}

/// The bridge of a bridge-style node.
pub const BRIDGE: &str = "br0";

/// A node namespace routing for its pods.
pub struct Node {
    pub netns: Netns,
    pub style: Style,
    tag: String,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        Node::with_style(tag, Style::Ptp)
    }

    /// A node of either style; a bridge-style node's [`BRIDGE`] carries the gateway addresses.
    pub fn with_style(tag: &str, style: Style) -> Node {
        let netns = new_netns(format!("dpt-{tag}-node"));
        sysctl(netns.name(), "net.ipv4.ip_forward", "1");
        sysctl(netns.name(), "net.ipv6.conf.all.forwarding", "1");
        let node = Node {
            netns,
            style,
            tag: tag.to_owned(),
        };
        if let Wiring::Bridge { bridge, .. } = node.wiring() {
            bridge.create(node.netns.name()).expect("create the bridge");
        }
        node
    }

    /// How this node wires its pods: as the plugins do, the node learns their neighbours from
    /// traffic.
    fn wiring(&self) -> Wiring {
        let gateways = Gateways {
            v4: GATEWAY_V4,
            v6: GATEWAY_V6,
        };
        match self.style {
            Style::Ptp => Wiring::Ptp(gateways),
            Style::Bridge => Wiring::Bridge {
                bridge: Bridge {
                    name: BRIDGE.to_owned(),
                    gateways: vec![
                        Gateway {
                            address: gateways.v4.into(),
                            prefix: 24,
                        },
                        Gateway {
                            address: gateways.v6.into(),
                            prefix: 64,
                        },
                    ],
                    mac: None,
                },
                neighbours: Neighbours::Learned,
            },
        }
    }

    /// Adds an interface `up0` carrying `v4/32` and `v6/128`: an address of the node that no
    /// pod link holds, as a node's own IP on its uplink. It is a veth whose peer stays in the
    /// node (kernels without the dummy driver have veth).
    pub fn add_uplink(&self, v4: Ipv4Addr, v6: Ipv6Addr) -> u32 {
        let node = &self.netns.name();
        ip(&[
            "-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "up0-peer",
        ]);
        ip(&["-n", node, "link", "set", "up0-peer", "up"]);
        ip(&["-n", node, "addr", "add", &format!("{v4}/32"), "dev", "up0"]);
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "up0",
            "nodad",
        ]);
        ip(&["-n", node, "link", "set", "up0", "up"]);
        self.netns.ifindex("up0").expect("interface index")
    }

    /// Adds pod number `n` (2 to 254) with the addresses `10.70.0.n` and `fd70::n`, its veth
    /// `hv-<n>` on the node, the node as its default gateway: `/32` and `/128` routed to the
    /// veth on a ptp node, `/24` and `/64` behind [`BRIDGE`] on a bridge node.
    pub fn add_pod(&self, n: u8) -> Pod {
        let v4 = Ipv4Addr::new(10, 70, 0, n);
        let v6 = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, u16::from(n));
        self.attach(&self.wiring(), &format!("p{n}"), &format!("hv-{n}"), v4, v6)
    }

    /// Attaches a new pod namespace `dpt-<tag>-<suffix>` through `wiring`.
    pub fn attach(
        &self,
        wiring: &Wiring,
        suffix: &str,
        host_if: &str,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    ) -> Pod {
        let netns = new_netns(format!("dpt-{}-{suffix}", self.tag));
        let link = PodLink {
            node: self.netns.name(),
            pod: netns.name(),
            host_if,
            pod_if: "eth0",
            mac: None,
            addresses: &[v4.into(), v6.into()],
        };
        wire::attach(&link, wiring).expect("attach a pod");
        let ifindex = self.netns.ifindex(host_if).expect("interface index");
        Pod {
            netns,
            v4,
            v6,
            host_if: host_if.to_owned(),
            ifindex,
        }
    }
}

/// The MAC address of an interface of a namespace.
pub fn mac(netns: &str, ifname: &str) -> [u8; 6] {
    let output = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", "dev", ifname])
        .output()
        .unwrap_or_else(|error| panic!("cannot run ip: {error}"));
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    let address = words
        .by_ref()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC address for {ifname} in {netns}: {text}"));
    let mut mac = [0; 6];
    for (byte, part) in mac.iter_mut().zip(address.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex MAC byte");
    }
    mac
}

/// The wildcard address of a dual-stack socket: it serves IPv4 (as mapped addresses) and IPv6.
const ANY: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);

/// An echo server in a pod's namespace, on both families; stops on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn tcp(netns: &Netns, port: u16) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = netns
            .run(move || {
                let listener =
                    TcpListener::bind(SocketAddr::new(ANY.ip(), port)).expect("bind tcp");
                listener.set_nonblocking(true).expect("nonblocking");
                listener
            })
            .expect("run in the network namespace");
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        thread::spawn(move || echo_stream(stream));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EchoServer {
            stop,
            threads: vec![thread],
        }
    }

    pub fn udp(netns: &Netns, port: u16) -> EchoServer {
        EchoServer::udp_at(netns, SocketAddr::new(ANY.ip(), port))
    }

    /// A UDP echo server on one address: its replies come from that address, where one bound to
    /// the wildcard answers from whichever address the route to the client prefers.
    pub fn udp_at(netns: &Netns, addr: SocketAddr) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = netns
            .run(move || {
                let socket = UdpSocket::bind(addr).expect("bind udp");
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                socket
            })
            .expect("run in the network namespace");
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0; 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..len], from);
                }
            }
        });
        EchoServer {
            stop,
            threads: vec![thread],
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn echo_stream(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0; 1500];
    while let Ok(len) = stream.read(&mut buf) {
        if len == 0 || stream.write_all(&buf[..len]).is_err() {
            break;
        }
    }
}

/// Opens a TCP connection from inside `netns`, or `None` when it does not complete in time.
pub fn connect(netns: &Netns, to: SocketAddr) -> Option<TcpStream> {
    try_connect(netns, to).ok()
}

fn try_connect(netns: &Netns, to: SocketAddr) -> io::Result<TcpStream> {
    netns
        .run(move || TcpStream::connect_timeout(&to, DROP_TIMEOUT))
        .expect("run in the network namespace")
}

/// Sends a message on the stream and whether the same bytes come back in time.
pub fn echoes(stream: &mut TcpStream, message: &[u8]) -> bool {
    stream
        .set_read_timeout(Some(DROP_TIMEOUT))
        .expect("read timeout");
    if stream.write_all(message).is_err() {
        return false;
    }
    let mut buf = vec![0; message.len()];
    stream.read_exact(&mut buf).is_ok() && buf == message
}

/// Whether a TCP connection from `netns` to `to` opens and echoes.
pub fn tcp_works(netns: &Netns, to: SocketAddr) -> bool {
    let start = Instant::now();
    let failure = match try_connect(netns, to) {
        Err(error) => Some(format!("TCP connect: {error}")),
        Ok(mut stream) => (!echoes(&mut stream, b"ping")).then(|| "TCP: no echo".to_owned()),
    };
    report(netns, to, failure, start)
}

/// Prints why a probe failed and how long it took, and returns whether it worked: in a failing
/// test's output a timeout near [`DROP_TIMEOUT`] is a lost packet, one far longer a stalled test.
fn report(netns: &Netns, to: SocketAddr, failure: Option<String>, start: Instant) -> bool {
    let Some(failure) = failure else {
        return true;
    };
    eprintln!(
        "{} -> {to}: {failure} after {} ms",
        netns.name(),
        start.elapsed().as_millis()
    );
    false
}

/// Whether a UDP datagram from `netns` to `to` is echoed back in time.
pub fn udp_works(netns: &Netns, to: SocketAddr) -> bool {
    let start = Instant::now();
    let echoed = netns.run(move || {
        let local: SocketAddr = match to {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("addr"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("addr"),
        };
        let socket = UdpSocket::bind(local).expect("bind udp client");
        socket
            .set_read_timeout(Some(DROP_TIMEOUT))
            .expect("timeout");
        socket.send_to(b"ping", to).expect("send");
        let mut buf = [0; 16];
        matches!(socket.recv_from(&mut buf), Ok((4, from)) if from == to && &buf[..4] == b"ping")
    }).expect("run in the network namespace");
    report(
        netns,
        to,
        (!echoed).then(|| "UDP: no echo".to_owned()),
        start,
    )
}
