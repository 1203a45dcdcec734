//! Routing netlink notifications: the kernel announces every interface, address, route and
//! neighbour change on multicast groups, so the agent reconciles within milliseconds of a pod's
//! veth appearing, moving or disappearing instead of at its next periodic pass.

use futures_util::StreamExt as _;
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourMessage, NeighbourState},
    },
};
use tokio::sync::mpsc;

use super::DiscoveryError;

/// The groups whose changes can move an endpoint's interface or the node's addresses and
/// uplinks.
const GROUPS: [MulticastGroup; 6] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Neigh,
];

/// What a notification is about; the agent only needs to know that something relevant changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetlinkChange {
    Link,
    Address,
    Route,
    /// A neighbour entry with a known MAC, or a bridge forwarding entry: what finds the port of
    /// a pod behind a bridge.
    Neighbour,
    /// The socket's buffer overflowed and notifications were lost: only a full look tells
    /// what changed.
    Overrun,
}

/// Subscribes to the groups in the current network namespace; every relevant notification
/// arrives on the returned channel. The channel closes when the subscription fails (the socket
/// died); the periodic pass still runs then.
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<NetlinkChange>, DiscoveryError> {
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&GROUPS)
        .map_err(|source| DiscoveryError::Connect { source })?;
    tokio::spawn(connection);
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if let Some(change) = classify(&message)
                && sender.send(change).is_err()
            {
                return;
            }
        }
    });
    Ok(receiver)
}

/// The change a notification stands for, or `None` for notifications that cannot move an
/// endpoint (a neighbour being probed or failing, non-route messages).
pub fn classify(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<NetlinkChange> {
    let message = match &message.payload {
        NetlinkPayload::InnerMessage(message) => message,
        NetlinkPayload::Overrun(_) => return Some(NetlinkChange::Overrun),
        _ => return None,
    };
    match message {
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => {
            Some(NetlinkChange::Link)
        }
        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
            Some(NetlinkChange::Address)
        }
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
            Some(NetlinkChange::Route)
        }
        RouteNetlinkMessage::NewNeighbour(neighbour) => {
            knows_port(neighbour).then_some(NetlinkChange::Neighbour)
        }
        RouteNetlinkMessage::DelNeighbour(_) => Some(NetlinkChange::Neighbour),
        _ => None,
    }
}

/// Whether a new neighbour entry can tell where a pod sits: a bridge forwarding entry, or an
/// IP neighbour whose MAC is known. Entries cycling through delay, probe and failed states
/// (every neighbour in use does, every few seconds) change nothing discovery reads.
fn knows_port(neighbour: &NeighbourMessage) -> bool {
    neighbour.header.family == AddressFamily::Bridge
        || matches!(
            neighbour.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        )
}

#[cfg(test)]
mod tests {
    use rtnetlink::{
        packet_core::NetlinkHeader,
        packet_route::{link::LinkMessage, neighbour::NeighbourHeader},
    };

    use super::*;

    fn message(inner: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(inner)
    }

    fn neighbour(family: AddressFamily, state: NeighbourState) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header = NeighbourHeader {
            family,
            state,
            ..NeighbourHeader::default()
        };
        message
    }

    #[test]
    fn links_are_changes_and_other_messages_are_not() {
        let link = || LinkMessage::default();
        assert_eq!(
            classify(&message(RouteNetlinkMessage::NewLink(link()))),
            Some(NetlinkChange::Link)
        );
        assert_eq!(
            classify(&message(RouteNetlinkMessage::DelLink(link()))),
            Some(NetlinkChange::Link)
        );
        assert_eq!(
            classify(&message(RouteNetlinkMessage::GetLink(link()))),
            None
        );
    }

    #[test]
    fn lost_notifications_are_a_change() {
        let overrun = NetlinkMessage::<RouteNetlinkMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Overrun(Vec::new()),
        );
        assert_eq!(classify(&overrun), Some(NetlinkChange::Overrun));
    }

    #[test]
    fn neighbours_count_once_their_mac_is_known_or_when_removed() {
        let new = |family, state| {
            classify(&message(RouteNetlinkMessage::NewNeighbour(neighbour(
                family, state,
            ))))
        };
        assert_eq!(
            new(AddressFamily::Inet, NeighbourState::Reachable),
            Some(NetlinkChange::Neighbour)
        );
        assert_eq!(
            new(AddressFamily::Inet6, NeighbourState::Permanent),
            Some(NetlinkChange::Neighbour)
        );
        assert_eq!(
            new(AddressFamily::Bridge, NeighbourState::None),
            Some(NetlinkChange::Neighbour)
        );
        assert_eq!(new(AddressFamily::Inet, NeighbourState::Probe), None);
        assert_eq!(new(AddressFamily::Inet, NeighbourState::Failed), None);
        assert_eq!(new(AddressFamily::Inet, NeighbourState::Incomplete), None);
        assert_eq!(
            classify(&message(RouteNetlinkMessage::DelNeighbour(neighbour(
                AddressFamily::Inet,
                NeighbourState::Failed
            )))),
            Some(NetlinkChange::Neighbour)
        );
    }
}
