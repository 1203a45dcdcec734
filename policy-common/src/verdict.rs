//! Verdicts, drop reasons and directions: the codes in counters and events.

/// Which way a packet crosses the endpoint, seen from the pod.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Towards the pod: decided by `to_pod` on the host veth's TC egress.
    Ingress = 0,
    /// Away from the pod: decided by `from_pod` on the host veth's TC ingress.
    Egress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub const fn opposite(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }

    pub const fn from_u8(value: u8) -> Option<Direction> {
        match value {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// Why a packet was let through. Codes 0 to 9 of [`Outcome`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The first packet of a flow, allowed by the rule in the event's `rule_id`.
    Policy = 0,
    /// The endpoint is not isolated in this direction.
    NotIsolated = 1,
    /// A later packet of a flow this endpoint allowed in the same direction.
    Established = 2,
    /// A reply to a flow this endpoint allowed in the other direction.
    Reply = 3,
    /// An ICMP error about a tracked flow (unreachable, packet too big, time exceeded).
    Related = 4,
    /// Traffic between the pod and an address of its own node. The pod's egress to a node
    /// address is also deferred like [`Verdict::Service`]: one the node translates to a pod
    /// (NodePort, hostPort, externalIPs, IPVS) is decided against that pod after DNAT, and only
    /// what the node itself terminates passes as host traffic.
    Host = 5,
    /// A non-first fragment whose first fragment was allowed.
    Fragment = 6,
    /// Traffic NetworkPolicy never applies to: ARP from the pod's own address (or to the pod),
    /// and ICMPv6 neighbour discovery that stays on the link (see the programs' documentation).
    Exempt = 7,
    /// A packet to a Service's ClusterIP: the pod's egress is decided after kube-proxy's DNAT,
    /// against the backend, by the first hook that sees the packet then.
    Service = 8,
    /// A packet that reached the pod through its own Service (a pod can always reach itself).
    OwnService = 9,
}

/// Why a packet was dropped. Codes 10 to 19 of [`Outcome`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The endpoint is isolated in this direction and no rule allows the packet.
    PolicyDenied = 10,
    /// A header is truncated or malformed (short IP header, bad IHL, short L4 header).
    Malformed = 11,
    /// A non-first fragment arrived without a recorded first fragment.
    FragmentUnknown = 12,
    /// A non-first fragment of a first fragment that was dropped.
    FragmentDenied = 13,
    /// The endpoint is not programmed yet and its mode denies until it is.
    NotReady = 14,
    /// The IPv6 extension header chain is longer than the parser walks.
    Unparsed = 15,
    /// The pod sent a packet claiming an address that is not its own: an IP source, an ARP
    /// sender or a neighbour advertisement's target.
    Spoofed = 16,
    /// A frame that is neither IP, ARP nor neighbour discovery, at an endpoint isolated in
    /// its direction.
    NotIp = 17,
    /// A `Deny` rule of an Admin-tier ClusterNetworkPolicy (the event's `rule_id`).
    AdminDenied = 18,
    /// A `Deny` rule of a Baseline-tier ClusterNetworkPolicy (the event's `rule_id`).
    BaselineDenied = 19,
}

/// Number of outcome codes: [`Verdict`] and [`DropReason`] together.
pub const OUTCOMES: u32 = 20;
/// The first drop code: verdicts are below it, drop reasons from it on.
pub const FIRST_DROP: u32 = 10;

/// A verdict or a drop reason as the single code counters and events carry.
pub type Outcome = u8;

impl Verdict {
    pub const ALL: [Verdict; 10] = [
        Verdict::Policy,
        Verdict::NotIsolated,
        Verdict::Established,
        Verdict::Reply,
        Verdict::Related,
        Verdict::Host,
        Verdict::Fragment,
        Verdict::Exempt,
        Verdict::Service,
        Verdict::OwnService,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Policy => "allowed-by-policy",
            Verdict::NotIsolated => "not-isolated",
            Verdict::Established => "established",
            Verdict::Reply => "reply",
            Verdict::Related => "related-icmp",
            Verdict::Host => "host",
            Verdict::Fragment => "fragment",
            Verdict::Exempt => "exempt",
            Verdict::Service => "deferred-to-backend",
            Verdict::OwnService => "own-service",
        }
    }
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::PolicyDenied,
        DropReason::Malformed,
        DropReason::FragmentUnknown,
        DropReason::FragmentDenied,
        DropReason::NotReady,
        DropReason::Unparsed,
        DropReason::Spoofed,
        DropReason::NotIp,
        DropReason::AdminDenied,
        DropReason::BaselineDenied,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "policy-denied",
            DropReason::Malformed => "malformed",
            DropReason::FragmentUnknown => "fragment-unknown",
            DropReason::FragmentDenied => "fragment-denied",
            DropReason::NotReady => "not-ready",
            DropReason::Unparsed => "unparsed",
            DropReason::Spoofed => "spoofed",
            DropReason::NotIp => "not-ip",
            DropReason::AdminDenied => "admin-denied",
            DropReason::BaselineDenied => "baseline-denied",
        }
    }
}

/// Decodes an outcome code from a counter slot or an event.
pub const fn outcome_from_u8(code: u8) -> Option<Result<Verdict, DropReason>> {
    let mut i = 0;
    while i < Verdict::ALL.len() {
        if Verdict::ALL[i] as u8 == code {
            return Some(Ok(Verdict::ALL[i]));
        }
        i += 1;
    }
    let mut i = 0;
    while i < DropReason::ALL.len() {
        if DropReason::ALL[i] as u8 == code {
            return Some(Err(DropReason::ALL[i]));
        }
        i += 1;
    }
    None
}

/// The outcome code of a decision.
pub const fn outcome(decision: Result<Verdict, DropReason>) -> Outcome {
    match decision {
        Ok(verdict) => verdict as u8,
        Err(reason) => reason as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_codes_round_trip_and_fit_the_counter_slots() {
        for verdict in Verdict::ALL {
            assert!((verdict as u32) < FIRST_DROP);
            assert_eq!(outcome_from_u8(verdict as u8), Some(Ok(verdict)));
        }
        for reason in DropReason::ALL {
            assert!((reason as u32) >= FIRST_DROP && (reason as u32) < OUTCOMES);
            assert_eq!(outcome_from_u8(reason as u8), Some(Err(reason)));
        }
        assert_eq!(outcome_from_u8(OUTCOMES as u8), None);
        assert_eq!(
            Verdict::ALL.len() + DropReason::ALL.len(),
            OUTCOMES as usize
        );
    }

    #[test]
    fn direction_opposite_is_an_involution() {
        for direction in Direction::ALL {
            assert_ne!(direction.opposite(), direction);
            assert_eq!(direction.opposite().opposite(), direction);
            assert_eq!(Direction::from_u8(direction as u8), Some(direction));
        }
    }
}
