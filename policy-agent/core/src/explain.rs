//! `policy-agent explain`: who can reach whom under a set of manifests, decided by the same
//! compiled state the kernel programs use.
//!
//! Every pod's node gets its own resolved [`NodeState`] (pods without a node are scheduled and
//! addressed by [`crate::manifest::assign_addresses`], on `node-1..node-N` with N = 2 unless pods
//! name more). A connection from `a` to `b` is allowed when `a`'s node state lets `a` send it
//! (egress) and `b`'s node state lets `b` receive it (ingress), each looked up as the kernel does:
//! longest-prefix match for the peer's class, then the policy-map probes. A pod always reaches
//! its own address: that traffic never crosses its veth. Traffic between a pod and an address of
//! its own node is exempt from NetworkPolicy, and only a ClusterNetworkPolicy rule decides it.
//! Through a Service ([`Via::Service`]) every verdict is the one by pod IP except a pod's to
//! itself: that packet leaves by its veth and comes back translated, so it is exempt from
//! NetworkPolicy and decided by ClusterNetworkPolicy like traffic with the pod's own node.
//!
//! A hostNetwork pod takes part with its node's addresses, so that rules about nodes can be
//! checked: it is a row and a column like any pod, but never an endpoint, so only the other end's
//! programs decide its connections. Succeeded and Failed pods are left out. The address pair is
//! the server's first address (IPv4 first) and the client's address of the same family.
//!
//! What could not be loaded is never silently left out: each problem is printed before the
//! answer and the run ends with [`ExplainError::Incomplete`]. The answer treats problems as the
//! agent does: a rejected NetworkPolicy isolates the pods it selects with none of its rules, and
//! a policy too big for the maps is left out for the pods it is too big for, which it still
//! isolates. Text from the input (names,
//! paths) is printed with control characters escaped.

use std::{collections::BTreeMap, fs, io, net::IpAddr, path::PathBuf};

use policy_common::verdict::{Direction, DropReason};
use serde::Serialize;

use crate::{
    error_chain,
    manifest::{self, AddressError},
    matrix::{Matrix, Reachability},
    policy::{
        lookup::Decision,
        model::{Pod, Protocol, Snapshot},
        resolve::{ResolveError, resolve},
        spec::{self, Decider, Probe, Route, evaluate},
        state::{Degraded, NodeState},
    },
    printable, steers_terminal,
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{path}: cannot read", path = path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot assign pod addresses")]
    Addresses(#[source] AddressError),
    #[error("cannot resolve the policies of node {node}")]
    Resolve {
        node: String,
        #[source]
        source: ResolveError,
    },
    #[error("pod {pod} is not among the loaded pods that take part in policy")]
    UnknownPod { pod: String },
    #[error("--from and --to go together")]
    HalfPair,
    #[error("cannot write the output")]
    Write(#[source] io::Error),
    #[error("cannot encode the output")]
    Json(#[source] serde_json::Error),
    #[error(
        "the manifests have {problems} problem{}, listed before the answer; as the agent does, \
         the answer holds a rejected NetworkPolicy as isolation of the pods it selects with none \
         of its rules, and leaves out other objects that could not be loaded",
        if *problems == 1 { "" } else { "s" }
    )]
    Incomplete { problems: usize },
    #[error("explain cannot answer for all of the manifests:\n{}", .0.join("\n"))]
    Problems(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

/// How the client addresses the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The server's pod IP.
    #[default]
    Pod,
    /// A Service's cluster IP, which the node translates to the server's pod IP. Not a node
    /// port: kube-proxy masquerades that traffic, so the server's ingress sees the node.
    Service,
}

impl Via {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Service => "service",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExplainOptions {
    pub paths: Vec<PathBuf>,
    pub port: u16,
    pub protocol: Protocol,
    pub via: Via,
    pub from: Option<String>,
    pub to: Option<String>,
    pub output: OutputFormat,
}

/// Runs `explain`: the answer goes to `out`, load problems to `notes`. When anything could not
/// be loaded, the answer for the rest is still written, and the result is
/// [`ExplainError::Incomplete`].
pub fn run(
    options: &ExplainOptions,
    out: &mut dyn io::Write,
    notes: &mut dyn io::Write,
) -> Result<(), ExplainError> {
    // A path that is not there is a mistake in the command, not a partial answer.
    for path in &options.paths {
        fs::metadata(path).map_err(|source| ExplainError::Path {
            path: path.clone(),
            source,
        })?;
    }
    let loaded = manifest::load(&options.paths);
    for error in &loaded.errors {
        writeln!(notes, "error: {}", printable(&error_chain(error)))
            .map_err(ExplainError::Write)?;
    }
    for skipped in &loaded.skipped {
        writeln!(notes, "note: {}", printable(&skipped.to_string()))
            .map_err(ExplainError::Write)?;
    }
    let cluster = Cluster::compile(loaded.snapshot)?;
    let degraded: Vec<&Degraded> = cluster.degraded().collect();
    for degraded in &degraded {
        writeln!(notes, "error: {}", printable(&degraded.to_string()))
            .map_err(ExplainError::Write)?;
    }
    let problems = loaded.errors.len() + degraded.len();
    answer(&cluster, options, out)?;
    if problems > 0 {
        return Err(ExplainError::Incomplete { problems });
    }
    Ok(())
}

/// The matrix of `paths` for `protocol`/`port` reached `via`, for programs that compare it with
/// something: anything that could not be loaded or compiled is an error that lists every
/// problem, where [`run`] would answer for the rest.
pub fn complete_matrix(
    paths: &[PathBuf],
    protocol: Protocol,
    port: u16,
    via: Via,
) -> Result<Reachability, ExplainError> {
    let loaded = manifest::load(paths);
    let mut problems: Vec<String> = loaded
        .errors
        .iter()
        .map(|error| error_chain(error))
        .collect();
    let cluster = Cluster::compile(loaded.snapshot)?;
    problems.extend(cluster.degraded().map(ToString::to_string));
    if !problems.is_empty() {
        return Err(ExplainError::Problems(problems));
    }
    Ok(cluster.matrix(protocol, port, via))
}

fn answer(
    cluster: &Cluster,
    options: &ExplainOptions,
    out: &mut dyn io::Write,
) -> Result<(), ExplainError> {
    match (&options.from, &options.to) {
        (None, None) => {
            let matrix = cluster.matrix(options.protocol, options.port, options.via);
            match options.output {
                OutputFormat::Json => {
                    let text = serde_json::to_string_pretty(&matrix).map_err(ExplainError::Json)?;
                    writeln!(out, "{}", json_printable(&text)).map_err(ExplainError::Write)
                }
                OutputFormat::Table => out
                    .write_all(matrix.table().as_bytes())
                    .map_err(ExplainError::Write),
            }
        }
        (Some(from), Some(to)) => {
            let verdict = cluster.verdict(from, to, options.protocol, options.port, options.via)?;
            match options.output {
                OutputFormat::Json => {
                    let text =
                        serde_json::to_string_pretty(&verdict).map_err(ExplainError::Json)?;
                    writeln!(out, "{}", json_printable(&text)).map_err(ExplainError::Write)
                }
                OutputFormat::Table => out
                    .write_all(verdict.text().as_bytes())
                    .map_err(ExplainError::Write),
            }
        }
        _ => Err(ExplainError::HalfPair),
    }
}

/// JSON text with the characters [`printable`] escapes written as JSON escapes. serde_json
/// escapes only those below U+0020; the rest can only stand inside strings, where `\uXXXX`
/// means the same character.
fn json_printable(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && steers_terminal(c) {
            escaped.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// A snapshot with every pod addressed and every node's state compiled.
pub struct Cluster {
    pub snapshot: Snapshot,
    pub states: BTreeMap<String, NodeState>,
    /// The pods that take part, sorted by `namespace/name`.
    pods: Vec<usize>,
}

impl Cluster {
    pub fn compile(mut snapshot: Snapshot) -> Result<Cluster, ExplainError> {
        let nodes = manifest::node_count(&snapshot);
        manifest::assign_addresses(&mut snapshot, nodes).map_err(ExplainError::Addresses)?;
        let mut states = BTreeMap::new();
        let node_names: Vec<String> = snapshot
            .pods
            .iter()
            .filter_map(|pod| pod.node.clone())
            .collect();
        for node in node_names {
            if states.contains_key(&node) {
                continue;
            }
            let state = resolve(&snapshot, &node, &NodeState::default()).map_err(|source| {
                ExplainError::Resolve {
                    node: node.clone(),
                    source,
                }
            })?;
            states.insert(node, state);
        }
        let mut pods: Vec<usize> = (0..snapshot.pods.len())
            .filter(|&i| {
                let pod = &snapshot.pods[i];
                pod.is_peer()
                    || (pod.host_network && !pod.phase.is_terminated() && !pod.ips.is_empty())
            })
            .collect();
        pods.sort_by_key(|&i| snapshot.pods[i].pod_ref().to_string());
        Ok(Cluster {
            snapshot,
            states,
            pods,
        })
    }

    /// What each node's resolve left out to fit the maps, node by node.
    pub fn degraded(&self) -> impl Iterator<Item = &Degraded> {
        self.states.values().flat_map(|state| state.degraded.iter())
    }

    fn pod(&self, index: usize) -> &Pod {
        &self.snapshot.pods[index]
    }

    fn find(&self, name: &str) -> Result<usize, ExplainError> {
        self.pods
            .iter()
            .copied()
            .find(|&i| self.pod(i).pod_ref().to_string() == name)
            .ok_or_else(|| ExplainError::UnknownPod {
                pod: name.to_owned(),
            })
    }

    /// Whether `peer` is an address of `pod`'s own node.
    fn own_node(&self, pod: &Pod, peer: IpAddr) -> bool {
        self.snapshot
            .nodes
            .iter()
            .any(|node| Some(&node.name) == pod.node.as_ref() && node.addresses.contains(&peer))
    }

    /// How a packet between `pod` and `peer` reaches `pod`'s programs: exempt from
    /// NetworkPolicy when `peer` is an address of the pod's own node or the pod reaches itself
    /// through its Service (`hairpin`).
    fn route(&self, pod: &Pod, peer: IpAddr, hairpin: bool) -> Route {
        if hairpin || self.own_node(pod, peer) {
            Route::Exempt
        } else {
            Route::Direct
        }
    }

    /// The kernel's decision at `pod` for `packet`; `None` for a hostNetwork pod, which has no
    /// programs of its own.
    fn decide(&self, pod: &Pod, direction: Direction, packet: Packet) -> Option<Decision> {
        if pod.host_network {
            return None;
        }
        // Every other pod in `pods` is an endpoint of its node, whose state is compiled.
        let decision = pod
            .node
            .as_ref()
            .and_then(|node| self.states.get(node))
            .and_then(|state| {
                state.decide(
                    &pod.pod_ref(),
                    direction,
                    packet.peer,
                    packet.protocol.number(),
                    packet.port,
                )
            })
            .unwrap_or(Decision::Denied {
                reason: DropReason::PolicyDenied,
                rule_id: 0,
            });
        Some(decision)
    }

    /// Whether `pod`'s side lets `packet` through.
    fn side_allows(&self, pod: &Pod, direction: Direction, packet: Packet) -> bool {
        self.decide(pod, direction, packet)
            .is_none_or(|decision| decision.allows_by(self.route(pod, packet.peer, packet.hairpin)))
    }

    /// Whether `client` may open a connection to `server`'s `port` reached `via`, over the
    /// address pair the module documentation describes.
    pub fn allowed(
        &self,
        client: &Pod,
        server: &Pod,
        protocol: Protocol,
        port: u16,
        via: Via,
    ) -> bool {
        let same_pod = client.pod_ref() == server.pod_ref();
        if same_pod && via == Via::Pod {
            return true;
        }
        let Some((client_ip, server_ip)) = address_pair(client, server) else {
            return false;
        };
        let packet = |peer| Packet::new(peer, same_pod, protocol, port);
        self.side_allows(client, Direction::Egress, packet(server_ip))
            && self.side_allows(server, Direction::Ingress, packet(client_ip))
    }

    pub fn matrix(&self, protocol: Protocol, port: u16, via: Via) -> Reachability {
        let names: Vec<String> = self
            .pods
            .iter()
            .map(|&i| self.pod(i).pod_ref().to_string())
            .collect();
        let by_name: BTreeMap<&str, &Pod> = self
            .pods
            .iter()
            .zip(&names)
            .map(|(&i, name)| (name.as_str(), self.pod(i)))
            .collect();
        let matrix = Matrix::from_fn(names.clone(), |client, server| {
            self.allowed(by_name[client], by_name[server], protocol, port, via)
                .into()
        });
        Reachability {
            protocol: protocol.name().to_owned(),
            port,
            matrix,
            via: (via != Via::Pod).then(|| via.name().to_owned()),
            wait_ms: None,
        }
    }

    pub fn verdict(
        &self,
        from: &str,
        to: &str,
        protocol: Protocol,
        port: u16,
        via: Via,
    ) -> Result<Verdict, ExplainError> {
        let client = self.pod(self.find(from)?);
        let server = self.pod(self.find(to)?);
        let same_pod = client.pod_ref() == server.pod_ref();
        let mut verdict = Verdict {
            from: from.to_owned(),
            to: to.to_owned(),
            protocol: protocol.name(),
            port,
            via,
            allowed: self.allowed(client, server, protocol, port, via),
            same_pod,
            common_family: false,
            egress: None,
            ingress: None,
        };
        if same_pod && via == Via::Pod {
            return Ok(verdict);
        }
        let Some((client_ip, server_ip)) = address_pair(client, server) else {
            return Ok(verdict);
        };
        verdict.common_family = true;
        let packet = |peer| Packet::new(peer, same_pod, protocol, port);
        verdict.egress = self.side(client, Direction::Egress, packet(server_ip));
        verdict.ingress = self.side(server, Direction::Ingress, packet(client_ip));
        Ok(verdict)
    }

    /// `pod`'s side of a connection, with the reasons; `None` for a hostNetwork pod.
    fn side(&self, pod: &Pod, direction: Direction, packet: Packet) -> Option<Side> {
        let Packet {
            peer,
            hairpin,
            protocol,
            port,
        } = packet;
        let decision = self.decide(pod, direction, packet)?;
        let route = self.route(pod, peer, hairpin);
        let probe = Probe {
            peer,
            protocol: protocol.number(),
            port,
            route,
        };
        let reference = spec::decide(&self.snapshot, pod, direction, probe);
        let evaluation = evaluate(
            &self.snapshot,
            pod,
            direction,
            peer,
            protocol.number(),
            port,
        );
        let state = pod.node.as_ref().and_then(|node| self.states.get(node));
        let decided_by = match decision {
            Decision::Allowed { rule_id } | Decision::Denied { rule_id, .. } => state
                .and_then(|state| state.rules.get(&rule_id))
                .map(ToString::to_string),
            Decision::NotIsolated => None,
        };
        Some(Side {
            pod: pod.pod_ref().to_string(),
            peer: peer.to_string(),
            allowed: decision.allows_by(route),
            own_node: self.own_node(pod, peer),
            own_service: hairpin,
            tier: match &reference.decider {
                Decider::Cluster(rule) => Some(rule.tier.name()),
                _ => None,
            },
            isolated_by: evaluation.isolated_by,
            decided_by,
            passed: reference.passed.iter().map(ToString::to_string).collect(),
            allowing_rules: evaluation
                .allowing
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
    }
}

/// A packet of a connection as one end's programs see it.
#[derive(Clone, Copy)]
struct Packet {
    /// The address at the other end.
    peer: IpAddr,
    /// The pod reaches itself through a Service.
    hairpin: bool,
    protocol: Protocol,
    port: u16,
}

impl Packet {
    const fn new(peer: IpAddr, hairpin: bool, protocol: Protocol, port: u16) -> Packet {
        Packet {
            peer,
            hairpin,
            protocol,
            port,
        }
    }
}

/// The server's first address and the client's address of the same family.
fn address_pair(client: &Pod, server: &Pod) -> Option<(IpAddr, IpAddr)> {
    server.ips.iter().find_map(|&server_ip| {
        client
            .ips
            .iter()
            .find(|ip| ip.is_ipv4() == server_ip.is_ipv4())
            .map(|&client_ip| (client_ip, server_ip))
    })
}

/// One connection's verdict and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub from: String,
    pub to: String,
    pub protocol: &'static str,
    pub port: u16,
    pub via: Via,
    pub allowed: bool,
    /// The client is the server: always allowed by pod IP, decided by ClusterNetworkPolicy
    /// alone through a Service.
    pub same_pod: bool,
    /// Whether the pods have an address family in common.
    pub common_family: bool,
    /// The client's side; absent for a pod reaching its own address, pods with no common family
    /// and hostNetwork pods, which have no programs of their own.
    pub egress: Option<Side>,
    /// The server's side, absent as the client's is.
    pub ingress: Option<Side>,
}

/// How one pod's programs treat the connection.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Side {
    pub pod: String,
    /// The address at the other end.
    pub peer: String,
    pub allowed: bool,
    /// The other end is an address of the pod's own node: NetworkPolicy allows the traffic,
    /// and only a ClusterNetworkPolicy rule decides it.
    pub own_node: bool,
    /// The pod reaches itself through a Service: NetworkPolicy allows it, and only a
    /// ClusterNetworkPolicy rule decides it.
    pub own_service: bool,
    /// The tier (`Admin` or `Baseline`) whose ClusterNetworkPolicy rule decided, if one did.
    pub tier: Option<&'static str>,
    /// The NetworkPolicies that isolate the pod in this direction.
    pub isolated_by: Vec<String>,
    /// The rule of the policy-map entry the kernel finds.
    pub decided_by: Option<String>,
    /// The ClusterNetworkPolicy `Pass` rules read on the way to the decision.
    pub passed: Vec<String>,
    /// Every NetworkPolicy rule that allows the connection.
    pub allowing_rules: Vec<String>,
}

impl Verdict {
    pub fn text(&self) -> String {
        let outcome = if self.allowed { "ALLOWED" } else { "DENIED" };
        let via = match self.via {
            Via::Pod => String::new(),
            via => format!(" via {}", via.name()),
        };
        let mut text = format!(
            "{} -> {} {}/{}{via}: {outcome}\n",
            printable(&self.from),
            printable(&self.to),
            self.protocol,
            self.port
        );
        if self.same_pod && self.via == Via::Pod {
            text.push_str(
                "  a pod always reaches itself by its own address: that traffic never crosses \
                 its veth\n",
            );
            return text;
        }
        if !self.common_family {
            text.push_str("  the pods have no address family in common\n");
            return text;
        }
        for (side, direction, preposition, end) in [
            (&self.egress, "egress", "to", &self.from),
            (&self.ingress, "ingress", "from", &self.to),
        ] {
            match side {
                Some(side) => text.push_str(&side.text(direction, preposition)),
                None => text.push_str(&format!(
                    "  {} {direction}: a hostNetwork pod, no programs of its own\n",
                    printable(end)
                )),
            }
        }
        text
    }
}

impl Side {
    fn text(&self, direction: &str, preposition: &str) -> String {
        let mut text = format!(
            "  {} {direction} ({preposition} {}): ",
            printable(&self.pod),
            self.peer
        );
        let outcome = if self.allowed { "allowed" } else { "denied" };
        let decided_by = self.decided_by.as_deref().map(printable);
        match (self.tier, &decided_by) {
            (Some(_), Some(rule)) => text.push_str(&format!("{outcome} by {rule}\n")),
            _ if self.isolated_by.is_empty() => text.push_str(&format!(
                "allowed, not isolated (no NetworkPolicy selects it for {direction}{})\n",
                if self.passed.is_empty() {
                    ""
                } else {
                    " and no ClusterNetworkPolicy rule decides"
                }
            )),
            _ => {
                text.push_str(&format!(
                    "isolated by {}; ",
                    printable(&self.isolated_by.join(", "))
                ));
                match &decided_by {
                    Some(rule) => {
                        text.push_str(&format!("allowed by {rule}\n"));
                        for other in self.allowing_rules.iter().filter(|r| **r != *rule) {
                            text.push_str(&format!("    also allowed by {}\n", printable(other)));
                        }
                    }
                    None if self.own_service => text.push_str(
                        "allowed: NetworkPolicy exempts a pod reaching itself through a Service\n",
                    ),
                    None if self.own_node => text.push_str(
                        "allowed: NetworkPolicy exempts traffic between a pod and its own node\n",
                    ),
                    None => text.push_str("denied: no rule allows it\n"),
                }
            }
        }
        for rule in &self.passed {
            text.push_str(&format!("    passed on by {}\n", printable(rule)));
        }
        text
    }
}
