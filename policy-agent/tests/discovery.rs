//! Endpoint discovery against real interfaces: a ptp-wired pod and a pod behind a bridge, in a
//! throwaway network namespace.

use std::{fs::File, net::IpAddr, process::Command};

use nix::sched::{CloneFlags, setns};
use policy_agent::discovery::Discovery;

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        sh(&format!("ip netns add {name}"));
        Netns(name.to_owned())
    }

    fn run(&self, command: &str) {
        sh(&format!("ip -n {} {command}", self.0));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(command: &str) {
    let status = Command::new("sh")
        .args(["-c", command])
        .status()
        .expect("spawn sh");
    assert!(status.success(), "`{command}` failed: {status}");
}

fn ifindex(netns: &str, link: &str) -> u32 {
    let output = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", link])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split(':')
        .next()
        .expect("ifindex field")
        .trim()
        .parse()
        .expect("numeric ifindex")
}

/// Runs `body` on a thread inside `netns`, with its own tokio runtime.
fn in_netns<T: Send + 'static>(netns: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
        body()
    })
    .join()
    .expect("netns thread")
}

fn discover(netns: &str, ips: Vec<IpAddr>) -> (Vec<Option<u32>>, Vec<IpAddr>) {
    in_netns(netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let discovery = Discovery::new().expect("netlink");
            let mut found = Vec::new();
            for ip in ips {
                found.push(discovery.interface_for(ip).await.expect("interface_for"));
            }
            (
                found,
                discovery.host_addresses().await.expect("host addresses"),
            )
        })
    })
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn finds_ptp_veths_and_bridge_ports_and_host_addresses() {
    let node = Netns::new("np-disc-node");
    // A ptp pod: a veth with a /32 and a /128 route through it.
    node.run("link add ptp0 type veth peer name ptp0-pod");
    node.run("link set ptp0 up");
    node.run("route add 10.99.1.2/32 dev ptp0");
    node.run("-6 route add fd00:99:1::2/128 dev ptp0");
    // A bridged pod: a veth enslaved to a bridge holding the pod subnet, with the neighbour and
    // forwarding entries a bridge CNI's first packet would leave.
    node.run("link add br0 type bridge");
    node.run("link set br0 up");
    node.run("addr add 10.99.2.1/24 dev br0");
    node.run("link add brp0 type veth peer name brp0-pod");
    node.run("link set brp0 master br0");
    node.run("link set brp0 up");
    node.run("neigh replace 10.99.2.5 lladdr 02:00:00:00:02:05 dev br0 nud permanent");
    sh("bridge -n np-disc-node fdb replace 02:00:00:00:02:05 dev brp0 master static");
    // An address on the bridge subnet with no neighbour entry, and one with no route at all.
    let ips: Vec<IpAddr> = [
        "10.99.1.2",
        "fd00:99:1::2",
        "10.99.2.5",
        "10.99.2.9",
        "192.0.2.1",
    ]
    .iter()
    .map(|ip| ip.parse().expect("ip"))
    .collect();
    let (found, host_addresses) = discover(&node.0, ips);
    let ptp = ifindex(&node.0, "ptp0");
    let bridge_port = ifindex(&node.0, "brp0");
    assert_eq!(
        found,
        vec![Some(ptp), Some(ptp), Some(bridge_port), None, None]
    );
    let bridge_address: IpAddr = "10.99.2.1".parse().expect("ip");
    assert!(
        host_addresses.contains(&bridge_address),
        "{host_addresses:?}"
    );
}
