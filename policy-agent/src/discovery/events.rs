//! Routing netlink notifications: the kernel announces every interface, address and route
//! change on multicast groups, so the agent reconciles soon after a pod's veth appears, is
//! addressed, routed or removed, instead of at its next periodic pass.
//!
//! The socket listens in every network namespace the node has an id for
//! (`NETLINK_LISTEN_ALL_NSID`), which includes the pods' namespaces at the far end of their
//! veths, so an address a CNI gives a pod is seen when it is added. Pods write much of what
//! these groups report (their own addresses, routes and links, the carrier of their veth), so
//! the reconciles the notifications trigger are paced ([`Pacer`]). Neighbour and bridge
//! forwarding entries, which any pod writes with a single frame, are not subscribed to: binding
//! does not read them.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::AsyncSocket as _,
};
use tokio::sync::mpsc;

use super::DiscoveryError;

/// The groups whose changes can move an endpoint's interface or the node's addresses and
/// uplinks.
const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

/// What a notification is about; the agent only needs to know that something relevant changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetlinkChange {
    Link,
    Address,
    Route,
    /// The socket's buffer overflowed and notifications were lost: only a full look tells
    /// what changed.
    Overrun,
}

/// Subscribes to the groups in the current network namespace and every namespace it has an id
/// for. The returned channel holds at most one change: one not yet received already says that
/// something changed, so later ones are dropped rather than queued. The channel closes when the
/// subscription fails (the socket died); the periodic pass still runs then.
pub fn subscribe() -> Result<mpsc::Receiver<NetlinkChange>, DiscoveryError> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&GROUPS)
        .map_err(|source| DiscoveryError::Connect { source })?;
    connection
        .socket_mut()
        .socket_mut()
        .set_listen_all_namespaces(true)
        .map_err(|source| DiscoveryError::Connect { source })?;
    tokio::spawn(connection);
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if let Some(change) = classify(&message)
                && let Err(mpsc::error::TrySendError::Closed(_)) = sender.try_send(change)
            {
                return;
            }
        }
    });
    Ok(receiver)
}

/// The change a notification stands for, or `None` for notifications that cannot move an
/// endpoint.
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
        _ => None,
    }
}

/// Paces the reconciles that notifications trigger: at most one per `spacing`, however many
/// notifications arrive. The first notification after a quiet spell is handled `debounce`
/// later (a CNI wiring a pod is a burst of them); one that arrives sooner than `spacing` after
/// the last paced reconcile waits for the end of that spacing, and everything arriving
/// meanwhile is coalesced into that one reconcile.
#[derive(Clone, Debug)]
pub struct Pacer {
    spacing: Duration,
    debounce: Duration,
    last: Option<Instant>,
    due: Option<Instant>,
}

impl Pacer {
    pub fn new(spacing: Duration, debounce: Duration) -> Pacer {
        Pacer {
            spacing,
            debounce,
            last: None,
            due: None,
        }
    }

    /// A notification arrived at `now`.
    pub fn notified(&mut self, now: Instant) {
        if self.due.is_none() {
            let earliest = self.last.map_or(now, |last| last + self.spacing);
            self.due = Some(earliest.max(now + self.debounce));
        }
    }

    /// When the pending reconcile is due; `None` when nothing is pending.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The paced reconcile starts at `now`.
    pub fn started(&mut self, now: Instant) {
        self.last = Some(now);
        self.due = None;
    }

    /// Another reconcile (a source change, the periodic pass) starts: it reads the kernel
    /// afresh, so it covers every notification received before it.
    pub fn covered(&mut self) {
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::{
        packet_core::NetlinkHeader,
        packet_route::{
            AddressFamily,
            link::LinkMessage,
            neighbour::{NeighbourHeader, NeighbourMessage, NeighbourState},
        },
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
    fn neighbours_are_no_change() {
        for family in [
            AddressFamily::Inet,
            AddressFamily::Inet6,
            AddressFamily::Bridge,
        ] {
            for state in [NeighbourState::Reachable, NeighbourState::Permanent] {
                let neighbour = neighbour(family, state);
                assert_eq!(
                    classify(&message(RouteNetlinkMessage::NewNeighbour(
                        neighbour.clone()
                    ))),
                    None
                );
                assert_eq!(
                    classify(&message(RouteNetlinkMessage::DelNeighbour(neighbour))),
                    None
                );
            }
        }
    }

    const SPACING: Duration = Duration::from_secs(1);
    const DEBOUNCE: Duration = Duration::from_millis(5);

    #[test]
    fn a_notification_after_a_quiet_spell_is_handled_after_the_debounce() {
        let start = Instant::now();
        let mut pacer = Pacer::new(SPACING, DEBOUNCE);
        assert_eq!(pacer.due(), None);
        pacer.notified(start);
        pacer.notified(start + Duration::from_millis(2));
        assert_eq!(pacer.due(), Some(start + DEBOUNCE));
        pacer.started(start + DEBOUNCE);
        assert_eq!(pacer.due(), None);
        let later = start + Duration::from_secs(5);
        pacer.notified(later);
        assert_eq!(pacer.due(), Some(later + DEBOUNCE));
    }

    #[test]
    fn a_flood_triggers_at_most_one_reconcile_per_spacing() {
        let start = Instant::now();
        let mut pacer = Pacer::new(SPACING, DEBOUNCE);
        let mut reconciles = Vec::new();
        // One notification every millisecond for ten seconds; each reconcile starts when due.
        for ms in 0..10_000 {
            let now = start + Duration::from_millis(ms);
            if let Some(due) = pacer.due()
                && due <= now
            {
                pacer.started(now);
                reconciles.push(now);
            }
            pacer.notified(now);
        }
        assert!(reconciles.len() <= 11, "{} reconciles", reconciles.len());
        assert!(
            reconciles
                .windows(2)
                .all(|pair| pair[1] - pair[0] >= SPACING),
            "{reconciles:?}"
        );
    }

    #[test]
    fn another_reconcile_covers_pending_notifications() {
        let start = Instant::now();
        let mut pacer = Pacer::new(SPACING, DEBOUNCE);
        pacer.notified(start);
        pacer.covered();
        assert_eq!(pacer.due(), None);
    }
}
