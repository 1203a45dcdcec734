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
    policy::state::{Delta, NodeState, PodRef, RuleRef},
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
    fn set_rules(&mut self, rules: &BTreeMap<u32, RuleRef>) -> Result<(), DatapathError>;
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

    fn set_rules(&mut self, rules: &BTreeMap<u32, RuleRef>) -> Result<(), DatapathError> {
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
