//! The plain snapshot the resolver works on: namespaces, pods, Services and NetworkPolicies,
//! already validated by whichever source produced them.

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use policy_common::verdict::Direction;
use serde::{Deserialize, Serialize};

use crate::policy::{
    cluster::{ClusterNetworkPolicy, Node},
    state::{ObjectRef, PodRef, Prefix},
};

/// The label the API server puts on every namespace, whose value is the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// Everything the resolver reads, as one consistent view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub policies: Vec<NetworkPolicy>,
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// The nodes `nodes` peers of ClusterNetworkPolicies select from.
    pub nodes: Vec<Node>,
}

impl Snapshot {
    /// The labels selectors see on namespace `name`: its own and the name label, also for a
    /// namespace the snapshot does not list.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.iter().find(|ns| ns.name == name) {
            Some(namespace) => namespace.effective_labels(),
            None => Namespace {
                name: name.to_owned(),
                labels: Labels::new(),
            }
            .effective_labels(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// The labels selectors see: the object's labels plus [`NAMESPACE_NAME_LABEL`], which the API
    /// server always sets (and a manifest may omit).
    pub fn effective_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), self.name.clone());
        labels
    }
}

/// `status.phase`; a pod without one counts as [`PodPhase::Running`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PodPhase {
    Pending,
    #[default]
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    /// Succeeded and Failed pods are gone from the network: their addresses may be reused.
    pub const fn is_terminated(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `spec.nodeName`.
    pub node: Option<String>,
    pub phase: PodPhase,
    pub host_network: bool,
    /// `status.podIPs` (or `status.podIP`), in order; both families for dual-stack pods.
    pub ips: Vec<IpAddr>,
    /// The containerPorts of every container.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Whether the pod's addresses stand for it as a policy peer: it has its own network
    /// namespace, has not terminated and has an address.
    pub fn is_peer(&self) -> bool {
        !self.host_network && !self.phase.is_terminated() && !self.ips.is_empty()
    }

    /// Whether the pod is an endpoint of `node`: a peer scheduled there.
    pub fn is_endpoint_of(&self, node: &str) -> bool {
        self.is_peer() && self.node.as_deref() == Some(node)
    }

    /// The number a named port stands for on this pod, if a container declares it.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|port| port.protocol == protocol && port.name.as_deref() == Some(name))
            .map(|port| port.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

/// A Service: carried for the datapath (ClusterIP handling); the resolver itself ignores it,
/// since NetworkPolicy applies to pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// Empty for a Service without selector: it has no endpoints to derive.
    pub selector: Labels,
    /// `spec.clusterIPs` (or `spec.clusterIP`) without `None`.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`: no virtual address.
    pub headless: bool,
    pub ports: Vec<ServicePort>,
}

impl Service {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// `spec.type` of a Service; `ClusterIP` when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub const ALL: [ServiceType; 4] = [
        ServiceType::ClusterIp,
        ServiceType::NodePort,
        ServiceType::LoadBalancer,
        ServiceType::ExternalName,
    ];

    /// The API spelling.
    pub const fn name(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }

    /// Whether the Service's ports have node ports.
    pub const fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: PortValue,
    /// `nodePort`, as written.
    pub node_port: Option<u16>,
}

/// The transport protocols NetworkPolicy ports name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A name that is not `TCP`, `UDP` or `SCTP`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
pub struct ProtocolParseError(String);

impl FromStr for Protocol {
    type Err = ProtocolParseError;

    fn from_str(text: &str) -> Result<Protocol, ProtocolParseError> {
        Protocol::from_name(text).ok_or_else(|| ProtocolParseError(text.to_owned()))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A label selector: every `match_labels` pair AND every requirement.
/// The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted; empty for `Exists` and `DoesNotExist`.
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    /// `NotIn` and `DoesNotExist` match objects that lack the key.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// `spec.podSelector`: the pods of the policy's namespace it applies to.
    pub pod_selector: LabelSelector,
    /// `spec.policyTypes` as written; empty when absent (see [`NetworkPolicy::has_type`]).
    pub policy_types: Vec<Direction>,
    /// `spec.ingress`; absent and empty mean the same: no rules.
    pub ingress: Vec<Rule>,
    /// `spec.egress`; absent and empty mean the same: no rules.
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// Whether the policy isolates its pods in this direction. Without `policyTypes`, Ingress
    /// always, and Egress when the policy has at least one egress rule (the API server's default).
    pub fn has_type(&self, direction: Direction) -> bool {
        if self.policy_types.is_empty() {
            match direction {
                Direction::Ingress => true,
                Direction::Egress => !self.egress.is_empty(),
            }
        } else {
            self.policy_types.contains(&direction)
        }
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy selects the pod (it must be in the policy's namespace).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// One ingress or egress rule: it matches when one peer AND one port match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `from` or `to`; empty (or absent) matches every peer.
    pub peers: Vec<Peer>,
    /// Empty (or absent) matches every protocol and port.
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// podSelector and/or namespaceSelector.
    Pods(PodPeer),
    IpBlock(IpBlock),
}

/// Pods selected by label: those of `namespaces` that `pods` selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodPeer {
    pub namespaces: NamespaceScope,
    /// An absent podSelector is the empty selector: every pod of those namespaces.
    pub pods: LabelSelector,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceScope {
    /// No namespaceSelector: the policy's own namespace.
    Own(String),
    /// The namespaces the selector matches (with their implicit name label).
    Selected(LabelSelector),
}

/// `cidr` minus every `except` prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpBlock {
    pub cidr: Prefix,
    pub except: Vec<Prefix>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    /// Defaults to TCP.
    pub protocol: Protocol,
    /// Absent: every port of the protocol.
    pub port: Option<PortValue>,
    /// Only with a numeric `port`, and never below it: the range `port..=end_port`.
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(u16),
    /// A containerPort name, resolved against the pod that receives the traffic.
    Name(String),
}

impl fmt::Display for PortValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortValue::Number(n) => write!(f, "{n}"),
            PortValue::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.match_labels.is_empty() && self.match_expressions.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        for requirement in &self.match_expressions {
            parts.push(match requirement.operator {
                Operator::In => {
                    format!("{} in ({})", requirement.key, requirement.values.join(","))
                }
                Operator::NotIn => {
                    format!(
                        "{} notin ({})",
                        requirement.key,
                        requirement.values.join(",")
                    )
                }
                Operator::Exists => requirement.key.clone(),
                Operator::DoesNotExist => format!("!{}", requirement.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods(PodPeer { namespaces, pods }) => match namespaces {
                NamespaceScope::Own(namespace) => write!(f, "pods {pods} in {namespace}"),
                NamespaceScope::Selected(selector) => {
                    write!(f, "pods {pods} in namespaces {selector}")
                }
            },
            Peer::IpBlock(block) => {
                write!(f, "ipBlock {}", block.cidr)?;
                if !block.except.is_empty() {
                    let except: Vec<String> =
                        block.except.iter().map(ToString::to_string).collect();
                    write!(f, " except {}", except.join(","))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for ContainerPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}/{}",
            self.name.as_deref().unwrap_or("-"),
            self.port,
            self.protocol
        )
    }
}
