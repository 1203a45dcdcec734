//! NetworkPolicy semantics, table-driven: each case loads a small cluster plus its policies and
//! asserts connection verdicts both through the compiled node states (looked up the way the
//! kernel does) and through the reference evaluator.

use std::{net::IpAddr, path::Path};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use policy_common::verdict::Direction;
use policy_core::{
    explain::Cluster,
    manifest::{Loaded, convert, load_text},
    policy::{model::Pod, spec::evaluate},
};

/// Namespaces `prod` (team=a, env=prod), `dev` (team=b), `other` (no labels); pods on two nodes.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web, tier: front}}
spec:
  nodeName: node-1
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]
status: {podIPs: [{ip: 10.0.1.10}, {ip: "fd00::1:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api, tier: back}}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: i
    ports:
    - {name: http, containerPort: 8080}
    - {name: metrics, containerPort: 9090}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {podIP: 10.0.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db, tier: back}}
spec:
  nodeName: node-2
  containers: [{name: c, image: i, ports: [{name: mysql, containerPort: 3306}]}]
status: {podIP: 10.0.1.12}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}}
spec:
  nodeName: node-2
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8000}]}]
status: {podIPs: [{ip: 10.0.2.10}, {ip: "fd00::2:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: dev}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.2.11}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client, env: x}}
spec: {nodeName: node-2, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.0.3.10}, {ip: "fd00::3:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: prod, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Succeeded, podIP: 10.0.1.20}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: prod, labels: {app: web}}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 192.168.0.1}
"#;

/// One expected verdict: `from` and `to` are `ns/pod` (optionally `:6` for the pod's IPv6
/// address) or a bare IP address outside the cluster.
type Check = (&'static str, &'static str, Proto, u16, bool);

#[derive(Clone, Copy, Debug)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
            Proto::Icmp => 1,
        }
    }
}

use Proto::{Icmp, Sctp, Tcp, Udp};

struct Case {
    name: &'static str,
    policies: &'static str,
    checks: &'static [Check],
}

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
}

fn end<'a>(cluster: &'a Cluster, text: &str) -> End<'a> {
    if let Ok(ip) = text.parse() {
        return End::External(ip);
    }
    let (name, v6) = match text.strip_suffix(":6") {
        Some(name) => (name, true),
        None => (text, false),
    };
    let pod = cluster
        .snapshot
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

/// The verdict (compiled, reference) for one side of the connection.
fn side(
    cluster: &Cluster,
    pod: &Pod,
    direction: Direction,
    peer: IpAddr,
    p: u8,
    port: u16,
) -> (bool, bool) {
    let state = &cluster.states[pod.node.as_deref().unwrap()];
    let compiled = state
        .decide(&pod.pod_ref(), direction, peer, p, port)
        .unwrap_or_else(|| panic!("{} is not an endpoint", pod.pod_ref()))
        .allows();
    let reference = evaluate(&cluster.snapshot, pod, direction, peer, p, port).allows();
    (compiled, reference)
}

fn verdict(cluster: &Cluster, from: &str, to: &str, proto: Proto, port: u16) -> (bool, bool) {
    let (from, to) = (end(cluster, from), end(cluster, to));
    let p = proto.number();
    let mut compiled = true;
    let mut reference = true;
    if let (End::Pod(a, _), End::Pod(b, _)) = (&from, &to)
        && a.pod_ref() == b.pod_ref()
    {
        return (true, true);
    }
    if let End::Pod(pod, _) = &from {
        let (c, r) = side(cluster, pod, Direction::Egress, to.ip(), p, port);
        compiled &= c;
        reference &= r;
    }
    if let End::Pod(pod, _) = &to {
        let (c, r) = side(cluster, pod, Direction::Ingress, from.ip(), p, port);
        compiled &= c;
        reference &= r;
    }
    (compiled, reference)
}

fn compile(policies: &str) -> Cluster {
    compile_with(policies, Variant::AsWritten)
}

#[derive(Clone, Copy)]
enum Variant {
    AsWritten,
    WithoutPolicies,
    /// Every policy keeps isolating what it isolates, with no rules.
    WithoutRules,
}

/// The case's cluster (its extra objects included) with its NetworkPolicies as `variant` says.
fn compile_with(policies: &str, variant: Variant) -> Cluster {
    let mut loaded = Loaded::default();
    load_text(Path::new("cluster.yaml"), CLUSTER, &mut loaded);
    load_text(Path::new("policies.yaml"), policies, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    match variant {
        Variant::AsWritten => {}
        Variant::WithoutPolicies => loaded.snapshot.policies.clear(),
        Variant::WithoutRules => {
            for policy in &mut loaded.snapshot.policies {
                policy.policy_types = Direction::ALL
                    .into_iter()
                    .filter(|d| policy.has_type(*d))
                    .collect();
                policy.ingress.clear();
                policy.egress.clear();
            }
        }
    }
    Cluster::compile(loaded.snapshot).expect("compiles")
}

#[test]
fn semantics_table() {
    let mut count = 0;
    let mut failures = Vec::new();
    for case in CASES {
        let cluster = compile(case.policies);
        for &(from, to, proto, port, expected) in case.checks {
            let (compiled, reference) = verdict(&cluster, from, to, proto, port);
            if compiled != expected || reference != expected {
                failures.push(format!(
                    "{}: {from} -> {to} {proto:?}/{port}: expected {expected}, compiled {compiled}, reference {reference}",
                    case.name
                ));
            }
        }
        count += 1;
    }
    assert!(count >= 80, "only {count} cases");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_case_has_a_distinct_name_and_checks_its_policies_decide() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len());
    // Every case must check something its policies decide: a verdict that differs without the
    // policies or without their rules, or an allowed edge next to a denied one.
    let mut vague = Vec::new();
    for case in CASES {
        if case.policies.trim().is_empty() {
            continue;
        }
        let cluster = compile(case.policies);
        let differs = [Variant::WithoutPolicies, Variant::WithoutRules]
            .into_iter()
            .any(|variant| {
                let other = compile_with(case.policies, variant);
                case.checks.iter().any(|&(from, to, proto, port, _)| {
                    verdict(&cluster, from, to, proto, port)
                        != verdict(&other, from, to, proto, port)
                })
            });
        let mixed = case.checks.iter().any(|c| c.4) && case.checks.iter().any(|c| !c.4);
        if !(differs || mixed) {
            vague.push(case.name);
        }
    }
    assert!(
        vague.is_empty(),
        "checks cannot tell the policy apart: {vague:#?}"
    );
}

/// The API server stores an ipBlock whose address has host bits set, and the Kubernetes source
/// reads it as its network. Manifests refuse it (it is ambiguous), so this case converts the
/// policy as the Kubernetes source does.
#[test]
fn ip_block_with_host_bits_from_the_api_server_is_read_as_its_network() {
    let policy: NetworkPolicy = serde_norway::from_str(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 203.0.113.77/24}}]}]
"#,
    )
    .expect("a NetworkPolicy");
    let mut loaded = Loaded::default();
    load_text(Path::new("cluster.yaml"), CLUSTER, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded
        .snapshot
        .policies
        .push(convert::network_policy(&policy).expect("the Kubernetes source accepts it"));
    let cluster = Cluster::compile(loaded.snapshot).expect("compiles");
    for (from, to, expected) in [
        ("203.0.113.1", "prod/web", true),
        ("203.0.113.77", "prod/web", true),
        ("203.0.112.1", "prod/web", false),
    ] {
        assert_eq!(
            verdict(&cluster, from, to, Tcp, 80),
            (expected, expected),
            "{from} -> {to}"
        );
    }
}

const DENY_INGRESS_PROD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

static CASES: &[Case] = &[
    // --- no policy, isolation ---
    Case {
        name: "no policy allows everything",
        policies: "",
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("other/client", "dev/web", Udp, 9, true),
            ("203.0.113.5", "prod/api", Tcp, 1, true),
            ("prod/api", "203.0.113.5", Icmp, 0, true),
        ],
    },
    Case {
        name: "default deny ingress isolates every pod of the namespace",
        policies: DENY_INGRESS_PROD,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, false),
            ("prod/web", "prod/db", Tcp, 3306, false),
            ("203.0.113.5", "prod/api", Tcp, 8080, false),
            ("prod/web", "dev/web", Tcp, 8000, true),
        ],
    },
    Case {
        name: "default deny ingress leaves egress open",
        policies: DENY_INGRESS_PROD,
        checks: &[
            ("prod/web", "other/client", Tcp, 80, true),
            ("prod/web", "203.0.113.5", Tcp, 443, true),
            ("other/client", "prod/web", Tcp, 80, false),
        ],
    },
    Case {
        name: "a pod always reaches itself",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#,
        checks: &[
            ("prod/web", "prod/web", Tcp, 80, true),
            ("prod/web", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "policy in another namespace does not isolate",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: dev}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("dev/web", "prod/db", Tcp, 3306, true),
            ("prod/web", "dev/web", Tcp, 8000, false),
        ],
    },
    Case {
        name: "unselected pods of the namespace stay open",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, false),
            ("prod/db", "prod/web", Tcp, 80, true),
            ("other/client", "prod/api", Tcp, 8080, true),
        ],
    },
    Case {
        name: "default deny egress",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress]}
"#,
        checks: &[
            ("prod/web", "dev/web", Tcp, 8000, false),
            ("prod/web", "203.0.113.5", Udp, 53, false),
            ("other/client", "prod/web", Tcp, 80, true),
            ("prod/web", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "default deny both directions",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#,
        checks: &[
            ("prod/web", "dev/web", Tcp, 8000, false),
            ("dev/web", "prod/web", Tcp, 80, false),
            ("dev/web", "other/client", Tcp, 80, true),
        ],
    },
    // --- policyTypes defaulting ---
    Case {
        name: "policyTypes absent with only ingress rules means Ingress only",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 3306, false),
            ("prod/db", "203.0.113.5", Tcp, 443, true),
        ],
    },
    Case {
        name: "policyTypes absent with no rules means deny ingress",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchLabels: {app: db}}}
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, false),
            ("prod/db", "prod/api", Tcp, 8080, true),
        ],
    },
    Case {
        name: "policyTypes absent with egress rules means Ingress and Egress",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]
"#,
        checks: &[
            ("prod/db", "prod/api", Tcp, 8080, true),
            ("prod/db", "prod/web", Tcp, 80, false),
            ("prod/api", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "policyTypes absent with empty egress list means Ingress only",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{}]
  egress: []
"#,
        checks: &[
            ("prod/db", "prod/web", Tcp, 80, true),
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/db", "203.0.113.5", Tcp, 443, true),
        ],
    },
    Case {
        name: "explicit Egress type ignores ingress rules for isolation",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/db", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "explicit Ingress type ignores egress rules",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]
"#,
        checks: &[
            ("prod/db", "prod/web", Tcp, 80, true),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    // --- empty vs absent rules and lists ---
    Case {
        name: "ingress with one empty rule allows all",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{}]}
"#,
        checks: &[
            ("other/client", "prod/db", Tcp, 3306, true),
            ("203.0.113.5", "prod/web", Udp, 5000, true),
            ("2001:db8::5", "prod/web:6", Sctp, 7, true),
            ("dev/tool", "prod/api", Icmp, 0, true),
        ],
    },
    Case {
        name: "egress with one empty rule allows all",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}
"#,
        checks: &[
            ("prod/web", "203.0.113.5", Tcp, 443, true),
            ("prod/web:6", "2001:db8::5", Udp, 53, true),
            ("prod/db", "dev/web", Icmp, 0, true),
        ],
    },
    Case {
        name: "empty ingress list denies all",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress], ingress: []}
"#,
        checks: &[
            ("other/client", "prod/db", Tcp, 3306, false),
            ("203.0.113.5", "prod/web", Tcp, 80, false),
        ],
    },
    Case {
        name: "rule with empty from list matches every source",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [], ports: [{port: 80}]}]
"#,
        checks: &[
            ("203.0.113.5", "prod/web", Tcp, 80, true),
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client", "prod/web", Tcp, 81, false),
        ],
    },
    Case {
        name: "rule with empty ports list matches every port and protocol",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: []}]
"#,
        checks: &[
            ("dev/tool", "prod/web", Tcp, 80, true),
            ("dev/tool", "prod/web", Udp, 9999, true),
            ("dev/tool", "prod/web", Icmp, 0, true),
            ("other/client", "prod/web", Tcp, 80, false),
        ],
    },
    // --- union of policies ---
    Case {
        name: "two policies selecting the same pod add up",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: prod}
spec:
  podSelector: {matchLabels: {tier: back}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 3306}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 1234, true),
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 1234, false),
            ("other/client", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "a deny-all policy does not cancel an allow policy",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "two rules of one policy add up",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 3306}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 9000}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/db", Tcp, 9000, false),
            ("prod/web", "prod/db", Tcp, 9000, true),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    // --- both sides ---
    Case {
        name: "egress allow does not bypass the destination's ingress",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in, namespace: prod}
spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, false),
            ("prod/web", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "both sides allow",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/db", Tcp, 3306, false),
            ("prod/web", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "ingress allows but source egress denies",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: dev}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in, namespace: prod}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]
"#,
        checks: &[
            ("dev/web", "prod/web", Tcp, 80, false),
            ("other/client", "prod/web", Tcp, 80, true),
        ],
    },
    // --- podSelector / namespaceSelector peers ---
    Case {
        name: "podSelector peer is limited to the policy's namespace",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#,
        checks: &[
            ("prod/web", "prod/api", Tcp, 8080, true),
            ("dev/web", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "empty podSelector peer means every pod of the policy's namespace",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/web", Tcp, 80, true),
            ("dev/tool", "prod/web", Tcp, 80, false),
            ("203.0.113.5", "prod/web", Tcp, 80, false),
        ],
    },
    Case {
        name: "namespaceSelector peer selects every pod of matching namespaces",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]
"#,
        checks: &[
            ("dev/web", "prod/api", Tcp, 8080, true),
            ("dev/tool", "prod/api", Tcp, 8080, true),
            ("prod/web", "prod/api", Tcp, 8080, false),
            ("other/client", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "empty namespaceSelector selects all pods in all namespaces",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{namespaceSelector: {}}]}]
"#,
        checks: &[
            ("dev/web", "prod/api", Tcp, 8080, true),
            ("other/client", "prod/api", Tcp, 8080, true),
            ("prod/web", "prod/api", Tcp, 8080, true),
            ("203.0.113.5", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "namespaceSelector and podSelector in one peer are ANDed",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
      podSelector: {matchLabels: {app: web}}
"#,
        checks: &[
            ("dev/web", "prod/api", Tcp, 8080, true),
            ("dev/tool", "prod/api", Tcp, 8080, false),
            ("prod/web", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "namespaceSelector and podSelector as two peers are ORed",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
    - podSelector: {matchLabels: {app: web}}
"#,
        checks: &[
            ("dev/web", "prod/api", Tcp, 8080, true),
            ("dev/tool", "prod/api", Tcp, 8080, true),
            ("prod/web", "prod/api", Tcp, 8080, true),
            ("prod/db", "prod/api", Tcp, 8080, false),
            ("other/client", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "empty namespaceSelector with podSelector selects that label in every namespace",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
"#,
        checks: &[
            ("dev/web", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("dev/tool", "prod/db", Tcp, 3306, false),
            ("other/client", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "the implicit namespace name label selects a namespace by name",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]
"#,
        checks: &[
            ("other/client", "prod/db", Tcp, 3306, true),
            ("dev/web", "prod/db", Tcp, 3306, false),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "namespace name label via matchExpressions In",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [dev, other]}]
"#,
        checks: &[
            ("other/client", "prod/db", Tcp, 3306, true),
            ("dev/tool", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "namespace labels must all match",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a, env: prod}}}]}]
"#,
        checks: &[
            ("prod/web", "dev/web", Tcp, 8000, true),
            ("other/client", "dev/web", Tcp, 8000, false),
            ("dev/tool", "dev/web", Tcp, 8000, false),
        ],
    },
    Case {
        name: "pod matchLabels must all match",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api, tier: back}}}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "spec podSelector with several labels selects only pods with all of them",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchLabels: {tier: back, app: db}}, policyTypes: [Ingress]}
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, false),
            ("prod/web", "prod/api", Tcp, 8080, true),
        ],
    },
    // --- matchExpressions ---
    Case {
        name: "matchExpressions In",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [web, api]}]}}]
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("dev/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "matchExpressions NotIn matches pods without the key",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}]
"#,
        checks: &[
            ("dev/tool", "dev/web", Tcp, 8000, true),
            ("prod/api", "dev/web", Tcp, 8000, false),
        ],
    },
    Case {
        name: "matchExpressions NotIn excludes listed values",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "matchExpressions Exists",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]
"#,
        checks: &[
            ("prod/web", "dev/web", Tcp, 8000, true),
            ("prod/db", "dev/web", Tcp, 8000, true),
            ("other/client", "dev/web", Tcp, 8000, false),
            ("dev/tool", "dev/web", Tcp, 8000, false),
        ],
    },
    Case {
        name: "matchExpressions DoesNotExist matches pods without the key",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]
"#,
        checks: &[
            ("other/client", "dev/web", Tcp, 8000, true),
            ("dev/tool", "dev/web", Tcp, 8000, true),
            ("prod/web", "dev/web", Tcp, 8000, false),
        ],
    },
    Case {
        name: "namespace DoesNotExist matches namespaces without the key",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}}]
"#,
        checks: &[
            ("other/client", "prod/db", Tcp, 3306, true),
            ("dev/web", "prod/db", Tcp, 3306, false),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "namespace NotIn matches namespaces without the key",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [b]}]}}]
"#,
        checks: &[
            ("other/client", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("dev/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "matchLabels and matchExpressions are ANDed",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector:
        matchLabels: {tier: front}
        matchExpressions: [{key: app, operator: In, values: [web, api]}]
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "several expressions are ANDed",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: tier, operator: Exists}
        - {key: app, operator: NotIn, values: [web]}
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "spec podSelector with DoesNotExist selects pods lacking the key",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  policyTypes: [Ingress]
"#,
        checks: &[
            ("prod/web", "dev/tool", Tcp, 80, false),
            ("prod/web", "dev/web", Tcp, 8000, true),
        ],
    },
    Case {
        name: "spec podSelector with NotIn selects pods lacking the key",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}
  policyTypes: [Ingress]
"#,
        checks: &[
            ("prod/web", "dev/tool", Tcp, 80, false),
            ("prod/web", "dev/web", Tcp, 8000, true),
        ],
    },
    Case {
        name: "selector that matches nothing allows nothing",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: nothing}}}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, false),
            ("prod/api", "prod/web", Tcp, 80, true),
        ],
    },
    // --- ipBlock ---
    Case {
        name: "ipBlock allows external sources in the cidr",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}]}]
"#,
        checks: &[
            ("203.0.113.5", "prod/web", Tcp, 80, true),
            ("203.0.114.5", "prod/web", Tcp, 80, false),
            ("2001:db8::5", "prod/web:6", Tcp, 80, false),
        ],
    },
    Case {
        name: "ipBlock except carves out a range",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 203.0.0.0/16, except: [203.0.113.0/24]}}]}]
"#,
        checks: &[
            ("203.0.1.1", "prod/web", Tcp, 80, true),
            ("203.0.113.5", "prod/web", Tcp, 80, false),
            ("203.0.112.255", "prod/web", Tcp, 80, true),
            ("203.0.114.0", "prod/web", Tcp, 80, true),
        ],
    },
    Case {
        name: "ipBlock with several excepts",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/28, 203.0.113.128/25]}}]}]
"#,
        checks: &[
            ("203.0.113.5", "prod/web", Tcp, 80, false),
            ("203.0.113.16", "prod/web", Tcp, 80, true),
            ("203.0.113.127", "prod/web", Tcp, 80, true),
            ("203.0.113.200", "prod/web", Tcp, 80, false),
        ],
    },
    Case {
        name: "ipBlock over IPv6",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:ff::/48"]}}]}]
"#,
        checks: &[
            ("2001:db8::5", "prod/web:6", Tcp, 80, true),
            ("2001:db8:ff::5", "prod/web:6", Tcp, 80, false),
            ("2001:db9::5", "prod/web:6", Tcp, 80, false),
            ("203.0.113.5", "prod/web", Tcp, 80, false),
        ],
    },
    Case {
        name: "egress ipBlock to an external network",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 5432}]}]
"#,
        checks: &[
            ("prod/api", "198.51.100.7", Tcp, 5432, true),
            ("prod/api", "198.51.100.7", Tcp, 5433, false),
            ("prod/api", "198.51.101.7", Tcp, 5432, false),
        ],
    },
    Case {
        name: "ipBlock matches pod addresses",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24}}]}]
"#,
        checks: &[
            ("dev/web", "prod/db", Tcp, 3306, true),
            ("dev/tool", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "ipBlock except excludes a pod address",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.11/32]}}]}]
"#,
        checks: &[
            ("dev/web", "prod/db", Tcp, 3306, true),
            ("dev/tool", "prod/db", Tcp, 3306, false),
            ("prod/api", "prod/db", Tcp, 3306, true),
        ],
    },
    Case {
        name: "ipBlock covering a dual-stack pod only in one family",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.3.0/24}}]}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client:6", "prod/web:6", Tcp, 80, false),
        ],
    },
    Case {
        name: "egress ipBlock with except over a pod address",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: "fd00::/16", except: ["fd00::1:0/112"]}}]}]
"#,
        checks: &[
            ("other/client:6", "dev/web:6", Tcp, 8000, true),
            ("other/client:6", "prod/web:6", Tcp, 80, false),
            ("other/client", "dev/web", Tcp, 8000, false),
        ],
    },
    Case {
        name: "overlapping ipBlocks of two rules",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 203.0.0.0/16, except: [203.0.113.0/24]}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 203.0.113.0/24}}]
    ports: [{port: 443}]
"#,
        checks: &[
            ("203.0.1.1", "prod/web", Tcp, 80, true),
            ("203.0.1.1", "prod/web", Tcp, 443, false),
            ("203.0.113.1", "prod/web", Tcp, 443, true),
            ("203.0.113.1", "prod/web", Tcp, 80, false),
        ],
    },
    Case {
        name: "ipBlock 0.0.0.0/0 matches every IPv4 address but no IPv6",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]
"#,
        checks: &[
            ("203.0.113.5", "prod/web", Tcp, 80, true),
            ("dev/web", "prod/web", Tcp, 80, false),
            ("2001:db8::5", "prod/web:6", Tcp, 80, false),
        ],
    },
    Case {
        name: "ipBlock ::/0 matches every IPv6 address",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: "::/0"}}]}]
"#,
        checks: &[
            ("2001:db8::5", "prod/web:6", Tcp, 80, true),
            ("other/client:6", "prod/web:6", Tcp, 80, true),
            ("203.0.113.5", "prod/web", Tcp, 80, false),
        ],
    },
    // --- ports ---
    Case {
        name: "protocol defaults to TCP",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: 3306}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/db", Udp, 3306, false),
            ("prod/api", "prod/db", Sctp, 3306, false),
        ],
    },
    Case {
        name: "UDP port",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{protocol: UDP, port: 53}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Udp, 53, true),
            ("dev/tool", "prod/api", Tcp, 53, false),
            ("dev/tool", "prod/api", Udp, 54, false),
        ],
    },
    Case {
        name: "SCTP port",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{protocol: SCTP, port: 3868}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Sctp, 3868, true),
            ("dev/tool", "prod/api", Tcp, 3868, false),
        ],
    },
    Case {
        name: "protocol without a port allows every port of it",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{protocol: UDP}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Udp, 1, true),
            ("dev/tool", "prod/api", Udp, 65535, true),
            ("dev/tool", "prod/api", Tcp, 80, false),
            ("dev/tool", "prod/api", Icmp, 0, false),
        ],
    },
    Case {
        name: "port entry without protocol or port means every TCP port",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Tcp, 12345, true),
            ("dev/tool", "prod/api", Udp, 53, false),
        ],
    },
    Case {
        name: "ports restrict protocols so ICMP is denied",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
"#,
        checks: &[
            ("dev/tool", "prod/web", Icmp, 0, false),
            ("dev/tool", "prod/web", Tcp, 80, true),
        ],
    },
    Case {
        name: "several ports in one rule",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{port: 8080}, {port: 9090}, {protocol: UDP, port: 53}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Tcp, 8080, true),
            ("dev/tool", "prod/api", Tcp, 9090, true),
            ("dev/tool", "prod/api", Udp, 53, true),
            ("dev/tool", "prod/api", Tcp, 53, false),
            ("dev/tool", "prod/api", Tcp, 8081, false),
        ],
    },
    Case {
        name: "endPort makes an inclusive range",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{port: 32000, endPort: 32768}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Tcp, 32000, true),
            ("dev/tool", "prod/api", Tcp, 32768, true),
            ("dev/tool", "prod/api", Tcp, 32500, true),
            ("dev/tool", "prod/api", Tcp, 31999, false),
            ("dev/tool", "prod/api", Tcp, 32769, false),
        ],
    },
    Case {
        name: "endPort equal to port is a single port",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{port: 8080, endPort: 8080}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Tcp, 8080, true),
            ("dev/tool", "prod/api", Tcp, 8081, false),
            ("dev/tool", "prod/api", Tcp, 8079, false),
        ],
    },
    Case {
        name: "UDP range over the top of the port space",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{protocol: UDP, port: 60000, endPort: 65535}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Udp, 65535, true),
            ("dev/tool", "prod/api", Udp, 60000, true),
            ("dev/tool", "prod/api", Udp, 59999, false),
            ("dev/tool", "prod/api", Tcp, 60000, false),
        ],
    },
    Case {
        name: "overlapping ranges of two rules",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
    ports: [{port: 1000, endPort: 2000}]
  - ports: [{port: 1500, endPort: 2500}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Tcp, 1000, true),
            ("other/client", "prod/api", Tcp, 1000, false),
            ("other/client", "prod/api", Tcp, 1500, true),
            ("other/client", "prod/api", Tcp, 2500, true),
            ("dev/tool", "prod/api", Tcp, 2501, false),
        ],
    },
    Case {
        name: "egress endPort range to an ipBlock",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: multi-port-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 32000, endPort: 32768}]
"#,
        checks: &[
            ("prod/db", "10.0.0.9", Tcp, 32768, true),
            ("prod/db", "10.0.0.9", Tcp, 32769, false),
            ("prod/db", "10.0.1.9", Tcp, 32000, false),
        ],
    },
    // --- named ports ---
    Case {
        name: "ingress named port resolves against the selected pod",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {tier: back}}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: http}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Tcp, 8080, true),
            ("dev/tool", "prod/api", Tcp, 80, false),
            ("dev/tool", "prod/db", Tcp, 8080, false),
            ("dev/tool", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "ingress named port differs per selected pod",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client", "prod/api", Tcp, 8080, true),
            ("other/client", "dev/web", Tcp, 8000, true),
            ("other/client", "dev/web", Tcp, 80, false),
            ("203.0.113.5", "prod/web", Tcp, 80, true),
        ],
    },
    Case {
        name: "named port must match the protocol",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{port: dns, protocol: UDP}, {port: metrics, protocol: UDP}]}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Udp, 53, true),
            ("dev/tool", "prod/api", Tcp, 53, false),
            ("dev/tool", "prod/api", Udp, 9090, false),
            ("dev/tool", "prod/api", Tcp, 9090, false),
        ],
    },
    Case {
        name: "named port the selected pod lacks allows nothing",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: http}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 80, false),
            ("prod/api", "prod/db", Tcp, 8080, false),
            ("prod/api", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "egress named port resolves per destination pod",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}], ports: [{port: http}]}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client", "prod/api", Tcp, 8080, true),
            ("other/client", "dev/web", Tcp, 8000, true),
            ("other/client", "dev/web", Tcp, 80, false),
            ("other/client", "prod/web", Tcp, 8080, false),
            ("other/client", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "egress named port with an empty to list resolves per destination pod",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client", "dev/web:6", Tcp, 8000, true),
            ("other/client", "prod/api", Tcp, 80, false),
            ("other/client", "203.0.113.5", Tcp, 80, false),
        ],
    },
    Case {
        name: "egress named port to an ipBlock resolves against the pod behind the address",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: http}, {port: 3306}]}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client", "prod/api", Tcp, 8080, true),
            ("other/client", "prod/api", Tcp, 80, false),
            ("other/client", "dev/web", Tcp, 8000, true),
            ("other/client", "dev/web:6", Tcp, 8000, false),
            ("other/client", "prod/db", Tcp, 80, false),
            ("other/client", "prod/db", Tcp, 3306, true),
            ("other/client", "10.9.9.9", Tcp, 80, false),
            ("other/client", "10.9.9.9", Tcp, 3306, true),
        ],
    },
    Case {
        name: "egress named port to an ipBlock skips pods in its except",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.10/32, 10.0.2.0/24]}}]
    ports: [{port: http}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, false),
            ("other/client", "prod/api", Tcp, 8080, true),
            ("other/client", "dev/web", Tcp, 8000, false),
            ("other/client", "10.0.1.99", Tcp, 80, false),
        ],
    },
    Case {
        name: "egress named port to an ipBlock matches the protocol of the declaration",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.1.0/24}}]
    ports: [{port: dns, protocol: UDP}, {port: metrics, protocol: UDP}]
"#,
        checks: &[
            ("prod/web", "prod/api", Udp, 53, true),
            ("prod/web", "prod/api", Tcp, 53, false),
            ("prod/web", "prod/api", Udp, 9090, false),
            ("prod/web", "prod/api", Tcp, 9090, false),
            ("prod/web", "prod/db", Udp, 53, false),
            ("prod/web", "10.0.1.99", Udp, 53, false),
        ],
    },
    Case {
        name: "egress named port reaches a pod through the ipBlock of a rule that also selects pods",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.2.0/24}}, {podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}, {port: mysql}]
"#,
        checks: &[
            ("prod/api", "dev/web", Tcp, 8000, true),
            ("prod/api", "dev/tool", Tcp, 8000, false),
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/web", Tcp, 80, false),
            ("prod/api", "10.0.2.99", Tcp, 8000, false),
        ],
    },
    Case {
        name: "ingress named port with an ipBlock peer resolves against the selected pod",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 203.0.113.0/24}}, {podSelector: {matchLabels: {app: api}}}]
    ports: [{port: http}]
"#,
        checks: &[
            ("203.0.113.5", "prod/web", Tcp, 80, true),
            ("203.0.113.5", "prod/web", Tcp, 8080, false),
            ("198.51.100.1", "prod/web", Tcp, 80, false),
            ("prod/api", "prod/web", Tcp, 80, true),
            ("dev/tool", "prod/web", Tcp, 80, false),
        ],
    },
    Case {
        name: "ingress named port with an ipBlock except, from pods and from addresses that are no pod's",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {tier: back}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]
    ports: [{port: http}, {port: mysql}, {port: dns}]
"#,
        checks: &[
            ("prod/web", "prod/api", Tcp, 8080, true),
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 8080, false),
            ("dev/tool", "prod/api", Tcp, 8080, false),
            ("other/client", "prod/db", Tcp, 3306, true),
            ("10.0.9.9", "prod/api", Tcp, 8080, true),
            ("10.0.2.99", "prod/api", Tcp, 8080, false),
            ("prod/web", "prod/api", Udp, 53, false),
            ("prod/web", "prod/api", Tcp, 53, false),
        ],
    },
    Case {
        name: "named and numeric ports together",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}], ports: [{port: mysql}, {port: 80}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/api", "prod/web", Tcp, 80, true),
            ("prod/api", "prod/web", Tcp, 3306, false),
            ("prod/api", "dev/web", Tcp, 80, false),
        ],
    },
    // --- pods that are not peers or endpoints ---
    Case {
        name: "terminated pods are not peers",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]}]
"#,
        checks: &[
            ("10.0.1.20", "dev/web", Tcp, 8000, false),
            ("prod/web", "dev/web", Tcp, 8000, true),
        ],
    },
    Case {
        name: "hostNetwork pods are not selected peers",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]}]
"#,
        checks: &[
            ("192.168.0.1", "dev/web", Tcp, 8000, false),
            ("prod/web", "dev/web", Tcp, 8000, true),
        ],
    },
    Case {
        name: "terminated pod address still matches an ipBlock",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.1.16/28}}]}]
"#,
        checks: &[
            ("10.0.1.20", "dev/web", Tcp, 8000, true),
            ("prod/web", "dev/web", Tcp, 8000, false),
        ],
    },
    // --- dual stack ---
    Case {
        name: "pod selector peer matches both addresses of a dual-stack pod",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]}]
"#,
        checks: &[
            ("other/client", "prod/web", Tcp, 80, true),
            ("other/client:6", "prod/web:6", Tcp, 80, true),
            ("dev/web:6", "prod/web:6", Tcp, 80, false),
        ],
    },
    Case {
        name: "egress to a dual-stack pod by selector in both families",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: web}}}]}]
"#,
        checks: &[
            ("other/client", "dev/web", Tcp, 8000, true),
            ("other/client:6", "dev/web:6", Tcp, 8000, true),
            ("other/client:6", "prod/web:6", Tcp, 80, false),
            ("other/client:6", "2001:db8::5", Tcp, 80, false),
        ],
    },
    // --- tutorial-style scenarios ---
    Case {
        name: "database reachable only from the API tier on 3306",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-policy, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{protocol: TCP, port: 3306}]}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("prod/web", "prod/db", Tcp, 3306, false),
            ("prod/api", "prod/db", Tcp, 22, false),
        ],
    },
    Case {
        name: "DNS egress to kube-dns style pods plus deny-all",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}, podSelector: {matchLabels: {app: api}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"#,
        checks: &[
            ("dev/tool", "prod/api", Udp, 53, true),
            ("dev/tool", "prod/api", Tcp, 53, true),
            ("dev/tool", "prod/api", Tcp, 8080, false),
            ("dev/tool", "prod/web", Udp, 53, false),
            ("dev/tool", "8.8.8.8", Udp, 53, false),
        ],
    },
    Case {
        name: "allow same namespace only",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-same-namespace, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {}}]}]
"#,
        checks: &[
            ("dev/tool", "dev/web", Tcp, 8000, true),
            ("prod/web", "dev/web", Tcp, 8000, false),
        ],
    },
    Case {
        name: "allow all egress overrides default deny egress",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}
"#,
        checks: &[
            ("prod/web", "203.0.113.5", Tcp, 443, true),
            ("prod/db", "dev/web", Udp, 9, true),
        ],
    },
    Case {
        name: "frontend egress only to an external API on 443",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {tier: front}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.10.10.0/24}}], ports: [{protocol: TCP, port: 443}]}]
"#,
        checks: &[
            ("prod/web", "10.10.10.1", Tcp, 443, true),
            ("prod/web", "10.10.10.1", Tcp, 80, false),
            ("prod/web", "prod/api", Tcp, 443, false),
            ("prod/api", "prod/db", Tcp, 3306, true),
        ],
    },
    Case {
        name: "full example policy of the reference page",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: test-network-policy, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {team: b}}
    - podSelector: {matchLabels: {tier: front}}
    ports: [{protocol: TCP, port: 6379}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 5978}]
"#,
        checks: &[
            ("172.17.0.9", "prod/db", Tcp, 6379, true),
            ("172.17.1.9", "prod/db", Tcp, 6379, false),
            ("dev/tool", "prod/db", Tcp, 6379, true),
            ("prod/web", "prod/db", Tcp, 6379, true),
            ("prod/api", "prod/db", Tcp, 6379, false),
            ("prod/db", "10.0.0.1", Tcp, 5978, true),
            ("prod/db", "10.0.0.1", Tcp, 5979, false),
            ("prod/db", "prod/web", Tcp, 5978, false),
        ],
    },
    Case {
        name: "payroll reachable only from internal on 8080, internal egress limited",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payroll-policy, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{protocol: TCP, port: 8080}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: internal-policy, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{protocol: TCP, port: 8080}]
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{protocol: TCP, port: 3306}]
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 8080, true),
            ("prod/web", "prod/api", Tcp, 3306, true),
            ("prod/web", "prod/api", Tcp, 8080, false),
            ("prod/api", "prod/db", Tcp, 8080, false),
        ],
    },
    // --- more combinations ---
    Case {
        name: "ingress from an IPv6 pod by selector but not by ipBlock of v4",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.1.0/24}}]}]
"#,
        checks: &[
            ("prod/web", "dev/web", Tcp, 8000, true),
            ("prod/web:6", "dev/web:6", Tcp, 8000, false),
        ],
    },
    Case {
        name: "peer and ports must match in the same rule",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 3306}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 22}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 22, false),
            ("prod/web", "prod/db", Tcp, 3306, false),
            ("prod/web", "prod/db", Tcp, 22, true),
        ],
    },
    Case {
        name: "selector peer and ipBlock peer in one rule",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}, {ipBlock: {cidr: 198.51.100.0/24}}]
    ports: [{port: 3306}]
"#,
        checks: &[
            ("prod/api", "prod/db", Tcp, 3306, true),
            ("198.51.100.1", "prod/db", Tcp, 3306, true),
            ("198.51.101.1", "prod/db", Tcp, 3306, false),
            ("prod/web", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "egress to namespaces by label, other traffic denied",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: dev}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {env: prod}}}], ports: [{port: 3306}]}]
"#,
        checks: &[
            ("dev/web", "prod/db", Tcp, 3306, true),
            ("dev/web", "other/client", Tcp, 3306, false),
            ("dev/tool", "other/client", Tcp, 3306, true),
        ],
    },
    Case {
        name: "policy selecting no pod changes nothing",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchLabels: {app: ghost}}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-api, namespace: prod}
spec: {podSelector: {matchLabels: {app: api}}, policyTypes: [Ingress]}
"#,
        checks: &[
            ("prod/web", "prod/db", Tcp, 3306, true),
            ("prod/db", "prod/web", Tcp, 80, true),
            ("prod/db", "prod/api", Tcp, 8080, false),
        ],
    },
    Case {
        name: "ICMP allowed only by a rule without ports",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
  - ports: [{port: 80}]
"#,
        checks: &[
            ("prod/api", "prod/web", Icmp, 0, true),
            ("dev/tool", "prod/web", Icmp, 0, false),
            ("dev/tool", "prod/web", Tcp, 80, true),
        ],
    },
    Case {
        name: "egress rule with protocol only toward a namespace",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{protocol: UDP}]}]
"#,
        checks: &[
            ("prod/web", "dev/tool", Udp, 9999, true),
            ("prod/web", "dev/tool", Tcp, 9999, false),
            ("prod/web", "other/client", Udp, 9999, false),
        ],
    },
    Case {
        name: "ipBlock /32 of an external host",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: restrict-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.10/32}}], ports: [{protocol: TCP, port: 3306}]}]
"#,
        checks: &[
            ("prod/api", "10.0.0.10", Tcp, 3306, true),
            ("prod/api", "10.0.0.11", Tcp, 3306, false),
            ("prod/api", "prod/db", Tcp, 3306, false),
        ],
    },
    Case {
        name: "nested ipBlocks of different rules resolve by longest prefix",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 198.51.0.0/16}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]
    ports: [{port: 81}]
"#,
        checks: &[
            ("198.51.100.1", "prod/web", Tcp, 80, true),
            ("198.51.100.1", "prod/web", Tcp, 81, true),
            ("198.51.100.200", "prod/web", Tcp, 80, true),
            ("198.51.100.200", "prod/web", Tcp, 81, false),
            ("198.51.1.1", "prod/web", Tcp, 81, false),
        ],
    },
    Case {
        name: "pods of a namespace without a Namespace object still carry the name label",
        policies: r#"
apiVersion: v1
kind: Pod
metadata: {name: lone, namespace: ghost, labels: {app: lone}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.9.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ghost}}}]}]
"#,
        checks: &[
            ("ghost/lone", "prod/db", Tcp, 3306, true),
            ("other/client", "prod/db", Tcp, 3306, false),
        ],
    },
];
