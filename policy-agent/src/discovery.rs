//! Endpoint discovery: which host-side interface carries a pod's traffic, and this node's own
//! addresses, read from the kernel over rtnetlink.
//!
//! Two CNI styles are understood:
//! - ptp (kindnet, the ptp plugin, Calico): the node has a route to the pod IP through a veth;
//!   that veth is the endpoint's interface.
//! - bridge (flannel, the bridge plugin): the route points at a bridge; the bridge's neighbour entry
//!   for the pod IP gives the pod's MAC, and the bridge's forwarding database the port (a veth)
//!   that MAC sits behind.
//!
//! [`events`] subscribes to the kernel's notifications of the same objects, so the agent learns
//! of a change when it happens.

pub mod events;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute},
        route::RouteAttribute,
    },
};

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

/// The kind of interface a route leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkKind {
    Veth,
    Bridge,
    Other,
}

/// A routing netlink connection in the current network namespace.
#[derive(Clone)]
pub struct Discovery {
    handle: Handle,
}

impl Discovery {
    /// Opens the connection; its driver runs on the current tokio runtime.
    pub fn new() -> Result<Self, DiscoveryError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| DiscoveryError::Connect { source })?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The ifindex of the host-side interface that leads to `pod_ip`, if the pod is wired to
    /// this node by a veth, directly or behind a bridge.
    pub async fn interface_for(&self, pod_ip: IpAddr) -> Result<Option<u32>, DiscoveryError> {
        let Some(oif) = self.route_output(pod_ip).await? else {
            return Ok(None);
        };
        match self.link_kind(oif).await? {
            LinkKind::Veth => Ok(Some(oif)),
            LinkKind::Bridge => self.bridge_port_for(oif, pod_ip).await,
            LinkKind::Other => Ok(None),
        }
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
            .map_err(|source| request("the node's addresses", source))?;
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
            .map_err(|source| request("the node's interfaces", source))
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
            .filter(|link| {
                link.attributes.iter().any(|attribute| match attribute {
                    LinkAttribute::LinkInfo(infos) => infos
                        .iter()
                        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth))),
                    _ => false,
                })
            })
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
            Err(source) => return Err(request(&format!("the route to {destination}"), source)),
        };
        Ok(routes.iter().flat_map(|route| &route.attributes).find_map(
            |attribute| match attribute {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            },
        ))
    }

    async fn link_kind(&self, index: u32) -> Result<LinkKind, DiscoveryError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| request(&format!("link {index}"), source))?;
        let kind = links
            .iter()
            .flat_map(|link| &link.attributes)
            .filter_map(|attribute| match attribute {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .find_map(|info| match info {
                LinkInfo::Kind(InfoKind::Veth) => Some(LinkKind::Veth),
                LinkInfo::Kind(InfoKind::Bridge) => Some(LinkKind::Bridge),
                LinkInfo::Kind(_) => Some(LinkKind::Other),
                _ => None,
            });
        Ok(kind.unwrap_or(LinkKind::Other))
    }

    /// The bridge port behind which `pod_ip` sits: neighbour entry for the MAC, then the FDB.
    async fn bridge_port_for(
        &self,
        bridge: u32,
        pod_ip: IpAddr,
    ) -> Result<Option<u32>, DiscoveryError> {
        let family = if pod_ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let neighbours: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|source| request(&format!("the neighbours of {pod_ip}"), source))?;
        let mac = neighbours
            .iter()
            .filter(|neighbour| neighbour.header.ifindex == bridge)
            .filter(|neighbour| {
                neighbour
                    .attributes
                    .iter()
                    .any(|attribute| match attribute {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => {
                            IpAddr::V4(*address) == pod_ip
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(address)) => {
                            IpAddr::V6(*address) == pod_ip
                        }
                        _ => false,
                    })
            })
            .flat_map(|neighbour| &neighbour.attributes)
            .find_map(|attribute| match attribute {
                NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
                _ => None,
            });
        let Some(mac) = mac else {
            return Ok(None);
        };
        let fdb: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|source| {
                request(
                    &format!("the forwarding database of bridge {bridge}"),
                    source,
                )
            })?;
        for entry in &fdb {
            let holds_mac = entry
                .attributes
                .iter()
                .any(|attribute| matches!(attribute, NeighbourAttribute::LinkLayerAddress(address) if *address == mac));
            let on_bridge = entry
                .attributes
                .iter()
                .any(|attribute| matches!(attribute, NeighbourAttribute::Controller(index) if *index == bridge));
            let port = entry.header.ifindex;
            if holds_mac
                && on_bridge
                && port != bridge
                && self.link_kind(port).await? == LinkKind::Veth
            {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }
}

fn request(what: &str, source: rtnetlink::Error) -> DiscoveryError {
    DiscoveryError::Request {
        what: what.to_owned(),
        source,
    }
}
