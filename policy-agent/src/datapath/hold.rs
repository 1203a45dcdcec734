//! Held interfaces: an interface that will become an endpoint once its pod is known gets the pod
//! programs and an endpoint entry that denies all its traffic, so a new pod is never reachable
//! contrary to policy while it is being programmed.
//!
//! A held entry has endpoint id 0 (never assigned to an endpoint) and `ENDPOINT_NOT_READY`, for
//! which the programs drop every packet with reason `NotReady`. Programming the pod's endpoint
//! overwrites the entry with the real one ([`Datapath::apply`]); the record never names held
//! interfaces, and [`Datapath::sync`] leaves their entries alone.

use policy_common::maps::{ENDPOINT_NOT_READY, EndpointInfo, LookupPlan};

use super::{Datapath, DatapathError, error::is_not_found};

/// The endpoint entry of a held interface.
pub const HELD: EndpointInfo = EndpointInfo {
    endpoint_id: 0,
    flags: ENDPOINT_NOT_READY,
    ingress_plan: LookupPlan::EMPTY,
    egress_plan: LookupPlan::EMPTY,
    addr6: [0; 16],
    addr4: [0; 4],
};

/// Whether an endpoint-map entry holds its interface rather than describing an endpoint.
pub fn is_held(info: &EndpointInfo) -> bool {
    info.endpoint_id == HELD.endpoint_id
}

impl Datapath {
    /// Denies all traffic of `ifindex` until its endpoint is programmed: writes the held entry,
    /// then attaches the pod programs. Returns whether anything was written; an interface that
    /// is held already or is some endpoint's is left alone.
    pub fn hold(&mut self, ifindex: u32) -> Result<bool, DatapathError> {
        let present = match self.maps.endpoints.get(&ifindex, 0) {
            Ok(info) => Some(info),
            Err(source) if is_not_found(&source) => None,
            Err(source) => return Err(DatapathError::Hold { ifindex, source }),
        };
        if present.is_some() {
            self.attach(ifindex)?;
            return Ok(false);
        }
        self.maps
            .endpoints
            .insert(&ifindex, &HELD, 0)
            .map_err(|source| DatapathError::Hold { ifindex, source })?;
        self.attach(ifindex)?;
        Ok(true)
    }

    /// The interfaces with a held entry.
    pub fn held(&self) -> Result<Vec<u32>, DatapathError> {
        let mut held = Vec::new();
        for entry in self.maps.endpoints.iter() {
            let (ifindex, info) = entry.map_err(|source| DatapathError::ReadMap {
                name: policy_common::names::ENDPOINTS_MAP,
                source,
            })?;
            if is_held(&info) {
                held.push(ifindex);
            }
        }
        held.sort_unstable();
        Ok(held)
    }

    /// Detaches the programs from a held interface, then removes its held entry (in that
    /// order: programs without an entry let traffic through). An entry that is some
    /// endpoint's by now is left alone.
    pub fn release(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        match self.maps.endpoints.get(&ifindex, 0) {
            Ok(info) if is_held(&info) => {}
            Ok(_) => return Ok(()),
            Err(source) if is_not_found(&source) => return Ok(()),
            Err(source) => return Err(DatapathError::Release { ifindex, source }),
        }
        self.detach(ifindex)?;
        match self.maps.endpoints.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(source) if is_not_found(&source) => Ok(()),
            Err(source) => Err(DatapathError::Release { ifindex, source }),
        }
    }
}
