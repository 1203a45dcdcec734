//! The pure half of a reconcile: from the resolved state of this node's endpoints, the node as
//! it is now ([`Observed`]) and what the agent programmed before ([`Applied`]), the [`Plan`] of
//! every map write, attach, hold, release, detach and uplink change. No I/O, so each rule is
//! checked in a table test; [`super::execute`] carries the plan out.
//!
//! Which interface carries a pod is not part of the resolved state: the plan binds each pod
//! ([`binding::bind`]), keeps only the bound pods' endpoints, and rewrites the entry of a pod
//! whose interface changed even when its state did not.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use policy_common::maps::{
    ENDPOINT_ANY_SOURCE, ENDPOINT_LOG_ALLOWED, ENDPOINT_NOT_READY, EndpointInfo, MAX_HOST_ADDRS,
};

use super::endpoints::NewEndpointPolicy;
use crate::{
    datapath::EndpointDifference,
    discovery::{
        Wiring,
        binding::{self, Conflict},
    },
    policy::{
        model::Snapshot,
        state::{Delta, NodeState, PodRef},
    },
};

/// What the agent programmed, as it remembers it between reconciles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    /// The last resolved state: ids stay stable against it.
    pub resolved: NodeState,
    /// What the maps hold: `resolved` less the endpoints without an interface. None before the
    /// first reconcile and after failed map writes: the next reconcile then diffs against what
    /// the maps really hold.
    pub programmed: Option<NodeState>,
    /// The interface each programmed pod is bound to.
    pub interfaces: BTreeMap<PodRef, u32>,
    /// The binding conflicts of the last reconcile.
    pub conflicts: Vec<Conflict>,
    pub host_addrs: Vec<IpAddr>,
    pub service_addrs: Vec<IpAddr>,
    /// The interfaces `svc_egress` is attached to alone.
    pub uplinks: Vec<u32>,
}

impl Applied {
    /// The entry of every programmed endpoint, by the interface it was written for.
    pub fn expected_entries(&self) -> BTreeMap<u32, (PodRef, EndpointInfo)> {
        let Some(programmed) = &self.programmed else {
            return BTreeMap::new();
        };
        programmed
            .endpoints
            .iter()
            .filter_map(|(pod, endpoint)| {
                let ifindex = self.interfaces.get(pod)?;
                Some((*ifindex, (pod.clone(), endpoint.info)))
            })
            .collect()
    }
}

/// The node and its datapath as one reconcile finds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Observed {
    /// Every veth, and what each claims among the local pods' addresses.
    pub wiring: Wiring,
    /// The veths by name: the candidates to hold when new endpoints are denied.
    pub veths: Vec<(u32, String)>,
    /// The node's own addresses.
    pub host_addrs: Vec<IpAddr>,
    /// Every interface but loopback, bridges and bridge ports.
    pub links: Vec<u32>,
    /// The interface of every endpoint the datapath's record names: the bindings in force,
    /// also across a restart.
    pub recorded: BTreeMap<PodRef, u32>,
    /// How the endpoint map differs from what was programmed.
    pub differences: Vec<EndpointDifference>,
    /// Interfaces with the pod programs.
    pub attached: BTreeSet<u32>,
    /// Interfaces with a held entry.
    pub held: BTreeSet<u32>,
    /// Interfaces with `svc_egress` alone.
    pub attached_uplinks: BTreeSet<u32>,
}

/// The agent's settings that shape a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Settings {
    pub log_allowed: bool,
    /// Namespaces whose pods may send from any source address.
    pub any_source_namespaces: BTreeSet<String>,
    pub new_endpoints: NewEndpointPolicy,
}

/// How the endpoint, policy and peer maps are brought to the programmable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum MapWrites {
    /// Diff against what the maps hold: the first reconcile, which adopts what is pinned, or
    /// the one after failed writes.
    Converge,
    /// The endpoint map differs from what was programmed: diff against what the maps hold.
    Repair(Vec<EndpointDifference>),
    /// Write the changes since the last reconcile, and record the rules.
    Delta(Delta),
}

/// Everything one reconcile does, in the order it does it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// What the maps are to hold: the resolved state less the pods without an interface, their
    /// entries flagged as the settings and conflicts say.
    pub programmable: NodeState,
    /// The interface each programmable pod is bound to.
    pub interfaces: BTreeMap<PodRef, u32>,
    pub conflicts: Vec<Conflict>,
    /// Local pods without an interface yet.
    pub waiting: Vec<PodRef>,
    /// The node addresses to program, when they changed.
    pub host_addrs: Option<Vec<IpAddr>>,
    /// Node addresses beyond what the host-address map holds: policy decides them like any peer.
    pub host_addrs_left_out: usize,
    /// The ClusterIPs to program, when they changed; written before the endpoints, so that a pod
    /// attached in this reconcile already defers its Service traffic.
    pub service_addrs: Option<Vec<IpAddr>>,
    pub map_writes: MapWrites,
    /// Pods whose interface gets the pod programs: new, or moved.
    pub attach: Vec<(PodRef, u32)>,
    /// Interfaces to hold closed; after the endpoints are written, so a held interface whose pod
    /// was just bound is that pod's already.
    pub hold: BTreeSet<u32>,
    /// Held interfaces to release: gone, or no candidate any more.
    pub release: BTreeSet<u32>,
    /// Interfaces no local pod uses any more: their pod programs are detached.
    pub detach: BTreeSet<u32>,
    /// The uplinks after this reconcile, those that get `svc_egress` and those that lose it.
    pub uplinks: Vec<u32>,
    pub attach_uplinks: Vec<u32>,
    pub detach_uplinks: BTreeSet<u32>,
}

/// Plans one reconcile. `resolved` is the desired state of the node's endpoints, resolved from
/// `snapshot`.
pub(super) fn plan(
    snapshot: &Snapshot,
    resolved: &NodeState,
    observed: &Observed,
    applied: &Applied,
    settings: &Settings,
) -> Plan {
    let pods: BTreeMap<PodRef, Vec<IpAddr>> = resolved
        .endpoints
        .iter()
        .map(|(pod, endpoint)| (pod.clone(), endpoint.ips.clone()))
        .collect();
    let binding = binding::bind(
        &pods,
        &observed.wiring.claims,
        &observed.wiring.veths,
        &observed.recorded,
    );
    let interfaces = binding.interfaces;
    let waiting = pods
        .keys()
        .filter(|pod| !interfaces.contains_key(*pod))
        .cloned()
        .collect();
    let mut programmable = resolved.clone();
    programmable
        .endpoints
        .retain(|pod, _| interfaces.contains_key(pod));
    for (pod, endpoint) in &mut programmable.endpoints {
        if settings.log_allowed {
            endpoint.info.flags |= ENDPOINT_LOG_ALLOWED;
        }
        if settings.any_source_namespaces.contains(&pod.namespace) {
            endpoint.info.flags |= ENDPOINT_ANY_SOURCE;
        }
        if interfaces
            .get(pod)
            .is_some_and(|ifindex| binding.held.contains(ifindex))
        {
            endpoint.info.flags |= ENDPOINT_NOT_READY;
        }
    }

    let service_addrs = service_addrs(snapshot);
    // An address that is both local and a ClusterIP (IPVS puts every ClusterIP on kube-ipvs0)
    // is a Service; only the node's own addresses are host addresses.
    let mut host_addrs = observed.host_addrs.clone();
    host_addrs.retain(|addr| service_addrs.binary_search(addr).is_err());
    let host_addrs_left_out = host_addrs.len().saturating_sub(MAX_HOST_ADDRS as usize);
    host_addrs.truncate(MAX_HOST_ADDRS as usize);

    let map_writes = match &applied.programmed {
        None => MapWrites::Converge,
        Some(_) if !observed.differences.is_empty() => {
            MapWrites::Repair(observed.differences.clone())
        }
        Some(programmed) => {
            let mut delta = Delta::between(programmed, &programmable);
            for (pod, endpoint) in &programmable.endpoints {
                let moved = applied.interfaces.get(pod) != interfaces.get(pod);
                if moved && !delta.endpoint_upserts.iter().any(|e| &e.pod == pod) {
                    delta.endpoint_upserts.push(endpoint.clone());
                }
            }
            MapWrites::Delta(delta)
        }
    };

    let attach = interfaces
        .iter()
        .filter(|(pod, ifindex)| applied.interfaces.get(*pod) != Some(*ifindex))
        .map(|(pod, &ifindex)| (pod.clone(), ifindex))
        .collect();
    let endpoint_ifindexes: BTreeSet<u32> = interfaces.values().copied().collect();
    let mut hold = settings
        .new_endpoints
        .to_hold(&observed.veths, &endpoint_ifindexes);
    hold.extend(binding.held.difference(&endpoint_ifindexes));
    let wanted: BTreeSet<u32> = endpoint_ifindexes.union(&hold).copied().collect();
    // A held interface that is now an endpoint's has its endpoint's entry by then.
    let release: BTreeSet<u32> = observed.held.difference(&wanted).copied().collect();
    // Releasing detaches too.
    let detach = observed
        .attached
        .iter()
        .filter(|ifindex| !wanted.contains(ifindex) && !release.contains(ifindex))
        .copied()
        .collect();
    let uplinks: Vec<u32> = observed
        .links
        .iter()
        .filter(|ifindex| !wanted.contains(ifindex))
        .copied()
        .collect();
    let attach_uplinks = uplinks
        .iter()
        .filter(|ifindex| !applied.uplinks.contains(ifindex))
        .copied()
        .collect();
    // An uplink that became a pod's interface keeps `svc_egress` among the pod programs.
    let detach_uplinks = observed
        .attached_uplinks
        .iter()
        .filter(|ifindex| !uplinks.contains(ifindex) && !wanted.contains(ifindex))
        .copied()
        .collect();

    Plan {
        programmable,
        interfaces,
        conflicts: binding.conflicts,
        waiting,
        host_addrs: (host_addrs != applied.host_addrs).then_some(host_addrs),
        host_addrs_left_out,
        service_addrs: (service_addrs != applied.service_addrs).then_some(service_addrs),
        map_writes,
        attach,
        hold,
        release,
        detach,
        uplinks,
        attach_uplinks,
        detach_uplinks,
    }
}

/// Every ClusterIP of every Service, both families, sorted and without repeats.
fn service_addrs(snapshot: &Snapshot) -> Vec<IpAddr> {
    let addrs: BTreeSet<IpAddr> = snapshot
        .services
        .iter()
        .flat_map(|service| service.cluster_ips.iter().copied())
        .collect();
    addrs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use policy_common::maps::EndpointInfo;

    use super::*;
    use crate::{
        agent::endpoints::NewEndpoints,
        policy::{
            model::{Service, ServiceType},
            state::EndpointState,
        },
    };

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn ip(host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))
    }

    /// Pod `name` with endpoint id `id` and address 10.0.0.`id`.
    fn endpoint(name: &str, id: u8) -> EndpointState {
        EndpointState {
            pod: pod(name),
            ips: vec![ip(id)],
            info: EndpointInfo {
                endpoint_id: u32::from(id),
                ..EndpointInfo::default()
            },
        }
    }

    fn state(endpoints: &[EndpointState]) -> NodeState {
        NodeState {
            endpoints: endpoints
                .iter()
                .map(|endpoint| (endpoint.pod.clone(), endpoint.clone()))
                .collect(),
            ..NodeState::default()
        }
    }

    /// Veths by ifindex, each claiming the addresses listed.
    fn wiring(veths: &[(u32, &[u8])]) -> Wiring {
        Wiring {
            veths: veths.iter().map(|(ifindex, _)| *ifindex).collect(),
            claims: veths
                .iter()
                .filter(|(_, hosts)| !hosts.is_empty())
                .map(|(ifindex, hosts)| (*ifindex, hosts.iter().map(|&host| ip(host)).collect()))
                .collect(),
        }
    }

    fn interfaces(bound: &[(&str, u32)]) -> BTreeMap<PodRef, u32> {
        bound
            .iter()
            .map(|(name, ifindex)| (pod(name), *ifindex))
            .collect()
    }

    const NODE_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));

    /// Everything one plan is made from.
    #[derive(Clone)]
    struct World {
        snapshot: Snapshot,
        resolved: NodeState,
        observed: Observed,
        applied: Applied,
        settings: Settings,
    }

    /// A node in steady state: pods a (10.0.0.1) on veth 5 and b (10.0.0.2) on veth 6,
    /// programmed so by the last reconcile; eth0 (ifindex 1) is the uplink.
    fn steady() -> World {
        let resolved = state(&[endpoint("a", 1), endpoint("b", 2)]);
        let bound = interfaces(&[("a", 5), ("b", 6)]);
        World {
            snapshot: Snapshot::default(),
            observed: Observed {
                wiring: wiring(&[(5, &[1]), (6, &[2])]),
                veths: Vec::new(),
                host_addrs: vec![NODE_ADDR],
                links: vec![1, 5, 6],
                recorded: bound.clone(),
                differences: Vec::new(),
                attached: BTreeSet::from([5, 6]),
                held: BTreeSet::new(),
                attached_uplinks: BTreeSet::from([1]),
            },
            applied: Applied {
                resolved: resolved.clone(),
                programmed: Some(resolved.clone()),
                interfaces: bound,
                conflicts: Vec::new(),
                host_addrs: vec![NODE_ADDR],
                service_addrs: Vec::new(),
                uplinks: vec![1],
            },
            resolved,
            settings: Settings::default(),
        }
    }

    /// The plan of the steady node: nothing to do.
    fn idle() -> Plan {
        Plan {
            programmable: state(&[endpoint("a", 1), endpoint("b", 2)]),
            interfaces: interfaces(&[("a", 5), ("b", 6)]),
            conflicts: Vec::new(),
            waiting: Vec::new(),
            host_addrs: None,
            host_addrs_left_out: 0,
            service_addrs: None,
            map_writes: MapWrites::Delta(Delta::default()),
            attach: Vec::new(),
            hold: BTreeSet::new(),
            release: BTreeSet::new(),
            detach: BTreeSet::new(),
            uplinks: vec![1],
            attach_uplinks: Vec::new(),
            detach_uplinks: BTreeSet::new(),
        }
    }

    fn deny_new_endpoints(world: &mut World) {
        world.settings.new_endpoints = NewEndpointPolicy {
            mode: NewEndpoints::Deny,
            interface_prefixes: vec!["veth".into()],
        };
    }

    /// Adds pod c (10.0.0.3) to the resolved state.
    fn add_c(world: &mut World) {
        let c = endpoint("c", 3);
        world.resolved.endpoints.insert(c.pod.clone(), c);
    }

    fn upserts(endpoints: Vec<EndpointState>) -> MapWrites {
        MapWrites::Delta(Delta {
            endpoint_upserts: endpoints,
            ..Delta::default()
        })
    }

    struct Case {
        name: &'static str,
        /// How the world differs from [`steady`].
        world: fn(&mut World),
        /// How the plan differs from [`idle`].
        plan: fn(&mut Plan),
    }

    const CASES: &[Case] = &[
        Case {
            name: "a steady node needs nothing",
            world: |_| {},
            plan: |_| {},
        },
        Case {
            name: "after a start the maps converge on what is pinned, bindings come from the \
                   record and every interface is attached again",
            world: |world| {
                world.applied = Applied::default();
                // Pod a removed its own address: its recorded binding stands.
                world.observed.wiring = wiring(&[(5, &[]), (6, &[2])]);
            },
            plan: |plan| {
                plan.map_writes = MapWrites::Converge;
                plan.attach = vec![(pod("a"), 5), (pod("b"), 6)];
                plan.host_addrs = Some(vec![NODE_ADDR]);
                plan.attach_uplinks = vec![1];
            },
        },
        Case {
            name: "a pod whose interface was replaced moves: its unchanged entry is rewritten \
                   for the new interface, which gets the programs, and the old one loses them",
            world: |world| {
                world.observed.wiring = wiring(&[(5, &[1]), (7, &[2])]);
                world.observed.links = vec![1, 5, 7];
            },
            plan: |plan| {
                plan.interfaces = interfaces(&[("a", 5), ("b", 7)]);
                plan.map_writes = upserts(vec![endpoint("b", 2)]);
                plan.attach = vec![(pod("b"), 7)];
                plan.detach = BTreeSet::from([6]);
            },
        },
        Case {
            name: "a pod without an interface waits and is not programmed",
            world: add_c,
            plan: |plan| plan.waiting = vec![pod("c")],
        },
        Case {
            name: "a new pod's interface is bound, written and attached",
            world: |world| {
                add_c(world);
                world.observed.wiring = wiring(&[(5, &[1]), (6, &[2]), (8, &[3])]);
                world.observed.links = vec![1, 5, 6, 8];
            },
            plan: |plan| {
                plan.programmable = state(&[endpoint("a", 1), endpoint("b", 2), endpoint("c", 3)]);
                plan.interfaces = interfaces(&[("a", 5), ("b", 6), ("c", 8)]);
                plan.map_writes = upserts(vec![endpoint("c", 3)]);
                plan.attach = vec![(pod("c"), 8)];
            },
        },
        Case {
            name: "denying new endpoints holds a veth no pod is bound to and releases a held \
                   interface that is gone, without detaching it twice",
            world: |world| {
                deny_new_endpoints(world);
                world.observed.veths = vec![
                    (5, "veth5".into()),
                    (6, "veth6".into()),
                    (8, "veth8".into()),
                ];
                world.observed.wiring = wiring(&[(5, &[1]), (6, &[2]), (8, &[])]);
                world.observed.links = vec![1, 5, 6, 8];
                world.observed.held = BTreeSet::from([9]);
                world.observed.attached = BTreeSet::from([5, 6, 9]);
            },
            plan: |plan| {
                plan.hold = BTreeSet::from([8]);
                plan.release = BTreeSet::from([9]);
            },
        },
        Case {
            name: "a held interface whose pod is now known becomes its endpoint, not released",
            world: |world| {
                deny_new_endpoints(world);
                add_c(world);
                world.observed.veths = vec![
                    (5, "veth5".into()),
                    (6, "veth6".into()),
                    (8, "veth8".into()),
                ];
                world.observed.wiring = wiring(&[(5, &[1]), (6, &[2]), (8, &[3])]);
                world.observed.links = vec![1, 5, 6, 8];
                world.observed.held = BTreeSet::from([8]);
                world.observed.attached = BTreeSet::from([5, 6, 8]);
            },
            plan: |plan| {
                plan.programmable = state(&[endpoint("a", 1), endpoint("b", 2), endpoint("c", 3)]);
                plan.interfaces = interfaces(&[("a", 5), ("b", 6), ("c", 8)]);
                plan.map_writes = upserts(vec![endpoint("c", 3)]);
                plan.attach = vec![(pod("c"), 8)];
            },
        },
        Case {
            name: "an interface claiming a bound pod's address is held closed and reported",
            world: |world| {
                world.observed.wiring = wiring(&[(5, &[1]), (6, &[2]), (7, &[1])]);
                world.observed.links = vec![1, 5, 6, 7];
            },
            plan: |plan| {
                plan.hold = BTreeSet::from([7]);
                plan.conflicts = vec![Conflict {
                    pod: pod("a"),
                    bound: Some(5),
                    claimants: BTreeSet::from([7]),
                }];
            },
        },
        Case {
            name: "a bound pod's interface that claims another pod keeps its binding but its \
                   entry denies all traffic",
            world: |world| world.observed.wiring = wiring(&[(5, &[1, 2]), (6, &[2])]),
            plan: |plan| {
                let mut a = endpoint("a", 1);
                a.info.flags |= ENDPOINT_NOT_READY;
                plan.programmable = state(&[a.clone(), endpoint("b", 2)]);
                plan.map_writes = upserts(vec![a]);
                plan.conflicts = vec![Conflict {
                    pod: pod("b"),
                    bound: Some(6),
                    claimants: BTreeSet::from([5]),
                }];
            },
        },
        Case {
            name: "svc_egress follows the uplinks that come and go",
            world: |world| {
                world.observed.links = vec![1, 2, 5, 6];
                world.observed.attached_uplinks = BTreeSet::from([1, 3]);
                world.applied.uplinks = vec![1, 3];
            },
            plan: |plan| {
                plan.uplinks = vec![1, 2];
                plan.attach_uplinks = vec![2];
                plan.detach_uplinks = BTreeSet::from([3]);
            },
        },
        Case {
            name: "an uplink that became a pod's interface keeps svc_egress with the pod programs",
            world: |world| {
                add_c(world);
                world.observed.wiring = wiring(&[(5, &[1]), (6, &[2]), (7, &[3])]);
                world.observed.links = vec![1, 5, 6, 7];
                world.observed.attached_uplinks = BTreeSet::from([1, 7]);
                world.applied.uplinks = vec![1, 7];
            },
            plan: |plan| {
                plan.programmable = state(&[endpoint("a", 1), endpoint("b", 2), endpoint("c", 3)]);
                plan.interfaces = interfaces(&[("a", 5), ("b", 6), ("c", 7)]);
                plan.map_writes = upserts(vec![endpoint("c", 3)]);
                plan.attach = vec![(pod("c"), 7)];
            },
        },
        Case {
            name: "an endpoint map that differs from what was programmed is repaired",
            world: |world| {
                world.observed.differences = vec![EndpointDifference::Missing {
                    pod: pod("a"),
                    ifindex: 5,
                }];
            },
            plan: |plan| {
                plan.map_writes = MapWrites::Repair(vec![EndpointDifference::Missing {
                    pod: pod("a"),
                    ifindex: 5,
                }]);
            },
        },
        Case {
            name: "a local ClusterIP is a Service, not a host address",
            world: |world| {
                let cluster_ip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
                world.snapshot.services = vec![Service {
                    namespace: "default".into(),
                    name: "dns".into(),
                    service_type: ServiceType::ClusterIp,
                    selector: Default::default(),
                    cluster_ips: vec![cluster_ip, cluster_ip],
                    headless: false,
                    ports: Vec::new(),
                }];
                world.observed.host_addrs = vec![NODE_ADDR, cluster_ip];
            },
            plan: |plan| plan.service_addrs = Some(vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))]),
        },
        Case {
            name: "node addresses beyond the host-address map are left to policy",
            world: |world| {
                world.observed.host_addrs = (0..MAX_HOST_ADDRS + 2)
                    .map(|n| IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + n)))
                    .collect();
            },
            plan: |plan| {
                plan.host_addrs = Some(
                    (0..MAX_HOST_ADDRS)
                        .map(|n| IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + n)))
                        .collect(),
                );
                plan.host_addrs_left_out = 2;
            },
        },
        Case {
            name: "the agent's settings flag the entries",
            world: |world| {
                world.settings.log_allowed = true;
                world.settings.any_source_namespaces = BTreeSet::from(["default".to_owned()]);
            },
            plan: |plan| {
                let flagged = |mut endpoint: EndpointState| {
                    endpoint.info.flags |= ENDPOINT_LOG_ALLOWED | ENDPOINT_ANY_SOURCE;
                    endpoint
                };
                let (a, b) = (flagged(endpoint("a", 1)), flagged(endpoint("b", 2)));
                plan.programmable = state(&[a.clone(), b.clone()]);
                plan.map_writes = upserts(vec![a, b]);
            },
        },
    ];

    #[test]
    fn plans() {
        for case in CASES {
            let mut world = steady();
            (case.world)(&mut world);
            let mut expected = idle();
            (case.plan)(&mut expected);
            let planned = plan(
                &world.snapshot,
                &world.resolved,
                &world.observed,
                &world.applied,
                &world.settings,
            );
            assert_eq!(planned, expected, "{}", case.name);
        }
    }

    #[test]
    fn expected_entries_are_the_programmed_endpoints_by_interface() {
        let world = steady();
        let entries = world.applied.expected_entries();
        assert_eq!(
            entries.keys().copied().collect::<Vec<_>>(),
            [5, 6],
            "{entries:?}"
        );
        assert_eq!(entries[&6].0, pod("b"));
        assert!(Applied::default().expected_entries().is_empty());
    }
}
