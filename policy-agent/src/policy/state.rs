//! The desired datapath state of one node, in the map types of `policy-common`, and the delta
//! between two such states.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use policy_common::{
    maps::{EndpointInfo, PolicyKey, PolicyValue},
    verdict::Direction,
};

/// A pod, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An IP prefix of the peer-class LPM tries. `addr` has no bits set past `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One local pod's entry: its addresses and what goes into the endpoint map for its interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointState {
    pub pod: PodRef,
    pub ips: Vec<IpAddr>,
    /// Endpoint id, isolation flags and lookup plans. The datapath keys it by the pod's ifindex.
    pub info: EndpointInfo,
}

/// What a rule id stands for, so drops and allows can name the policy behind them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub namespace: String,
    pub policy: String,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        write!(
            f,
            "{}/{}, {} rule {}",
            self.namespace, self.policy, direction, self.index
        )
    }
}

/// The desired datapath state of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The endpoints on this node, by pod.
    pub endpoints: BTreeMap<PodRef, EndpointState>,
    /// Every prefix of the peer-class LPM tries (both families) and its class.
    pub peers: BTreeMap<Prefix, u32>,
    /// Every entry of the policy map.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Every rule id in `policy`, and what it stands for.
    pub rules: BTreeMap<u32, RuleRef>,
}

/// The map changes that turn one [`NodeState`] into another.
///
/// Applied in this order so that no intermediate state allows what neither end state allows
/// longer than the update takes: policy upserts, peer upserts, endpoint upserts, peer removals,
/// policy removals, endpoint removals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub policy_upserts: Vec<(PolicyKey, PolicyValue)>,
    pub peer_upserts: Vec<(Prefix, u32)>,
    pub endpoint_upserts: Vec<EndpointState>,
    pub peer_removals: Vec<Prefix>,
    pub policy_removals: Vec<PolicyKey>,
    pub endpoint_removals: Vec<PodRef>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.policy_upserts.is_empty()
            && self.peer_upserts.is_empty()
            && self.endpoint_upserts.is_empty()
            && self.peer_removals.is_empty()
            && self.policy_removals.is_empty()
            && self.endpoint_removals.is_empty()
    }
}
