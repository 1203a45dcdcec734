//! Which interface each local pod is bound to, decided from the claims of the node's veths
//! ([`super::Wiring`]): pure, so every rule is checked in a table test.
//!
//! - A pod is bound to the veth whose claim holds one of its IPs.
//! - A binding, once established, is kept until its interface is gone, whatever any interface
//!   claims later: a pod that adds another pod's address to its own interface cannot take that
//!   pod's endpoint, and a pod that removes its own addresses cannot drop its own.
//! - A conflict (an interface claiming a pod it is not bound to) is reported and never resolved
//!   by guessing: every interface that claims a pod bound elsewhere is held closed, and while a
//!   pod has no established binding every interface that claims it is held closed, until the
//!   conflict goes away. An interface that claims several pods binds none of them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::policy::state::PodRef;

/// The outcome of one binding decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// The interface of each bound pod; no interface is bound to two pods.
    pub interfaces: BTreeMap<PodRef, u32>,
    /// Interfaces to hold closed: all their IP traffic is dropped. A held interface may be a
    /// bound pod's: then that pod's entry is flagged not ready.
    pub held: BTreeSet<u32>,
    /// Pods claimed by an interface they are not bound to.
    pub conflicts: Vec<Conflict>,
}

/// A pod claimed by interfaces it is not bound to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub pod: PodRef,
    /// Its interface, when it has one.
    pub bound: Option<u32>,
    /// The other interfaces that claim it, all held closed.
    pub claimants: BTreeSet<u32>,
}

/// Binds `pods` (each with its IPs) to interfaces. `claims` holds the addresses each veth
/// claims, `veths` every veth that exists, `established` the bindings in force.
pub fn bind(
    pods: &BTreeMap<PodRef, Vec<IpAddr>>,
    claims: &BTreeMap<u32, BTreeSet<IpAddr>>,
    veths: &BTreeSet<u32>,
    established: &BTreeMap<PodRef, u32>,
) -> Binding {
    let mut claimants: BTreeMap<&PodRef, BTreeSet<u32>> = BTreeMap::new();
    let mut claimed: BTreeMap<u32, BTreeSet<&PodRef>> = BTreeMap::new();
    for (pod, ips) in pods {
        for (&ifindex, addresses) in claims {
            if ips.iter().any(|ip| addresses.contains(ip)) {
                claimants.entry(pod).or_default().insert(ifindex);
                claimed.entry(ifindex).or_default().insert(pod);
            }
        }
    }

    let mut interfaces: BTreeMap<PodRef, u32> = established
        .iter()
        .filter(|(pod, ifindex)| pods.contains_key(*pod) && veths.contains(ifindex))
        .map(|(pod, &ifindex)| (pod.clone(), ifindex))
        .collect();
    let taken: BTreeSet<u32> = interfaces.values().copied().collect();
    for (pod, candidates) in &claimants {
        if interfaces.contains_key(*pod) {
            continue;
        }
        let mut candidates = candidates.iter();
        if let (Some(&only), None) = (candidates.next(), candidates.next())
            && !taken.contains(&only)
            && claimed.get(&only).is_some_and(|pods| pods.len() == 1)
        {
            interfaces.insert((*pod).clone(), only);
        }
    }

    let mut held = BTreeSet::new();
    let mut conflicts = Vec::new();
    for (pod, candidates) in claimants {
        let bound = interfaces.get(pod).copied();
        let others: BTreeSet<u32> = candidates
            .into_iter()
            .filter(|&ifindex| Some(ifindex) != bound)
            .collect();
        if others.is_empty() {
            continue;
        }
        held.extend(others.iter().copied());
        conflicts.push(Conflict {
            pod: pod.clone(),
            bound,
            claimants: others,
        });
    }
    Binding {
        interfaces,
        held,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    /// `victim` has 10.0.0.2 and fd00::2, `attacker` 10.0.0.3.
    fn pods() -> BTreeMap<PodRef, Vec<IpAddr>> {
        BTreeMap::from([
            (pod("victim"), vec![ip("10.0.0.2"), ip("fd00::2")]),
            (pod("attacker"), vec![ip("10.0.0.3")]),
        ])
    }

    fn claims(table: &[(u32, &[&str])]) -> BTreeMap<u32, BTreeSet<IpAddr>> {
        table
            .iter()
            .map(|(ifindex, addresses)| (*ifindex, addresses.iter().map(|a| ip(a)).collect()))
            .collect()
    }

    fn veths() -> BTreeSet<u32> {
        BTreeSet::from([7, 8, 9])
    }

    fn bound(table: &[(&str, u32)]) -> BTreeMap<PodRef, u32> {
        table
            .iter()
            .map(|(name, ifindex)| (pod(name), *ifindex))
            .collect()
    }

    #[test]
    fn each_pod_is_bound_to_the_interface_that_claims_it() {
        let binding = bind(
            &pods(),
            &claims(&[(7, &["10.0.0.2", "fd00::2"]), (8, &["10.0.0.3"])]),
            &veths(),
            &BTreeMap::new(),
        );
        assert_eq!(
            binding,
            Binding {
                interfaces: bound(&[("victim", 7), ("attacker", 8)]),
                ..Binding::default()
            }
        );
    }

    #[test]
    fn a_pod_no_interface_claims_is_unbound() {
        let binding = bind(
            &pods(),
            &claims(&[(8, &["10.0.0.3"])]),
            &veths(),
            &BTreeMap::new(),
        );
        assert_eq!(binding.interfaces, bound(&[("attacker", 8)]));
        assert!(binding.held.is_empty() && binding.conflicts.is_empty());
    }

    #[test]
    fn an_established_binding_is_kept_and_the_other_claimant_held() {
        // The attacker added the victim's address to its own interface.
        let binding = bind(
            &pods(),
            &claims(&[(7, &["10.0.0.2"]), (8, &["10.0.0.3", "10.0.0.2"])]),
            &veths(),
            &bound(&[("victim", 7), ("attacker", 8)]),
        );
        assert_eq!(
            binding,
            Binding {
                interfaces: bound(&[("victim", 7), ("attacker", 8)]),
                held: BTreeSet::from([8]),
                conflicts: vec![Conflict {
                    pod: pod("victim"),
                    bound: Some(7),
                    claimants: BTreeSet::from([8]),
                }],
            }
        );
    }

    #[test]
    fn an_established_binding_outlives_its_claim_but_not_its_interface() {
        // The victim removed its own addresses: it stays bound, and nobody else takes it.
        let kept = bind(
            &pods(),
            &claims(&[(8, &["10.0.0.3", "10.0.0.2"])]),
            &veths(),
            &bound(&[("victim", 7), ("attacker", 8)]),
        );
        assert_eq!(kept.interfaces, bound(&[("victim", 7), ("attacker", 8)]));
        assert_eq!(kept.held, BTreeSet::from([8]));
        // Its interface gone, the pod is free to bind again.
        let gone = bind(
            &pods(),
            &claims(&[(9, &["10.0.0.2"]), (8, &["10.0.0.3"])]),
            &BTreeSet::from([8, 9]),
            &bound(&[("victim", 7), ("attacker", 8)]),
        );
        assert_eq!(gone.interfaces, bound(&[("victim", 9), ("attacker", 8)]));
        assert!(gone.held.is_empty() && gone.conflicts.is_empty());
    }

    #[test]
    fn without_an_established_binding_every_claimant_is_held() {
        let binding = bind(
            &pods(),
            &claims(&[(7, &["10.0.0.2"]), (9, &["fd00::2"]), (8, &["10.0.0.3"])]),
            &veths(),
            &BTreeMap::new(),
        );
        assert_eq!(
            binding,
            Binding {
                interfaces: bound(&[("attacker", 8)]),
                held: BTreeSet::from([7, 9]),
                conflicts: vec![Conflict {
                    pod: pod("victim"),
                    bound: None,
                    claimants: BTreeSet::from([7, 9]),
                }],
            }
        );
        // The conflict goes away: the pod binds.
        let resolved = bind(
            &pods(),
            &claims(&[(7, &["10.0.0.2"]), (8, &["10.0.0.3"])]),
            &veths(),
            &binding.interfaces,
        );
        assert_eq!(
            resolved.interfaces,
            bound(&[("victim", 7), ("attacker", 8)])
        );
        assert!(resolved.held.is_empty());
    }

    #[test]
    fn an_interface_claiming_two_pods_binds_neither() {
        let binding = bind(
            &pods(),
            &claims(&[(8, &["10.0.0.3", "10.0.0.2"])]),
            &veths(),
            &BTreeMap::new(),
        );
        assert!(binding.interfaces.is_empty());
        assert_eq!(binding.held, BTreeSet::from([8]));
        assert_eq!(
            binding
                .conflicts
                .iter()
                .map(|conflict| conflict.pod.name.as_str())
                .collect::<Vec<_>>(),
            ["attacker", "victim"]
        );
    }

    #[test]
    fn an_interface_bound_to_one_pod_cannot_take_another() {
        // The attacker is bound; the victim's own interface is not up yet.
        let binding = bind(
            &pods(),
            &claims(&[(8, &["10.0.0.3", "10.0.0.2"])]),
            &veths(),
            &bound(&[("attacker", 8)]),
        );
        assert_eq!(binding.interfaces, bound(&[("attacker", 8)]));
        assert_eq!(binding.held, BTreeSet::from([8]));
        assert_eq!(
            binding.conflicts,
            vec![Conflict {
                pod: pod("victim"),
                bound: None,
                claimants: BTreeSet::from([8]),
            }]
        );
    }

    #[test]
    fn bindings_of_pods_that_are_gone_are_dropped() {
        let binding = bind(
            &BTreeMap::from([(pod("attacker"), vec![ip("10.0.0.3")])]),
            &claims(&[(7, &["10.0.0.2"]), (8, &["10.0.0.3"])]),
            &veths(),
            &bound(&[("victim", 7), ("attacker", 8)]),
        );
        assert_eq!(binding.interfaces, bound(&[("attacker", 8)]));
        assert!(binding.held.is_empty());
    }
}
