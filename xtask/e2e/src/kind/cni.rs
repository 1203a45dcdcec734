//! The pod network of the kind cluster: the reference `ptp` CNI plugin with `host-local` IPAM on
//! every node (a veth per pod with a host route to it, as kindnet wires pods), and routes to the
//! other nodes' pod ranges through their addresses on kind's network. Nothing here enforces
//! NetworkPolicy: the agent is the only enforcer.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::render::KindNode;

/// Where the CNI configuration goes on a node.
pub const CONFLIST_PATH: &str = "/etc/cni/net.d/10-netpol-e2e.conflist";
/// The plugin the configuration names; kind's node image ships it.
pub const PTP_PLUGIN: &str = "/opt/cni/bin/ptp";

/// The CNI configuration of `node`: its podCIDRs as host-local ranges, one per family.
pub fn conflist(node: &KindNode) -> Value {
    let ranges: Vec<Value> = node
        .pod_cidrs
        .iter()
        .map(|cidr| json!([{ "subnet": cidr.to_string() }]))
        .collect();
    let routes: Vec<Value> = node
        .pod_cidrs
        .iter()
        .map(|cidr| json!({ "dst": if cidr.addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" } }))
        .collect();
    json!({
        "cniVersion": "0.4.0",
        "name": "netpol-e2e",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "dataDir": "/run/cni-ipam-state",
                    "ranges": ranges,
                    "routes": routes,
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
}

/// The `ip route replace` arguments `node` needs to reach every other node's pods: each pod
/// range through that node's address of the same family.
pub fn routes(node: &KindNode, nodes: &[KindNode]) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for other in nodes.iter().filter(|other| other.name != node.name) {
        for cidr in &other.pod_cidrs {
            let via = other
                .internal_ips
                .iter()
                .find(|ip: &&IpAddr| ip.is_ipv4() == cidr.addr.is_ipv4());
            if let Some(via) = via {
                let family = if cidr.addr.is_ipv4() { "-4" } else { "-6" };
                commands.push(
                    [
                        "ip",
                        family,
                        "route",
                        "replace",
                        &cidr.to_string(),
                        "via",
                        &via.to_string(),
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                );
            }
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::render::parse_cidr;

    fn node(name: &str, ips: &[&str], cidrs: &[&str]) -> KindNode {
        KindNode {
            name: name.to_owned(),
            control_plane: false,
            internal_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|cidr| parse_cidr(cidr).unwrap()).collect(),
        }
    }

    #[test]
    fn the_conflist_gives_each_family_its_range_and_default_route() {
        let config = conflist(&node("w", &[], &["10.244.1.0/24", "fd00:10:244:1::/64"]));
        let ipam = &config["plugins"][0]["ipam"];
        assert_eq!(config["plugins"][0]["type"], "ptp");
        assert_eq!(config["plugins"][0]["ipMasq"], false);
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
    }

    #[test]
    fn routes_go_to_the_other_nodes_through_their_address_of_the_family() {
        let nodes = [
            node(
                "a",
                &["172.18.0.2", "fc00::2"],
                &["10.244.0.0/24", "fd00:10:244::/64"],
            ),
            node(
                "b",
                &["172.18.0.3", "fc00::3"],
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
            ),
            node(
                "c",
                &["172.18.0.4"],
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
            ),
        ];
        let lines: Vec<String> = routes(&nodes[0], &nodes)
            .iter()
            .map(|command| command.join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "ip -4 route replace 10.244.1.0/24 via 172.18.0.3",
                "ip -6 route replace fd00:10:244:1::/64 via fc00::3",
                "ip -4 route replace 10.244.2.0/24 via 172.18.0.4",
            ],
            "node c has no IPv6 address: no IPv6 route to it"
        );
    }
}
