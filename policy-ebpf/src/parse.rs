//! Header parsing with direct packet access.
//!
//! Every read goes through [`header`], which bounds-checks against `data_end` and, when a header
//! lies past the linear part of a non-linear skb (GSO/GRO), pulls exactly up to that header with
//! `bpf_skb_pull_data` and checks again. Nothing else touches packet memory.

use aya_ebpf::{EbpfContext as _, bindings::__sk_buff, programs::TcContext};
use policy_common::{
    maps::{CtKey, FAMILY_V4, FAMILY_V6},
    verdict::Direction,
};

use crate::headers::{
    ArpIpv4, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, EthHeader, Header,
    IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_ROUTING, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IcmpHeader, Ipv4Header, Ipv6Extension,
    Ipv6Fragment, Ipv6Header, L4Start, Ports, SctpHeader, TcpHeader, UdpHeader, VlanTag,
};

/// How many IPv6 extension headers the parser walks; a longer chain is [`ParseError::Unparsed`].
pub const MAX_IPV6_EXTENSIONS: usize = 6;
/// No header is read past this offset; only a pathological extension chain gets near it.
const MAX_HEADER_OFFSET: usize = 16 * 1024;

/// `Packet::fragment`: not a fragment, or an IPv6 atomic fragment.
pub const FRAGMENT_NONE: u8 = 0;
/// `Packet::fragment`: offset 0 with more fragments to follow.
pub const FRAGMENT_FIRST: u8 = 1;
/// `Packet::fragment`: offset above 0: no L4 header.
pub const FRAGMENT_LATER: u8 = 2;

/// What the parser learnt about a packet. Fields past the point where parsing stopped stay 0.
///
/// Aligned to 8 so that zeroing and copying the addresses are word moves: at byte alignment
/// LLVM's BPF backend calls a byte-at-a-time `memset`/`memcpy` instead.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Packet {
    /// Network order; IPv4 in the first 4 bytes.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host order. ICMP echo: the identifier in `src_port` of a request, `dst_port` of a reply.
    pub src_port: u16,
    pub dst_port: u16,
    /// 0 until the IP header is parsed, then `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// The L4 protocol (IPv6: the first header past the walked extension headers).
    pub protocol: u8,
    pub tcp_flags: u8,
    /// `FRAGMENT_*`.
    pub fragment: u8,
    /// IPv4 identification (zero-extended) or IPv6 fragment identification.
    pub fragment_id: u32,
    /// Offset of the L4 header from the start of the frame.
    pub l4_offset: u32,
}

impl Packet {
    pub const fn new() -> Packet {
        Packet {
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: 0,
            dst_port: 0,
            family: 0,
            protocol: 0,
            tcp_flags: 0,
            fragment: FRAGMENT_NONE,
            fragment_id: 0,
            l4_offset: 0,
        }
    }

    /// Sets the flow's ports.
    #[inline(always)]
    const fn set_ports(&mut self, ports: Ports) {
        self.src_port = ports.src;
        self.dst_port = ports.dst;
    }

    /// The port a policy entry matches: the destination port where the protocol has ports.
    #[inline(always)]
    pub const fn policy_port(&self) -> u16 {
        match self.protocol {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => self.dst_port,
            _ => 0,
        }
    }
}

/// The kinds of packet the programs decide differently.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Not IPv4, IPv6 or ARP (LLDP, raw Ethernet, ARP for other protocols, ...).
    NonIp,
    /// ARP for IPv4 over Ethernet: the sender's address in `src_addr`, the target's in
    /// `dst_addr`, `family` `FAMILY_V4` and `protocol` 0, so its events name both.
    Arp,
    /// ICMPv6 neighbour discovery (types 133 to 137, code 0) with hop limit 255, so sent on this
    /// link ([`icmp_type`] tells which). The same types with another hop limit or code are an
    /// ordinary ICMPv6 [`Shape::Flow`]. (No payload here: an enum with one makes LLVM carry
    /// undefined bits the verifier rejects.)
    NeighbourDiscovery,
    /// A packet with a full L4 tuple (ports 0 for protocols without ports).
    Flow,
    /// A non-first fragment: addresses and fragment id only.
    LaterFragment,
    /// An ICMP or ICMPv6 error; the offending packet's header follows at `l4_offset + 8`.
    IcmpError,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A header is truncated or carries an impossible value.
    Malformed,
    /// The headers are well-formed but more than the parser walks (long IPv6 chains, stacked VLANs).
    Unparsed,
}

/// A bounds-checked pointer to the header `H` at `offset`, pulling non-linear data in when
/// needed.
#[inline(always)]
fn header<H: Header>(ctx: &TcContext, offset: usize) -> Option<*const H> {
    if offset > MAX_HEADER_OFFSET {
        return None;
    }
    let start = data(ctx) + offset;
    if start + size_of::<H>() <= data_end(ctx) {
        return Some(start as *const H);
    }
    let end = offset + size_of::<H>();
    if end > ctx.len() as usize || ctx.pull_data(end as u32).is_err() {
        return None;
    }
    // The pull moved the packet: the checked pointer is derived afresh.
    let start = data(ctx) + offset;
    if start + size_of::<H>() > data_end(ctx) {
        return None;
    }
    Some(start as *const H)
}

/// `skb->data`, read afresh at every use: a value the compiler kept across a loop or a helper
/// call would reach the verifier as a scalar, or as a stale pointer after a pull.
#[inline(always)]
fn data(ctx: &TcContext) -> usize {
    let skb = ctx.as_ptr() as *const __sk_buff;
    // SAFETY: the context of a TC program is a `__sk_buff`.
    unsafe { core::ptr::read_volatile(&raw const (*skb).data) as usize }
}

/// `skb->data_end`, read like [`data`].
#[inline(always)]
fn data_end(ctx: &TcContext) -> usize {
    let skb = ctx.as_ptr() as *const __sk_buff;
    // SAFETY: the context of a TC program is a `__sk_buff`.
    unsafe { core::ptr::read_volatile(&raw const (*skb).data_end) as usize }
}

/// Checks that the byte before `end` is present (pulling it in when needed).
#[inline(always)]
fn present(ctx: &TcContext, end: usize) -> bool {
    end > 0 && header::<[u8; 1]>(ctx, end - 1).is_some()
}

/// An IPv4 address as a 16-byte address field (the address, then 12 zero bytes), built as two
/// words: writing 4 bytes into a zeroed array makes LLVM call a byte-at-a-time `memset` for
/// the other 12.
#[inline(always)]
const fn ipv4_field(addr: [u8; 4]) -> [u8; 16] {
    let words = [u32::from_ne_bytes(addr) as u64, 0u64];
    // SAFETY: two u64 are 16 initialised bytes; on little-endian BPF the address bytes come
    // first, in order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) }
}

/// Parses Ethernet, one 802.1Q/802.1ad tag, IPv4 (options) or IPv6 (extension headers) and the
/// L4 header, filling `packet`. On error `packet` stays as it was: what a malformed packet's
/// headers say is not worth reporting, and leaving it untouched keeps the partial state out of
/// every early exit (the compiler would otherwise spill it on each of them).
#[inline(always)]
pub fn parse(ctx: &TcContext, packet: &mut Packet) -> Result<Shape, ParseError> {
    let mut parsed = Packet::new();
    let shape = parse_frame(ctx, &mut parsed)?;
    *packet = parsed;
    Ok(shape)
}

#[inline(always)]
fn parse_frame(ctx: &TcContext, packet: &mut Packet) -> Result<Shape, ParseError> {
    let eth = header::<EthHeader>(ctx, 0).ok_or(ParseError::Malformed)?;
    // SAFETY: `header` checked that the whole header is inside the packet.
    let (mut ethertype, mut offset) = unsafe { ((*eth).ethertype(), size_of::<EthHeader>()) };
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag = header::<VlanTag>(ctx, offset).ok_or(ParseError::Malformed)?;
        // SAFETY: bounds-checked by `header`.
        ethertype = unsafe { (*tag).ethertype() };
        offset += size_of::<VlanTag>();
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(ParseError::Unparsed);
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, offset, packet),
        ETH_P_IPV6 => parse_ipv6(ctx, offset, packet),
        ETH_P_ARP => parse_arp(ctx, offset, packet),
        _ => Ok(Shape::NonIp),
    }
}

#[inline(always)]
fn parse_arp(ctx: &TcContext, offset: usize, packet: &mut Packet) -> Result<Shape, ParseError> {
    let Some(arp) = header::<ArpIpv4>(ctx, offset) else {
        return Ok(Shape::NonIp);
    };
    // SAFETY: bounds-checked by `header`.
    let arp = unsafe { *arp };
    if !arp.is_ipv4_over_ethernet() {
        return Ok(Shape::NonIp);
    }
    packet.family = FAMILY_V4;
    packet.src_addr = ipv4_field(arp.sender_ip);
    packet.dst_addr = ipv4_field(arp.target_ip);
    Ok(Shape::Arp)
}

/// The ICMP or ICMPv6 type of a parsed ICMP packet. (The whole header is read: for a 1-byte
/// read LLVM folds the bounds check into a form the verifier learns no range from.)
#[inline(always)]
pub fn icmp_type(ctx: &TcContext, packet: &Packet) -> Option<u8> {
    let icmp = header::<IcmpHeader>(ctx, packet.l4_offset as usize)?;
    // SAFETY: bounds-checked by `header`.
    Some(unsafe { (*icmp).kind })
}

/// The target address of a neighbour solicitation or advertisement (after the ICMPv6 header,
/// whose last 4 bytes are its reserved or flag bytes).
#[inline(always)]
pub fn neighbour_target(ctx: &TcContext, packet: &Packet) -> Option<[u8; 16]> {
    let target = header::<[u8; 16]>(ctx, packet.l4_offset as usize + IcmpHeader::LEN)?;
    // SAFETY: bounds-checked by `header`.
    Some(unsafe { *target })
}

/// Bytes from the L4 header to the end of the frame.
#[inline(always)]
pub fn l4_length(ctx: &TcContext, packet: &Packet) -> u32 {
    ctx.len().saturating_sub(packet.l4_offset)
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, offset: usize, packet: &mut Packet) -> Result<Shape, ParseError> {
    let ip = header::<Ipv4Header>(ctx, offset).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds-checked by `header`; the copy keeps later helper calls from invalidating it.
    let ip = unsafe { *ip };
    if !ip.is_valid() || ip.total_len() < ip.header_len() {
        return Err(ParseError::Malformed);
    }
    packet.family = FAMILY_V4;
    packet.protocol = ip.protocol;
    packet.src_addr = ipv4_field(ip.src);
    packet.dst_addr = ipv4_field(ip.dst);
    if !present(ctx, offset + ip.header_len()) {
        return Err(ParseError::Malformed);
    }
    packet.fragment_id = u32::from(ip.id());
    if ip.is_later_fragment() {
        packet.fragment = FRAGMENT_LATER;
        return Ok(Shape::LaterFragment);
    }
    if ip.more_fragments() {
        packet.fragment = FRAGMENT_FIRST;
    }
    parse_l4(ctx, offset + ip.header_len(), ip.protocol, 0, packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, offset: usize, packet: &mut Packet) -> Result<Shape, ParseError> {
    let ip = header::<Ipv6Header>(ctx, offset).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (valid, mut next, hop_limit) =
        unsafe { ((*ip).is_valid(), (*ip).next_header, (*ip).hop_limit) };
    if !valid {
        return Err(ParseError::Malformed);
    }
    // SAFETY: bounds-checked by `header`.
    unsafe {
        packet.src_addr = (*ip).src;
        packet.dst_addr = (*ip).dst;
    }
    packet.family = FAMILY_V6;
    let mut offset = offset + Ipv6Header::LEN;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let ext = header::<Ipv6Extension>(ctx, offset).ok_or(ParseError::Malformed)?;
                // SAFETY: bounds-checked by `header`.
                let ext = unsafe { *ext };
                let len = ext.header_len(next);
                if ext.is_short_authentication(next) || !present(ctx, offset + len) {
                    return Err(ParseError::Malformed);
                }
                next = ext.next_header;
                offset += len;
            }
            IPPROTO_FRAGMENT => {
                let frag = header::<Ipv6Fragment>(ctx, offset).ok_or(ParseError::Malformed)?;
                // SAFETY: bounds-checked by `header`.
                let frag = unsafe { *frag };
                packet.fragment_id = frag.id();
                packet.protocol = frag.next_header;
                if frag.is_later_fragment() {
                    packet.fragment = FRAGMENT_LATER;
                    return Ok(Shape::LaterFragment);
                }
                if frag.more_fragments() {
                    packet.fragment = FRAGMENT_FIRST;
                }
                next = frag.next_header;
                offset += Ipv6Fragment::LEN;
            }
            _ => return parse_l4(ctx, offset, next, hop_limit, packet),
        }
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Err(ParseError::Unparsed)
        }
        _ => parse_l4(ctx, offset, next, hop_limit, packet),
    }
}

/// `hop_limit` is the IPv6 header's (0 for IPv4), which tells neighbour discovery from packets
/// that crossed a router.
#[inline(always)]
fn parse_l4(
    ctx: &TcContext,
    offset: usize,
    protocol: u8,
    hop_limit: u8,
    packet: &mut Packet,
) -> Result<Shape, ParseError> {
    packet.protocol = protocol;
    packet.l4_offset = offset as u32;
    match protocol {
        IPPROTO_TCP => {
            let tcp = header::<TcpHeader>(ctx, offset).ok_or(ParseError::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let tcp = unsafe { *tcp };
            let header_len = tcp.header_len();
            if header_len < TcpHeader::MIN_LEN || !present(ctx, offset + header_len) {
                return Err(ParseError::Malformed);
            }
            packet.set_ports(tcp.ports.ports());
            packet.tcp_flags = tcp.flags;
            Ok(Shape::Flow)
        }
        IPPROTO_UDP => {
            let udp = header::<UdpHeader>(ctx, offset).ok_or(ParseError::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            packet.set_ports(unsafe { (*udp).ports.ports() });
            Ok(Shape::Flow)
        }
        IPPROTO_SCTP => {
            let sctp = header::<SctpHeader>(ctx, offset).ok_or(ParseError::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            packet.set_ports(unsafe { (*sctp).ports.ports() });
            Ok(Shape::Flow)
        }
        IPPROTO_ICMP if packet.family == FAMILY_V4 => parse_icmp(ctx, offset, 0, packet),
        IPPROTO_ICMPV6 if packet.family == FAMILY_V6 => parse_icmp(ctx, offset, hop_limit, packet),
        _ => Ok(Shape::Flow),
    }
}

/// Neighbour discovery is sent with hop limit 255 and a receiver discards any other (RFC 4861),
/// so only that can be neighbour discovery.
const ND_HOP_LIMIT: u8 = 255;

#[inline(always)]
fn parse_icmp(
    ctx: &TcContext,
    offset: usize,
    hop_limit: u8,
    packet: &mut Packet,
) -> Result<Shape, ParseError> {
    let icmp = header::<IcmpHeader>(ctx, offset).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let icmp = unsafe { &*icmp };
    if packet.family == FAMILY_V6 && icmp.is_neighbour_discovery() && hop_limit == ND_HOP_LIMIT {
        return Ok(Shape::NeighbourDiscovery);
    }
    if icmp.is_error(packet.family) {
        return Ok(Shape::IcmpError);
    }
    packet.set_ports(icmp.echo_ports(packet.family));
    Ok(Shape::Flow)
}

/// The flow key of the packet an ICMP error quotes, as seen by whoever sent that packet: its IP
/// header (IPv4 options skipped) and the first 8 bytes of its L4 header, keyed for
/// `endpoint_id` in `direction`. `None` when the quote is too short, is a non-first fragment,
/// or (IPv6) starts with an extension header.
#[inline(always)]
pub fn quoted_key(
    ctx: &TcContext,
    packet: &Packet,
    endpoint_id: u32,
    direction: Direction,
) -> Option<CtKey> {
    let offset = packet.l4_offset as usize + IcmpHeader::LEN;
    let mut key = CtKey {
        endpoint_id,
        src_port: 0,
        dst_port: 0,
        direction: direction as u8,
        protocol: 0,
        family: packet.family,
        _pad: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
    };
    let l4_offset = if packet.family == FAMILY_V4 {
        let ip = header::<Ipv4Header>(ctx, offset)?;
        // SAFETY: bounds-checked by `header`.
        let ip = unsafe { &*ip };
        if !ip.is_valid() || ip.is_later_fragment() {
            return None;
        }
        key.protocol = ip.protocol;
        key.src_addr = ipv4_field(ip.src);
        key.dst_addr = ipv4_field(ip.dst);
        offset + ip.header_len()
    } else {
        let ip = header::<Ipv6Header>(ctx, offset)?;
        // SAFETY: bounds-checked by `header`.
        let ip = unsafe { &*ip };
        if !ip.is_valid() {
            return None;
        }
        key.protocol = ip.next_header;
        key.src_addr = ip.src;
        key.dst_addr = ip.dst;
        offset + Ipv6Header::LEN
    };
    let l4 = header::<L4Start>(ctx, l4_offset)?;
    // SAFETY: bounds-checked by `header`.
    let l4 = unsafe { &*l4 };
    let ports = match key.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => l4.ports(),
        IPPROTO_ICMP if packet.family == FAMILY_V4 => l4.icmp().echo_ports(FAMILY_V4),
        IPPROTO_ICMPV6 if packet.family == FAMILY_V6 => l4.icmp().echo_ports(FAMILY_V6),
        _ => Ports { src: 0, dst: 0 },
    };
    key.src_port = ports.src;
    key.dst_port = ports.dst;
    Some(key)
}
