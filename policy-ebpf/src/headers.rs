//! The headers the parser reads, laid out as they lie in the packet and read through fields and
//! accessors named after their RFCs, so that no offset or mask appears elsewhere. The packet
//! parser and the ICMP error's quote read the same views.
//!
//! Every view is bytes only (alignment 1, any bit pattern valid), so it can be read at any
//! packet offset; multi-byte fields are network order until an accessor converts them. Fields
//! the programs never read keep their place as `_` fields.

use policy_common::maps::{FAMILY_V4, FAMILY_V6};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_ARP: u16 = 0x0806;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 errors are the types below 128 (RFC 4443); 1 to 4 are the ones defined.
pub const ICMPV6_DEST_UNREACHABLE: u8 = 1;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// Neighbour discovery (RFC 4861): router solicitation to redirect.
pub const ND_ROUTER_SOLICITATION: u8 = 133;
pub const ND_NEIGHBOUR_SOLICITATION: u8 = 135;
pub const ND_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;

/// A view the parser reads whole with `parse::header`.
///
/// # Safety
/// The type is `repr(C)` or `repr(transparent)` over bytes only: alignment 1, no padding, every
/// bit pattern valid.
pub unsafe trait Header: Copy {}

// SAFETY: bytes.
unsafe impl<const N: usize> Header for [u8; N] {}

#[inline(always)]
const fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// Ethernet II.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct EthHeader {
    _dst_mac: [u8; 6],
    _src_mac: [u8; 6],
    ethertype: [u8; 2],
}

impl EthHeader {
    #[inline(always)]
    pub const fn ethertype(&self) -> u16 {
        be16(self.ethertype)
    }
}

/// An 802.1Q or 802.1ad tag, after the outer ethertype.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct VlanTag {
    _tci: [u8; 2],
    ethertype: [u8; 2],
}

impl VlanTag {
    /// The ethertype of what the tag carries.
    #[inline(always)]
    pub const fn ethertype(&self) -> u16 {
        be16(self.ethertype)
    }
}

/// ARP (RFC 826) for IPv4 over Ethernet.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ArpIpv4 {
    hardware_type: [u8; 2],
    protocol_type: [u8; 2],
    hardware_len: u8,
    protocol_len: u8,
    _operation: [u8; 2],
    _sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    _target_mac: [u8; 6],
    pub target_ip: [u8; 4],
}

impl ArpIpv4 {
    const HARDWARE_ETHERNET: u16 = 1;

    /// Whether the header is what its layout assumes: Ethernet addresses of 6 bytes and IPv4
    /// addresses of 4.
    #[inline(always)]
    pub const fn is_ipv4_over_ethernet(&self) -> bool {
        be16(self.hardware_type) == Self::HARDWARE_ETHERNET
            && be16(self.protocol_type) == ETH_P_IPV4
            && self.hardware_len == 6
            && self.protocol_len == 4
    }
}

/// IPv4 (RFC 791), without options.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv4Header {
    version_ihl: u8,
    _tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    flags_fragment_offset: [u8; 2],
    _ttl: u8,
    pub protocol: u8,
    _checksum: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Header {
    /// The header without options.
    pub const MIN_LEN: usize = 20;
    const MORE_FRAGMENTS: u16 = 0x2000;
    const FRAGMENT_OFFSET: u16 = 0x1fff;

    #[inline(always)]
    pub const fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// The header's length in bytes, options included (IHL counts 4-byte words).
    #[inline(always)]
    pub const fn header_len(&self) -> usize {
        (self.version_ihl & 0x0f) as usize * 4
    }

    /// Version 4 and a header length of at least [`Self::MIN_LEN`].
    #[inline(always)]
    pub const fn is_valid(&self) -> bool {
        self.version() == 4 && self.header_len() >= Self::MIN_LEN
    }

    /// The datagram's length in bytes, header included.
    #[inline(always)]
    pub const fn total_len(&self) -> usize {
        be16(self.total_len) as usize
    }

    #[inline(always)]
    pub const fn id(&self) -> u16 {
        be16(self.id)
    }

    /// A fragment other than the first: it carries no L4 header.
    #[inline(always)]
    pub const fn is_later_fragment(&self) -> bool {
        be16(self.flags_fragment_offset) & Self::FRAGMENT_OFFSET != 0
    }

    #[inline(always)]
    pub const fn more_fragments(&self) -> bool {
        be16(self.flags_fragment_offset) & Self::MORE_FRAGMENTS != 0
    }
}

/// IPv6 (RFC 8200).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv6Header {
    version_class_flow: [u8; 4],
    _payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Header {
    pub const LEN: usize = 40;

    #[inline(always)]
    pub const fn is_valid(&self) -> bool {
        self.version_class_flow[0] >> 4 == 6
    }
}

/// The start of an IPv6 extension header of the hop-by-hop, routing and destination options
/// kind (RFC 8200), or an authentication header (RFC 4302).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv6Extension {
    pub next_header: u8,
    len: u8,
}

impl Ipv6Extension {
    /// The header's length in bytes, as an extension header of kind `kind` counts it: 4-byte
    /// words minus 2 for an authentication header, 8-byte words minus 1 for the others.
    #[inline(always)]
    pub const fn header_len(&self, kind: u8) -> usize {
        if kind == IPPROTO_AH {
            (self.len as usize + 2) * 4
        } else {
            (self.len as usize + 1) * 8
        }
    }

    /// An authentication header is at least 12 bytes (RFC 4302: a length field of at least 1).
    #[inline(always)]
    pub const fn is_short_authentication(&self, kind: u8) -> bool {
        kind == IPPROTO_AH && self.len == 0
    }
}

/// The IPv6 fragment header (RFC 8200).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ipv6Fragment {
    pub next_header: u8,
    _reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

impl Ipv6Fragment {
    pub const LEN: usize = 8;
    const OFFSET: u16 = 0xfff8;
    const MORE_FRAGMENTS: u16 = 0x0001;

    #[inline(always)]
    pub const fn id(&self) -> u32 {
        u32::from_be_bytes(self.id)
    }

    /// A fragment other than the first: it carries no L4 header.
    #[inline(always)]
    pub const fn is_later_fragment(&self) -> bool {
        be16(self.offset_flags) & Self::OFFSET != 0
    }

    #[inline(always)]
    pub const fn more_fragments(&self) -> bool {
        be16(self.offset_flags) & Self::MORE_FRAGMENTS != 0
    }
}

/// A flow's ports in host order; for ICMP echo, the identifier (see [`IcmpHeader::echo_ports`]).
#[derive(Clone, Copy)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// The source and destination ports that lead TCP, UDP and SCTP headers.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct PortsHeader {
    src: [u8; 2],
    dst: [u8; 2],
}

impl PortsHeader {
    #[inline(always)]
    pub const fn ports(&self) -> Ports {
        Ports {
            src: be16(self.src),
            dst: be16(self.dst),
        }
    }
}

/// TCP (RFC 9293), without options.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct TcpHeader {
    pub ports: PortsHeader,
    _seq: [u8; 4],
    _ack: [u8; 4],
    data_offset: u8,
    pub flags: u8,
    _window: [u8; 2],
    _checksum: [u8; 2],
    _urgent: [u8; 2],
}

impl TcpHeader {
    /// The header without options.
    pub const MIN_LEN: usize = 20;

    /// The header's length in bytes, options included (the data offset counts 4-byte words).
    #[inline(always)]
    pub const fn header_len(&self) -> usize {
        (self.data_offset >> 4) as usize * 4
    }
}

/// UDP (RFC 768).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct UdpHeader {
    pub ports: PortsHeader,
    _len: [u8; 2],
    _checksum: [u8; 2],
}

/// SCTP's common header (RFC 9260).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SctpHeader {
    pub ports: PortsHeader,
    _verification_tag: [u8; 4],
    _checksum: [u8; 4],
}

/// ICMP (RFC 792) and ICMPv6 (RFC 4443): type, code, checksum and the 4 bytes whose meaning
/// the type gives (an echo's identifier and sequence number).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct IcmpHeader {
    pub kind: u8,
    pub code: u8,
    _checksum: [u8; 2],
    echo_id: [u8; 2],
    _echo_seq: [u8; 2],
}

impl IcmpHeader {
    /// What follows the header in an error: the offending packet's IP header.
    pub const LEN: usize = 8;

    /// Whether this is an error of `family`'s ICMP, which quotes the packet that caused it.
    #[inline(always)]
    pub const fn is_error(&self, family: u8) -> bool {
        if family == FAMILY_V4 {
            matches!(
                self.kind,
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
            )
        } else {
            matches!(
                self.kind,
                ICMPV6_DEST_UNREACHABLE..=ICMPV6_PARAMETER_PROBLEM
            )
        }
    }

    /// Whether the type is a neighbour discovery message (code 0).
    #[inline(always)]
    pub const fn is_neighbour_discovery(&self) -> bool {
        matches!(self.kind, ND_ROUTER_SOLICITATION..=ND_REDIRECT) && self.code == 0
    }

    /// The echo identifier as flow ports: the source port of a request, the destination port
    /// of a reply, so that both key the same flow; 0 and 0 for every other type.
    #[inline(always)]
    pub const fn echo_ports(&self, family: u8) -> Ports {
        let id = be16(self.echo_id);
        match (family, self.kind) {
            (FAMILY_V4, ICMP_ECHO_REQUEST) | (FAMILY_V6, ICMPV6_ECHO_REQUEST) => {
                Ports { src: id, dst: 0 }
            }
            (FAMILY_V4, ICMP_ECHO_REPLY) | (FAMILY_V6, ICMPV6_ECHO_REPLY) => {
                Ports { src: 0, dst: id }
            }
            _ => Ports { src: 0, dst: 0 },
        }
    }
}

/// The first 8 bytes of an L4 header: what an ICMP error is sure to quote of the offending
/// packet (RFC 792), read before the protocol says which header it is.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct L4Start {
    bytes: [u8; 8],
}

impl L4Start {
    /// The ports of a TCP, UDP or SCTP header.
    #[inline(always)]
    pub const fn ports(&self) -> Ports {
        PortsHeader {
            src: [self.bytes[0], self.bytes[1]],
            dst: [self.bytes[2], self.bytes[3]],
        }
        .ports()
    }

    /// The same bytes as an ICMP or ICMPv6 header.
    #[inline(always)]
    pub const fn icmp(&self) -> IcmpHeader {
        let b = self.bytes;
        IcmpHeader {
            kind: b[0],
            code: b[1],
            _checksum: [b[2], b[3]],
            echo_id: [b[4], b[5]],
            _echo_seq: [b[6], b[7]],
        }
    }
}

macro_rules! headers {
    ($($view:ty = $len:expr;)*) => {
        $(
            // SAFETY: `repr(C)` over byte fields only.
            unsafe impl Header for $view {}
            const _: () = assert!(size_of::<$view>() == $len && align_of::<$view>() == 1);
        )*
    };
}

headers! {
    EthHeader = 14;
    VlanTag = 4;
    ArpIpv4 = 28;
    Ipv4Header = Ipv4Header::MIN_LEN;
    Ipv6Header = Ipv6Header::LEN;
    Ipv6Extension = 2;
    Ipv6Fragment = Ipv6Fragment::LEN;
    PortsHeader = 4;
    TcpHeader = TcpHeader::MIN_LEN;
    UdpHeader = 8;
    SctpHeader = 12;
    IcmpHeader = IcmpHeader::LEN;
    L4Start = 8;
}
