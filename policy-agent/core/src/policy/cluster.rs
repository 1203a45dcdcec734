//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) as the resolver reads it: the
//! cluster operator's Admin tier, decided before NetworkPolicy, and Baseline tier, decided for
//! pods no NetworkPolicy isolates; and the Nodes whose addresses `nodes` peers match.

use std::{fmt, net::IpAddr};

use policy_common::verdict::Direction;

use crate::policy::{
    model::{LabelSelector, Labels, Pod, Protocol},
    state::{Prefix, direction_name},
};

/// The highest `spec.priority`; lower numbers are decided first.
pub const MAX_PRIORITY: u32 = 1000;
/// The most rules one direction of a policy holds, and the most peers or protocols of a rule.
pub const MAX_RULES: usize = 25;

/// `spec.tier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Decided before NetworkPolicy.
    Admin,
    /// Decided for pods that no NetworkPolicy isolates in the direction.
    Baseline,
}

impl Tier {
    pub const ALL: [Tier; 2] = [Tier::Admin, Tier::Baseline];

    /// The API spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule's `action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Allowed; nothing after it in any tier is read.
    Accept,
    /// Dropped; nothing after it in any tier is read.
    Deny,
    /// The rest of this tier is skipped: the next tier decides.
    Pass,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Accept, Action::Deny, Action::Pass];

    /// The API spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Pods chosen by their namespace's labels and their own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodsSelector {
    /// Absent: every namespace.
    pub namespaces: LabelSelector,
    pub pods: LabelSelector,
}

impl PodsSelector {
    /// Whether `pod`, in a namespace labelled `namespace_labels`, is chosen. Host-network pods
    /// never are: they share their node's addresses.
    pub fn matches(&self, pod: &Pod, namespace_labels: &Labels) -> bool {
        !pod.host_network
            && self.namespaces.matches(namespace_labels)
            && self.pods.matches(&pod.labels)
    }
}

/// `spec.subject`: the pods the policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// Every pod of the namespaces the selector matches.
    Namespaces(LabelSelector),
    Pods(PodsSelector),
}

impl Subject {
    /// The subject as a [`PodsSelector`]: `namespaces: S` is `pods` of S with every pod.
    pub fn pods(&self) -> PodsSelector {
        match self {
            Subject::Namespaces(namespaces) => PodsSelector {
                namespaces: namespaces.clone(),
                pods: LabelSelector::default(),
            },
            Subject::Pods(pods) => pods.clone(),
        }
    }
}

/// One element of a rule's `from` or `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterPeer {
    /// Every pod of the namespaces the selector matches.
    Namespaces(LabelSelector),
    Pods(PodsSelector),
    /// Egress only: destinations inside any of these prefixes, pods and nodes included.
    Networks(Vec<Prefix>),
    /// Egress only: the addresses in `status.addresses` of the nodes the selector matches.
    Nodes(LabelSelector),
    /// Egress only: accepted and validated, but matching nothing until names have a datapath.
    DomainNames(Vec<String>),
    /// A peer with none of the fields this implementation knows (a newer API's): an `Accept`
    /// rule matches nothing through it, a `Deny` or `Pass` rule everything.
    Unknown,
}

/// A destination port: one, or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One element of a rule's `protocols`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterProtocol {
    /// `tcp`, `udp` or `sctp` with its `destinationPort`.
    Ports {
        protocol: Protocol,
        ports: PortRange,
    },
    /// `destinationNamedPort`: the containerPort of that name on the pod receiving the
    /// traffic, with that port's protocol. Never matches a destination that is not a pod.
    Named(String),
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// `name`, when the rule has one.
    pub name: Option<String>,
    pub action: Action,
    /// `from` or `to`: at least one.
    pub peers: Vec<ClusterPeer>,
    /// Empty: all traffic, every protocol (ICMP included) and port.
    pub protocols: Vec<ClusterProtocol>,
}

/// A ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetworkPolicy {
    pub name: String,
    pub tier: Tier,
    /// 0 to [`MAX_PRIORITY`]; lower first.
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterNetworkPolicy {
    pub fn rules(&self, direction: Direction) -> &[ClusterRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The order policies of one tier are read in: by priority, and, where priorities are
    /// equal, by name, so that overlapping policies of equal priority are decided the same way
    /// on every node and after every restart.
    pub fn order_key(&self) -> (u32, &str) {
        (self.priority, &self.name)
    }
}

/// What a ClusterNetworkPolicy rule id stands for, so verdicts name the tier, the policy and
/// the rule that decided them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterRuleRef {
    pub tier: Tier,
    pub policy: String,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub index: usize,
    /// The rule's `name`, when it has one.
    pub name: Option<String>,
}

impl ClusterRuleRef {
    pub fn of(policy: &ClusterNetworkPolicy, direction: Direction, index: usize) -> Self {
        ClusterRuleRef {
            tier: policy.tier,
            policy: policy.name.clone(),
            direction,
            index,
            name: policy.rules(direction)[index].name.clone(),
        }
    }
}

impl fmt::Display for ClusterRuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, {} rule ",
            self.tier,
            self.policy,
            direction_name(self.direction)
        )?;
        match &self.name {
            Some(name) => write!(f, "{name:?}"),
            None => write!(f, "{}", self.index),
        }
    }
}

/// A Node: what `nodes` peers match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// The addresses of `status.addresses` that are IPs (InternalIP and ExternalIP).
    pub addresses: Vec<IpAddr>,
}
