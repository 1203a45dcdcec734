//! The kernel's lookup, in Rust: what the programs decide for a packet given a [`NodeState`].
//! `explain` and the tests evaluate compiled state through this, never around it.

use std::net::IpAddr;

use policy_common::{maps::WORLD_CLASS, ports::probe_policy, verdict::Direction};

use crate::policy::state::{NodeState, PodRef, Prefix};

/// What an endpoint's programs decide for the first packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The endpoint is not isolated in this direction.
    NotIsolated,
    /// The policy map has an entry for the packet, put there for this rule.
    Allowed { rule_id: u32 },
    /// Isolated, and no entry matches.
    Denied,
}

impl Decision {
    pub const fn allows(self) -> bool {
        !matches!(self, Decision::Denied)
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
        if !info.isolated(direction) {
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
        Some(match hit {
            Some(value) => Decision::Allowed {
                rule_id: value.rule_id,
            },
            None => Decision::Denied,
        })
    }
}
