//! The tutorial scenarios, run through `policy-agent explain` as a user would: manifests in a
//! directory, the JSON matrix out, compared with the expected reachability.

use std::{fs, path::PathBuf};

use policy_core::{
    explain::{ExplainOptions, OutputFormat, Via, run},
    policy::model::Protocol,
};
use serde_json::Value;

/// A directory of manifests that is removed when the test ends.
struct ManifestDir(PathBuf);

impl ManifestDir {
    fn new(name: &str, files: &[(&str, &str)]) -> ManifestDir {
        let dir = std::env::temp_dir().join(format!("explain-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            fs::write(dir.join(file), text).unwrap();
        }
        ManifestDir(dir)
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn explain(
    dir: &ManifestDir,
    protocol: Protocol,
    port: u16,
    pair: Option<(&str, &str)>,
    output: OutputFormat,
) -> (String, String) {
    explain_via(dir, protocol, port, Via::Pod, pair, output)
}

fn explain_via(
    dir: &ManifestDir,
    protocol: Protocol,
    port: u16,
    via: Via,
    pair: Option<(&str, &str)>,
    output: OutputFormat,
) -> (String, String) {
    let options = ExplainOptions {
        paths: vec![dir.0.clone()],
        port,
        protocol,
        via,
        from: pair.map(|p| p.0.to_owned()),
        to: pair.map(|p| p.1.to_owned()),
        output,
    };
    let mut out = Vec::new();
    let mut notes = Vec::new();
    run(&options, &mut out, &mut notes).expect("explain runs");
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(notes).unwrap(),
    )
}

/// Asserts the JSON matrix: `rows[i]` has one character per server, `Y` allowed and `-` denied.
fn assert_matrix(dir: &ManifestDir, protocol: Protocol, port: u16, pods: &[&str], rows: &[&str]) {
    assert_matrix_via(dir, protocol, port, Via::Pod, pods, rows);
}

fn assert_matrix_via(
    dir: &ManifestDir,
    protocol: Protocol,
    port: u16,
    via: Via,
    pods: &[&str],
    rows: &[&str],
) {
    let (out, notes) = explain_via(dir, protocol, port, via, None, OutputFormat::Json);
    assert!(notes.is_empty(), "unexpected notes: {notes}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    match via {
        Via::Pod => assert_eq!(keys.len(), 4, "{keys:?}"),
        Via::Service => {
            assert_eq!(keys.len(), 5, "{keys:?}");
            assert_eq!(json["via"], "service");
        }
    }
    assert_eq!(json["protocol"], protocol.name());
    assert_eq!(json["port"], port);
    let listed: Vec<&str> = json["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(listed, pods);
    let mut actual = Vec::new();
    for client in pods {
        let row: String = pods
            .iter()
            .map(|server| match json["allowed"][client][server].as_bool() {
                Some(true) => 'Y',
                Some(false) => '-',
                None => panic!("no cell {client} -> {server}"),
            })
            .collect();
        actual.push(row);
    }
    assert_eq!(
        actual, rows,
        "{protocol}/{port}, rows are clients of {pods:?}"
    );
}

fn pod(namespace: &str, name: &str, labels: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}\nspec:\n  containers: [{{name: c, image: i{extra}}}]\n---\n"
    )
}

fn namespace(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n---\n"
    )
}

#[test]
fn database_only_from_the_api_tier_on_3306() {
    let pods = [
        pod("default", "web", "role: web", ""),
        pod("default", "api", "role: api", ""),
        pod(
            "default",
            "db",
            "role: db",
            ", ports: [{containerPort: 3306}]",
        ),
    ]
    .concat();
    let dir = ManifestDir::new(
        "db",
        &[
            ("pods.yaml", &pods),
            (
                "db-policy.yaml",
                r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-policy, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: api}}}]
    ports: [{protocol: TCP, port: 3306}]
"#,
            ),
        ],
    );
    let pods = ["default/api", "default/db", "default/web"];
    assert_matrix(&dir, Protocol::Tcp, 3306, &pods, &["YYY", "YYY", "Y-Y"]);
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["Y-Y", "YYY", "Y-Y"]);
    assert_matrix(&dir, Protocol::Udp, 3306, &pods, &["Y-Y", "YYY", "Y-Y"]);
}

#[test]
fn payroll_and_internal() {
    let pods = [
        pod("default", "internal", "name: internal", ""),
        pod(
            "default",
            "payroll",
            "name: payroll",
            ", ports: [{containerPort: 8080}]",
        ),
        pod(
            "default",
            "mysql",
            "name: mysql",
            ", ports: [{containerPort: 3306}]",
        ),
        pod("default", "other", "name: other", ""),
    ]
    .concat();
    let dir = ManifestDir::new(
        "payroll",
        &[
            ("pods.yaml", &pods),
            (
                "policies.yaml",
                r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payroll-policy, namespace: default}
spec:
  podSelector: {matchLabels: {name: payroll}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {name: internal}}}]
    ports: [{protocol: TCP, port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: internal-policy, namespace: default}
spec:
  podSelector: {matchLabels: {name: internal}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {name: payroll}}}]
    ports: [{protocol: TCP, port: 8080}]
  - to: [{podSelector: {matchLabels: {name: mysql}}}]
    ports: [{protocol: TCP, port: 3306}]
"#,
            ),
        ],
    );
    let pods = [
        "default/internal",
        "default/mysql",
        "default/other",
        "default/payroll",
    ];
    assert_matrix(
        &dir,
        Protocol::Tcp,
        8080,
        &pods,
        &["Y--Y", "YYY-", "YYY-", "YYYY"],
    );
    assert_matrix(
        &dir,
        Protocol::Tcp,
        3306,
        &pods,
        &["YY--", "YYY-", "YYY-", "YYYY"],
    );
}

#[test]
fn default_deny_then_allow_all() {
    let base = [
        namespace("np", ""),
        pod("np", "a", "app: a", ""),
        pod("np", "b", "app: b", ""),
        pod("outside", "c", "app: c", ""),
    ]
    .concat();
    let deny = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: np}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;
    let pods = ["np/a", "np/b", "outside/c"];
    let dir = ManifestDir::new("deny", &[("base.yaml", &base), ("deny.yaml", deny)]);
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["Y--", "-Y-", "--Y"]);
    drop(dir);

    let deny_ingress = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: np}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;
    let dir = ManifestDir::new(
        "deny-ingress",
        &[("base.yaml", &base), ("deny.yaml", deny_ingress)],
    );
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["Y-Y", "-YY", "--Y"]);
    drop(dir);

    let deny_egress = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: np}
spec: {podSelector: {}, policyTypes: [Egress]}
"#;
    let dir = ManifestDir::new(
        "deny-egress",
        &[("base.yaml", &base), ("deny.yaml", deny_egress)],
    );
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["Y--", "-Y-", "YYY"]);
    drop(dir);

    let allow_all = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: np}
spec: {podSelector: {}, ingress: [{}], policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-egress, namespace: np}
spec: {podSelector: {}, egress: [{}], policyTypes: [Egress]}
"#;
    let dir = ManifestDir::new(
        "allow-all",
        &[
            ("base.yaml", &base),
            ("deny.yaml", deny),
            ("allow.yaml", allow_all),
        ],
    );
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["YYY", "YYY", "YYY"]);
}

#[test]
fn dns_egress_only() {
    let objects = [
        namespace("kube-system", ""),
        namespace("app", ""),
        pod(
            "kube-system",
            "coredns",
            "k8s-app: kube-dns",
            ", ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]",
        ),
        pod("app", "front", "app: front", ""),
        pod("app", "back", "app: back", ", ports: [{containerPort: 80}]"),
    ]
    .concat();
    let policies = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: app}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: app}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"#;
    let dir = ManifestDir::new(
        "dns",
        &[("objects.yaml", &objects), ("policies.yaml", policies)],
    );
    let pods = ["app/back", "app/front", "kube-system/coredns"];
    assert_matrix(&dir, Protocol::Udp, 53, &pods, &["Y-Y", "-YY", "YYY"]);
    assert_matrix(&dir, Protocol::Tcp, 53, &pods, &["Y-Y", "-YY", "YYY"]);
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["Y--", "-Y-", "YYY"]);
}

#[test]
fn cross_namespace_selectors_and_versus_or() {
    let objects = [
        namespace("alice", "user: alice"),
        namespace("bob", "user: bob"),
        namespace("db", ""),
        pod("alice", "client", "role: client", ""),
        pod("alice", "other", "role: other", ""),
        pod("bob", "client", "role: client", ""),
        pod("db", "client", "role: client", ""),
        pod("db", "server", "role: db", ""),
    ]
    .concat();
    let and = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: db}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {user: alice}}
      podSelector: {matchLabels: {role: client}}
"#;
    let pods = [
        "alice/client",
        "alice/other",
        "bob/client",
        "db/client",
        "db/server",
    ];
    let dir = ManifestDir::new("and", &[("objects.yaml", &objects), ("policy.yaml", and)]);
    assert_matrix(
        &dir,
        Protocol::Tcp,
        80,
        &pods,
        &["YYYYY", "YYYY-", "YYYY-", "YYYY-", "YYYYY"],
    );
    drop(dir);

    let or = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: db}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {user: alice}}
    - podSelector: {matchLabels: {role: client}}
"#;
    let dir = ManifestDir::new("or", &[("objects.yaml", &objects), ("policy.yaml", or)]);
    assert_matrix(
        &dir,
        Protocol::Tcp,
        80,
        &pods,
        &["YYYYY", "YYYYY", "YYYY-", "YYYYY", "YYYYY"],
    );
}

#[test]
fn ip_block_with_except_over_pod_addresses() {
    let objects = r#"
apiVersion: v1
kind: Pod
metadata: {name: inside, namespace: x}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 172.17.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: excepted, namespace: x}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 172.17.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-block, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}}]
    ports: [{port: 80}]
"#;
    let dir = ManifestDir::new("ipblock", &[("all.yaml", objects)]);
    let pods = ["x/excepted", "x/inside", "x/web"];
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["YY-", "YYY", "YYY"]);
    assert_matrix(&dir, Protocol::Tcp, 81, &pods, &["YY-", "YY-", "YYY"]);
}

#[test]
fn end_port_range_egress() {
    let objects = r#"
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {role: db}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.2.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: sink, namespace: default}
spec: {nodeName: node-2, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: default}
spec: {nodeName: node-2, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: multi-port-egress, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 32000, endPort: 32768}]
"#;
    let dir = ManifestDir::new("endport", &[("all.yaml", objects)]);
    let pods = ["default/db", "default/far", "default/sink"];
    for port in [32000, 32500, 32768] {
        assert_matrix(&dir, Protocol::Tcp, port, &pods, &["Y-Y", "YYY", "YYY"]);
    }
    for port in [31999, 32769] {
        assert_matrix(&dir, Protocol::Tcp, port, &pods, &["Y--", "YYY", "YYY"]);
    }
}

#[test]
fn frontend_only_demo_with_reasons() {
    let objects = [
        pod(
            "np-demo",
            "web",
            "app: web, tier: backend",
            ", ports: [{containerPort: 80}]",
        ),
        pod("np-demo", "frontend", "app: frontend", ""),
        pod("np-demo", "other", "app: other", ""),
    ]
    .concat();
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: np-demo}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{protocol: TCP, port: 80}]
"#;
    let dir = ManifestDir::new(
        "demo",
        &[("objects.yaml", &objects), ("policy.yaml", policy)],
    );
    let pods = ["np-demo/frontend", "np-demo/other", "np-demo/web"];
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["YYY", "YY-", "YYY"]);

    let (text, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("np-demo/frontend", "np-demo/web")),
        OutputFormat::Table,
    );
    assert!(
        text.starts_with("np-demo/frontend -> np-demo/web TCP/80: ALLOWED\n"),
        "{text}"
    );
    assert!(text.contains("not isolated"), "{text}");
    assert!(
        text.contains(
            "isolated by np-demo/allow-frontend; allowed by np-demo/allow-frontend, ingress rule 0"
        ),
        "{text}"
    );

    let (text, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("np-demo/other", "np-demo/web")),
        OutputFormat::Table,
    );
    assert!(
        text.starts_with("np-demo/other -> np-demo/web TCP/80: DENIED\n"),
        "{text}"
    );
    assert!(text.contains("denied: no rule allows it"), "{text}");

    let (text, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("np-demo/web", "np-demo/web")),
        OutputFormat::Table,
    );
    assert!(
        text.contains("ALLOWED") && text.contains("always reaches itself"),
        "{text}"
    );

    let (json, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("np-demo/other", "np-demo/web")),
        OutputFormat::Json,
    );
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["allowed"], false);
    assert_eq!(json["ingress"]["isolated_by"][0], "np-demo/allow-frontend");
    assert_eq!(json["egress"]["allowed"], true);

    let (table, _) = explain(&dir, Protocol::Tcp, 80, None, OutputFormat::Table);
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("np-demo/")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[1].contains("np-demo/other") && rows[1].trim_end().ends_with("Y Y -"),
        "{table}"
    );
}

#[test]
fn host_network_pods_are_rows_and_columns_that_only_the_other_end_decides() {
    // node-2 is described (an infra node at 192.168.0.2); node-1 and node-3 are not, so they get
    // the rule's addresses (172.31.0.1 and 172.31.0.3) and no labels.
    let placed = |namespace: &str, name: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec: {{{spec}, containers: [{{name: c, image: i}}]}}\n---\n"
        )
    };
    let objects = [
        namespace("a", "team: a"),
        placed("a", "web", "nodeName: node-1"),
        placed("a", "client", "nodeName: node-2"),
        placed(
            "kube-system",
            "agent",
            "nodeName: node-2, hostNetwork: true",
        ),
        placed(
            "kube-system",
            "probe",
            "nodeName: node-3, hostNetwork: true",
        ),
    ]
    .concat();
    let nodes = r#"
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {role: infra}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}, {type: Hostname, address: node-2}]}
"#;
    let policies = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}, {ipBlock: {cidr: 192.168.0.2/32}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-deny-all, namespace: a}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: infra-nodes}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  egress:
  - {name: to-infra, action: Accept, to: [{nodes: {matchLabels: {role: infra}}}]}
  - {name: no-nodes, action: Deny, to: [{nodes: {}}]}
"#;
    let dir = ManifestDir::new(
        "host-network",
        &[
            ("objects.yaml", &objects),
            ("nodes.yaml", nodes),
            ("policies.yaml", policies),
        ],
    );
    let pods = [
        "a/client",
        "a/web",
        "kube-system/agent",
        "kube-system/probe",
    ];
    assert_matrix(
        &dir,
        Protocol::Tcp,
        80,
        &pods,
        &["YYY-", "-YY-", "YYYY", "--YY"],
    );

    let (text, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("kube-system/agent", "a/client")),
        OutputFormat::Table,
    );
    assert!(
        text.starts_with("kube-system/agent -> a/client TCP/80: ALLOWED\n")
            && text.contains("kube-system/agent egress: a hostNetwork pod, no programs of its own")
            && text.contains(
                "a/client ingress (from 192.168.0.2): isolated by a/client-deny-all; allowed: \
                 NetworkPolicy exempts traffic between a pod and its own node"
            ),
        "{text}"
    );

    let (json, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("a/client", "kube-system/agent")),
        OutputFormat::Json,
    );
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["allowed"], true, "{json}");
    assert_eq!(json["egress"]["own_node"], true, "{json}");
    assert_eq!(json["egress"]["tier"], "Admin", "{json}");
    assert_eq!(json["egress"]["peer"], "192.168.0.2", "{json}");
    assert_eq!(json["ingress"], Value::Null, "{json}");

    let (text, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("a/web", "kube-system/probe")),
        OutputFormat::Table,
    );
    assert!(
        text.contains(
            "a/web egress (to 172.31.0.3): denied by Admin infra-nodes, egress rule \"no-nodes\""
        ),
        "{text}"
    );
}

#[test]
fn a_pod_through_its_own_service_is_decided_by_cluster_network_policy_alone() {
    // x keeps its own pods out of x with an Admin Deny, as upstream's hairpin conformance test
    // does, and both namespaces isolate their ingress with no rule.
    let objects = [
        namespace("x", "team: x"),
        namespace("y", "team: y"),
        pod("x", "a", "app: a", ""),
        pod("x", "b", "app: b", ""),
        pod("y", "c", "app: c", ""),
    ]
    .concat();
    let policies = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: x-keeps-out-x}
spec:
  tier: Admin
  priority: 15
  subject: {namespaces: {matchLabels: {team: x}}}
  ingress:
  - {name: no-x, action: Deny, from: [{namespaces: {matchLabels: {team: x}}}]}
"#;
    let dir = ManifestDir::new(
        "own-service",
        &[("objects.yaml", &objects), ("policies.yaml", policies)],
    );
    let pods = ["x/a", "x/b", "y/c"];
    assert_matrix(&dir, Protocol::Tcp, 80, &pods, &["Y--", "-Y-", "--Y"]);
    assert_matrix_via(
        &dir,
        Protocol::Tcp,
        80,
        Via::Service,
        &pods,
        &["---", "---", "--Y"],
    );

    let (text, _) = explain_via(
        &dir,
        Protocol::Tcp,
        80,
        Via::Service,
        Some(("x/a", "x/a")),
        OutputFormat::Table,
    );
    assert!(
        text.starts_with("x/a -> x/a TCP/80 via service: DENIED\n")
            && text.contains("x/a ingress (from 10.")
            && text.contains("denied by Admin x-keeps-out-x, ingress rule \"no-x\""),
        "{text}"
    );
    let (text, _) = explain_via(
        &dir,
        Protocol::Tcp,
        80,
        Via::Service,
        Some(("y/c", "y/c")),
        OutputFormat::Table,
    );
    assert!(
        text.starts_with("y/c -> y/c TCP/80 via service: ALLOWED\n")
            && text.contains(
                "isolated by y/deny-all; allowed: NetworkPolicy exempts a pod reaching itself \
                 through a Service"
            ),
        "{text}"
    );
    let (json, _) = explain(
        &dir,
        Protocol::Tcp,
        80,
        Some(("x/a", "x/a")),
        OutputFormat::Json,
    );
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["allowed"], true, "{json}");
    assert_eq!(json["via"], "pod", "{json}");
    assert_eq!(json["ingress"], Value::Null, "{json}");
}

#[test]
fn unknown_pod_and_half_pair_are_errors() {
    let dir = ManifestDir::new("errors", &[("pod.yaml", &pod("a", "b", "x: y", ""))]);
    let mut options = ExplainOptions {
        paths: vec![dir.0.clone()],
        port: 80,
        protocol: Protocol::Tcp,
        via: Via::Pod,
        from: Some("a/b".to_owned()),
        to: Some("a/missing".to_owned()),
        output: OutputFormat::Table,
    };
    let error = run(&options, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(error.to_string().contains("a/missing"), "{error}");
    options.to = None;
    let error = run(&options, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(error.to_string().contains("--from and --to"), "{error}");
}
