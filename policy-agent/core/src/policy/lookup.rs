//! The kernel's lookup, in Rust: what the programs decide for a packet given a [`NodeState`].
//! `explain` and the tests evaluate compiled state through this, never around it.

use std::net::IpAddr;

use policy_common::{
    maps::{ENDPOINT_NOT_READY, WORLD_CLASS, policy_outcome},
    ports::probe_policy,
    verdict::{Direction, DropReason, Verdict},
};

use crate::policy::{
    spec::Route,
    state::{NodeState, PodRef, Prefix},
};

/// What an endpoint's programs decide for the first packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy isolates the endpoint in this direction, and no ClusterNetworkPolicy rule
    /// decides the packet.
    NotIsolated,
    /// The policy map has an entry for the packet that allows it, put there for this rule.
    Allowed { rule_id: u32 },
    /// Dropped for `reason`: isolated and no entry allows it (`PolicyDenied`, rule 0), a
    /// `Deny` rule of a ClusterNetworkPolicy decided it, or the endpoint drops everything
    /// (`NotReady`, rule 0).
    Denied { reason: DropReason, rule_id: u32 },
}

impl Decision {
    pub const fn allows(self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }

    /// Whether the decision allows a packet that travels by `route`.
    pub const fn allows_by(self, route: Route) -> bool {
        match route {
            Route::Direct => self.allows(),
            Route::Exempt => self.allows_exempt(),
        }
    }

    /// Whether the decision allows traffic NetworkPolicy exempts (between the pod and its own
    /// node, or to itself through its Service): only a ClusterNetworkPolicy `Deny`, or an
    /// endpoint that drops everything, drops it.
    pub const fn allows_exempt(self) -> bool {
        !matches!(
            self,
            Decision::Denied {
                reason: DropReason::AdminDenied | DropReason::BaselineDenied | DropReason::NotReady,
                ..
            }
        )
    }
}

impl NodeState {
    /// The peer class of an address: longest-prefix match over `peers`, else the world class.
    pub fn peer_class(&self, ip: IpAddr) -> u32 {
        (0..=Prefix::max_len(ip))
            .rev()
            .find_map(|len| self.peers.get(&Prefix::new(ip, len)).copied())
            .unwrap_or(WORLD_CLASS)
    }

    /// The decision of `pod`'s programs for a packet with `peer` on the other end (the source
    /// for ingress, the destination for egress) to `port`; `None` when `pod` is not an endpoint
    /// of this node.
    pub fn decide(
        &self,
        pod: &PodRef,
        direction: Direction,
        peer: IpAddr,
        protocol: u8,
        port: u16,
    ) -> Option<Decision> {
        let endpoint = self.endpoints.get(pod)?;
        let info = endpoint.info;
        if info.flags & ENDPOINT_NOT_READY != 0 {
            return Some(Decision::Denied {
                reason: DropReason::NotReady,
                rule_id: 0,
            });
        }
        if !info.decides(direction) {
            return Some(Decision::NotIsolated);
        }
        let class = self.peer_class(peer);
        let hit = probe_policy(
            info.endpoint_id,
            info.plan(direction),
            direction as u8,
            class,
            protocol,
            port,
            |key| self.policy.get(key).copied(),
        );
        Some(match policy_outcome(info.isolated(direction), hit) {
            (Ok(Verdict::Policy), rule_id) => Decision::Allowed { rule_id },
            (Ok(_), _) => Decision::NotIsolated,
            (Err(reason), rule_id) => Decision::Denied { reason, rule_id },
        })
    }
}
