//! ClusterNetworkPolicy semantics, table-driven: each case loads a small cluster, its
//! ClusterNetworkPolicies and NetworkPolicies, and asserts connection verdicts both through the
//! compiled node states (looked up the way the kernel does) and through the reference
//! evaluator, which reads the tiers rule by rule (Admin, NetworkPolicy, Baseline, allow); and
//! which rule decided.

use std::{net::IpAddr, path::Path};

use policy_common::verdict::Direction;
use policy_core::{
    explain::Cluster,
    manifest::{Loaded, load_text},
    policy::{
        cluster::Action,
        model::{Pod, Snapshot},
        spec::{Decider, Probe, Route, decide},
    },
};

/// Namespaces `vault` (sensitivity=high), `shop` (team=a), `dev` (team=b), `ops` (team=ops);
/// pods on two nodes, `ops/agent` on node-2's network; node-1 a worker, node-2 infra.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: vault, labels: {sensitivity: high}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {team: ops}}
---
apiVersion: v1
kind: Pod
metadata: {name: secrets, namespace: vault, labels: {app: secrets}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: https, containerPort: 443}, {name: metrics, containerPort: 9090}]
status: {podIPs: [{ip: 10.0.1.10}, {ip: "fd00::1:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 80}
    - {name: dns, containerPort: 53, protocol: UDP}
    - {name: sig, containerPort: 9003, protocol: SCTP}
status: {podIPs: [{ip: 10.0.2.10}, {ip: "fd00::2:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  nodeName: node-2
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}, {name: grpc, containerPort: 9000}]
status: {podIPs: [{ip: 10.0.2.11}, {ip: "fd00::2:11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: dev, labels: {app: tool}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.3.10}, {ip: "fd00::3:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{name: http, containerPort: 8000}]}]
status: {podIP: 10.0.3.11}
---
apiVersion: v1
kind: Pod
metadata: {name: monitor, namespace: ops, labels: {app: monitor}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.4.10}, {ip: "fd00::4:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: ops, labels: {app: agent}}
spec: {nodeName: node-2, hostNetwork: true, containers: [{name: c}]}
status: {podIPs: [{ip: 192.168.0.2}, {ip: "fd00:ffff::2"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/os: linux, role: worker}}
status:
  addresses:
  - {type: InternalIP, address: 192.168.0.1}
  - {type: ExternalIP, address: 203.0.113.1}
  - {type: Hostname, address: node-1}
---
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {kubernetes.io/os: linux, role: infra}}
status:
  addresses:
  - {type: InternalIP, address: 192.168.0.2}
  - {type: InternalIP, address: "fd00:ffff::2"}
"#;

/// An address outside the cluster.
const OUTSIDE: &str = "198.51.100.7";

#[derive(Clone, Copy, Debug)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmp6,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
            Proto::Icmp => 1,
            Proto::Icmp6 => 58,
        }
    }
}

use Proto::{Icmp, Icmp6, Sctp, Tcp, Udp};

/// One expected verdict: `from` and `to` are `ns/pod` (`:6` for its IPv6 address) or a bare IP
/// address, and `to` may start with `svc:` for a connection through a Service that translates
/// to that pod.
type Check = (&'static str, &'static str, Proto, u16, bool);

struct Case {
    name: &'static str,
    /// Manifests of ClusterNetworkPolicies and NetworkPolicies.
    policies: &'static [&'static str],
    checks: &'static [Check],
}

/// Denies everything from other namespaces into `vault` (Admin, priority 10).
const ADMIN_GUARD_VAULT: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard-vault}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {sensitivity: high}}}
  ingress:
  - name: deny-other-namespaces
    action: Deny
    from: [{namespaces: {matchExpressions: [{key: sensitivity, operator: DoesNotExist}]}}]
"#;

/// A namespace owner's allow-all ingress NetworkPolicy in `vault`.
const NP_VAULT_ALLOW_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: vault}
spec: {podSelector: {}, ingress: [{}]}
"#;

/// A NetworkPolicy isolating `shop/api` for ingress, admitting only `shop/web`.
const NP_API_FROM_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;

/// Baseline: every pod denies ingress from `dev` and `ops` (priority 100).
const BASELINE_DENY_DEV_AND_OPS: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-dev-and-ops}
spec:
  tier: Baseline
  priority: 100
  subject: {namespaces: {}}
  ingress:
  - name: not-from-dev-or-ops
    action: Deny
    from: [{namespaces: {matchExpressions: [{key: team, operator: In, values: [b, ops]}]}}]
"#;

macro_rules! cases {
    ($($name:literal: [$($policy:expr),* $(,)?] => $checks:expr;)*) => {
        &[$(Case { name: $name, policies: &[$($policy),*], checks: $checks }),*]
    };
}

const CASES: &[Case] = cases! {
    "no cluster policy: everything is allowed": [] => &[
        ("shop/web", "vault/secrets", Tcp, 443, true),
        ("dev/tool", "shop/api", Udp, 53, true),
    ];
    "admin deny on ingress from other namespaces": [ADMIN_GUARD_VAULT] => &[
        ("shop/web", "vault/secrets", Tcp, 443, false),
        ("dev/tool", "vault/secrets", Udp, 53, false),
        ("shop/web:6", "vault/secrets:6", Tcp, 443, false),
        ("vault/secrets", "shop/web", Tcp, 80, true),
    ];
    "admin deny beats a NetworkPolicy allow": [ADMIN_GUARD_VAULT, NP_VAULT_ALLOW_ALL] => &[
        ("shop/web", "vault/secrets", Tcp, 443, false),
        ("ops/monitor", "vault/secrets", Tcp, 9090, false),
    ];
    "admin deny does not touch traffic from outside the cluster": [ADMIN_GUARD_VAULT] => &[
        (OUTSIDE, "vault/secrets", Tcp, 443, true),
        ("shop/web", "vault/secrets", Tcp, 443, false),
        ("192.168.0.2", "vault/secrets", Tcp, 443, true),
    ];
    "ingress rules leave egress alone": [ADMIN_GUARD_VAULT] => &[
        ("vault/secrets", "dev/tool", Tcp, 22, true),
        ("dev/tool", "vault/secrets", Tcp, 22, false),
        ("vault/secrets", OUTSIDE, Tcp, 443, true),
    ];
    "admin accept beats NetworkPolicy isolation": [NP_API_FROM_WEB, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: monitoring}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - {name: scrape, action: Accept, from: [{namespaces: {matchLabels: {team: ops}}}], protocols: [{tcp: {destinationPort: {number: 8080}}}]}
"#] => &[
        ("ops/monitor", "shop/api", Tcp, 8080, true),
        ("ops/monitor", "shop/api", Tcp, 9000, false),
        ("dev/tool", "shop/api", Tcp, 8080, false),
        ("shop/web", "shop/api", Tcp, 9000, true),
    ];
    "admin accept skips the baseline tier": [BASELINE_DENY_DEV_AND_OPS, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ops-everywhere}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {matchLabels: {team: ops}}}]}]
"#] => &[
        ("ops/monitor", "shop/api", Tcp, 8080, true),
        ("dev/tool", "shop/api", Tcp, 8080, false),
    ];
    "admin accept of egress still needs the destination's ingress": [NP_API_FROM_WEB, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tools-out}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {team: b}}}
  egress: [{action: Accept, to: [{namespaces: {}}]}]
"#] => &[
        ("dev/tool", "shop/api", Tcp, 8080, false),
        ("dev/tool", "shop/web", Tcp, 80, true),
    ];
    "pass hands the decision to NetworkPolicy": [ADMIN_GUARD_VAULT, NP_VAULT_ALLOW_ALL, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: vault-trusts-ops}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {sensitivity: high}}}
  ingress: [{action: Pass, from: [{namespaces: {matchLabels: {team: ops}}}]}]
"#] => &[
        ("ops/monitor", "vault/secrets", Tcp, 443, true),
        ("shop/web", "vault/secrets", Tcp, 443, false),
    ];
    "pass without NetworkPolicy falls to the baseline": [BASELINE_DENY_DEV_AND_OPS, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pass-shop}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Pass, from: [{namespaces: {}}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-all-into-shop}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"#] => &[
        ("dev/tool", "shop/api", Tcp, 8080, false),
        ("shop/web", "shop/api", Tcp, 8080, true),
    ];
    "pass skips later policies of the admin tier": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: first-pass}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  egress: [{action: Pass, to: [{networks: ["198.51.100.0/24"]}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: then-deny}
spec:
  tier: Admin
  priority: 4
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["0.0.0.0/0"]}]}]
"#] => &[
        ("shop/web", OUTSIDE, Tcp, 443, true),
        ("shop/web", "203.0.113.9", Tcp, 443, false),
    ];
    "baseline pass means allowed": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - {action: Pass, from: [{namespaces: {matchLabels: {team: ops}}}]}
  - {action: Deny, from: [{namespaces: {}}]}
"#] => &[
        ("ops/monitor", "shop/web", Tcp, 80, true),
        ("dev/tool", "shop/web", Tcp, 80, false),
    ];
    "baseline pass skips later baseline policies": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: b-pass}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Pass, from: [{pods: {podSelector: {matchLabels: {app: tool}}}}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: b-deny}
spec:
  tier: Baseline
  priority: 2
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/web", "shop/web", Tcp, 80, false),
        ("dev/tool", "vault/secrets", Tcp, 443, false),
    ];
    "baseline applies only where no NetworkPolicy isolates": [BASELINE_DENY_DEV_AND_OPS, NP_API_FROM_WEB] => &[
        ("dev/tool", "shop/web", Tcp, 80, false),
        ("shop/web", "shop/api", Tcp, 8080, true),
        ("ops/monitor", "shop/api", Tcp, 8080, false),
        ("shop/api", "shop/web", Tcp, 80, true),
    ];
    "a NetworkPolicy allow overrides a baseline deny": [BASELINE_DENY_DEV_AND_OPS, r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-dev, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]
"#] => &[
        ("dev/tool", "shop/api", Tcp, 8080, true),
        ("dev/tool", "shop/web", Tcp, 80, false),
    ];
    "baseline egress isolation applies per direction": [NP_API_FROM_WEB, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-egress-outside}
spec:
  tier: Baseline
  priority: 5
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["0.0.0.0/0", "::/0"]}]}]
"#] => &[
        ("shop/api", OUTSIDE, Tcp, 443, false),
        ("shop/api", "dev/tool", Tcp, 80, false),
        ("shop/api:6", "dev/tool:6", Tcp, 80, false),
    ];
    "lower priority number is read first": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-50}
spec:
  tier: Admin
  priority: 50
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: accept-40}
spec:
  tier: Admin
  priority: 40
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Accept, from: [{pods: {namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: tool}}}}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/web", "shop/web", Tcp, 80, false),
    ];
    "priority decides before written order": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: aaa-late}
spec:
  tier: Admin
  priority: 900
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{networks: ["198.51.100.0/24"]}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: zzz-early}
spec:
  tier: Admin
  priority: 0
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["198.51.100.7/32"]}]}]
"#] => &[
        ("shop/web", OUTSIDE, Tcp, 443, false),
        ("shop/web", "198.51.100.8", Tcp, 443, true),
    ];
    "equal priorities are read by name": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: b-deny}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["198.51.100.0/24"]}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: a-accept}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{networks: ["198.51.100.7/32"]}]}]
"#] => &[
        ("shop/web", OUTSIDE, Tcp, 443, true),
        ("shop/web", "198.51.100.9", Tcp, 443, false),
    ];
    "equal priorities with other subjects do not bleed": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: shop-deny}
spec:
  tier: Admin
  priority: 15
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: vault-deny}
spec:
  tier: Admin
  priority: 15
  subject: {namespaces: {matchLabels: {sensitivity: high}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: ops}}}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, false),
        ("ops/monitor", "shop/web", Tcp, 80, true),
        ("ops/monitor", "vault/secrets", Tcp, 443, false),
        ("dev/tool", "vault/secrets", Tcp, 443, true),
    ];
    "rules are read in written order: accept first": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: order}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {action: Accept, from: [{namespaces: {matchLabels: {team: b}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
  - {action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/tool", "shop/web", Tcp, 81, false),
    ];
    "rules are read in written order: deny first": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: order}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}
  - {action: Accept, from: [{namespaces: {matchLabels: {team: b}}}]}
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, false),
        ("ops/monitor", "shop/web", Tcp, 80, true),
    ];
    "rules are read in written order: pass first": [NP_API_FROM_WEB, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: order}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {action: Pass, from: [{namespaces: {matchLabels: {team: a}}}]}
  - {action: Deny, from: [{namespaces: {}}]}
"#] => &[
        ("shop/web", "shop/api", Tcp, 8080, true),
        ("shop/web", "shop/api", Udp, 8080, true),
        ("dev/tool", "shop/api", Tcp, 8080, false),
    ];
    "a port-specific deny before a general accept": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ports}
spec:
  tier: Admin
  priority: 6
  subject: {pods: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: api}}}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 9000}}}]}
  - {action: Accept, from: [{namespaces: {}}]}
  - {action: Deny, from: [{namespaces: {}}]}
"#] => &[
        ("shop/web", "shop/api", Tcp, 9000, false),
        ("shop/web", "shop/api", Tcp, 8080, true),
        ("shop/web", "shop/api", Udp, 9000, true),
    ];
    "unmatched ports are not denied: no implicit isolation": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: only-443}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {sensitivity: high}}}
  ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 443}}}]}]
"#] => &[
        ("shop/web", "vault/secrets", Tcp, 443, true),
        ("shop/web", "vault/secrets", Tcp, 9090, true),
    ];
    "pods subject selects single pods": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: api-only}
spec:
  tier: Admin
  priority: 6
  subject: {pods: {podSelector: {matchLabels: {app: api}}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]
"#] => &[
        ("dev/tool", "shop/api", Tcp, 8080, false),
        ("dev/tool", "shop/web", Tcp, 80, true),
    ];
    "pods peer without namespaceSelector matches every namespace": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-web}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: ops}}}
  ingress: [{action: Deny, from: [{pods: {podSelector: {matchLabels: {app: web}}}}]}]
"#] => &[
        ("shop/web", "ops/monitor", Tcp, 80, false),
        ("dev/web", "ops/monitor", Tcp, 80, false),
        ("shop/api", "ops/monitor", Tcp, 80, true),
    ];
    "pods peer with both selectors": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-dev-web}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: ops}}}
  ingress: [{action: Deny, from: [{pods: {namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: web}}}}]}]
"#] => &[
        ("dev/web", "ops/monitor", Tcp, 80, false),
        ("shop/web", "ops/monitor", Tcp, 80, true),
        ("dev/tool", "ops/monitor", Tcp, 80, true),
    ];
    "namespace selector by name label": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: by-name}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: vault}}}
  egress: [{action: Deny, to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: dev}}}]}]
"#] => &[
        ("vault/secrets", "dev/tool", Tcp, 80, false),
        ("vault/secrets", "shop/web", Tcp, 80, true),
    ];
    "egress deny to namespaces": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: dev-stays}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: b}}}
  egress: [{action: Deny, to: [{namespaces: {matchExpressions: [{key: team, operator: NotIn, values: [b]}]}}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, false),
        ("dev/tool", "vault/secrets", Tcp, 443, false),
        ("dev/tool", "dev/web", Tcp, 8000, true),
        ("dev/tool", OUTSIDE, Tcp, 443, true),
    ];
    "egress to pods peer": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-api}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}]}]
"#] => &[
        ("dev/tool", "shop/api", Tcp, 8080, false),
        ("shop/web:6", "shop/api:6", Tcp, 8080, false),
        ("dev/tool", "shop/web", Tcp, 80, true),
    ];
    "networks match pod addresses too": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: cidr}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: b}}}
  egress: [{action: Deny, to: [{networks: ["10.0.2.0/24"]}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, false),
        ("dev/tool", "shop/web:6", Tcp, 80, true),
        ("dev/tool", "vault/secrets", Tcp, 443, true),
    ];
    "networks of both families in one list": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-outside}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  egress:
  - {action: Pass, to: [{namespaces: {}}]}
  - {action: Deny, to: [{networks: ["0.0.0.0/0", "::/0"]}]}
"#] => &[
        ("shop/web", OUTSIDE, Tcp, 443, false),
        ("shop/web:6", "2001:db8::1", Tcp, 443, false),
        ("shop/web", "shop/api", Tcp, 8080, true),
        ("shop/web:6", "shop/api:6", Tcp, 8080, true),
    ];
    "a networks rule without protocols matches ICMP": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-ping-out}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["198.51.100.0/24", "2001:db8::/32"]}]}]
"#] => &[
        ("shop/web", OUTSIDE, Icmp, 0, false),
        ("shop/web:6", "2001:db8::1", Icmp6, 0, false),
        ("shop/web", "203.0.113.9", Icmp, 0, true),
    ];
    "a rule with protocols does not match ICMP": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tcp-only}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["198.51.100.0/24"]}], protocols: [{tcp: {destinationPort: {range: {start: 1, end: 65535}}}}]}]
"#] => &[
        ("shop/web", OUTSIDE, Icmp, 0, true),
        ("shop/web", OUTSIDE, Tcp, 1, false),
        ("shop/web", OUTSIDE, Udp, 53, true),
    ];
    "a deny without protocols matches every protocol": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: all}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {sensitivity: high}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]
"#] => &[
        ("dev/tool", "vault/secrets", Tcp, 443, false),
        ("dev/tool", "vault/secrets", Udp, 53, false),
        ("dev/tool", "vault/secrets", Sctp, 9003, false),
        ("dev/tool", "vault/secrets", Icmp, 0, false),
    ];
    "a port range includes both ends": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: range}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 8080}}}}]}
  - {action: Deny, from: [{namespaces: {}}]}
"#] => &[
        ("dev/tool", "shop/api", Tcp, 80, true),
        ("dev/tool", "shop/api", Tcp, 8080, true),
        ("dev/tool", "shop/api", Tcp, 79, false),
        ("dev/tool", "shop/api", Tcp, 8081, false),
        ("dev/tool", "shop/api", Udp, 80, false),
    ];
    "udp and sctp ranges": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: range}
spec:
  tier: Baseline
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {action: Accept, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {range: {start: 53, end: 5353}}}}, {sctp: {destinationPort: {range: {start: 9003, end: 9005}}}}]}
  - {action: Deny, from: [{namespaces: {}}]}
"#] => &[
        ("dev/tool", "shop/web", Udp, 5353, true),
        ("dev/tool", "shop/web", Udp, 5354, false),
        ("dev/tool", "shop/web", Sctp, 9005, true),
        ("dev/tool", "shop/web", Sctp, 9002, false),
        ("dev/tool", "shop/web", Tcp, 53, false),
    ];
    "one protocol item per protocol, read as any of them": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: gress}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  egress:
  - {action: Deny, to: [{namespaces: {matchLabels: {team: b}}}], protocols: [{tcp: {destinationPort: {number: 8000}}}, {udp: {destinationPort: {number: 53}}}, {sctp: {destinationPort: {number: 9003}}}]}
"#] => &[
        ("shop/web", "dev/web", Tcp, 8000, false),
        ("shop/web", "dev/web", Udp, 53, false),
        ("shop/web", "dev/web", Sctp, 9003, false),
        ("shop/web", "dev/web", Tcp, 53, true),
    ];
    "ingress named port resolves on the subject": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: named}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: http}]}
  - {action: Deny, from: [{namespaces: {}}]}
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/tool", "shop/api", Tcp, 8080, true),
        ("dev/tool", "shop/api", Tcp, 80, false),
        ("dev/tool", "shop/web", Udp, 80, false),
    ];
    "a named port carries its protocol": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: named}
spec:
  tier: Admin
  priority: 6
  subject: {pods: {podSelector: {matchLabels: {app: web}}, namespaceSelector: {matchLabels: {team: a}}}}
  ingress:
  - {action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: dns}, {destinationNamedPort: sig}]}
  - {action: Deny, from: [{namespaces: {}}]}
"#] => &[
        ("dev/tool", "shop/web", Udp, 53, true),
        ("dev/tool", "shop/web", Tcp, 53, false),
        ("dev/tool", "shop/web", Sctp, 9003, true),
    ];
    "egress named port resolves on each destination pod": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: named}
spec:
  tier: Baseline
  priority: 6
  subject: {namespaces: {matchLabels: {team: b}}}
  egress:
  - {action: Accept, to: [{namespaces: {}}], protocols: [{destinationNamedPort: http}]}
  - {action: Deny, to: [{namespaces: {}}]}
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/tool", "shop/api", Tcp, 8080, true),
        ("dev/tool", "shop/api", Tcp, 80, false),
        ("dev/tool", "dev/web", Tcp, 8000, true),
        ("dev/tool", "vault/secrets", Tcp, 443, false),
    ];
    "a named port no pod declares matches nothing": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: named}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: b}}}
  egress:
  - {action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: nope}]}
  - {action: Deny, to: [{namespaces: {matchLabels: {sensitivity: high}}}]}
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/tool", "dev/web", Tcp, 8000, true),
        ("dev/tool", "vault/secrets", Tcp, 443, false),
    ];
    "nodes peer matches every address of the selected nodes": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-infra}
spec:
  tier: Admin
  priority: 75
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]}]
"#] => &[
        ("shop/web", "192.168.0.2", Tcp, 10250, false),
        ("shop/web:6", "fd00:ffff::2", Tcp, 10250, false),
        ("shop/web", "192.168.0.1", Tcp, 10250, true),
    ];
    "nodes peers reach host-network pods": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: nodes}
spec:
  tier: Admin
  priority: 75
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}], protocols: [{tcp: {destinationPort: {number: 36363}}}]}
  - {action: Pass, to: [{nodes: {}}], protocols: [{udp: {destinationPort: {number: 53}}}]}
  - {action: Deny, to: [{nodes: {}}, {networks: ["0.0.0.0/0", "::/0"]}]}
"#] => &[
        ("shop/web", "ops/agent", Tcp, 36363, true),
        ("shop/web", "ops/agent", Udp, 53, true),
        ("shop/web", "ops/agent", Tcp, 36364, false),
        ("shop/web", "ops/agent", Sctp, 9003, false),
        ("shop/web", "203.0.113.1", Tcp, 443, false),
    ];
    "host-network pods are never subjects": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ops}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: ops}}}
  egress: [{action: Deny, to: [{namespaces: {}}]}]
"#] => &[
        ("ops/agent", "shop/web", Tcp, 80, true),
        ("ops/monitor", "shop/web", Tcp, 80, false),
    ];
    "host-network pods are not namespace peers": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: from-ops}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: ops}}}]}]
"#] => &[
        ("ops/agent", "shop/web", Tcp, 80, true),
        ("ops/monitor", "shop/web", Tcp, 80, false),
    ];
    "domain names match nothing yet": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: names}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{domainNames: ["*.example.com"]}]}
  - {action: Deny, to: [{networks: ["198.51.100.0/24"]}]}
"#] => &[
        ("shop/web", OUTSIDE, Tcp, 443, false),
        ("shop/web", "203.0.113.9", Tcp, 443, true),
    ];
    "a pod reaching its own address is not subject": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: self}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: a}}}]}]
"#] => &[
        ("shop/web", "shop/web", Tcp, 80, true),
        ("shop/web", "shop/api", Tcp, 8080, false),
    ];
    "a pod reaching itself through a Service is subject": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: hairpin}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: a}}}]}]
"#] => &[
        ("shop/web", "svc:shop/web", Tcp, 80, false),
        ("dev/web", "svc:dev/web", Tcp, 8000, true),
    ];
    "a baseline deny applies to hairpin traffic of unisolated pods": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: hairpin}
spec:
  tier: Baseline
  priority: 6
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{pods: {podSelector: {matchLabels: {app: web}}}}]}]
"#] => &[
        ("shop/web", "svc:shop/web", Tcp, 80, false),
        ("shop/web", "shop/web", Tcp, 80, true),
        ("shop/api", "shop/web", Tcp, 80, false),
    ];
    "NetworkPolicy lets an isolated pod reach itself through a Service after a pass": [NP_API_FROM_WEB, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pass}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  ingress: [{action: Pass, from: [{namespaces: {}}]}]
"#] => &[
        ("shop/api", "svc:shop/api", Tcp, 8080, true),
        ("dev/tool", "shop/api", Tcp, 8080, false),
    ];
    "through a Service, policies see the backend": [ADMIN_GUARD_VAULT] => &[
        ("shop/web", "svc:vault/secrets", Tcp, 443, false),
        ("vault/secrets", "svc:shop/web", Tcp, 80, true),
    ];
    "ipv6 connections are decided like ipv4": [ADMIN_GUARD_VAULT, BASELINE_DENY_DEV_AND_OPS] => &[
        ("shop/web:6", "vault/secrets:6", Tcp, 443, false),
        ("ops/monitor:6", "shop/web:6", Tcp, 80, false),
        ("shop/api:6", "shop/web:6", Tcp, 80, true),
    ];
    "admin tier egress and ingress in one policy": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: gress}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: b}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: a}}}]}]
  egress: [{action: Deny, to: [{namespaces: {matchLabels: {sensitivity: high}}}]}]
"#] => &[
        ("shop/web", "dev/tool", Tcp, 80, false),
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/tool", "vault/secrets", Tcp, 443, false),
        ("vault/secrets", "dev/tool", Tcp, 80, true),
    ];
    "both sides decide: egress accept meets ingress deny": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: out}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {team: b}}}
  egress: [{action: Accept, to: [{namespaces: {}}]}]
"#, ADMIN_GUARD_VAULT] => &[
        ("dev/tool", "vault/secrets", Tcp, 443, false),
        ("dev/tool", "shop/web", Tcp, 80, true),
    ];
    "a baseline accept does not open NetworkPolicy isolation": [NP_API_FROM_WEB, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: open}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {}}]}]
"#] => &[
        ("dev/tool", "shop/api", Tcp, 8080, false),
        ("dev/tool", "shop/web", Tcp, 80, true),
    ];
    "egress NetworkPolicy isolation makes egress baseline moot": [r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-dns, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{protocol: UDP, port: 53}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-dns}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 53}}}]}]
"#] => &[
        ("dev/tool", "shop/web", Udp, 53, true),
        ("shop/api", "shop/web", Udp, 53, false),
        ("dev/tool", "shop/web", Tcp, 80, false),
    ];
    "an ingress-only NetworkPolicy leaves egress to the baseline": [NP_API_FROM_WEB, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: egress}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{namespaces: {matchLabels: {team: b}}}]}]
"#] => &[
        ("shop/api", "dev/tool", Tcp, 80, false),
        ("shop/api", "vault/secrets", Tcp, 443, true),
    ];
    "the admin tier ignores priority of baseline": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: base-first}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {}}]}]
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-last}
spec:
  tier: Admin
  priority: 1000
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, false),
        ("shop/api", "shop/web", Tcp, 80, true),
    ];
    "matchExpressions in subjects and peers": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: expr}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}}
  ingress: [{action: Deny, from: [{pods: {namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}, podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, false),
        ("dev/web", "shop/api", Tcp, 8080, true),
        ("vault/secrets", "shop/web", Tcp, 80, true),
        ("ops/monitor", "dev/web", Tcp, 8000, false),
    ];
    "an empty namespaces selector covers every pod": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: all}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 22}}}]}]
"#] => &[
        ("shop/web", "dev/tool", Tcp, 22, false),
        ("vault/secrets", "ops/monitor", Tcp, 22, false),
        ("shop/web", OUTSIDE, Tcp, 22, true),
        ("shop/web", "dev/tool", Tcp, 23, true),
    ];
    "a cluster policy with no rules in a direction has no effect there": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: empty}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
"#, r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: one-way}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {matchLabels: {team: a}}}
  egress: [{action: Deny, to: [{namespaces: {matchLabels: {team: b}}}]}]
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("shop/web", "dev/tool", Tcp, 80, false),
    ];
    "an accept for networks after a deny for the same pods": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: cidr-order}
spec:
  tier: Baseline
  priority: 6
  subject: {namespaces: {matchLabels: {team: b}}}
  egress:
  - {action: Accept, to: [{networks: ["10.0.2.10/32", "fd00::2:10/128"]}]}
  - {action: Deny, to: [{networks: ["0.0.0.0/0", "::/0"]}]}
"#] => &[
        ("dev/tool", "shop/web", Tcp, 80, true),
        ("dev/tool", "shop/web:6", Tcp, 80, true),
        ("dev/tool", "shop/api", Tcp, 8080, false),
        ("dev/tool", "shop/api:6", Tcp, 8080, false),
    ];
    "traffic to the node address is decided by node and network rules": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-kubelet}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {matchLabels: {team: b}}}
  egress: [{action: Deny, to: [{networks: ["192.168.0.0/24"]}], protocols: [{tcp: {destinationPort: {number: 10250}}}]}]
"#] => &[
        ("dev/tool", "192.168.0.2", Tcp, 10250, false),
        ("dev/tool", "192.168.0.1", Tcp, 10250, false),
        ("dev/tool", "192.168.0.1", Tcp, 10255, true),
    ];
    "ingress from nodes is never matched by pod peers": [r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pods-only}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"#] => &[
        ("192.168.0.1", "shop/web", Tcp, 80, true),
        ("ops/agent", "shop/web", Tcp, 80, true),
        ("dev/tool", "shop/web", Tcp, 80, false),
    ];
};

enum End<'a> {
    Pod(&'a Pod, IpAddr),
    External(IpAddr),
}

impl End<'_> {
    fn ip(&self) -> IpAddr {
        match self {
            End::Pod(_, ip) | End::External(ip) => *ip,
        }
    }

    /// The pod whose programs decide this end: none for addresses outside the cluster and for
    /// host-network pods.
    fn endpoint(&self) -> Option<&Pod> {
        match self {
            End::Pod(pod, _) if !pod.host_network => Some(pod),
            _ => None,
        }
    }
}

fn end<'a>(snapshot: &'a Snapshot, text: &str) -> End<'a> {
    if let Ok(ip) = text.parse() {
        return End::External(ip);
    }
    let (name, v6) = match text.strip_suffix(":6") {
        Some(name) => (name, true),
        None => (text, false),
    };
    let pod = snapshot
        .pods
        .iter()
        .find(|pod| pod.pod_ref().to_string() == name)
        .unwrap_or_else(|| panic!("no pod {name}"));
    let ip = *pod
        .ips
        .iter()
        .find(|ip| ip.is_ipv6() == v6)
        .unwrap_or_else(|| panic!("{name} has no address of that family"));
    End::Pod(pod, ip)
}

fn load(policies: &[&str]) -> Snapshot {
    let mut loaded = Loaded::default();
    load_text(Path::new("cluster.yaml"), CLUSTER, &mut loaded);
    load_text(
        Path::new("policies.yaml"),
        &policies.join("\n---\n"),
        &mut loaded,
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.snapshot
}

/// What one side decides: through the compiled state of its node, and the reference.
fn side(cluster: &Cluster, pod: &Pod, direction: Direction, probe: Probe) -> (bool, bool) {
    let reference = decide(&cluster.snapshot, pod, direction, probe).allowed;
    if pod.ips.contains(&probe.peer) && probe.route == Route::Direct {
        return (true, reference);
    }
    let state = &cluster.states[pod.node.as_deref().unwrap()];
    let decision = state
        .decide(
            &pod.pod_ref(),
            direction,
            probe.peer,
            probe.protocol,
            probe.port,
        )
        .unwrap_or_else(|| panic!("{} is not an endpoint", pod.pod_ref()));
    (decision.allows_by(probe.route), reference)
}

/// Whether `ip` is an address of `pod`'s node.
fn own_node(snapshot: &Snapshot, pod: &Pod, ip: IpAddr) -> bool {
    snapshot
        .nodes
        .iter()
        .any(|node| Some(&node.name) == pod.node.as_ref() && node.addresses.contains(&ip))
}

/// Whether the connection is allowed, (compiled, reference): the client's egress and the
/// server's ingress.
fn verdict(cluster: &Cluster, from: &str, to: &str, proto: Proto, port: u16) -> (bool, bool) {
    let snapshot = &cluster.snapshot;
    let (to, through_service) = match to.strip_prefix("svc:") {
        Some(to) => (to, true),
        None => (to, false),
    };
    let (from, to) = (end(snapshot, from), end(snapshot, to));
    let hairpin = through_service && from.ip() == to.ip();
    let probe = |pod: &Pod, peer: IpAddr| Probe {
        peer,
        protocol: proto.number(),
        port,
        route: if hairpin || own_node(snapshot, pod, peer) {
            Route::Exempt
        } else {
            Route::Direct
        },
    };
    let mut allowed = (true, true);
    let sides = [
        (from.endpoint(), Direction::Egress, to.ip()),
        (to.endpoint(), Direction::Ingress, from.ip()),
    ];
    for (pod, direction, peer) in sides {
        if let Some(pod) = pod {
            let (compiled, reference) = side(cluster, pod, direction, probe(pod, peer));
            allowed = (allowed.0 && compiled, allowed.1 && reference);
        }
    }
    allowed
}

fn compile(snapshot: Snapshot) -> Cluster {
    Cluster::compile(snapshot).expect("compiles")
}

#[test]
fn tiers_table() {
    let mut failures = Vec::new();
    for case in CASES {
        let cluster = compile(load(case.policies));
        for &(from, to, proto, port, expected) in case.checks {
            let (compiled, reference) = verdict(&cluster, from, to, proto, port);
            if compiled != expected || reference != expected {
                failures.push(format!(
                    "{}: {from} -> {to} {proto:?}/{port}: expected {expected}, compiled \
                     {compiled}, reference {reference}",
                    case.name
                ));
            }
        }
    }
    assert!(CASES.len() >= 60, "only {} cases", CASES.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_case_has_a_distinct_name_and_checks_what_its_cluster_policies_decide() {
    let mut names: Vec<&str> = CASES.iter().map(|case| case.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len());
    // Every case must check something its cluster policies decide: a verdict that differs
    // without them or with Accept and Deny swapped, or an allowed edge next to a denied one.
    let mut vague = Vec::new();
    for case in CASES.iter().filter(|case| !case.policies.is_empty()) {
        let snapshot = load(case.policies);
        let without = compile(Snapshot {
            cluster_policies: Vec::new(),
            ..snapshot.clone()
        });
        let mut flipped = snapshot.clone();
        for rule in flipped
            .cluster_policies
            .iter_mut()
            .flat_map(|policy| policy.ingress.iter_mut().chain(policy.egress.iter_mut()))
        {
            rule.action = match rule.action {
                Action::Accept => Action::Deny,
                Action::Deny => Action::Accept,
                Action::Pass => Action::Pass,
            };
        }
        let cluster = compile(snapshot);
        let differs = [without, compile(flipped)].iter().any(|other| {
            case.checks.iter().any(|&(from, to, proto, port, _)| {
                verdict(&cluster, from, to, proto, port) != verdict(other, from, to, proto, port)
            })
        });
        let mixed =
            case.checks.iter().any(|check| check.4) && case.checks.iter().any(|check| !check.4);
        if !(differs || mixed) {
            vague.push(case.name);
        }
    }
    assert!(
        vague.is_empty(),
        "checks cannot tell the cluster policies apart: {vague:#?}"
    );
}

#[test]
fn the_deciding_rule_is_named_with_its_tier_and_policy() {
    let snapshot = load(&[
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard-vault}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {sensitivity: high}}}
  ingress:
  - {action: Pass, from: [{namespaces: {matchLabels: {team: ops}}}]}
  - {name: deny-other-namespaces, action: Deny, from: [{namespaces: {}}]}
"#,
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"#,
    ]);
    let secrets = match end(&snapshot, "vault/secrets") {
        End::Pod(pod, _) => pod,
        End::External(_) => unreachable!(),
    };
    let from = |text| Probe {
        peer: end(&snapshot, text).ip(),
        protocol: 6,
        port: 443,
        route: Route::Direct,
    };
    let denied = decide(&snapshot, secrets, Direction::Ingress, from("shop/web"));
    assert!(!denied.allowed);
    let Decider::Cluster(rule) = &denied.decider else {
        panic!("{denied:?}")
    };
    assert_eq!(
        rule.to_string(),
        "Admin guard-vault, ingress rule \"deny-other-namespaces\""
    );

    let passed = decide(&snapshot, secrets, Direction::Ingress, from("ops/monitor"));
    assert!(!passed.allowed);
    assert_eq!(
        passed
            .passed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["Admin guard-vault, ingress rule 0"]
    );
    let Decider::Cluster(rule) = &passed.decider else {
        panic!("{passed:?}")
    };
    assert_eq!(rule.to_string(), "Baseline baseline, ingress rule 0");

    let outside = decide(&snapshot, secrets, Direction::Ingress, from(OUTSIDE));
    assert_eq!((outside.allowed, outside.decider), (true, Decider::Default));
}
