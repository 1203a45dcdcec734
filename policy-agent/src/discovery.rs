//! Endpoint discovery: which host-side interface carries a pod's traffic, and this node's own
//! addresses, read from the kernel over rtnetlink.
//!
//! A pod is bound to its interface by what the pod cannot write: the CNI's wiring. For every
//! host-side veth whose other end lives in another network namespace, [`Discovery::wiring`]
//! reads the addresses of that other end (`RTM_GETADDR` with `IFA_TARGET_NETNSID`, the peer
//! named by the veth's `IFLA_LINK` and `IFLA_LINK_NETNSID`), and keeps an address as the veth's
//! claim only when the node's route to it leads to that veth (ptp CNIs: kindnet, the ptp plugin,
//! Calico) or to the bridge the veth is a port of (bridge CNIs: flannel, the bridge plugin).
//! [`binding`] turns the claims into bindings. Neighbour entries and the bridge's forwarding
//! database are never read: a pod writes those itself with ARP, neighbour advertisements or a
//! spoofed MAC.
//!
//! [`events`] subscribes to the kernel's notifications of the same objects, so the agent learns
//! of a change when it happens.

pub mod binding;
pub mod events;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::RouteAttribute,
    },
};
use tracing::debug;

/// Failures talking to the kernel's routing netlink.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("could not open a routing netlink socket")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    #[error("netlink request for {what} failed")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// The node's pod wiring as the kernel holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wiring {
    /// Every veth of the node: an interface not in here is gone.
    pub veths: BTreeSet<u32>,
    /// Per veth, the addresses its claim rests on: held by its peer in the pod's namespace, and
    /// routed by the node to the veth or to its bridge.
    pub claims: BTreeMap<u32, BTreeSet<IpAddr>>,
}

/// A host-side veth and where its other end is.
struct Veth {
    ifindex: u32,
    /// The bridge it is a port of.
    controller: Option<u32>,
    /// The peer's ifindex in its namespace.
    peer: u32,
    /// The peer's namespace, as this namespace numbers it; none when the peer is in this one.
    netnsid: Option<i32>,
}

/// Routing netlink connections in the current network namespace.
#[derive(Clone)]
pub struct Discovery {
    handle: Handle,
    /// A socket with `NETLINK_GET_STRICT_CHK`: the kernel honours `IFA_TARGET_NETNSID` only
    /// there. Requests the strict checks would reject (route lookups) use `handle`.
    strict: Handle,
}

impl Discovery {
    /// Opens the connections; their drivers run on the current tokio runtime.
    pub fn new() -> Result<Self, DiscoveryError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| DiscoveryError::Connect { source })?;
        tokio::spawn(connection);
        let (connection, strict, _) = rtnetlink::new_connection_with_strict_check()
            .map_err(|source| DiscoveryError::Connect { source })?;
        tokio::spawn(connection);
        Ok(Self { handle, strict })
    }

    /// The node's veths and what each claims among `wanted` (the local pods' IPs): only those
    /// addresses are checked against the routes.
    pub async fn wiring(&self, wanted: &BTreeSet<IpAddr>) -> Result<Wiring, DiscoveryError> {
        let veths: Vec<Veth> = self.links().await?.iter().filter_map(veth).collect();
        let mut wiring = Wiring {
            veths: veths.iter().map(|veth| veth.ifindex).collect(),
            claims: BTreeMap::new(),
        };
        let mut peer_addresses: BTreeMap<i32, BTreeMap<u32, Vec<IpAddr>>> = BTreeMap::new();
        for netnsid in veths.iter().filter_map(|veth| veth.netnsid) {
            if let std::collections::btree_map::Entry::Vacant(entry) = peer_addresses.entry(netnsid)
            {
                entry.insert(self.addresses_in(netnsid).await?);
            }
        }
        for veth in &veths {
            // A veth with both ends in the node's namespace carries no pod.
            let Some(netnsid) = veth.netnsid else {
                continue;
            };
            let held = peer_addresses
                .get(&netnsid)
                .and_then(|by_link| by_link.get(&veth.peer))
                .into_iter()
                .flatten()
                .filter(|address| wanted.contains(address));
            let mut claim = BTreeSet::new();
            for &address in held {
                let Some(oif) = self.route_output(address).await? else {
                    continue;
                };
                if oif == veth.ifindex || Some(oif) == veth.controller {
                    claim.insert(address);
                }
            }
            if !claim.is_empty() {
                wiring.claims.insert(veth.ifindex, claim);
            }
        }
        Ok(wiring)
    }

    /// The addresses of every interface of the namespace the node numbers `netnsid`, by
    /// interface. A namespace that went away meanwhile (its pod was deleted) has none.
    async fn addresses_in(
        &self,
        netnsid: i32,
    ) -> Result<BTreeMap<u32, Vec<IpAddr>>, DiscoveryError> {
        let mut request = self.strict.address().get();
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::TargetNetNsId(netnsid));
        let messages: Vec<_> = match request.execute().try_collect().await {
            Ok(messages) => messages,
            Err(rtnetlink::Error::NetlinkError(error)) => {
                debug!(netnsid, %error, "no addresses for a peer namespace");
                return Ok(BTreeMap::new());
            }
            Err(source) => {
                return Err(request_error(
                    &format!("the addresses of network namespace {netnsid}"),
                    source,
                ));
            }
        };
        let mut by_link: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
        for message in &messages {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the far end's on a
            // point-to-point IPv4 address, and the own one otherwise.
            let local = message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Local(address) => Some(*address),
                    _ => None,
                });
            let address = local.or_else(|| {
                message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Address(address) => Some(*address),
                        _ => None,
                    })
            });
            if let Some(address) = address {
                by_link
                    .entry(message.header.index)
                    .or_default()
                    .push(address);
            }
        }
        Ok(by_link)
    }

    /// Every address configured on this node's interfaces, loopback included.
    pub async fn host_addresses(&self) -> Result<Vec<IpAddr>, DiscoveryError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| request_error("the node's addresses", source))?;
        let mut addresses: Vec<IpAddr> = messages
            .iter()
            .flat_map(|message| &message.attributes)
            .filter_map(|attribute| match attribute {
                AddressAttribute::Address(address) | AddressAttribute::Local(address) => {
                    Some(*address)
                }
                _ => None,
            })
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        Ok(addresses)
    }

    /// Every interface of the node.
    async fn links(&self) -> Result<Vec<LinkMessage>, DiscoveryError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| request_error("the node's interfaces", source))
    }

    /// The interfaces that may carry pod traffic off the node, where `svc_egress` decides the
    /// deferred egress of packets to a ClusterIP: every interface but loopback, bridges and
    /// bridge ports (pod veths behind a bridge). The caller leaves out the endpoints' own veths.
    pub async fn uplinks(&self) -> Result<Vec<u32>, DiscoveryError> {
        let links = self.links().await?;
        let mut uplinks: Vec<u32> = links
            .iter()
            .filter(|link| !link.header.flags.contains(LinkFlags::Loopback))
            .filter(|link| {
                !link.attributes.iter().any(|attribute| match attribute {
                    LinkAttribute::Controller(_) => true,
                    LinkAttribute::LinkInfo(infos) => infos
                        .iter()
                        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Bridge))),
                    _ => false,
                })
            })
            .map(|link| link.header.index)
            .collect();
        uplinks.sort_unstable();
        Ok(uplinks)
    }

    /// The node's veths, with their names: the interfaces a CNI gives its pods (routed, or ports
    /// of a bridge), candidates to become endpoints.
    pub async fn veths(&self) -> Result<Vec<(u32, String)>, DiscoveryError> {
        let links = self.links().await?;
        let mut veths: Vec<(u32, String)> = links
            .iter()
            .filter(|link| veth(link).is_some())
            .filter_map(|link| {
                link.attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })
                    .map(|name| (link.header.index, name))
            })
            .collect();
        veths.sort_unstable();
        Ok(veths)
    }

    async fn route_output(&self, destination: IpAddr) -> Result<Option<u32>, DiscoveryError> {
        let message = match destination {
            IpAddr::V4(address) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(address, 32)
                .build(),
            IpAddr::V6(address) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(address, 128)
                .build(),
        };
        let routes = self.handle.route().get(message).execute();
        let routes: Vec<_> = match routes.try_collect().await {
            Ok(routes) => routes,
            // No route at all (ENETUNREACH): the pod is not reachable from here.
            Err(rtnetlink::Error::NetlinkError(_)) => return Ok(None),
            Err(source) => {
                return Err(request_error(
                    &format!("the route to {destination}"),
                    source,
                ));
            }
        };
        Ok(routes.iter().flat_map(|route| &route.attributes).find_map(
            |attribute| match attribute {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            },
        ))
    }
}

fn request_error(what: &str, source: rtnetlink::Error) -> DiscoveryError {
    DiscoveryError::Request {
        what: what.to_owned(),
        source,
    }
}

/// The veth a link message describes, with its peer; `None` for other links.
fn veth(link: &LinkMessage) -> Option<Veth> {
    let is_veth = link.attributes.iter().any(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    });
    if !is_veth {
        return None;
    }
    let mut veth = Veth {
        ifindex: link.header.index,
        controller: None,
        peer: 0,
        netnsid: None,
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Controller(index) => veth.controller = Some(*index),
            LinkAttribute::Link(index) => veth.peer = *index,
            LinkAttribute::LinkNetNsId(netnsid) => veth.netnsid = Some(*netnsid),
            _ => {}
        }
    }
    Some(veth)
}
