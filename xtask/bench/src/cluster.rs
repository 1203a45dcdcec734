//! A synthetic cluster as Kubernetes manifests, for the control-plane benchmarks: the shape of the
//! resolver benchmark (`policy-agent/core/benches/resolve.rs`) written out as the files a manifest
//! source reads. Namespaces carry `team` and `env` labels; pods carry `app`, `tier` and `version`
//! labels, two named container ports and dual-stack addresses, 100 to a node; policies are ten
//! kinds (default deny, pod and namespace selectors, egress, ipBlock with except, port ranges,
//! named ports, allow-all, both directions) spread over the namespaces; ClusterNetworkPolicies,
//! when asked for, are five kinds over both tiers (Admin `Deny`, `Accept` and `Pass`, Baseline
//! `Deny` with networks and port ranges) with priorities in turn.
//!
//! Pods are placed by `node = (pod / namespaces) % nodes`, so every node, the measured one
//! (`node-0`) included, gets `pods / nodes` pods from every namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};

/// How many pods a node runs.
pub const PODS_PER_NODE: usize = 100;
/// The node whose agent is measured.
pub const MEASURED_NODE: &str = "node-0";
/// Distinct `app` labels per namespace.
const APPS: usize = 20;
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TIERS: [&str; 3] = ["web", "api", "db"];

/// The size of a synthetic cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterSize {
    pub pods: usize,
    pub policies: usize,
    pub namespaces: usize,
    /// ClusterNetworkPolicies, in `cluster-policies.yaml`.
    pub cluster_policies: usize,
}

impl ClusterSize {
    /// Nodes, each with [`PODS_PER_NODE`] pods (at least one node).
    pub fn nodes(self) -> usize {
        (self.pods / PODS_PER_NODE).max(1)
    }

    /// The node of pod `p`.
    fn node_of(self, p: usize) -> usize {
        (p / self.namespaces) % self.nodes()
    }
}

/// A pod of the measured node: its name and IPv4 address, so the bench can wire an interface
/// for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    pub ipv4: Ipv4Addr,
}

/// The manifests of a synthetic cluster, one YAML stream per file.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// File name and content; every document is a single-line JSON object (JSON is YAML).
    pub files: Vec<(String, String)>,
    /// The pods placed on [`MEASURED_NODE`].
    pub local_pods: Vec<LocalPod>,
}

/// Pod `p`'s addresses: `10.244.0.0 + 256 + p` and `fd00:10:244:: + 256 + p` (room for 65,000
/// pods).
fn pod_ips(p: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = p as u32 + 256;
    (
        Ipv4Addr::from_bits(0x0af4_0000 + host),
        Ipv6Addr::from_bits(0xfd00_0010_0244_0000_0000_0000_0000_0000 + u128::from(host)),
    )
}

/// A stream of documents, one JSON object a line.
pub fn stream(documents: impl IntoIterator<Item = Value>) -> String {
    let mut text = String::new();
    for document in documents {
        text.push_str("---\n");
        text.push_str(&document.to_string());
        text.push('\n');
    }
    text
}

/// A Namespace object.
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A running Pod with its node and addresses filled in, as the API server would report it.
pub fn pod(
    namespace: &str,
    name: &str,
    labels: Value,
    node: &str,
    ips: &[IpAddr],
    ports: Value,
) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "bench", "ports": ports}]},
        "status": {
            "phase": "Running",
            "podIP": ips.first().map(IpAddr::to_string),
            "podIPs": pod_ips,
        },
    })
}

/// A NetworkPolicy object.
pub fn network_policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// Generates the cluster: `namespaces.yaml`, `pods.yaml` and `policies.yaml`.
pub fn generate(size: ClusterSize) -> Cluster {
    let namespaces = (0..size.namespaces).map(|n| {
        namespace(
            &format!("ns-{n}"),
            json!({"team": format!("team-{}", n % 10), "env": ENVS[n % 3]}),
        )
    });
    let mut local_pods = Vec::new();
    let pods: Vec<Value> = (0..size.pods)
        .map(|p| {
            let namespace = format!("ns-{}", p % size.namespaces);
            let name = format!("pod-{p}");
            let app = (p / size.namespaces) % APPS;
            let node = size.node_of(p);
            let (v4, v6) = pod_ips(p);
            if node == 0 {
                local_pods.push(LocalPod {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    ipv4: v4,
                });
            }
            pod(
                &namespace,
                &name,
                json!({
                    "app": format!("app-{app}"),
                    "tier": TIERS[app % 3],
                    "version": format!("v{}", p % 4),
                }),
                &format!("node-{node}"),
                &[IpAddr::V4(v4), IpAddr::V6(v6)],
                json!([
                    {"name": "http", "containerPort": 8000 + app % 5},
                    {"name": "metrics", "containerPort": 9090},
                ]),
            )
        })
        .collect();
    let policies = (0..size.policies).map(|i| policy(i, size.namespaces));
    let mut files = vec![
        ("namespaces.yaml".to_owned(), stream(namespaces)),
        ("pods.yaml".to_owned(), stream(pods)),
        ("policies.yaml".to_owned(), stream(policies)),
    ];
    if size.cluster_policies > 0 {
        let cluster_policies = (0..size.cluster_policies).map(cluster_policy);
        files.push(("cluster-policies.yaml".to_owned(), stream(cluster_policies)));
    }
    Cluster { files, local_pods }
}

/// ClusterNetworkPolicy `i`: kind `i % 5`, priority `i % 1000`.
fn cluster_policy(i: usize) -> Value {
    let env = |offset: usize| ENVS[(i + offset) % 3];
    let team = format!("team-{}", i % 10);
    let tcp = |port: u16| json!({"tcp": {"destinationPort": {"number": port}}});
    let (tier, subject, rules) = match i % 5 {
        0 => (
            "Admin",
            json!({"namespaces": {"matchLabels": {"env": env(0)}}}),
            json!({"ingress": [{
                "name": "not-from-other-envs",
                "action": "Deny",
                "from": [{"namespaces": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": [env(0)]}]}}],
                "protocols": [tcp(5432), tcp(6379)],
            }]}),
        ),
        1 => (
            "Admin",
            json!({"pods": {"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": {"matchLabels": {"tier": "web"}}}}),
            json!({"ingress": [{
                "name": "monitoring",
                "action": "Accept",
                "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": format!("app-{}", i % APPS)}}}}],
                "protocols": [tcp(9090)],
            }]}),
        ),
        2 => (
            "Admin",
            json!({"namespaces": {"matchLabels": {"team": team}}}),
            json!({"egress": [{
                "name": "to-owners",
                "action": "Pass",
                "to": [{"namespaces": {"matchLabels": {"env": env(1)}}}],
            }]}),
        ),
        3 => (
            "Admin",
            json!({"namespaces": {}}),
            json!({"egress": [{
                "name": "no-metadata",
                "action": "Deny",
                "to": [{"networks": [format!("169.254.{}.0/24", i % 250), "fd00:ec2::/64"]}],
            }]}),
        ),
        _ => (
            "Baseline",
            json!({"namespaces": {"matchLabels": {"env": env(2)}}}),
            json!({"ingress": [{
                "name": "default-deny",
                "action": "Deny",
                "from": [{"namespaces": {}}],
                "protocols": [{"tcp": {"destinationPort": {"range": {"start": 30000, "end": 32767}}}}],
            }]}),
        ),
    };
    let mut spec = json!({"tier": tier, "priority": i % 1000, "subject": subject});
    if let (Some(spec), Some(rules)) = (spec.as_object_mut(), rules.as_object()) {
        spec.extend(rules.clone());
    }
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": format!("cluster-policy-{i}")},
        "spec": spec,
    })
}

/// Policy `i`: kind `i / namespaces % 10` in namespace `i % namespaces`.
fn policy(i: usize, namespaces: usize) -> Value {
    let namespace = format!("ns-{}", i % namespaces);
    let app = |offset: usize| format!("app-{}", (i + offset) % APPS);
    let tcp = |port: u16| json!({"protocol": "TCP", "port": port});
    let spec = match (i / namespaces) % 10 {
        0 => json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        1 => json!({
            "podSelector": {"matchLabels": {"app": app(0)}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app(1)}}}], "ports": [tcp(8080)]}],
        }),
        2 => json!({
            "podSelector": {"matchLabels": {"tier": "db"}},
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"team": format!("team-{}", i % 10)}},
                    "podSelector": {"matchLabels": {"tier": "api"}},
                }],
                "ports": [tcp(5432)],
            }],
        }),
        3 => json!({
            "podSelector": {"matchLabels": {"app": app(2)}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}},
                    "podSelector": {"matchLabels": {"app": "app-0"}},
                }],
                "ports": [{"protocol": "UDP", "port": 53}],
            }],
        }),
        4 => json!({
            "podSelector": {"matchLabels": {"tier": "web"}},
            "ingress": [{
                "from": [{"ipBlock": {"cidr": "172.16.0.0/12", "except": [format!("172.16.{}.0/24", i % 200)]}}],
                "ports": [{"protocol": "TCP", "port": 30000, "endPort": 32767}],
            }],
        }),
        5 => json!({
            "podSelector": {"matchExpressions": [{"key": "version", "operator": "In", "values": ["v0", "v1"]}]},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                "ports": [{"protocol": "TCP", "port": "http"}],
            }],
        }),
        6 => json!({
            "podSelector": {"matchLabels": {"app": app(3)}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": "metrics"}]},
                {"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}], "ports": [tcp(443)]},
            ],
        }),
        7 => json!({
            "podSelector": {"matchLabels": {"tier": "api"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [tcp(8000), tcp(8443)]}],
        }),
        8 => json!({"podSelector": {"matchLabels": {"app": app(4)}}, "ingress": [{}]}),
        _ => json!({
            "podSelector": {"matchLabels": {"app": app(5)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app(6)}}}],
                "ports": [tcp(7000)],
            }],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": app(7)}}}]}],
        }),
    };
    network_policy(&namespace, &format!("policy-{i}"), spec)
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::Path,
    };

    use policy_core::{
        manifest::{Loaded, load_text, objects},
        policy::cluster::Tier,
    };

    use super::*;

    const SMALL: ClusterSize = ClusterSize {
        pods: 1_000,
        policies: 500,
        namespaces: 100,
        cluster_policies: 0,
    };

    fn documents(cluster: &Cluster) -> Vec<Value> {
        cluster
            .files
            .iter()
            .flat_map(|(name, text)| objects(Path::new(name), text).unwrap())
            .collect()
    }

    fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
        documents
            .iter()
            .filter(|document| document["kind"] == kind)
            .collect()
    }

    #[test]
    fn the_cluster_has_the_asked_size_and_parses_as_yaml() {
        let cluster = generate(SMALL);
        let documents = documents(&cluster);
        assert_eq!(of_kind(&documents, "Namespace").len(), 100);
        assert_eq!(of_kind(&documents, "Pod").len(), 1_000);
        assert_eq!(of_kind(&documents, "NetworkPolicy").len(), 500);
        let names: BTreeSet<(String, String)> = of_kind(&documents, "Pod")
            .iter()
            .map(|pod| {
                (
                    pod["metadata"]["namespace"].to_string(),
                    pod["metadata"]["name"].to_string(),
                )
            })
            .collect();
        assert_eq!(names.len(), 1_000, "pod names are unique");
    }

    #[test]
    fn every_node_gets_a_hundred_pods_and_the_local_ones_are_listed() {
        for pods in [1_000, 10_000] {
            let size = ClusterSize { pods, ..SMALL };
            let cluster = generate(size);
            let documents = documents(&cluster);
            let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
            for pod in of_kind(&documents, "Pod") {
                let node = pod["spec"]["nodeName"].as_str().unwrap().to_owned();
                *per_node.entry(node).or_default() += 1;
            }
            assert_eq!(per_node.len(), pods / PODS_PER_NODE, "{pods} pods");
            assert!(per_node.values().all(|count| *count == PODS_PER_NODE));
            assert_eq!(cluster.local_pods.len(), PODS_PER_NODE);
            let local: BTreeSet<String> = of_kind(&documents, "Pod")
                .iter()
                .filter(|pod| pod["spec"]["nodeName"] == MEASURED_NODE)
                .map(|pod| pod["status"]["podIP"].as_str().unwrap().to_owned())
                .collect();
            let listed: BTreeSet<String> = cluster
                .local_pods
                .iter()
                .map(|pod| pod.ipv4.to_string())
                .collect();
            assert_eq!(local, listed);
        }
    }

    #[test]
    fn fifty_thousand_pods_still_put_a_hundred_on_the_measured_node() {
        let size = ClusterSize {
            pods: 50_000,
            ..SMALL
        };
        assert_eq!(size.nodes(), 500);
        assert_eq!(generate(size).local_pods.len(), PODS_PER_NODE);
    }

    #[test]
    fn addresses_are_unique_up_to_fifty_thousand_pods() {
        let v4: BTreeSet<Ipv4Addr> = (0..50_000).map(|p| pod_ips(p).0).collect();
        let v6: BTreeSet<Ipv6Addr> = (0..50_000).map(|p| pod_ips(p).1).collect();
        assert_eq!((v4.len(), v6.len()), (50_000, 50_000));
        assert_eq!(pod_ips(0).0, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(
            pod_ips(49_999).0,
            Ipv4Addr::new(10, 244, 196, 79),
            "still inside 10.244.0.0/16"
        );
    }

    #[test]
    fn cluster_policies_cover_both_tiers_and_load_without_errors() {
        let cluster = generate(ClusterSize {
            cluster_policies: 10,
            ..SMALL
        });
        let (name, text) = cluster.files.last().unwrap();
        assert_eq!(name, "cluster-policies.yaml");
        let mut loaded = Loaded::default();
        load_text(Path::new(name), text, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let policies = &loaded.snapshot.cluster_policies;
        assert_eq!(policies.len(), 10);
        for tier in Tier::ALL {
            assert!(policies.iter().any(|policy| policy.tier == tier), "{tier}");
        }
        assert!(
            generate(SMALL)
                .files
                .iter()
                .all(|(name, _)| name != "cluster-policies.yaml")
        );
    }

    #[test]
    fn policies_cover_the_ten_kinds_in_every_namespace() {
        let cluster = generate(ClusterSize {
            policies: 1_000,
            ..SMALL
        });
        let documents = documents(&cluster);
        let policies = of_kind(&documents, "NetworkPolicy");
        let namespaces: BTreeSet<&str> = policies
            .iter()
            .map(|policy| policy["metadata"]["namespace"].as_str().unwrap())
            .collect();
        assert_eq!(namespaces.len(), 100);
        let text = &cluster.files[2].1;
        for feature in [
            "\"except\"",
            "\"endPort\"",
            "\"port\":\"http\"",
            "\"namespaceSelector\"",
            "\"Egress\"",
            "\"matchExpressions\"",
            "2001:db8::/32",
        ] {
            assert!(text.contains(feature), "no policy uses {feature}");
        }
    }
}
