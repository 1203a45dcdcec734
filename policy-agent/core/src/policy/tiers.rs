//! The tiers compiled into policy entries: for an endpoint that a ClusterNetworkPolicy applies to
//! in a direction, the final verdict of every (peer class, protocol, port range) any rule tells
//! apart, so the kernel still makes one lookup and never walks rules.
//!
//! Each rule of the endpoint and direction (Admin, NetworkPolicy, Baseline) is a [`RuleMatch`]:
//! the classes its peers reach (or every address) and its ports. [`Tiers::verdict`] reads them
//! as the specification does: Admin rules in order (the first match decides; `Pass` leaves the
//! tier), then NetworkPolicy when it isolates the endpoint (allowed by any matching rule, else
//! denied), else Baseline rules, else allowed. That verdict is computed for a row per class some
//! rule names and a row for every other address (`ANY_PEER_CLASS`), on the port segments the
//! rules' boundaries cut, and written only where it differs from what the kernel's lookup would
//! fall back to: a class row falls back to the any-peer row, a protocol to the row's
//! any-protocol entry, and a miss to the endpoint's default (denied when NetworkPolicy isolates
//! it, allowed otherwise). So every packet finds exactly the verdict the rules give it, and an
//! endpoint's entries grow with its rules and the classes they name, never with the pods.

use std::collections::{BTreeMap, BTreeSet};

use policy_common::{
    maps::{ANY_PEER_CLASS, PolicyAction, PolicyValue},
    verdict::Direction,
};

use crate::policy::{
    cluster::{Action, ClusterNetworkPolicy, ClusterPeer, Node, Tier},
    model::{IpBlock, NamespaceScope, Peer, PodPeer},
    state::Prefix,
};

/// The transport protocols with ports, as IP protocol numbers.
const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// What one rule matches at one endpoint and direction.
#[derive(Debug, Default)]
pub(super) struct RuleMatch {
    /// The classes (resolver indices) the rule's peers reach; `None`: every address.
    pub reached: Option<BTreeSet<usize>>,
    /// Ports the same for every peer: (protocol, or `None` for every protocol, first, last).
    pub ranges: Vec<(Option<u8>, u16, u16)>,
    /// Ports that depend on the destination's class (egress named ports): (protocol, port).
    pub by_class: BTreeMap<usize, Vec<(u8, u16)>>,
}

impl RuleMatch {
    /// Whether the rule matches a packet of `protocol` (`None`: one without ports) to `port`
    /// whose peer is in `row` (`None`: a class no rule names).
    fn matches(&self, row: Option<usize>, protocol: Option<u8>, port: u16) -> bool {
        let peer = match &self.reached {
            None => true,
            Some(reached) => row.is_some_and(|row| reached.contains(&row)),
        };
        peer && (self.ranges.iter().any(|&(p, first, last)| {
            p.is_none() || (p == protocol && first <= port && port <= last)
        }) || row
            .and_then(|row| self.by_class.get(&row))
            .is_some_and(|ports| {
                ports
                    .iter()
                    .any(|&(p, number)| Some(p) == protocol && number == port)
            }))
    }

    /// The port segment starts this rule adds for `protocol` in `row`.
    fn boundaries(&self, row: Option<usize>, protocol: u8, starts: &mut Vec<u32>) {
        for &(p, first, last) in &self.ranges {
            if p == Some(protocol) {
                starts.push(u32::from(first));
                starts.push(u32::from(last) + 1);
            }
        }
        for &(p, port) in row
            .and_then(|row| self.by_class.get(&row))
            .into_iter()
            .flatten()
        {
            if p == protocol {
                starts.push(u32::from(port));
                starts.push(u32::from(port) + 1);
            }
        }
    }
}

/// One painted entry: `value` for `first..=last` of `protocol` (`None`: any protocol) from the
/// peers of `row` (`None`: any peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Painted {
    pub row: Option<usize>,
    pub protocol: Option<u8>,
    pub first: u16,
    pub last: u16,
    pub value: PolicyValue,
}

/// One rule of a tier as the endpoint reads it.
pub(super) struct TierRule<'m> {
    pub action: Action,
    pub rule_id: u32,
    pub matched: &'m RuleMatch,
}

/// Every rule of one endpoint and direction, tier by tier.
pub(super) struct Tiers<'m> {
    pub admin: Vec<TierRule<'m>>,
    /// The NetworkPolicy rules and their ids; read only when `isolated`.
    pub network: Vec<(&'m RuleMatch, u32)>,
    pub isolated: bool,
    pub baseline: Vec<TierRule<'m>>,
}

impl Tiers<'_> {
    /// What a packet gets when no entry matches it.
    fn miss(&self) -> PolicyValue {
        if self.isolated {
            PolicyValue::new(PolicyAction::DenyIsolated, 0)
        } else {
            PolicyValue::allow(0)
        }
    }

    /// The verdict of the tiers for a packet to `port` of `protocol` whose peer is in `row`.
    pub fn verdict(&self, row: Option<usize>, protocol: Option<u8>, port: u16) -> PolicyValue {
        if let Some(value) = tier(&self.admin, Tier::Admin, row, protocol, port) {
            return value;
        }
        if self.isolated {
            let allowing = self
                .network
                .iter()
                .filter(|(matched, _)| matched.matches(row, protocol, port))
                .map(|&(_, rule_id)| rule_id)
                .min();
            return match allowing {
                Some(rule_id) => PolicyValue::allow(rule_id),
                None => PolicyValue::new(PolicyAction::DenyIsolated, 0),
            };
        }
        tier(&self.baseline, Tier::Baseline, row, protocol, port).unwrap_or(PolicyValue::allow(0))
    }

    fn matches(&self) -> impl Iterator<Item = &RuleMatch> {
        self.admin
            .iter()
            .chain(&self.baseline)
            .map(|rule| rule.matched)
            .chain(self.network.iter().map(|(matched, _)| *matched))
    }

    /// The entries that give every packet its verdict.
    pub fn paint(&self) -> Vec<Painted> {
        let mut rows: BTreeSet<usize> = BTreeSet::new();
        for matched in self.matches() {
            rows.extend(matched.reached.iter().flatten().copied());
            rows.extend(matched.by_class.keys().copied());
        }
        let mut painted = Vec::new();
        let any_other = self.verdict(None, None, 0);
        let any_fallback = if any_other != self.miss() {
            painted.push(Painted::any_protocol(None, any_other));
            Some(any_other)
        } else {
            None
        };
        self.paint_row(None, any_fallback, &mut painted);
        for row in rows {
            let other = self.verdict(Some(row), None, 0);
            let fallback = if other != any_other {
                painted.push(Painted::any_protocol(Some(row), other));
                Some(other)
            } else {
                None
            };
            self.paint_row(Some(row), fallback, &mut painted);
        }
        painted
    }

    /// The port entries of `row`: the segments whose verdict differs from what the lookup
    /// would fall back to, the row's any-protocol verdict when it has one, else the any-peer
    /// row's (for the any-peer row itself: the miss).
    fn paint_row(
        &self,
        row: Option<usize>,
        row_any_protocol: Option<PolicyValue>,
        painted: &mut Vec<Painted>,
    ) {
        for protocol in PORT_PROTOCOLS {
            let mut starts = vec![0u32];
            for matched in self.matches() {
                matched.boundaries(row, protocol, &mut starts);
            }
            starts.sort_unstable();
            starts.dedup();
            starts.retain(|&start| start <= u32::from(u16::MAX));
            // Segments to write, neighbours of one value merged into one range.
            let mut runs: Vec<Painted> = Vec::new();
            for (i, &start) in starts.iter().enumerate() {
                let first = start as u16;
                let last = starts
                    .get(i + 1)
                    .map_or(u16::MAX, |&next| (next - 1) as u16);
                let value = self.verdict(row, Some(protocol), first);
                let fallback = match (row_any_protocol, row) {
                    (Some(value), _) => value,
                    (None, Some(_)) => self.verdict(None, Some(protocol), first),
                    (None, None) => self.miss(),
                };
                if value == fallback {
                    continue;
                }
                match runs.last_mut() {
                    Some(run) if run.value == value && u32::from(run.last) + 1 == start => {
                        run.last = last;
                    }
                    _ => runs.push(Painted {
                        row,
                        protocol: Some(protocol),
                        first,
                        last,
                        value,
                    }),
                }
            }
            painted.extend(runs);
        }
    }
}

impl Painted {
    fn any_protocol(row: Option<usize>, value: PolicyValue) -> Painted {
        Painted {
            row,
            protocol: None,
            first: 0,
            last: u16::MAX,
            value,
        }
    }
}

/// The first Accept or Deny rule of `rules` that matches, as an entry value; `None` when none
/// does or a Pass rule comes first.
fn tier(
    rules: &[TierRule<'_>],
    tier: Tier,
    row: Option<usize>,
    protocol: Option<u8>,
    port: u16,
) -> Option<PolicyValue> {
    let rule = rules
        .iter()
        .find(|rule| rule.matched.matches(row, protocol, port))?;
    match rule.action {
        Action::Pass => None,
        Action::Accept => Some(PolicyValue::allow(rule.rule_id)),
        Action::Deny => Some(PolicyValue::new(
            match tier {
                Tier::Admin => PolicyAction::DenyAdmin,
                Tier::Baseline => PolicyAction::DenyBaseline,
            },
            rule.rule_id,
        )),
    }
}

/// The ClusterNetworkPolicies in the order they are read (Admin before Baseline, by priority,
/// then name), with each peer as the resolver's peers: `None` for a peer that matches every
/// address, an empty list for one that matches none.
pub(super) struct ClusterPolicies<'a> {
    pub policies: Vec<&'a ClusterNetworkPolicy>,
    /// Per policy, per direction, per rule.
    pub peers: Vec<[Vec<RulePeers>; 2]>,
}

/// A rule's peers as the resolver's: per peer, `None` for every address.
pub(super) type RulePeers = Vec<Option<Vec<Peer>>>;

impl<'a> ClusterPolicies<'a> {
    pub fn new(policies: &'a [ClusterNetworkPolicy], nodes: &[Node]) -> ClusterPolicies<'a> {
        let mut sorted: Vec<&ClusterNetworkPolicy> = policies.iter().collect();
        sorted.sort_by(|a, b| (a.tier, a.order_key()).cmp(&(b.tier, b.order_key())));
        let peers = sorted
            .iter()
            .map(|policy| {
                Direction::ALL.map(|direction| {
                    policy
                        .rules(direction)
                        .iter()
                        .map(|rule| {
                            rule.peers
                                .iter()
                                .map(|peer| peers_of(peer, rule.action, nodes))
                                .collect()
                        })
                        .collect()
                })
            })
            .collect();
        ClusterPolicies {
            policies: sorted,
            peers,
        }
    }
}

/// A ClusterNetworkPolicy peer as the resolver's peers, which the peer classes are built from.
fn peers_of(peer: &ClusterPeer, action: Action, nodes: &[Node]) -> Option<Vec<Peer>> {
    let pods = |namespaces, pods| {
        vec![Peer::Pods(PodPeer {
            namespaces: NamespaceScope::Selected(namespaces),
            pods,
        })]
    };
    let block = |cidr| {
        Peer::IpBlock(IpBlock {
            cidr,
            except: Vec::new(),
        })
    };
    Some(match peer {
        ClusterPeer::Namespaces(namespaces) => pods(namespaces.clone(), Default::default()),
        ClusterPeer::Pods(selector) => pods(selector.namespaces.clone(), selector.pods.clone()),
        ClusterPeer::Networks(prefixes) => prefixes.iter().copied().map(block).collect(),
        ClusterPeer::Nodes(selector) => nodes
            .iter()
            .filter(|node| selector.matches(&node.labels))
            .flat_map(|node| node.addresses.iter().map(|&ip| block(Prefix::host(ip))))
            .collect(),
        ClusterPeer::DomainNames(_) => Vec::new(),
        ClusterPeer::Unknown if action == Action::Accept => Vec::new(),
        ClusterPeer::Unknown => return None,
    })
}

/// The any-peer class in policy keys, for a painted row of `None`.
pub(super) fn class_id(row: Option<usize>, class_ids: &[u32]) -> u32 {
    row.map_or(ANY_PEER_CLASS, |row| class_ids[row])
}
