//! The policy every filtering setup of the traffic bench enforces, in each setup's own terms:
//! NetworkPolicy manifests for the agent, linear iptables rules (kube-router style) and an
//! nftables set.
//!
//! The policy: the server pods accept TCP `PORTS` from `rules` sources, one /32 each; the
//! first `rules - 1` are addresses nothing sends from, the last is the client, so a linear
//! rule list walks all of them before it accepts a new connection of the client.

use std::{fmt::Write as _, net::Ipv4Addr};

/// The ports the servers listen on: the request/response and connection server, then iperf3.
pub const PORTS: (u16, u16) = (7000, 7001);
/// The filter chain of the iptables setup, in the node's filter table.
pub const IPTABLES_CHAIN: &str = "NP-BENCH";
/// The table of the nftables setup.
pub const NFT_TABLE: &str = "np_bench";
/// The Kubernetes namespace of the bench pods.
pub const NAMESPACE: &str = "bench";

/// The allowed sources: `rules - 1` unused addresses, then the client.
pub fn allowed_sources(rules: usize, client: Ipv4Addr) -> Vec<Ipv4Addr> {
    let unused = u32::from(Ipv4Addr::new(10, 250, 0, 0));
    (1..rules)
        .map(|i| Ipv4Addr::from(unused + i as u32))
        .chain([client])
        .collect()
}

/// The bench's pods: the client and one server on node 1, another server on node 2.
pub fn cluster_manifest() -> String {
    let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for (name, app, node) in [
        ("client", "client", 1),
        ("server-local", "server", 1),
        ("server-remote", "server", 2),
    ] {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, \
             labels: {{app: {app}}}}}\nspec:\n  nodeName: node-{node}\n  containers:\n  - \
             {{name: {name}, image: bench}}\n"
        );
    }
    out
}

/// A NetworkPolicy isolating the servers' ingress with one rule per allowed source.
pub fn network_policy(sources: &[Ipv4Addr]) -> String {
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \
         bench-ingress, namespace: {NAMESPACE}}}\nspec:\n  podSelector: {{matchLabels: {{app: \
         server}}}}\n  policyTypes: [Ingress]\n  ingress:\n"
    );
    for source in sources {
        let _ = writeln!(
            out,
            "  - from: [{{ipBlock: {{cidr: {source}/32}}}}]\n    ports: [{{protocol: TCP, port: \
             {}, endPort: {}}}]",
            PORTS.0, PORTS.1
        );
    }
    out
}

/// `iptables-restore --noflush` input: FORWARD sends the server's traffic to a chain that
/// accepts established flows first, then checks one rule per source, and drops the rest.
pub fn iptables_restore(server: Ipv4Addr, sources: &[Ipv4Addr]) -> String {
    let chain = IPTABLES_CHAIN;
    let mut out = format!(
        "*filter\n:{chain} - [0:0]\n-A FORWARD -d {server}/32 -j {chain}\n-A {chain} -m conntrack \
         --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
    );
    for source in sources {
        let _ = writeln!(
            out,
            "-A {chain} -s {source}/32 -p tcp -m tcp --dport {}:{} -j ACCEPT",
            PORTS.0, PORTS.1
        );
    }
    let _ = write!(out, "-A {chain} -j DROP\nCOMMIT\n");
    out
}

/// The iptables commands that remove what [`iptables_restore`] installed.
pub fn iptables_removal(server: Ipv4Addr) -> Vec<Vec<String>> {
    let chain = IPTABLES_CHAIN;
    [
        format!("-D FORWARD -d {server}/32 -j {chain}"),
        format!("-F {chain}"),
        format!("-X {chain}"),
    ]
    .iter()
    .map(|args| args.split(' ').map(str::to_owned).collect())
    .collect()
}

/// `nft -f` input: established flows first, then one lookup of the source in a set.
pub fn nft_ruleset(server: Ipv4Addr, sources: &[Ipv4Addr]) -> String {
    let elements: Vec<String> = sources.iter().map(Ipv4Addr::to_string).collect();
    format!(
        "table inet {NFT_TABLE} {{\n  set allowed {{\n    type ipv4_addr\n    elements = {{ {} \
         }}\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy \
         accept;\n    ct state established,related accept\n    ip daddr {server} tcp dport \
         {}-{} ip saddr @allowed accept\n    ip daddr {server} drop\n  }}\n}}\n",
        elements.join(", "),
        PORTS.0,
        PORTS.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

    #[test]
    fn sources_end_in_the_client_and_are_distinct() {
        let sources = allowed_sources(10_000, CLIENT);
        assert_eq!(sources.len(), 10_000);
        assert_eq!(sources[0], Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(sources[9_998], Ipv4Addr::new(10, 250, 39, 15));
        assert_eq!(sources.last(), Some(&CLIENT));
        let mut unique = sources.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), sources.len());
        assert_eq!(allowed_sources(1, CLIENT), [CLIENT]);
    }

    #[test]
    fn iptables_accepts_established_first_then_one_rule_per_source() {
        let text = iptables_restore(SERVER, &allowed_sources(3, CLIENT));
        assert_eq!(
            text,
            "*filter\n\
             :NP-BENCH - [0:0]\n\
             -A FORWARD -d 10.244.2.3/32 -j NP-BENCH\n\
             -A NP-BENCH -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A NP-BENCH -s 10.250.0.1/32 -p tcp -m tcp --dport 7000:7001 -j ACCEPT\n\
             -A NP-BENCH -s 10.250.0.2/32 -p tcp -m tcp --dport 7000:7001 -j ACCEPT\n\
             -A NP-BENCH -s 10.244.1.2/32 -p tcp -m tcp --dport 7000:7001 -j ACCEPT\n\
             -A NP-BENCH -j DROP\n\
             COMMIT\n"
        );
        assert_eq!(
            iptables_removal(SERVER),
            [
                vec!["-D", "FORWARD", "-d", "10.244.2.3/32", "-j", "NP-BENCH"],
                vec!["-F", "NP-BENCH"],
                vec!["-X", "NP-BENCH"],
            ]
        );
        let big = iptables_restore(SERVER, &allowed_sources(1_000, CLIENT));
        assert_eq!(big.matches("-j ACCEPT\n").count(), 1_001);
    }

    #[test]
    fn nft_looks_the_source_up_in_one_set() {
        let text = nft_ruleset(SERVER, &allowed_sources(2, CLIENT));
        assert!(text.starts_with("table inet np_bench {\n"));
        assert!(text.contains("elements = { 10.250.0.1, 10.244.1.2 }"));
        let rules: Vec<&str> = text
            .lines()
            .map(str::trim)
            .skip_while(|line| !line.starts_with("type filter"))
            .skip(1)
            .take(3)
            .collect();
        assert_eq!(
            rules,
            [
                "ct state established,related accept",
                "ip daddr 10.244.2.3 tcp dport 7000-7001 ip saddr @allowed accept",
                "ip daddr 10.244.2.3 drop",
            ]
        );
    }

    #[test]
    fn network_policy_has_one_ingress_rule_per_source() {
        let text = network_policy(&allowed_sources(100, CLIENT));
        let policy: serde_json::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(policy["kind"], "NetworkPolicy");
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"]["app"],
            "server"
        );
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 100);
        assert_eq!(rules[99]["from"][0]["ipBlock"]["cidr"], "10.244.1.2/32");
        assert_eq!(rules[0]["ports"][0]["port"], 7000);
        assert_eq!(rules[0]["ports"][0]["endPort"], 7001);
    }

    #[test]
    fn cluster_manifest_places_the_pods() {
        let pods: Vec<serde_json::Value> = cluster_manifest()
            .split("---\n")
            .map(|doc| serde_norway::from_str(doc).unwrap())
            .collect();
        assert_eq!(pods[0]["kind"], "Namespace");
        let placed: Vec<(&str, &str, &str)> = pods[1..]
            .iter()
            .map(|pod| {
                (
                    pod["metadata"]["name"].as_str().unwrap(),
                    pod["metadata"]["labels"]["app"].as_str().unwrap(),
                    pod["spec"]["nodeName"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            placed,
            [
                ("client", "client", "node-1"),
                ("server-local", "server", "node-1"),
                ("server-remote", "server", "node-2"),
            ]
        );
    }
}
