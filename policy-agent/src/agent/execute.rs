//! The I/O half of a reconcile: reading the node and the datapath ([`observe`]) and carrying a
//! [`Plan`] out ([`execute`]), through [`NodeDiscovery`] and [`NodeDatapath`], the parts of
//! [`Discovery`] and [`Datapath`] a reconcile uses.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use jiff::Timestamp;
use policy_common::maps::{EndpointInfo, MAX_HOST_ADDRS};
use tracing::{info, warn};

use super::{
    ReconcileError, describe_interface,
    endpoints::NewEndpoints,
    plan::{Applied, MapWrites, Observed, Plan},
};
use crate::{
    datapath::{ApplyError, ApplyStats, Datapath, DatapathError, EndpointDifference},
    discovery::{Discovery, DiscoveryError, Wiring},
    policy::state::{Delta, NodeState, PodRef, PolicyRule},
};

/// What a reconcile reads from the kernel's view of the node.
pub(super) trait NodeDiscovery {
    /// The node's veths and what each claims among `wanted`.
    async fn wiring(&self, wanted: &BTreeSet<IpAddr>) -> Result<Wiring, DiscoveryError>;
    async fn host_addresses(&self) -> Result<Vec<IpAddr>, DiscoveryError>;
    /// Every interface but loopback, bridges and bridge ports.
    async fn uplinks(&self) -> Result<Vec<u32>, DiscoveryError>;
    async fn veths(&self) -> Result<Vec<(u32, String)>, DiscoveryError>;
}

/// What a reconcile reads from and writes to the datapath (see [`Datapath`]).
pub(super) trait NodeDatapath {
    fn programmed_ifindexes(&self) -> BTreeMap<PodRef, u32>;
    fn endpoint_differences(
        &self,
        expected: &BTreeMap<u32, (PodRef, EndpointInfo)>,
    ) -> Result<Vec<EndpointDifference>, DatapathError>;
    fn attached(&self) -> Result<Vec<u32>, DatapathError>;
    fn held(&self) -> Result<Vec<u32>, DatapathError>;
    fn attached_uplinks(&self) -> Result<Vec<u32>, DatapathError>;
    fn set_host_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError>;
    fn set_service_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError>;
    fn sync(
        &mut self,
        desired: &NodeState,
        interfaces: &BTreeMap<PodRef, u32>,
    ) -> Result<ApplyStats, ApplyError>;
    fn set_rules(&mut self, rules: &BTreeMap<u32, PolicyRule>) -> Result<(), DatapathError>;
    fn apply(
        &mut self,
        delta: &Delta,
        interfaces: &BTreeMap<PodRef, u32>,
    ) -> Result<ApplyStats, ApplyError>;
    fn attach(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    fn detach(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    /// Returns whether an entry was written.
    fn hold(&mut self, ifindex: u32) -> Result<bool, DatapathError>;
    fn release(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    fn attach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    fn detach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError>;
}

impl NodeDiscovery for Discovery {
    async fn wiring(&self, wanted: &BTreeSet<IpAddr>) -> Result<Wiring, DiscoveryError> {
        Discovery::wiring(self, wanted).await
    }

    async fn host_addresses(&self) -> Result<Vec<IpAddr>, DiscoveryError> {
        Discovery::host_addresses(self).await
    }

    async fn uplinks(&self) -> Result<Vec<u32>, DiscoveryError> {
        Discovery::uplinks(self).await
    }

    async fn veths(&self) -> Result<Vec<(u32, String)>, DiscoveryError> {
        Discovery::veths(self).await
    }
}

impl NodeDatapath for Datapath {
    fn programmed_ifindexes(&self) -> BTreeMap<PodRef, u32> {
        Datapath::programmed_ifindexes(self)
    }

    fn endpoint_differences(
        &self,
        expected: &BTreeMap<u32, (PodRef, EndpointInfo)>,
    ) -> Result<Vec<EndpointDifference>, DatapathError> {
        Datapath::endpoint_differences(self, expected)
    }

    fn attached(&self) -> Result<Vec<u32>, DatapathError> {
        Datapath::attached(self)
    }

    fn held(&self) -> Result<Vec<u32>, DatapathError> {
        Datapath::held(self)
    }

    fn attached_uplinks(&self) -> Result<Vec<u32>, DatapathError> {
        Datapath::attached_uplinks(self)
    }

    fn set_host_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError> {
        Datapath::set_host_addrs(self, addrs)
    }

    fn set_service_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError> {
        Datapath::set_service_addrs(self, addrs)
    }

    fn sync(
        &mut self,
        desired: &NodeState,
        interfaces: &BTreeMap<PodRef, u32>,
    ) -> Result<ApplyStats, ApplyError> {
        Datapath::sync(self, desired, |pod| interfaces.get(pod).copied())
    }

    fn set_rules(&mut self, rules: &BTreeMap<u32, PolicyRule>) -> Result<(), DatapathError> {
        Datapath::set_rules(self, rules)
    }

    fn apply(
        &mut self,
        delta: &Delta,
        interfaces: &BTreeMap<PodRef, u32>,
    ) -> Result<ApplyStats, ApplyError> {
        Datapath::apply(self, delta, |pod| interfaces.get(pod).copied())
    }

    fn attach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        Datapath::attach(self, ifindex)
    }

    fn detach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        Datapath::detach(self, ifindex)
    }

    fn hold(&mut self, ifindex: u32) -> Result<bool, DatapathError> {
        Datapath::hold(self, ifindex)
    }

    fn release(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        Datapath::release(self, ifindex)
    }

    fn attach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        Datapath::attach_uplink(self, ifindex)
    }

    fn detach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        Datapath::detach_uplink(self, ifindex)
    }
}

/// Reads what a plan needs: the wiring of `resolved`'s pods, the node's addresses and
/// interfaces, and what the datapath holds compared with `applied`.
pub(super) async fn observe(
    discovery: &impl NodeDiscovery,
    datapath: &impl NodeDatapath,
    resolved: &NodeState,
    applied: &Applied,
    new_endpoints: NewEndpoints,
) -> Result<Observed, ReconcileError> {
    let wanted: BTreeSet<IpAddr> = resolved
        .endpoints
        .values()
        .flat_map(|endpoint| endpoint.ips.iter().copied())
        .collect();
    let differences = match applied.programmed {
        Some(_) => datapath.endpoint_differences(&applied.expected_entries())?,
        None => Vec::new(),
    };
    Ok(Observed {
        wiring: discovery.wiring(&wanted).await?,
        veths: match new_endpoints {
            NewEndpoints::Allow => Vec::new(),
            NewEndpoints::Deny => discovery.veths().await?,
        },
        host_addrs: discovery.host_addresses().await?,
        links: discovery.uplinks().await?,
        recorded: datapath.programmed_ifindexes(),
        differences,
        attached: datapath.attached()?.into_iter().collect(),
        held: datapath.held()?.into_iter().collect(),
        attached_uplinks: datapath.attached_uplinks()?.into_iter().collect(),
    })
}

/// What carrying a plan out did.
#[derive(Debug, Default)]
pub(super) struct Executed {
    /// Entries of the endpoint, policy and peer maps written or removed.
    pub map_writes: usize,
    /// Entries of the node and Service address maps written or removed.
    pub addr_writes: usize,
    /// Held entries written or removed.
    pub held_writes: usize,
    /// When the maps were written, before the programs were attached.
    pub written: Option<Timestamp>,
    pub attached: usize,
    pub detached: usize,
    /// The map writes that failed; their endpoints are fenced and the rest of the plan went on.
    pub apply_error: Option<Box<ApplyError>>,
}

/// Carries `plan` out and remembers in `applied` what it programmed. A failed map write
/// fences only the endpoints it concerns and the plan goes on, so every other endpoint (and a
/// new pod's attachment) still takes the change; any other failure stops it.
pub(super) fn execute(
    plan: Plan,
    datapath: &mut impl NodeDatapath,
    applied: &mut Applied,
) -> Result<Executed, ReconcileError> {
    let mut executed = Executed::default();
    if plan.host_addrs_left_out > 0 {
        warn!(
            left_out = plan.host_addrs_left_out,
            capacity = MAX_HOST_ADDRS,
            "more node addresses than the host-address map holds; the rest are not host"
        );
    }
    if let Some(addrs) = plan.host_addrs {
        executed.addr_writes += datapath.set_host_addrs(&addrs)?.writes;
        info!(addresses = addrs.len(), "node addresses programmed");
        applied.host_addrs = addrs;
    }
    if let Some(addrs) = plan.service_addrs {
        executed.addr_writes += datapath.set_service_addrs(&addrs)?.writes;
        applied.service_addrs = addrs;
    }

    let written = match &plan.map_writes {
        MapWrites::Converge => datapath.sync(&plan.programmable, &plan.interfaces),
        MapWrites::Repair(differences) => {
            for difference in differences {
                report_difference(difference);
            }
            let written = datapath.sync(&plan.programmable, &plan.interfaces);
            if let Ok(stats) = &written {
                info!(writes = stats.writes, "endpoint map repaired");
            }
            written
        }
        MapWrites::Delta(delta) => {
            datapath.set_rules(&plan.programmable.rules)?;
            datapath.apply(delta, &plan.interfaces)
        }
    };
    match written {
        Ok(stats) => executed.map_writes = stats.writes,
        Err(error) => executed.apply_error = Some(Box::new(error)),
    }
    executed.written = Some(Timestamp::now());

    for (pod, ifindex) in plan.attach {
        datapath
            .attach(ifindex)
            .map_err(|source| ReconcileError::Attach {
                pod: pod.clone(),
                ifindex,
                source: Box::new(source),
            })?;
        info!(%pod, ifindex, "programs attached");
        executed.attached += 1;
    }
    for &ifindex in &plan.hold {
        if datapath.hold(ifindex)? {
            info!(
                ifindex,
                "interface held: its traffic is denied until its pod is programmed on it"
            );
            executed.held_writes += 1;
        }
    }
    for &ifindex in &plan.release {
        datapath.release(ifindex)?;
        info!(
            ifindex,
            "held interface released: gone or no candidate any more"
        );
        executed.held_writes += 1;
    }
    for &ifindex in &plan.detach {
        datapath.detach(ifindex)?;
        info!(
            ifindex,
            "programs detached: no local pod uses the interface"
        );
        executed.detached += 1;
    }

    for &ifindex in &plan.attach_uplinks {
        datapath
            .attach_uplink(ifindex)
            .map_err(|source| ReconcileError::AttachUplink {
                ifindex,
                source: Box::new(source),
            })?;
        info!(ifindex, "svc_egress attached to uplink");
    }
    for &ifindex in &plan.detach_uplinks {
        datapath.detach_uplink(ifindex)?;
        info!(ifindex, "svc_egress detached: no longer an uplink");
    }
    applied.uplinks = plan.uplinks;
    applied.programmed = Some(plan.programmable);
    applied.interfaces = plan.interfaces;
    Ok(executed)
}

fn report_difference(difference: &EndpointDifference) {
    match difference {
        EndpointDifference::Missing { pod, ifindex } => warn!(
            %pod,
            interface = %describe_interface(*ifindex),
            "endpoint entry missing from the kernel's map; restoring it"
        ),
        EndpointDifference::Changed {
            pod,
            ifindex,
            found,
        } => warn!(
            %pod,
            interface = %describe_interface(*ifindex),
            ?found,
            "endpoint entry differs from what was programmed; rewriting it"
        ),
        EndpointDifference::Stale { ifindex, found } => warn!(
            interface = %describe_interface(*ifindex),
            ?found,
            "endpoint entry on an interface no programmed pod is bound to; removing it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{datapath::UpdateError, discovery::binding::Conflict};

    /// A datapath that records the calls that change it, and fails where told.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_apply: bool,
        fail_attach: bool,
    }

    impl Recorder {
        fn call(&mut self, call: String) {
            self.calls.push(call);
        }
    }

    impl NodeDatapath for Recorder {
        fn programmed_ifindexes(&self) -> BTreeMap<PodRef, u32> {
            BTreeMap::new()
        }

        fn endpoint_differences(
            &self,
            _: &BTreeMap<u32, (PodRef, EndpointInfo)>,
        ) -> Result<Vec<EndpointDifference>, DatapathError> {
            Ok(Vec::new())
        }

        fn attached(&self) -> Result<Vec<u32>, DatapathError> {
            Ok(Vec::new())
        }

        fn held(&self) -> Result<Vec<u32>, DatapathError> {
            Ok(Vec::new())
        }

        fn attached_uplinks(&self) -> Result<Vec<u32>, DatapathError> {
            Ok(Vec::new())
        }

        fn set_host_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError> {
            self.call(format!("host addresses {addrs:?}"));
            Ok(ApplyStats {
                writes: addrs.len(),
            })
        }

        fn set_service_addrs(&mut self, addrs: &[IpAddr]) -> Result<ApplyStats, ApplyError> {
            self.call(format!("ClusterIPs {addrs:?}"));
            Ok(ApplyStats {
                writes: addrs.len(),
            })
        }

        fn sync(
            &mut self,
            desired: &NodeState,
            _: &BTreeMap<PodRef, u32>,
        ) -> Result<ApplyStats, ApplyError> {
            self.call(format!("sync {}", desired.endpoints.len()));
            Ok(ApplyStats { writes: 1 })
        }

        fn set_rules(&mut self, rules: &BTreeMap<u32, PolicyRule>) -> Result<(), DatapathError> {
            self.call(format!("rules {}", rules.len()));
            Ok(())
        }

        fn apply(
            &mut self,
            delta: &Delta,
            interfaces: &BTreeMap<PodRef, u32>,
        ) -> Result<ApplyStats, ApplyError> {
            self.call(format!("apply {}", delta.endpoint_upserts.len()));
            if self.fail_apply {
                let pod = interfaces
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| pod("x"));
                return Err(ApplyError {
                    failures: vec![UpdateError::NoInterface { pod: pod.clone() }],
                    fenced: vec![pod],
                });
            }
            Ok(ApplyStats {
                writes: delta.endpoint_upserts.len(),
            })
        }

        fn attach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
            self.call(format!("attach {ifindex}"));
            if self.fail_attach {
                return Err(DatapathError::MissingProgram { name: "from_pod" });
            }
            Ok(())
        }

        fn detach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
            self.call(format!("detach {ifindex}"));
            Ok(())
        }

        fn hold(&mut self, ifindex: u32) -> Result<bool, DatapathError> {
            self.call(format!("hold {ifindex}"));
            Ok(true)
        }

        fn release(&mut self, ifindex: u32) -> Result<(), DatapathError> {
            self.call(format!("release {ifindex}"));
            Ok(())
        }

        fn attach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError> {
            self.call(format!("attach uplink {ifindex}"));
            Ok(())
        }

        fn detach_uplink(&mut self, ifindex: u32) -> Result<(), DatapathError> {
            self.call(format!("detach uplink {ifindex}"));
            Ok(())
        }
    }

    /// A node whose one veth, 5, claims 10.0.0.1.
    struct Node;

    impl NodeDiscovery for Node {
        async fn wiring(&self, wanted: &BTreeSet<IpAddr>) -> Result<Wiring, DiscoveryError> {
            let claim: BTreeSet<IpAddr> = wanted
                .iter()
                .copied()
                .filter(|addr| addr.to_string() == "10.0.0.1")
                .collect();
            Ok(Wiring {
                veths: BTreeSet::from([5]),
                claims: BTreeMap::from([(5, claim)]),
            })
        }

        async fn host_addresses(&self) -> Result<Vec<IpAddr>, DiscoveryError> {
            Ok(vec!["192.168.0.1".parse().expect("address")])
        }

        async fn uplinks(&self) -> Result<Vec<u32>, DiscoveryError> {
            Ok(vec![1, 5])
        }

        async fn veths(&self) -> Result<Vec<(u32, String)>, DiscoveryError> {
            Ok(vec![(5, "veth5".into())])
        }
    }

    #[tokio::test]
    async fn the_node_is_observed_for_the_resolved_pods_and_veth_names_only_when_denying() {
        let a = crate::policy::state::EndpointState {
            pod: pod("a"),
            ips: vec!["10.0.0.1".parse().expect("address")],
            info: EndpointInfo::default(),
        };
        let resolved = NodeState {
            endpoints: BTreeMap::from([(pod("a"), a)]),
            ..NodeState::default()
        };
        let applied = Applied::default();
        let allowing = observe(
            &Node,
            &Recorder::default(),
            &resolved,
            &applied,
            NewEndpoints::Allow,
        )
        .await
        .expect("observed");
        assert_eq!(allowing.wiring.claims[&5].len(), 1);
        assert!(allowing.veths.is_empty());
        assert_eq!(allowing.links, [1, 5]);
        let denying = observe(
            &Node,
            &Recorder::default(),
            &resolved,
            &applied,
            NewEndpoints::Deny,
        )
        .await
        .expect("observed");
        assert_eq!(denying.veths, [(5, "veth5".to_owned())]);
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A plan that does one of everything: pod c moved to interface 8.
    fn busy() -> Plan {
        let c = crate::policy::state::EndpointState {
            pod: pod("c"),
            ips: vec!["10.0.0.3".parse().expect("address")],
            info: EndpointInfo::default(),
        };
        Plan {
            programmable: NodeState {
                endpoints: BTreeMap::from([(pod("c"), c.clone())]),
                ..NodeState::default()
            },
            interfaces: BTreeMap::from([(pod("c"), 8)]),
            conflicts: vec![Conflict {
                pod: pod("c"),
                bound: Some(8),
                claimants: BTreeSet::from([9]),
            }],
            waiting: Vec::new(),
            host_addrs: Some(vec!["192.168.0.1".parse().expect("address")]),
            host_addrs_left_out: 0,
            service_addrs: Some(vec!["10.96.0.10".parse().expect("address")]),
            map_writes: MapWrites::Delta(Delta {
                endpoint_upserts: vec![c],
                ..Delta::default()
            }),
            attach: vec![(pod("c"), 8)],
            hold: BTreeSet::from([9]),
            release: BTreeSet::from([10]),
            detach: BTreeSet::from([6]),
            uplinks: vec![1, 2],
            attach_uplinks: vec![2],
            detach_uplinks: BTreeSet::from([3]),
        }
    }

    #[test]
    fn a_plan_runs_in_order_and_is_remembered() {
        let mut datapath = Recorder::default();
        let mut applied = Applied::default();
        let plan = busy();
        let executed = execute(plan.clone(), &mut datapath, &mut applied).expect("executed");
        assert_eq!(
            datapath.calls,
            [
                "host addresses [192.168.0.1]",
                "ClusterIPs [10.96.0.10]",
                "rules 0",
                "apply 1",
                "attach 8",
                "hold 9",
                "release 10",
                "detach 6",
                "attach uplink 2",
                "detach uplink 3",
            ]
        );
        assert_eq!(
            (
                executed.map_writes,
                executed.addr_writes,
                executed.held_writes,
                executed.attached,
                executed.detached
            ),
            (1, 2, 2, 1, 1)
        );
        assert!(executed.written.is_some() && executed.apply_error.is_none());
        assert_eq!(applied.programmed, Some(plan.programmable));
        assert_eq!(applied.interfaces, plan.interfaces);
        assert_eq!(applied.uplinks, plan.uplinks);
        assert_eq!(applied.host_addrs, plan.host_addrs.unwrap_or_default());
        assert_eq!(
            applied.service_addrs,
            plan.service_addrs.unwrap_or_default()
        );
    }

    #[test]
    fn failed_map_writes_leave_the_rest_of_the_plan_to_run() {
        let mut datapath = Recorder {
            fail_apply: true,
            ..Recorder::default()
        };
        let mut applied = Applied::default();
        let executed = execute(busy(), &mut datapath, &mut applied).expect("executed");
        let fenced = executed.apply_error.map(|error| error.fenced);
        assert_eq!(fenced, Some(vec![pod("c")]));
        assert_eq!(executed.attached, 1, "{:?}", datapath.calls);
        assert!(datapath.calls.contains(&"detach uplink 3".to_owned()));
    }

    #[test]
    fn a_failed_attach_stops_the_plan_and_keeps_what_was_applied_before() {
        let mut datapath = Recorder {
            fail_attach: true,
            ..Recorder::default()
        };
        let mut applied = Applied::default();
        let result = execute(busy(), &mut datapath, &mut applied);
        assert!(
            matches!(result, Err(ReconcileError::Attach { ifindex: 8, .. })),
            "{result:?}"
        );
        assert_eq!(datapath.calls.last().map(String::as_str), Some("attach 8"));
        assert_eq!(applied.programmed, None);
        assert!(applied.interfaces.is_empty() && applied.uplinks.is_empty());
        assert_eq!(applied.host_addrs.len(), 1, "the addresses were written");
    }

    #[test]
    fn a_first_reconcile_converges_and_a_repair_too() {
        for map_writes in [
            MapWrites::Converge,
            MapWrites::Repair(vec![EndpointDifference::Missing {
                pod: pod("c"),
                ifindex: 8,
            }]),
        ] {
            let mut datapath = Recorder::default();
            let plan = Plan {
                map_writes,
                ..busy()
            };
            execute(plan, &mut datapath, &mut Applied::default()).expect("executed");
            assert_eq!(datapath.calls[2], "sync 1", "{:?}", datapath.calls);
            assert!(!datapath.calls.iter().any(|call| call.starts_with("apply")));
        }
    }
}
