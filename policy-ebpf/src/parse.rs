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

const ETH_HEADER: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_ARP: u16 = 0x0806;
/// An ARP packet for IPv4 over Ethernet: hardware type, protocol type, both lengths, operation,
/// then sender MAC, sender IPv4, target MAC, target IPv4.
const ARP_LEN: usize = 28;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// How many IPv6 extension headers the parser walks; a longer chain is [`ParseError::Unparsed`].
pub const MAX_IPV6_EXTENSIONS: usize = 6;
/// No header is read past this offset; only a pathological extension chain gets near it.
const MAX_HEADER_OFFSET: usize = 16 * 1024;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

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

/// A bounds-checked pointer to `N` bytes at `offset`, pulling non-linear data in when needed.
#[inline(always)]
fn header<const N: usize>(ctx: &TcContext, offset: usize) -> Option<*const [u8; N]> {
    if offset > MAX_HEADER_OFFSET {
        return None;
    }
    let start = data(ctx) + offset;
    if start + N <= data_end(ctx) {
        return Some(start as *const [u8; N]);
    }
    let end = offset + N;
    if end > ctx.len() as usize || ctx.pull_data(end as u32).is_err() {
        return None;
    }
    // The pull moved the packet: the checked pointer is derived afresh.
    let start = data(ctx) + offset;
    if start + N > data_end(ctx) {
        return None;
    }
    Some(start as *const [u8; N])
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
    end > 0 && header::<1>(ctx, end - 1).is_some()
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

#[inline(always)]
const fn be16(high: u8, low: u8) -> u16 {
    u16::from_be_bytes([high, low])
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
    let eth = header::<ETH_HEADER>(ctx, 0).ok_or(ParseError::Malformed)?;
    // SAFETY: `header` checked that all ETH_HEADER bytes are inside the packet.
    let (mut ethertype, mut offset) = unsafe { (be16((*eth)[12], (*eth)[13]), ETH_HEADER) };
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag = header::<4>(ctx, ETH_HEADER).ok_or(ParseError::Malformed)?;
        // SAFETY: bounds-checked by `header`.
        ethertype = unsafe { be16((*tag)[2], (*tag)[3]) };
        offset += 4;
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
    let Some(arp) = header::<ARP_LEN>(ctx, offset) else {
        return Ok(Shape::NonIp);
    };
    // SAFETY: bounds-checked by `header`.
    let arp = unsafe { *arp };
    let ipv4_over_ethernet = be16(arp[0], arp[1]) == 1
        && be16(arp[2], arp[3]) == ETH_P_IPV4
        && arp[4] == 6
        && arp[5] == 4;
    if !ipv4_over_ethernet {
        return Ok(Shape::NonIp);
    }
    packet.family = FAMILY_V4;
    packet.src_addr = ipv4_field([arp[14], arp[15], arp[16], arp[17]]);
    packet.dst_addr = ipv4_field([arp[24], arp[25], arp[26], arp[27]]);
    Ok(Shape::Arp)
}

/// The ICMP or ICMPv6 type of a parsed ICMP packet. (The whole 8-byte header is read: for a
/// 1-byte read LLVM folds the bounds check into a form the verifier learns no range from.)
#[inline(always)]
pub fn icmp_type(ctx: &TcContext, packet: &Packet) -> Option<u8> {
    let icmp = header::<8>(ctx, packet.l4_offset as usize)?;
    // SAFETY: bounds-checked by `header`.
    Some(unsafe { (*icmp)[0] })
}

/// The target address of a neighbour solicitation or advertisement (after the ICMPv6 header
/// and 4 reserved or flag bytes).
#[inline(always)]
pub fn neighbour_target(ctx: &TcContext, packet: &Packet) -> Option<[u8; 16]> {
    let target = header::<16>(ctx, packet.l4_offset as usize + 8)?;
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
    let ip = header::<20>(ctx, offset).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds-checked by `header`; the copy keeps later helper calls from invalidating it.
    let ip = unsafe { *ip };
    if ip[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if header_len < 20 || usize::from(be16(ip[2], ip[3])) < header_len {
        return Err(ParseError::Malformed);
    }
    packet.family = FAMILY_V4;
    packet.protocol = ip[9];
    packet.src_addr = ipv4_field([ip[12], ip[13], ip[14], ip[15]]);
    packet.dst_addr = ipv4_field([ip[16], ip[17], ip[18], ip[19]]);
    if !present(ctx, offset + header_len) {
        return Err(ParseError::Malformed);
    }
    let flags_offset = be16(ip[6], ip[7]);
    packet.fragment_id = u32::from(be16(ip[4], ip[5]));
    if flags_offset & 0x1fff != 0 {
        packet.fragment = FRAGMENT_LATER;
        return Ok(Shape::LaterFragment);
    }
    if flags_offset & 0x2000 != 0 {
        packet.fragment = FRAGMENT_FIRST;
    }
    parse_l4(ctx, offset + header_len, ip[9], 0, packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, offset: usize, packet: &mut Packet) -> Result<Shape, ParseError> {
    let ip = header::<40>(ctx, offset).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (version, mut next, hop_limit) = unsafe { ((*ip)[0] >> 4, (*ip)[6], (*ip)[7]) };
    if version != 6 {
        return Err(ParseError::Malformed);
    }
    // SAFETY: bounds-checked by `header`.
    unsafe {
        packet.src_addr = *(ip as *const u8).add(8).cast::<[u8; 16]>();
        packet.dst_addr = *(ip as *const u8).add(24).cast::<[u8; 16]>();
    }
    packet.family = FAMILY_V6;
    let mut offset = offset + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let ext = header::<2>(ctx, offset).ok_or(ParseError::Malformed)?;
                // SAFETY: bounds-checked by `header`.
                let (ext_next, ext_len) = unsafe { ((*ext)[0], usize::from((*ext)[1])) };
                let len = if next == IPPROTO_AH {
                    (ext_len + 2) * 4
                } else {
                    (ext_len + 1) * 8
                };
                // An authentication header is at least 12 bytes (RFC 4302: length field >= 1).
                let too_short = next == IPPROTO_AH && ext_len == 0;
                if too_short || !present(ctx, offset + len) {
                    return Err(ParseError::Malformed);
                }
                next = ext_next;
                offset += len;
            }
            IPPROTO_FRAGMENT => {
                let frag = header::<8>(ctx, offset).ok_or(ParseError::Malformed)?;
                // SAFETY: bounds-checked by `header`.
                let frag = unsafe { *frag };
                let offset_flags = be16(frag[2], frag[3]);
                packet.fragment_id = u32::from_be_bytes([frag[4], frag[5], frag[6], frag[7]]);
                packet.protocol = frag[0];
                if offset_flags & 0xfff8 != 0 {
                    packet.fragment = FRAGMENT_LATER;
                    return Ok(Shape::LaterFragment);
                }
                if offset_flags & 1 != 0 {
                    packet.fragment = FRAGMENT_FIRST;
                }
                next = frag[0];
                offset += 8;
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
            let tcp = header::<20>(ctx, offset).ok_or(ParseError::Malformed)?;
            // SAFETY: bounds-checked by `header`.
            let tcp = unsafe { *tcp };
            let header_len = usize::from(tcp[12] >> 4) * 4;
            if header_len < 20 || !present(ctx, offset + header_len) {
                return Err(ParseError::Malformed);
            }
            packet.src_port = be16(tcp[0], tcp[1]);
            packet.dst_port = be16(tcp[2], tcp[3]);
            packet.tcp_flags = tcp[13];
            Ok(Shape::Flow)
        }
        IPPROTO_UDP => ports::<8>(ctx, offset, packet),
        IPPROTO_SCTP => ports::<12>(ctx, offset, packet),
        IPPROTO_ICMP if packet.family == FAMILY_V4 => parse_icmp(ctx, offset, 0, packet),
        IPPROTO_ICMPV6 if packet.family == FAMILY_V6 => parse_icmp(ctx, offset, hop_limit, packet),
        _ => Ok(Shape::Flow),
    }
}

/// UDP and SCTP: the ports lead a header of `N` bytes.
#[inline(always)]
fn ports<const N: usize>(
    ctx: &TcContext,
    offset: usize,
    packet: &mut Packet,
) -> Result<Shape, ParseError> {
    let l4 = header::<N>(ctx, offset).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds-checked by `header`; N >= 4.
    unsafe {
        packet.src_port = be16((*l4)[0], (*l4)[1]);
        packet.dst_port = be16((*l4)[2], (*l4)[3]);
    }
    Ok(Shape::Flow)
}

/// The echo identifier as CtKey ports: `(id, 0)` for a request, `(0, id)` for a reply, else
/// `(0, 0)`.
#[inline(always)]
const fn echo_ports(family: u8, icmp_type: u8, id: u16) -> (u16, u16) {
    match (family, icmp_type) {
        (FAMILY_V4, 8) | (FAMILY_V6, 128) => (id, 0),
        (FAMILY_V4, 0) | (FAMILY_V6, 129) => (0, id),
        _ => (0, 0),
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
    let icmp = header::<8>(ctx, offset).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds-checked by `header`.
    let (icmp_type, code, id) = unsafe { ((*icmp)[0], (*icmp)[1], be16((*icmp)[4], (*icmp)[5])) };
    let v4 = packet.family == FAMILY_V4;
    if !v4 && (133..=137).contains(&icmp_type) && code == 0 && hop_limit == ND_HOP_LIMIT {
        return Ok(Shape::NeighbourDiscovery);
    }
    let error = if v4 {
        matches!(icmp_type, 3 | 11 | 12)
    } else {
        matches!(icmp_type, 1..=4)
    };
    if error {
        return Ok(Shape::IcmpError);
    }
    (packet.src_port, packet.dst_port) = echo_ports(packet.family, icmp_type, id);
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
    let offset = packet.l4_offset as usize + 8;
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
        let ip = header::<20>(ctx, offset)?;
        // SAFETY: bounds-checked by `header`.
        let ip = unsafe { &*ip };
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || header_len < 20 || be16(ip[6], ip[7]) & 0x1fff != 0 {
            return None;
        }
        key.protocol = ip[9];
        key.src_addr = ipv4_field([ip[12], ip[13], ip[14], ip[15]]);
        key.dst_addr = ipv4_field([ip[16], ip[17], ip[18], ip[19]]);
        offset + header_len
    } else {
        let ip = header::<40>(ctx, offset)?;
        // SAFETY: bounds-checked by `header`.
        unsafe {
            if (*ip)[0] >> 4 != 6 {
                return None;
            }
            key.protocol = (*ip)[6];
            key.src_addr = *(ip as *const u8).add(8).cast::<[u8; 16]>();
            key.dst_addr = *(ip as *const u8).add(24).cast::<[u8; 16]>();
        }
        offset + 40
    };
    let l4 = header::<8>(ctx, l4_offset)?;
    // SAFETY: bounds-checked by `header`.
    let l4 = unsafe { &*l4 };
    (key.src_port, key.dst_port) = match key.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => (be16(l4[0], l4[1]), be16(l4[2], l4[3])),
        IPPROTO_ICMP if packet.family == FAMILY_V4 => {
            echo_ports(FAMILY_V4, l4[0], be16(l4[4], l4[5]))
        }
        IPPROTO_ICMPV6 if packet.family == FAMILY_V6 => {
            echo_ports(FAMILY_V6, l4[0], be16(l4[4], l4[5]))
        }
        _ => (0, 0),
    };
    Some(key)
}
