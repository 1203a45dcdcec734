//! The scenarios' manifests made real for a kind cluster.
//!
//! The scenarios are written for the lab: pods name the lab's nodes (`node-1`, `node-2`), carry
//! the lab's addresses in `status.podIPs` and run an `agnhost` placeholder; ipBlocks name the
//! lab's node ranges and pod addresses. For kind:
//!
//! - a Pod keeps its name, namespace and labels, is placed on the kind worker standing for its
//!   lab node (workers in name order stand for `node-1`, `node-2`, ...), and runs one agnhost
//!   `serve-hostname` container per container port, with the port's name, number and protocol,
//!   as the upstream NetworkPolicy e2e tests do; its status is left to the cluster;
//! - a Service asks for both families (`PreferDualStack`), and its addresses are left to the
//!   cluster;
//! - a NetworkPolicy's ipBlock CIDRs (and excepts) that are a lab node's pod range or a lab pod's
//!   address become the kind node's podCIDR or the kind pod's address of the same family;
//! - a Namespace is taken as it is.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, bail};
use policy_core::{
    manifest::{node_cidr_v4, node_cidr_v6, node_name},
    policy::{
        model::{Pod, Protocol},
        state::{PodRef, Prefix},
    },
};
use serde_json::{Value, json};

/// The image of the upstream NetworkPolicy e2e tests: a server (`serve-hostname`) and a client
/// (`connect`) in one binary.
pub const AGNHOST_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

/// A node of the kind cluster, from `kubectl get nodes -o json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindNode {
    pub name: String,
    pub control_plane: bool,
    pub internal_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<Prefix>,
}

/// The nodes of a `kubectl get nodes -o json` answer.
pub fn parse_nodes(json: &Value) -> anyhow::Result<Vec<KindNode>> {
    let items = json
        .get("items")
        .and_then(Value::as_array)
        .context("no items in the node list")?;
    let mut nodes = Vec::new();
    for item in items {
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .context("a node without metadata.name")?
            .to_owned();
        let control_plane = item
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .is_some_and(|labels| labels.contains_key("node-role.kubernetes.io/control-plane"));
        let internal_ips = item
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|address| address.get("type").and_then(Value::as_str) == Some("InternalIP"))
            .filter_map(|address| address.get("address").and_then(Value::as_str))
            .map(|text| {
                text.parse()
                    .with_context(|| format!("node {name}: {text:?} is not an address"))
            })
            .collect::<anyhow::Result<_>>()?;
        let pod_cidrs = item
            .pointer("/spec/podCIDRs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|text| parse_cidr(text).with_context(|| format!("node {name}: podCIDRs")))
            .collect::<anyhow::Result<_>>()?;
        nodes.push(KindNode {
            name,
            control_plane,
            internal_ips,
            pod_cidrs,
        });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

pub fn parse_cidr(text: &str) -> anyhow::Result<Prefix> {
    let (addr, len) = text
        .split_once('/')
        .with_context(|| format!("{text:?} is not a CIDR"))?;
    let addr: IpAddr = addr
        .parse()
        .with_context(|| format!("{text:?} is not a CIDR"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|len| *len <= if addr.is_ipv4() { 32 } else { 128 })
        .with_context(|| format!("{text:?} has no valid prefix length"))?;
    Ok(Prefix::new(addr, len))
}

/// The kind worker standing for each lab node: workers in name order for `node-1`, `node-2`, ...
pub fn node_map(nodes: &[KindNode]) -> BTreeMap<String, &KindNode> {
    nodes
        .iter()
        .filter(|node| !node.control_plane)
        .enumerate()
        .map(|(index, node)| (node_name(index + 1), node))
        .collect()
}

/// Lab CIDRs (node ranges, pod addresses as /32 and /128) and what they are in the kind cluster.
pub fn address_map(
    nodes: &BTreeMap<String, &KindNode>,
    lab_pods: &[Pod],
    kind_pods: &BTreeMap<PodRef, Vec<IpAddr>>,
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (index, node) in nodes.values().enumerate() {
        for lab in [node_cidr_v4(index + 1), node_cidr_v6(index + 1)] {
            if let Some(kind) = node
                .pod_cidrs
                .iter()
                .find(|cidr| cidr.addr.is_ipv4() == lab.addr.is_ipv4())
            {
                map.insert(lab.to_string(), kind.to_string());
            }
        }
    }
    for pod in lab_pods {
        let Some(kind_ips) = kind_pods.get(&pod.pod_ref()) else {
            continue;
        };
        for lab_ip in &pod.ips {
            if let Some(kind_ip) = kind_ips.iter().find(|ip| ip.is_ipv4() == lab_ip.is_ipv4()) {
                let len = if lab_ip.is_ipv4() { 32 } else { 128 };
                map.insert(format!("{lab_ip}/{len}"), format!("{kind_ip}/{len}"));
            }
        }
    }
    map
}

/// The container that serves one port, named after it so that a probe can choose its client.
pub fn container_name(port: u16, protocol: Protocol) -> String {
    format!("serve-{port}-{}", protocol.name().to_lowercase())
}

/// The Pod for kind: same name, namespace and labels, on `node`, one server per port.
pub fn pod(decl: &Pod, node: &str) -> anyhow::Result<Value> {
    if decl.ports.is_empty() {
        bail!("pod {} has no container port to serve", decl.pod_ref());
    }
    let containers: Vec<Value> = decl
        .ports
        .iter()
        .map(|port| {
            let transport = match port.protocol {
                Protocol::Tcp => "--tcp",
                Protocol::Udp => "--udp",
                Protocol::Sctp => "--sctp",
            };
            let mut container_port = json!({
                "containerPort": port.port,
                "protocol": port.protocol.name(),
            });
            if let Some(name) = &port.name {
                container_port["name"] = json!(name);
            }
            json!({
                "name": container_name(port.port, port.protocol),
                "image": AGNHOST_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "args": ["serve-hostname", transport, "--http=false", "--port", port.port.to_string()],
                "ports": [container_port],
            })
        })
        .collect();
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": decl.name,
            "namespace": decl.namespace,
            "labels": decl.labels,
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": containers,
        },
    }))
}

/// The Service for kind: both families, addresses chosen by the cluster.
pub fn service(document: &Value) -> Value {
    let mut service = without_status(document);
    if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
        for field in ["clusterIP", "clusterIPs", "ipFamilies"] {
            spec.remove(field);
        }
        spec.insert("ipFamilyPolicy".to_owned(), json!("PreferDualStack"));
    }
    service
}

/// The NetworkPolicy or ClusterNetworkPolicy for kind: lab CIDRs in ipBlocks and `networks`
/// replaced through `addresses`.
pub fn policy(document: &Value, addresses: &BTreeMap<String, String>) -> Value {
    let mut policy = without_status(document);
    for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
        let Some(rules) = policy
            .pointer_mut(&format!("/spec/{rules}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for rule in rules {
            let Some(peers) = rule.get_mut(peers).and_then(Value::as_array_mut) else {
                continue;
            };
            for peer in peers {
                if let Some(block) = peer.get_mut("ipBlock") {
                    if let Some(cidr) = block.get_mut("cidr") {
                        translate(cidr, addresses);
                    }
                    if let Some(excepts) = block.get_mut("except").and_then(Value::as_array_mut) {
                        excepts
                            .iter_mut()
                            .for_each(|except| translate(except, addresses));
                    }
                }
                if let Some(networks) = peer.get_mut("networks").and_then(Value::as_array_mut) {
                    networks
                        .iter_mut()
                        .for_each(|network| translate(network, addresses));
                }
            }
        }
    }
    policy
}

fn translate(cidr: &mut Value, addresses: &BTreeMap<String, String>) {
    if let Some(kind) = cidr.as_str().and_then(|lab| addresses.get(lab)) {
        *cidr = json!(kind);
    }
}

/// A copy of `document` without `status`, which the cluster owns.
pub fn without_status(document: &Value) -> Value {
    let mut copy = document.clone();
    if let Some(object) = copy.as_object_mut() {
        object.remove("status");
    }
    copy
}

#[cfg(test)]
mod tests {
    use policy_core::policy::model::{ContainerPort, PodPhase};

    use super::*;

    fn nodes_json() -> Value {
        json!({"items": [
            {"metadata": {"name": "e2e-worker2", "labels": {}},
             "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.4"},
                                      {"type": "InternalIP", "address": "fc00:f853:ccd:e793::4"},
                                      {"type": "Hostname", "address": "e2e-worker2"}]}},
            {"metadata": {"name": "e2e-control-plane",
                          "labels": {"node-role.kubernetes.io/control-plane": ""}},
             "spec": {"podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}},
            {"metadata": {"name": "e2e-worker", "labels": {}},
             "spec": {"podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]}},
        ]})
    }

    fn lab_pod() -> Pod {
        Pod {
            namespace: "x".into(),
            name: "a".into(),
            node: Some("node-1".into()),
            phase: PodPhase::Running,
            host_network: false,
            ips: vec![
                "10.244.1.10".parse().unwrap(),
                "fd00:10:244:1::10".parse().unwrap(),
            ],
            ports: vec![
                ContainerPort {
                    name: Some("serve-80-tcp".into()),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: None,
                    port: 81,
                    protocol: Protocol::Udp,
                },
            ],
            labels: BTreeMap::from([("pod".into(), "a".into())]),
        }
    }

    #[test]
    fn nodes_are_read_and_workers_stand_for_lab_nodes_in_name_order() {
        let nodes = parse_nodes(&nodes_json()).unwrap();
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].control_plane);
        assert_eq!(nodes[2].internal_ips.len(), 2);
        let map = node_map(&nodes);
        assert_eq!(map.len(), 2);
        assert_eq!(map["node-1"].name, "e2e-worker");
        assert_eq!(map["node-2"].name, "e2e-worker2");
    }

    #[test]
    fn lab_ranges_and_pod_addresses_map_to_the_cluster_s() {
        let nodes = parse_nodes(&nodes_json()).unwrap();
        let kind_pods = BTreeMap::from([(
            lab_pod().pod_ref(),
            vec![
                "10.244.2.7".parse().unwrap(),
                "fd00:10:244:2::7".parse().unwrap(),
            ],
        )]);
        let map = address_map(&node_map(&nodes), &[lab_pod()], &kind_pods);
        assert_eq!(
            map["10.244.1.0/24"], "10.244.2.0/24",
            "node-1 is e2e-worker"
        );
        assert_eq!(map["fd00:10:244:2::/64"], "fd00:10:244:1::/64");
        assert_eq!(map["10.244.1.10/32"], "10.244.2.7/32");
        assert_eq!(map["fd00:10:244:1::10/128"], "fd00:10:244:2::7/128");
    }

    #[test]
    fn a_pod_serves_each_port_from_its_own_agnhost_container() {
        let pod = pod(&lab_pod(), "e2e-worker").unwrap();
        assert_eq!(pod["spec"]["nodeName"], "e2e-worker");
        assert_eq!(pod["metadata"]["labels"]["pod"], "a");
        assert!(pod.get("status").is_none());
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["name"], "serve-80-tcp");
        assert_eq!(
            containers[0]["args"],
            json!(["serve-hostname", "--tcp", "--http=false", "--port", "80"])
        );
        assert_eq!(containers[0]["ports"][0]["name"], "serve-80-tcp");
        assert_eq!(containers[1]["name"], "serve-81-udp");
        assert_eq!(containers[1]["args"][1], "--udp");
        assert_eq!(containers[1]["ports"][0]["protocol"], "UDP");
        assert!(containers[1]["ports"][0].get("name").is_none());
    }

    #[test]
    fn the_rendered_objects_are_valid_kubernetes_objects() {
        let mut schemas = crate::schema::Schemas::vendored().unwrap();
        let service_document: Value = serde_norway::from_str(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n\
             spec: {clusterIP: 10.96.0.10, selector: {pod: a}, ports: [{port: 80}]}\n",
        )
        .unwrap();
        for object in [
            pod(&lab_pod(), "e2e-worker").unwrap(),
            service(&service_document),
        ] {
            assert_eq!(schemas.validate(&object).unwrap(), [], "{object}");
        }
        let rendered = service(&service_document);
        assert_eq!(rendered["spec"]["ipFamilyPolicy"], "PreferDualStack");
        assert!(rendered["spec"].get("clusterIP").is_none());
    }

    #[test]
    fn ip_blocks_are_translated_and_other_cidrs_kept() {
        let document: Value = serde_norway::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: p, namespace: x}\n\
             spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.10/32]}\n\
             \x20 egress:\n  - to:\n    - ipBlock: {cidr: 10.244.1.0/24}\n    - podSelector: {}\n",
        )
        .unwrap();
        let addresses = BTreeMap::from([
            ("10.244.1.10/32".to_owned(), "10.244.2.7/32".to_owned()),
            ("10.244.1.0/24".to_owned(), "10.244.2.0/24".to_owned()),
        ]);
        let rendered = policy(&document, &addresses);
        let block = &rendered["spec"]["ingress"][0]["from"][0]["ipBlock"];
        assert_eq!(block["cidr"], "10.244.0.0/16");
        assert_eq!(block["except"], json!(["10.244.2.7/32"]));
        assert_eq!(
            rendered["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"],
            "10.244.2.0/24"
        );
    }

    #[test]
    fn cluster_policy_networks_are_translated_and_other_cidrs_kept() {
        let document = json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "guard"},
            "spec": {
                "tier": "Admin",
                "priority": 5,
                "subject": {"namespaces": {}},
                "egress": [{
                    "action": "Deny",
                    "to": [{"networks": ["10.244.1.0/24", "0.0.0.0/0"]}, {"namespaces": {}}],
                }],
            },
        });
        let addresses = BTreeMap::from([("10.244.1.0/24".to_owned(), "10.244.2.0/24".to_owned())]);
        let rendered = policy(&document, &addresses);
        assert_eq!(
            rendered["spec"]["egress"][0]["to"][0]["networks"],
            json!(["10.244.2.0/24", "0.0.0.0/0"])
        );
        assert_eq!(
            rendered["spec"]["egress"][0]["to"][1],
            json!({"namespaces": {}})
        );
    }

    #[test]
    fn cidrs_parse_with_valid_lengths_only() {
        assert_eq!(parse_cidr("fd00:10:244::/56").unwrap().len, 56);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}
