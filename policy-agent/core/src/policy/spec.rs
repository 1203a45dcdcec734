//! NetworkPolicy and ClusterNetworkPolicy evaluated per packet, straight from the specification:
//! loop over every policy and rule. Slow on purpose and independent of the compiled state, so it
//! serves as the reference the compiled state is tested against, and lets `explain` list every
//! rule that allows a packet.

use std::net::IpAddr;

use policy_common::verdict::Direction;

use crate::policy::{
    cluster::{
        Action, ClusterNetworkPolicy, ClusterPeer, ClusterProtocol, ClusterRule, ClusterRuleRef,
        Tier,
    },
    model::{NamespaceScope, Peer, Pod, PortSpec, PortValue, Protocol, Rule, Snapshot},
    state::RuleRef,
};

/// How one side of a connection treats a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// The policies (`namespace/name`) that select the pod with this direction in their types.
    pub isolated_by: Vec<String>,
    /// Every rule that allows the packet.
    pub allowing: Vec<RuleRef>,
}

impl Evaluation {
    pub fn isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }

    pub fn allows(&self) -> bool {
        !self.isolated() || !self.allowing.is_empty()
    }
}

/// How `pod` treats a packet in `direction` whose other end is `peer` (the source for ingress,
/// the destination for egress), with IP protocol number `protocol` and destination `port`.
pub fn evaluate(
    snapshot: &Snapshot,
    pod: &Pod,
    direction: Direction,
    peer: IpAddr,
    protocol: u8,
    port: u16,
) -> Evaluation {
    let peer_pod = peer_pod(snapshot, peer);
    let mut evaluation = Evaluation {
        isolated_by: Vec::new(),
        allowing: Vec::new(),
    };
    for policy in &snapshot.policies {
        if !policy.selects(pod) || !policy.has_type(direction) {
            continue;
        }
        evaluation
            .isolated_by
            .push(format!("{}/{}", policy.namespace, policy.name));
        for (index, rule) in policy.rules(direction).iter().enumerate() {
            let packet = Packet {
                snapshot,
                pod,
                direction,
                peer,
                peer_pod,
                protocol,
                port,
            };
            if packet.matches(rule, &policy.namespace) {
                evaluation.allowing.push(RuleRef {
                    namespace: policy.namespace.clone(),
                    policy: policy.name.clone(),
                    direction,
                    index,
                });
            }
        }
    }
    evaluation.isolated_by.sort();
    evaluation.allowing.sort();
    evaluation
}

struct Packet<'a> {
    snapshot: &'a Snapshot,
    pod: &'a Pod,
    direction: Direction,
    peer: IpAddr,
    peer_pod: Option<&'a Pod>,
    protocol: u8,
    port: u16,
}

impl Packet<'_> {
    fn matches(&self, rule: &Rule, policy_namespace: &str) -> bool {
        let peer_ok = rule.peers.is_empty()
            || rule
                .peers
                .iter()
                .any(|peer| self.peer_matches(peer, policy_namespace));
        peer_ok && (rule.ports.is_empty() || rule.ports.iter().any(|spec| self.port_matches(spec)))
    }

    fn peer_matches(&self, peer: &Peer, policy_namespace: &str) -> bool {
        match peer {
            Peer::IpBlock(block) => block.contains(self.peer),
            Peer::Pods(pod_peer) => {
                let Some(peer_pod) = self.peer_pod else {
                    return false;
                };
                let namespace_ok = match &pod_peer.namespaces {
                    NamespaceScope::Own(_) => peer_pod.namespace == policy_namespace,
                    NamespaceScope::Selected(selector) => {
                        selector.matches(&self.snapshot.namespace_labels(&peer_pod.namespace))
                    }
                };
                namespace_ok && pod_peer.pods.matches(&peer_pod.labels)
            }
        }
    }

    fn port_matches(&self, spec: &PortSpec) -> bool {
        if spec.protocol.number() != self.protocol {
            return false;
        }
        match &spec.port {
            None => true,
            Some(PortValue::Number(first)) => {
                let last = spec.end_port.unwrap_or(*first);
                (*first..=last).contains(&self.port)
            }
            Some(PortValue::Name(name)) => {
                // The pod that owns the destination address, however the peer matched: on
                // egress to an address that is no pod's, a name matches nothing.
                let receiver = match self.direction {
                    Direction::Ingress => Some(self.pod),
                    Direction::Egress => self.peer_pod,
                };
                receiver.and_then(|pod| pod.named_port(name, spec.protocol)) == Some(self.port)
            }
        }
    }
}

/// What kind of traffic a packet is, for the exemptions of NetworkPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Between the pod and its peer (after any Service translation): every tier decides. A
    /// pod's packets to its own address never leave it, so no tier does.
    Direct,
    /// Between the pod and an address of its own node, or from the pod to itself through one
    /// of its Services: NetworkPolicy always allows it, ClusterNetworkPolicy decides it.
    Exempt,
}

/// What decided one side of a connection, in the order the tiers are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decider {
    /// A pod reaching its own address directly: no policy of any tier applies.
    OwnAddress,
    /// An `Accept` or `Deny` rule of a ClusterNetworkPolicy.
    Cluster(ClusterRuleRef),
    /// NetworkPolicy isolates the pod in this direction: allowed when a rule allows it or the
    /// traffic is exempt from NetworkPolicy, denied otherwise.
    NetworkPolicy(Evaluation),
    /// No tier decided: allowed.
    Default,
}

/// The decision of one side of a connection, and the `Pass` rules read on the way to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub decider: Decider,
    pub passed: Vec<ClusterRuleRef>,
}

/// One packet as one side sees it: the other end's address, the IP protocol number and the
/// destination port (0 for protocols without ports), and how it was addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub peer: IpAddr,
    pub protocol: u8,
    pub port: u16,
    pub route: Route,
}

/// How `pod` decides `probe` in `direction` through every tier: Admin, NetworkPolicy, Baseline,
/// then allowed.
pub fn decide(snapshot: &Snapshot, pod: &Pod, direction: Direction, probe: Probe) -> Decision {
    let mut passed = Vec::new();
    if pod.ips.contains(&probe.peer) && probe.route == Route::Direct {
        return Decision {
            allowed: true,
            decider: Decider::OwnAddress,
            passed,
        };
    }
    let packet = Packet {
        snapshot,
        pod,
        direction,
        peer: probe.peer,
        peer_pod: peer_pod(snapshot, probe.peer),
        protocol: probe.protocol,
        port: probe.port,
    };
    if let Some(decision) = packet.tier(Tier::Admin, &mut passed) {
        return decision.with(passed);
    }
    let evaluation = evaluate(
        snapshot,
        pod,
        direction,
        probe.peer,
        probe.protocol,
        probe.port,
    );
    if evaluation.isolated() {
        return Decision {
            allowed: probe.route == Route::Exempt || evaluation.allows(),
            decider: Decider::NetworkPolicy(evaluation),
            passed,
        };
    }
    if let Some(decision) = packet.tier(Tier::Baseline, &mut passed) {
        return decision.with(passed);
    }
    Decision {
        allowed: true,
        decider: Decider::Default,
        passed,
    }
}

/// The pod whose address `ip` is, if it is a policy peer's.
fn peer_pod(snapshot: &Snapshot, ip: IpAddr) -> Option<&Pod> {
    snapshot
        .pods
        .iter()
        .find(|candidate| candidate.is_peer() && candidate.ips.contains(&ip))
}

impl Decision {
    fn with(mut self, passed: Vec<ClusterRuleRef>) -> Decision {
        self.passed = passed;
        self
    }
}

impl Packet<'_> {
    /// The first `Accept` or `Deny` rule of `tier` that matches, reading the tier's policies
    /// that select the pod in order; `None` when none does or a `Pass` rule comes first.
    fn tier(&self, tier: Tier, passed: &mut Vec<ClusterRuleRef>) -> Option<Decision> {
        let mut policies: Vec<&ClusterNetworkPolicy> = self
            .snapshot
            .cluster_policies
            .iter()
            .filter(|policy| policy.tier == tier && self.subject_of(policy))
            .collect();
        policies.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        for policy in policies {
            for (index, rule) in policy.rules(self.direction).iter().enumerate() {
                if !self.cluster_rule_matches(rule) {
                    continue;
                }
                let rule_ref = ClusterRuleRef::of(policy, self.direction, index);
                return match rule.action {
                    Action::Pass => {
                        passed.push(rule_ref);
                        None
                    }
                    Action::Accept | Action::Deny => Some(Decision {
                        allowed: rule.action == Action::Accept,
                        decider: Decider::Cluster(rule_ref),
                        passed: Vec::new(),
                    }),
                };
            }
        }
        None
    }

    fn subject_of(&self, policy: &ClusterNetworkPolicy) -> bool {
        policy.subject.pods().matches(
            self.pod,
            &self.snapshot.namespace_labels(&self.pod.namespace),
        )
    }

    fn cluster_rule_matches(&self, rule: &ClusterRule) -> bool {
        let peer_ok = rule
            .peers
            .iter()
            .any(|peer| self.cluster_peer_matches(peer, rule.action));
        peer_ok
            && (rule.protocols.is_empty()
                || rule
                    .protocols
                    .iter()
                    .any(|protocol| self.cluster_protocol_matches(protocol)))
    }

    fn cluster_peer_matches(&self, peer: &ClusterPeer, action: Action) -> bool {
        match peer {
            ClusterPeer::Namespaces(namespaces) => self.peer_pod.is_some_and(|peer_pod| {
                namespaces.matches(&self.snapshot.namespace_labels(&peer_pod.namespace))
            }),
            ClusterPeer::Pods(pods) => self.peer_pod.is_some_and(|peer_pod| {
                pods.matches(
                    peer_pod,
                    &self.snapshot.namespace_labels(&peer_pod.namespace),
                )
            }),
            ClusterPeer::Networks(prefixes) => {
                prefixes.iter().any(|prefix| prefix.contains(self.peer))
            }
            ClusterPeer::Nodes(selector) => {
                self.snapshot.nodes.iter().any(|node| {
                    selector.matches(&node.labels) && node.addresses.contains(&self.peer)
                })
            }
            ClusterPeer::DomainNames(_) => false,
            ClusterPeer::Unknown => action != Action::Accept,
        }
    }

    fn cluster_protocol_matches(&self, protocol: &ClusterProtocol) -> bool {
        match protocol {
            ClusterProtocol::Ports { protocol, ports } => {
                protocol.number() == self.protocol && ports.contains(self.port)
            }
            ClusterProtocol::Named(name) => {
                let receiver = match self.direction {
                    Direction::Ingress => Some(self.pod),
                    Direction::Egress => self.peer_pod,
                };
                // The name with the packet's protocol: a named port carries its own.
                let protocol = Protocol::ALL
                    .into_iter()
                    .find(|protocol| protocol.number() == self.protocol);
                receiver
                    .zip(protocol)
                    .and_then(|(pod, protocol)| pod.named_port(name, protocol))
                    == Some(self.port)
            }
        }
    }
}
