//! NetworkPolicy evaluated per packet, straight from the specification: loop over every policy
//! and rule. Slow on purpose and independent of the compiled state, so it serves as the reference
//! the compiled state is tested against, and lets `explain` list every rule that allows a packet.

use std::net::IpAddr;

use policy_common::verdict::Direction;

use crate::policy::{
    model::{Labels, Namespace, NamespaceScope, Peer, Pod, PortSpec, PortValue, Rule, Snapshot},
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
    let peer_pod = snapshot
        .pods
        .iter()
        .find(|candidate| candidate.is_peer() && candidate.ips.contains(&peer));
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
                        selector.matches(&self.namespace_labels(&peer_pod.namespace))
                    }
                };
                namespace_ok && pod_peer.pods.matches(&peer_pod.labels)
            }
        }
    }

    fn namespace_labels(&self, name: &str) -> Labels {
        let declared = self.snapshot.namespaces.iter().find(|ns| ns.name == name);
        match declared {
            Some(namespace) => namespace.effective_labels(),
            None => Namespace {
                name: name.to_owned(),
                labels: Labels::new(),
            }
            .effective_labels(),
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
