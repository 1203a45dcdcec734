//! Manifest loading: real YAML through the k8s-openapi types, each kind of invalid object
//! reported with file, object and field while the rest loads, deterministic addresses, and the
//! generation hash of a directory.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use policy_common::verdict::Direction;
use policy_core::{
    manifest::{Loaded, ManifestError, assign_addresses, generation, load, load_text, node_count},
    policy::model::{
        NAMESPACE_NAME_LABEL, NamespaceScope, Operator, Peer, PodPhase, PortValue, Protocol,
    },
};

fn load_str(text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_text(Path::new("test.yaml"), text, &mut loaded);
    loaded
}

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-3
  containers:
  - name: c
    image: i
    ports: [{name: http, containerPort: 8080}, {containerPort: 53, protocol: UDP}]
status:
  phase: Pending
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: NotIn, values: [db, cache]}]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {app: web}}
    - podSelector: {}
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}
    ports:
    - {port: http}
    - {protocol: UDP, port: 1000, endPort: 2000}
    - {protocol: SCTP}
"#;

#[test]
fn real_yaml_converts_to_the_snapshot() {
    let loaded = load_str(GOOD);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let snapshot = &loaded.snapshot;
    assert_eq!(snapshot.namespaces[0].labels[NAMESPACE_NAME_LABEL], "shop");
    assert_eq!(snapshot.namespaces[0].labels["team"], "a");

    let pod = &snapshot.pods[0];
    assert_eq!(pod.node.as_deref(), Some("node-3"));
    assert_eq!(pod.phase, PodPhase::Pending);
    let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    assert_eq!(pod.ips, ips);
    assert_eq!(pod.named_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(pod.ports[1].protocol, Protocol::Udp);

    let service = &snapshot.services[0];
    assert_eq!(
        service.cluster_ips,
        vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        service.ports[0].target_port,
        PortValue::Name("http".to_owned())
    );

    let policy = &snapshot.policies[0];
    assert!(policy.has_type(Direction::Ingress) && !policy.has_type(Direction::Egress));
    assert_eq!(
        policy.pod_selector.match_expressions[0].operator,
        Operator::NotIn
    );
    assert_eq!(
        policy.pod_selector.match_expressions[0].values,
        ["cache", "db"]
    );
    let rule = &policy.ingress[0];
    match &rule.peers[0] {
        Peer::Pods(peer) => {
            assert!(
                matches!(&peer.namespaces, NamespaceScope::Selected(s) if s.match_labels["team"] == "a")
            );
            assert_eq!(peer.pods.match_labels["app"], "web");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&rule.peers[1], Peer::Pods(p) if p.namespaces == NamespaceScope::Own("shop".to_owned()))
    );
    match &rule.peers[2] {
        Peer::IpBlock(block) => {
            assert_eq!(block.cidr.to_string(), "2001:db8::/32");
            assert_eq!(block.except[0].to_string(), "2001:db8:1::/48");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rule.ports[0].protocol, Protocol::Tcp);
    assert_eq!(rule.ports[0].port, Some(PortValue::Name("http".to_owned())));
    assert_eq!(rule.ports[1].end_port, Some(2000));
    assert_eq!(
        (rule.ports[2].protocol, &rule.ports[2].port),
        (Protocol::Sctp, &None)
    );
}

/// Each invalid object next to a valid policy: (the broken policy's spec, field, message part).
const BAD_POLICIES: &[(&str, &str, &str)] = &[
    (
        "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "invalid prefix length",
    ),
    (
        "ingress: [{from: [{ipBlock: {cidr: not-a-cidr}}]}]",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "not ADDRESS/LENGTH",
    ),
    (
        "egress: [{to: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]",
        "spec.egress[0].to[1].ipBlock.except[0]",
        "not strictly inside the cidr",
    ),
    (
        "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [300.0.0.0/16]}}]}]",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "invalid address",
    ),
    (
        "ingress: [{ports: [{protocol: ICMP, port: 1}]}]",
        "spec.ingress[0].ports[0].protocol",
        "unknown protocol \"ICMP\"",
    ),
    (
        "ingress: [{}, {ports: [{port: http, endPort: 90}]}]",
        "spec.ingress[1].ports[0].endPort",
        "endPort needs a numeric port",
    ),
    (
        "egress: [{ports: [{endPort: 90}]}]",
        "spec.egress[0].ports[0].endPort",
        "endPort needs a numeric port",
    ),
    (
        "ingress: [{ports: [{port: 90, endPort: 80}]}]",
        "spec.ingress[0].ports[0].endPort",
        "below port",
    ),
    (
        "ingress: [{ports: [{port: 70000}]}]",
        "spec.ingress[0].ports[0].port",
        "outside 1-65535",
    ),
    (
        "ingress: [{ports: [{port: Not_A_Name}]}]",
        "spec.ingress[0].ports[0].port",
        "not a valid port name",
    ),
    (
        "policyTypes: [Ingress, Sideways]",
        "spec.policyTypes[1]",
        "unknown policy type",
    ),
    (
        "podSelector: {matchExpressions: [{key: a, operator: Near, values: [b]}]}",
        "spec.podSelector.matchExpressions[0].operator",
        "unknown selector operator",
    ),
    (
        "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}]",
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        "needs at least one value",
    ),
    (
        "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}]}]",
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        "takes no values",
    ),
    (
        "ingress: [{from: [{}]}]",
        "spec.ingress[0].from[0]",
        "needs podSelector, namespaceSelector or ipBlock",
    ),
    (
        "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
        "spec.ingress[0].from[0]",
        "cannot be combined",
    ),
];

#[test]
fn each_invalid_policy_is_reported_with_file_object_and_field_and_the_rest_loads() {
    for (spec, field, message) in BAD_POLICIES {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: broken, namespace: ns}}\nspec: {{podSelector: {{}}}}\n---\n{GOOD}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: ns}}\nspec:\n  {spec}\n"
        );
        let loaded = load_str(&text);
        assert_eq!(loaded.errors.len(), 1, "{spec}: {:?}", loaded.errors);
        let error = &loaded.errors[0];
        match error {
            ManifestError::Invalid {
                object, field: f, ..
            } => {
                assert_eq!(object, "NetworkPolicy ns/bad");
                assert_eq!(f, field, "{spec}");
            }
            other => panic!("{spec}: {other:?}"),
        }
        let text = policy_core::error_chain(error);
        assert!(
            text.starts_with(&format!("test.yaml: NetworkPolicy ns/bad: {field}: ")),
            "{text}"
        );
        assert!(text.contains(message), "{spec}: {text}");
        let names: Vec<&str> = loaded
            .snapshot
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        // The rejected policy still isolates what it selects, with none of its rules.
        assert_eq!(names, ["broken", "p", "bad"], "{spec}");
        let bad = &loaded.snapshot.policies[2];
        assert!(bad.ingress.is_empty() && bad.egress.is_empty(), "{spec}");
        assert_eq!(loaded.isolating, [0].into(), "{spec}");
        assert_eq!(loaded.snapshot.pods.len(), 1);
    }
}

#[test]
fn invalid_pods_and_services_are_reported_by_field() {
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: 10.0.0.256}\n",
            "Pod default/x",
            "status.podIP",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: n}\nstatus: {podIPs: [{ip: 10.0.0.1}, {ip: zz}]}\n",
            "Pod n/x",
            "status.podIPs[1].ip",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a}, {name: b, ports: [{containerPort: 1, protocol: QUIC}]}]}\n",
            "Pod default/x",
            "spec.containers[1].ports[0].protocol",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, ports: [{containerPort: 0}]}]}\n",
            "Pod default/x",
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: bogus}\n",
            "Service default/s",
            "spec.clusterIP",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {namespace: n}\nspec: {containers: []}\n",
            "Pod n/<unnamed>",
            "metadata.name",
        ),
    ];
    for (text, object, field) in cases {
        let loaded = load_str(&format!("{text}---\n{GOOD}"));
        assert_eq!(loaded.errors.len(), 1, "{text}: {:?}", loaded.errors);
        match &loaded.errors[0] {
            ManifestError::Invalid {
                object: o,
                field: f,
                ..
            } => {
                assert_eq!((o.as_str(), f.as_str()), (object, field), "{text}");
            }
            other => panic!("{text}: {other:?}"),
        }
        assert_eq!(loaded.snapshot.pods.len(), 1, "{text}");
        assert_eq!(loaded.snapshot.policies.len(), 1, "{text}");
    }
}

#[test]
fn unparsable_documents_and_schema_errors_are_reported_and_skipped() {
    let text = format!(
        "{GOOD}\n---\nkind: [unclosed\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: typed}}\nspec: {{containers: 7}}\n---\njust a string\n---\n# only a comment\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: last}}\n"
    );
    let loaded = load_str(&text);
    let messages: Vec<String> = loaded
        .errors
        .iter()
        .map(|e| policy_core::error_chain(e))
        .collect();
    assert_eq!(loaded.errors.len(), 3, "{messages:#?}");
    assert!(
        matches!(loaded.errors[0], ManifestError::Yaml { document: 5, .. }),
        "{messages:#?}"
    );
    assert!(messages[0].contains("not valid YAML"));
    assert!(
        matches!(&loaded.errors[1], ManifestError::Schema { object, .. } if object == "Pod default/typed")
    );
    assert!(matches!(loaded.errors[2], ManifestError::Shape { .. }));
    let names: Vec<&str> = loaded
        .snapshot
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["web", "last"]);
}

#[test]
fn unknown_kinds_are_skipped_with_a_note_and_lists_are_read() {
    let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: n}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: listed}}
- {apiVersion: v1, kind: ConfigMap, metadata: {name: cm}}
"#;
    let loaded = load_str(text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let notes: Vec<String> = loaded.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        notes,
        [
            "test.yaml: Deployment n/d (apps/v1): kind not used by NetworkPolicy, skipped",
            "test.yaml: ConfigMap default/cm (v1): kind not used by NetworkPolicy, skipped",
        ]
    );
    assert_eq!(loaded.snapshot.namespaces[0].name, "listed");
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("manifest-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn directories_load_recursively_and_unreadable_paths_are_errors() {
    let dir = TempDir::new("load");
    fs::write(dir.0.join("a.yaml"), GOOD).unwrap();
    fs::write(
        dir.0.join("sub/b.json"),
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "json-pod"}}"#,
    )
    .unwrap();
    fs::write(dir.0.join("notes.txt"), "kind: [ignored").unwrap();
    let loaded = load(&[dir.0.clone(), dir.0.join("missing.yaml")]);
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    assert!(
        matches!(&loaded.errors[0], ManifestError::Read { path, .. } if path.ends_with("missing.yaml"))
    );
    let names: Vec<&str> = loaded
        .snapshot
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["web", "json-pod"]);
}

#[test]
fn generation_follows_content_and_paths_only() {
    let a = TempDir::new("gen-a");
    let b = TempDir::new("gen-b");
    for dir in [&a, &b] {
        fs::write(dir.0.join("x.yaml"), "kind: A\n").unwrap();
        fs::write(dir.0.join("sub/y.yml"), "kind: B\n").unwrap();
        fs::write(dir.0.join("ignored.md"), "anything").unwrap();
    }
    fs::write(b.0.join("ignored.md"), "something else").unwrap();
    let first = generation(&a.0).unwrap();
    assert_eq!(first.len(), 64);
    assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(first, generation(&b.0).unwrap());
    fs::write(b.0.join("sub/y.yml"), "kind: C\n").unwrap();
    assert_ne!(first, generation(&b.0).unwrap());
    fs::write(b.0.join("sub/y.yml"), "kind: B\n").unwrap();
    fs::rename(b.0.join("sub/y.yml"), b.0.join("sub/z.yml")).unwrap();
    assert_ne!(first, generation(&b.0).unwrap());
    assert!(generation(&b.0.join("nope")).is_err());
}

#[test]
fn addresses_follow_the_documented_rule() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: own, namespace: w}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: pinned, namespace: y}
spec: {nodeName: node-2}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: y}
spec: {hostNetwork: true}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: y}
status: {phase: Failed}
---
apiVersion: v1
kind: Pod
metadata: {name: odd, namespace: z}
spec: {nodeName: worker}
"#;
    let mut snapshot = load_str(text).snapshot;
    assert_eq!(node_count(&snapshot), 2);
    assert_eq!(assign_addresses(&mut snapshot, 2), Ok(()));
    let got: BTreeMap<String, (String, Vec<String>)> = snapshot
        .pods
        .iter()
        .map(|p| {
            (
                p.pod_ref().to_string(),
                (
                    p.node.clone().unwrap_or_default(),
                    p.ips.iter().map(ToString::to_string).collect(),
                ),
            )
        })
        .collect();
    let expect = |node: &str, ips: &[&str]| {
        (
            node.to_owned(),
            ips.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
    };
    // Unscheduled pods sorted: x/a, x/b, x/c, y/done, y/host -> node-1, node-2, node-1, node-2, node-1.
    assert_eq!(
        got["x/a"],
        expect("node-1", &["10.244.1.3", "fd00:10:244:1::3"])
    );
    assert_eq!(
        got["x/b"],
        expect("node-2", &["10.244.2.2", "fd00:10:244:2::2"])
    );
    assert_eq!(
        got["x/c"],
        expect("node-1", &["10.244.1.4", "fd00:10:244:1::4"])
    );
    assert_eq!(
        got["y/pinned"],
        expect("node-2", &["10.244.2.3", "fd00:10:244:2::3"])
    );
    assert_eq!(got["w/own"], expect("node-1", &["10.244.1.2"]));
    assert_eq!(got["y/done"], expect("node-2", &[]));
    // A hostNetwork pod has its node's addresses.
    assert_eq!(
        got["y/host"],
        expect("node-1", &["172.31.0.1", "fd00:172:31::1"])
    );
    // A node not named node-K is numbered after the others.
    assert_eq!(
        got["z/odd"],
        expect("worker", &["10.244.3.2", "fd00:10:244:3::2"])
    );
    // Every node a pod is on gets a Node with its addresses.
    let nodes: Vec<(String, Vec<String>)> = snapshot
        .nodes
        .iter()
        .map(|node| {
            (
                node.name.clone(),
                node.addresses.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            expect("node-1", &["172.31.0.1", "fd00:172:31::1"]),
            expect("node-2", &["172.31.0.2", "fd00:172:31::2"]),
            expect("worker", &["172.31.0.3", "fd00:172:31::3"]),
        ]
    );
}

#[test]
fn node_documents_keep_their_addresses_and_lend_them_to_host_network_pods() {
    let text = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {role: infra}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}, {type: Hostname, address: n1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
status: {addresses: [{type: Hostname, address: n2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: k}
spec: {nodeName: node-1, hostNetwork: true}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: k}
spec: {nodeName: node-2, hostNetwork: true}
---
apiVersion: v1
kind: Pod
metadata: {name: given, namespace: k}
spec: {nodeName: node-2, hostNetwork: true}
status: {podIPs: [{ip: 198.51.100.2}]}
"#;
    let mut snapshot = load_str(text).snapshot;
    assign_addresses(&mut snapshot, 2).unwrap();
    let ips = |name: &str| -> Vec<String> {
        let pod = snapshot.pods.iter().find(|pod| pod.name == name).unwrap();
        pod.ips.iter().map(ToString::to_string).collect()
    };
    assert_eq!(ips("agent"), ["192.168.0.1"]);
    assert_eq!(ips("other"), ["172.31.0.2", "fd00:172:31::2"]);
    assert_eq!(ips("given"), ["198.51.100.2"]);
    assert_eq!(snapshot.nodes.len(), 2);
    assert_eq!(snapshot.nodes[0].labels["role"], "infra");
}

#[test]
fn node_count_follows_the_nodes_pods_name() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {nodeName: node-5}\n";
    let mut snapshot = load_str(text).snapshot;
    assert_eq!(node_count(&snapshot), 5);
    assign_addresses(&mut snapshot, 5).unwrap();
    assert_eq!(snapshot.pods[0].ips[0].to_string(), "10.244.5.2");
}

/// A policy whose spec has the given extra lines, as the only document.
fn policy_with(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  podSelector: {{}}\n{spec}"
    )
}

/// The one error of loading `text`, as printed. A rejected policy is only there as isolation
/// with none of its rules.
fn only_error(text: &str) -> String {
    let loaded = load_str(text);
    assert_eq!(loaded.errors.len(), 1, "{text}: {:?}", loaded.errors);
    assert!(loaded.snapshot.pods.is_empty());
    assert!(
        loaded
            .snapshot
            .policies
            .iter()
            .all(|policy| policy.ingress.is_empty() && policy.egress.is_empty())
    );
    assert_eq!(loaded.isolating.len(), loaded.snapshot.policies.len());
    policy_core::error_chain(&loaded.errors[0])
}

#[test]
fn fields_the_api_does_not_define_are_rejected_by_path() {
    // `ingres` would turn the policy into deny-all, `excpt` would widen the allow.
    let cases = [
        (
            policy_with("  ingres: [{from: [{podSelector: {}}]}]\n"),
            "test.yaml: NetworkPolicy shop/p: unknown field spec.ingres: the NetworkPolicy API \
             does not define it",
        ),
        (
            policy_with(
                "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, excpt: [10.1.0.0/16]}\n",
            ),
            "test.yaml: NetworkPolicy shop/p: unknown field \
             spec.ingress[0].from[0].ipBlock.excpt: the NetworkPolicy API does not define it",
        ),
        (
            // A key with no value is still a field the API server refuses.
            policy_with("  egres:\n  polcyTypes: [Egress]\n"),
            "test.yaml: NetworkPolicy shop/p: unknown fields spec.egres, spec.polcyTypes: the \
             NetworkPolicy API does not define them",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, lables: {a: b}}\n"
                .to_owned(),
            "test.yaml: Pod shop/web: unknown field metadata.lables: the Pod API does not define it",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, targetport: 8080}]}\n"
                .to_owned(),
            "test.yaml: Service default/s: unknown field spec.ports[0].targetport: the Service \
             API does not define it",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nlabels: {a: b}\n".to_owned(),
            "test.yaml: Namespace shop: unknown field labels: the Namespace API does not define it",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(only_error(&text), expected);
    }
}

#[test]
fn every_field_the_api_defines_is_accepted() {
    let text = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: a, "app.kubernetes.io/part-of": shop}
  annotations: {note: x}
  uid: 9d5a1c1e-0000-4000-8000-000000000000
  resourceVersion: "12"
  creationTimestamp: null
  finalizers: [kubernetes]
spec: {finalizers: [kubernetes]}
status: {phase: Active}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-1, uid: u, controller: true}]
  managedFields: [{manager: kubectl, operation: Update, fieldsType: FieldsV1, fieldsV1: {"f:metadata": {}}}]
spec:
  nodeName: node-1
  restartPolicy: Always
  tolerations: [{key: k, operator: Exists, effect: NoSchedule}]
  securityContext: {runAsNonRoot: true}
  volumes: [{name: v, emptyDir: {}}]
  containers:
  - name: c
    image: i
    args: [serve]
    env: [{name: A, value: b}]
    resources: {limits: {cpu: 100m, memory: 64Mi}}
    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 5}
    volumeMounts: [{name: v, mountPath: /data}]
    ports: [{name: http, containerPort: 8080, protocol: TCP, hostPort: 0}]
status:
  phase: Running
  hostIP: 192.168.0.10
  hostIPs: [{ip: 192.168.0.10}]
  podIP: 10.244.1.9
  podIPs: [{ip: 10.244.1.9}]
  qosClass: Burstable
  conditions: [{type: Ready, status: "True", lastTransitionTime: "2026-01-01T00:00:00Z"}]
  containerStatuses: [{name: c, image: i, imageID: x, ready: true, restartCount: 0, started: true, state: {running: {startedAt: "2026-01-01T00:00:00Z"}}}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: ClusterIP
  selector: {app: web}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  sessionAffinity: None
  internalTrafficPolicy: Cluster
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP, appProtocol: http}]
status: {loadBalancer: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop, generation: 3, annotations: {a: b}}
spec:
  podSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: Exists}]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {namespaceSelector: {}, podSelector: {}}]
    ports: [{protocol: TCP, port: 8000, endPort: 9000}]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}]
"#;
    let loaded = load_str(text);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    let snapshot = &loaded.snapshot;
    assert_eq!(
        (
            snapshot.namespaces.len(),
            snapshot.pods.len(),
            snapshot.services.len(),
            snapshot.policies.len()
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn a_value_of_the_wrong_type_names_its_field() {
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {tier: 5}}\n",
            "test.yaml: Pod shop/web: metadata.labels.tier: does not fit the Pod schema: invalid \
             type: integer `5`, expected a string",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app.kubernetes.io/name: [a]}}\n",
            "test.yaml: Pod default/web: metadata.labels[app.kubernetes.io/name]: does not fit the \
             Pod schema: invalid type: sequence, expected a string",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: 7}\n",
            "test.yaml: Pod default/web: spec.containers: does not fit the Pod schema: invalid \
             type: integer `7`, expected a sequence",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(only_error(text), expected);
    }
    let policy = policy_with("  ingress: [{ports: [{port: 80, endPort: high}]}]\n");
    let error = only_error(&policy);
    assert!(
        error.starts_with("test.yaml: NetworkPolicy shop/p: spec.ingress[0].ports[0].endPort: "),
        "{error}"
    );
}

#[test]
fn a_kind_the_agent_reads_under_another_api_version_is_rejected() {
    let text = "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec: {podSelector: {}}\n---\napiVersion: v2\nkind: Pod\nmetadata: {name: web}\n";
    let loaded = load_str(text);
    let messages: Vec<String> = loaded
        .errors
        .iter()
        .map(|e| policy_core::error_chain(e))
        .collect();
    assert_eq!(
        messages,
        [
            "test.yaml: NetworkPolicy shop/p: apiVersion \"extensions/v1beta1\" is not read; this \
             kind is read as networking.k8s.io/v1",
            "test.yaml: Pod default/web: apiVersion \"v2\" is not read; this kind is read as v1",
        ]
    );
    assert!(loaded.skipped.is_empty());
}

#[test]
fn a_network_policy_without_spec_is_rejected() {
    // Read without a spec, it would select every pod of its namespace.
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\n";
    assert_eq!(
        only_error(text),
        "test.yaml: NetworkPolicy shop/p: spec: is required"
    );
}

#[test]
fn a_cidr_with_host_bits_is_rejected_in_manifests() {
    let cases = [
        (
            "  ingress: [{from: [{ipBlock: {cidr: 10.244.1.7/8}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.cidr: \"10.244.1.7/8\" has host bits set: write the \
             network 10.0.0.0/8 or the address 10.244.1.7/32",
        ),
        (
            "  egress: [{to: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.2.3/16]}}]}]\n",
            "spec.egress[0].to[1].ipBlock.except[0]: \"10.1.2.3/16\" has host bits set: write the \
             network 10.1.0.0/16 or the address 10.1.2.3/32",
        ),
        (
            "  ingress: [{from: [{ipBlock: {cidr: \"2001:db8::1/32\"}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.cidr: \"2001:db8::1/32\" has host bits set: write the \
             network 2001:db8::/32 or the address 2001:db8::1/128",
        ),
    ];
    for (spec, expected) in cases {
        let error = only_error(&policy_with(spec));
        assert_eq!(
            error,
            format!("test.yaml: NetworkPolicy shop/p: {expected}")
        );
    }
    // The whole address is a network of its own at full length.
    let loaded = load_str(&policy_with(
        "  ingress: [{from: [{ipBlock: {cidr: 10.244.1.7/32}}]}]\n",
    ));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
}

#[test]
fn a_key_given_twice_is_rejected() {
    let text = policy_with("  ingress: [{from: [{podSelector: {}}]}]\n  ingress: []\n");
    let error = only_error(&text);
    assert!(
        error.contains("not valid YAML") && error.contains("duplicate entry with key \"ingress\""),
        "{error}"
    );
}

#[test]
fn a_second_definition_of_an_object_is_rejected_naming_both_files() {
    let dir = TempDir::new("duplicate");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: shop}\n";
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n";
    fs::write(dir.0.join("a.yaml"), pod).unwrap();
    // Same name, other kind or namespace: different objects.
    fs::write(
        dir.0.join("b.yaml"),
        format!(
            "{namespace}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: db, namespace: other}}\n"
        ),
    )
    .unwrap();
    fs::write(dir.0.join("sub/c.yaml"), pod).unwrap();
    let loaded = load(std::slice::from_ref(&dir.0));
    let messages: Vec<String> = loaded
        .errors
        .iter()
        .map(|e| policy_core::error_chain(e))
        .collect();
    assert_eq!(
        messages,
        [format!(
            "{}: Pod shop/db: already defined in {}; this second definition is rejected",
            dir.0.join("sub/c.yaml").display(),
            dir.0.join("a.yaml").display()
        )]
    );
    let pods: Vec<String> = loaded
        .snapshot
        .pods
        .iter()
        .map(|p| p.pod_ref().to_string())
        .collect();
    assert_eq!(pods, ["shop/db", "other/db"]);
}

#[test]
fn each_file_is_read_once_whatever_links_lead_to_it() {
    use std::os::unix::fs::symlink;

    let dir = TempDir::new("links");
    fs::write(dir.0.join("a.yaml"), GOOD).unwrap();
    // Two loops, a link to a file and a link to a directory: each file still counts once.
    symlink(".", dir.0.join("self")).unwrap();
    symlink("..", dir.0.join("sub/up")).unwrap();
    symlink("../a.yaml", dir.0.join("sub/again.yaml")).unwrap();
    fs::create_dir(dir.0.join("real")).unwrap();
    fs::write(
        dir.0.join("real/b.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\n",
    )
    .unwrap();
    symlink("real", dir.0.join("alias")).unwrap();
    // The same file named twice on the command line.
    let loaded = load(&[dir.0.clone(), dir.0.join("a.yaml"), dir.0.join("real")]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let pods: Vec<&str> = loaded
        .snapshot
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(pods, ["web", "b"]);
    // The generation hashes each file once too, so it does not loop either.
    assert!(generation(&dir.0).is_ok());
}

/// The manifests the demo and the end-to-end scenarios use load without a single rejection:
/// the examples as a whole, the scenarios' base cluster as a whole, and every scenario file on
/// its own (the scenarios combine them step by step, and check for objects declared twice).
#[test]
fn the_shipped_manifests_load_without_rejections() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut sets = vec![
        vec![root.join("deploy/examples")],
        vec![root.join("xtask/e2e/scenarios/base")],
    ];
    let mut scenarios: Vec<PathBuf> = fs::read_dir(root.join("xtask/e2e/scenarios"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("scenario.yaml").is_file())
        .collect();
    scenarios.sort();
    assert!(scenarios.len() > 40, "{scenarios:?}");
    for scenario in scenarios {
        for entry in fs::read_dir(&scenario).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|name| name != "scenario.yaml") {
                sets.push(vec![path]);
            }
        }
    }
    for paths in sets {
        let loaded = load(&paths);
        let messages: Vec<String> = loaded
            .errors
            .iter()
            .map(|e| policy_core::error_chain(e))
            .collect();
        assert!(messages.is_empty(), "{paths:?}: {messages:#?}");
    }
}

#[test]
fn node_port_services_load() {
    let loaded = load_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  \
         selector: {app: web}\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080}, \
         {port: 53, protocol: UDP, nodePort: 30053}]\n",
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.snapshot.services.len(), 1);
}
