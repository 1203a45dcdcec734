//! kube-proxy's iptables mode, reduced to what the lab needs: in every node, the `nat` table
//! sends each ClusterIP:port to its backend pod IP:targetPort; conntrack reverses the translation
//! on replies. A pod that reaches itself through its own Service is masqueraded, as kube-proxy
//! does, or its reply would bypass the node and never be reverse-translated.
//!
//! A Service port with a `nodePort` is also reached on every address of every node (the
//! `addrtype LOCAL` match, as kube-proxy's `KUBE-NODEPORTS`), masquerade-marked as kube-proxy
//! marks external traffic of `externalTrafficPolicy: Cluster`: the backend sees the node's
//! address, and a pod's own egress policy is all that stands between it and the backend.
//!
//! The whole `nat` table of a node is replaced in one `iptables-restore`, so an update is atomic.

use std::{fmt::Write as _, net::IpAddr};

use anyhow::{Context, Result};
use policy_core::policy::model::Protocol;

use super::{cmd, names, plan::Plan};

/// The mark of packets to masquerade (kube-proxy's value).
const MASQUERADE_MARK: &str = "0x4000/0x4000";

/// The `iptables-restore` input of the `nat` table for one family.
pub fn nat_table(plan: &Plan, v6: bool) -> String {
    let host_len = if v6 { 128 } else { 32 };
    let mut chains = String::new();
    let mut rules = String::new();
    let mut node_ports = Vec::new();
    let mut add = |rule: String| {
        rules.push_str(&rule);
        rules.push('\n');
    };
    add("-A PREROUTING -m comment --comment \"lab service portals\" -j NP-SERVICES".to_owned());
    add("-A OUTPUT -m comment --comment \"lab service portals\" -j NP-SERVICES".to_owned());
    add("-A POSTROUTING -j NP-POSTROUTING".to_owned());
    add(format!(
        "-A NP-POSTROUTING -m mark --mark {MASQUERADE_MARK} -j MASQUERADE"
    ));
    for service in &plan.services {
        let Some(cluster_ip) = service.cluster_ips.iter().find(|ip| ip.is_ipv6() == v6) else {
            continue;
        };
        for port in &service.ports {
            let protocol = match port.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => continue,
            };
            let Some(backend) = &port.backend else {
                continue;
            };
            let Some(backend_ip) = plan.pod(&backend.pod).and_then(|pod| pod.ip(v6)) else {
                continue;
            };
            let chain = format!(
                "NP-SVC-{}",
                chain_hash(&format!("{}:{}/{protocol}:{v6}", service.key, port.port))
            );
            let _ = writeln!(chains, ":{chain} - [0:0]");
            let comment = format!("{}:{}/{}", service.key, port.port, port.protocol.name());
            add(format!(
                "-A NP-SERVICES -d {cluster_ip}/{host_len} -p {protocol} -m {protocol} --dport {} -m comment --comment \"{comment}\" -j {chain}",
                port.port
            ));
            add(format!(
                "-A {chain} -s {backend_ip}/{host_len} -j MARK --set-xmark {MASQUERADE_MARK}"
            ));
            let destination = match backend_ip {
                IpAddr::V4(ip) => format!("{ip}:{}", backend.port),
                IpAddr::V6(ip) => format!("[{ip}]:{}", backend.port),
            };
            add(format!(
                "-A {chain} -p {protocol} -m {protocol} -j DNAT --to-destination {destination}"
            ));
            if let Some(node_port) = port.node_port {
                node_ports.push(format!(
                    "-A NP-NODEPORTS -p {protocol} -m {protocol} --dport {node_port} -m comment --comment \"{comment} nodePort\" -j MARK --set-xmark {MASQUERADE_MARK}"
                ));
                node_ports.push(format!(
                    "-A NP-NODEPORTS -p {protocol} -m {protocol} --dport {node_port} -j {chain}"
                ));
            }
        }
    }
    // Last in NP-SERVICES, as in kube-proxy: a ClusterIP portal always wins over a node port.
    add("-A NP-SERVICES -m addrtype --dst-type LOCAL -m comment --comment \"lab node ports\" -j NP-NODEPORTS".to_owned());
    for rule in node_ports {
        add(rule);
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:NP-SERVICES - [0:0]\n:NP-NODEPORTS - [0:0]\n:NP-POSTROUTING - [0:0]\n{chains}{rules}COMMIT\n"
    )
}

fn chain_hash(text: &str) -> String {
    let hash = text.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08X}")
}

/// Installs the Service translation of `plan` in every node.
pub fn apply(plan: &Plan) -> Result<()> {
    for k in 1..=plan.nodes {
        let node = names::node_netns(k);
        if plan.family.has_v4() {
            cmd::in_netns_with_input(&node, "iptables-restore", &["-w"], &nat_table(plan, false))
                .with_context(|| format!("installing IPv4 Service rules in {node}"))?;
        }
        if plan.family.has_v6() {
            cmd::in_netns_with_input(&node, "ip6tables-restore", &["-w"], &nat_table(plan, true))
                .with_context(|| format!("installing IPv6 Service rules in {node}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use policy_core::manifest::IpFamily;

    use super::*;
    use crate::manifest::from_texts;

    #[test]
    fn node_ports_reach_the_backend_on_every_local_address_masqueraded() {
        let text = r#"
kind: Pod
apiVersion: v1
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 8080}]}]}
---
kind: Service
apiVersion: v1
metadata: {name: web, namespace: x}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}, {port: 53, targetPort: 8080, protocol: UDP, nodePort: 30053}]
"#;
        let manifests = from_texts(&[("x.yaml".into(), text.into())]).unwrap();
        let plan = Plan::new("/src".into(), &manifests, 2, IpFamily::Dual).unwrap();
        assert_eq!(plan.services[0].ports[0].node_port, Some(30080));
        for (v6, backend) in [
            (false, "10.244.1.2:8080"),
            (true, "[fd00:10:244:1::2]:8080"),
        ] {
            let table = nat_table(&plan, v6);
            let nodeports = table
                .find("-A NP-SERVICES -m addrtype --dst-type LOCAL")
                .expect("node ports are reached from NP-SERVICES");
            let last_portal = table.rfind("-A NP-SERVICES -d").expect("cluster IP portal");
            assert!(
                last_portal < nodeports,
                "ClusterIP portals come first: {table}"
            );
            for (protocol, node_port) in [("tcp", 30080), ("udp", 30053)] {
                let portal =
                    format!("-A NP-NODEPORTS -p {protocol} -m {protocol} --dport {node_port}");
                let mark = table
                    .find(&format!("{portal} -m comment"))
                    .expect("marked for masquerade");
                assert!(
                    table[mark..]
                        .lines()
                        .next()
                        .unwrap()
                        .ends_with("-j MARK --set-xmark 0x4000/0x4000"),
                    "{table}"
                );
                let jump = table
                    .find(&format!("{portal} -j NP-SVC-"))
                    .expect("jump to the Service chain");
                assert!(mark < jump, "{table}");
                let chain = table[jump..]
                    .lines()
                    .next()
                    .unwrap()
                    .rsplit(' ')
                    .next()
                    .unwrap();
                assert!(
                    table.contains(&format!(
                        "-A {chain} -p {protocol} -m {protocol} -j DNAT --to-destination {backend}"
                    )),
                    "{table}"
                );
            }
        }
    }

    #[test]
    fn service_ports_are_translated_to_their_backend_and_hairpins_masqueraded() {
        let text = r#"
kind: Pod
apiVersion: v1
metadata: {name: db, namespace: x, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 3306, name: mysql}]}]}
---
kind: Service
apiVersion: v1
metadata: {name: db, namespace: x}
spec: {selector: {app: db}, ports: [{port: 3306, targetPort: mysql}, {port: 53, protocol: UDP}]}
---
kind: Service
apiVersion: v1
metadata: {name: empty, namespace: x}
spec: {selector: {app: none}, ports: [{port: 80}]}
"#;
        let manifests = from_texts(&[("x.yaml".into(), text.into())]).unwrap();
        let plan = Plan::new("/src".into(), &manifests, 2, IpFamily::Dual).unwrap();
        let v4 = nat_table(&plan, false);
        assert!(
            v4.contains("-A NP-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 3306"),
            "{v4}"
        );
        assert!(v4.contains("DNAT --to-destination 10.244.1.2:3306"), "{v4}");
        assert!(
            v4.contains("-p udp -m udp -j DNAT --to-destination 10.244.1.2:53"),
            "{v4}"
        );
        assert!(v4.contains("-s 10.244.1.2/32 -j MARK"), "{v4}");
        assert!(
            !v4.contains("10.96.0.11"),
            "a Service without backends gets no rule: {v4}"
        );
        let v6 = nat_table(&plan, true);
        assert!(v6.contains("-d fd00:10:96::a/128"), "{v6}");
        assert!(
            v6.contains("--to-destination [fd00:10:244:1::2]:3306"),
            "{v6}"
        );
    }
}
