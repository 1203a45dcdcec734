//! Endpoint discovery against real interfaces: ptp-wired pods and a pod behind a bridge, each in
//! its own network namespace, seen from a throwaway node namespace.

#[expect(
    dead_code,
    reason = "the namespace helpers serve several test crates; this one uses part"
)]
mod netns;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netns::{Netns, ip, new_netns, unique_tag};
use policy_agent::discovery::{Discovery, Wiring};

/// Runs discovery in `node` for the `wanted` addresses.
fn discover(node: &Netns, wanted: &[&str]) -> (Wiring, Vec<IpAddr>) {
    let wanted: BTreeSet<IpAddr> = wanted.iter().map(|text| addr(text)).collect();
    node.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let discovery = Discovery::new().expect("netlink");
            (
                discovery.wiring(&wanted).await.expect("wiring"),
                discovery.host_addresses().await.expect("host addresses"),
            )
        })
    })
    .expect("run in the network namespace")
}

fn addr(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// A veth `host_if` in `node` whose other end is `eth0` of a new namespace holding `addresses`.
fn wire(node: &Netns, pod: &str, host_if: &str, addresses: &[&str]) -> Netns {
    let pod = new_netns(pod.to_owned());
    ip(&[
        "-n",
        node.name(),
        "link",
        "add",
        host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]);
    ip(&["-n", node.name(), "link", "set", host_if, "up"]);
    for address in addresses {
        ip(&["-n", pod.name(), "addr", "add", address, "dev", "eth0"]);
    }
    ip(&["-n", pod.name(), "link", "set", "eth0", "up"]);
    pod
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn claims_rest_on_the_peer_addresses_and_the_routes() {
    let tag = unique_tag("disc");
    let node = new_netns(format!("np-{tag}-node"));
    let n = node.name();
    // A ptp pod: its addresses on its end, /32 and /128 routes through its veth.
    let _ptp = wire(
        &node,
        &format!("np-{tag}-ptp"),
        "ptp0",
        &["10.99.1.2/32", "fd00:99:1::2/128"],
    );
    ip(&["-n", n, "route", "add", "10.99.1.2/32", "dev", "ptp0"]);
    ip(&[
        "-n",
        n,
        "-6",
        "route",
        "add",
        "fd00:99:1::2/128",
        "dev",
        "ptp0",
    ]);
    // A ptp pod that also put the first pod's address on its end: the route leads elsewhere.
    let _other = wire(
        &node,
        &format!("np-{tag}-other"),
        "ptp1",
        &["10.99.1.3/32", "10.99.1.2/32", "192.0.2.1/32"],
    );
    ip(&["-n", n, "route", "add", "10.99.1.3/32", "dev", "ptp1"]);
    // A bridged pod: a port of a bridge holding the pod subnet. No neighbour or forwarding
    // entry exists: the binding needs none.
    ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", n, "link", "set", "br0", "up"]);
    ip(&["-n", n, "addr", "add", "10.99.2.1/24", "dev", "br0"]);
    let _bridged = wire(&node, &format!("np-{tag}-br"), "brp0", &["10.99.2.5/24"]);
    ip(&["-n", n, "link", "set", "brp0", "master", "br0"]);
    // A veth with both ends on the node carries no pod, whatever it holds.
    ip(&[
        "-n", n, "link", "add", "loc0", "type", "veth", "peer", "name", "loc1",
    ]);
    ip(&["-n", n, "link", "set", "loc0", "up"]);
    ip(&["-n", n, "link", "set", "loc1", "up"]);
    ip(&["-n", n, "addr", "add", "10.99.3.1/32", "dev", "loc1"]);
    ip(&[
        "-n",
        n,
        "route",
        "replace",
        "10.99.3.1/32",
        "dev",
        "loc0",
        "table",
        "main",
    ]);

    let (wiring, host_addresses) = discover(
        &node,
        &[
            "10.99.1.2",
            "fd00:99:1::2",
            "10.99.1.3",
            "10.99.2.5",
            "10.99.2.9",
            "192.0.2.1",
            "10.99.3.1",
        ],
    );
    let ifindex = |name: &str| node.ifindex(name).expect("interface index");
    let claims = |addresses: &[&str]| -> BTreeSet<IpAddr> {
        addresses.iter().map(|text| addr(text)).collect()
    };
    assert_eq!(
        wiring.claims,
        BTreeMap::from([
            (ifindex("ptp0"), claims(&["10.99.1.2", "fd00:99:1::2"])),
            (ifindex("ptp1"), claims(&["10.99.1.3"])),
            (ifindex("brp0"), claims(&["10.99.2.5"])),
        ])
    );
    assert_eq!(
        wiring.veths,
        ["ptp0", "ptp1", "brp0", "loc0", "loc1"]
            .into_iter()
            .map(ifindex)
            .collect()
    );
    assert!(
        host_addresses.contains(&addr("10.99.2.1")),
        "{host_addresses:?}"
    );
}
