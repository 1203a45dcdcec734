//! Packet builders: Ethernet frames with IPv4 (options, fragments) or IPv6 (extension headers)
//! and TCP, UDP, SCTP, ICMP or ICMPv6. Checksums are left 0: the programs never verify them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// An Ethernet II frame around `payload`.
pub fn pkt_eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An 802.1Q-tagged frame around `payload`.
pub fn pkt_vlan(vlan_id: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut tag = vlan_id.to_be_bytes().to_vec();
    tag.extend_from_slice(&ethertype.to_be_bytes());
    tag.extend_from_slice(payload);
    pkt_eth(ETH_P_8021Q, &tag)
}

/// An ARP request frame.
pub fn pkt_arp() -> Vec<u8> {
    pkt_arp_from(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))
}

/// An ARP request from `sender` asking for `target`.
pub fn pkt_arp_from(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    pkt_eth(ETH_P_ARP, &arp)
}

/// The IPv4 header fields a test may want to vary.
#[derive(Clone, Debug)]
pub struct Ip4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    /// In 8-byte units.
    pub fragment_offset: u16,
    pub more_fragments: bool,
    /// A multiple of 4 bytes, at most 40.
    pub options: Vec<u8>,
}

impl Ip4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Ip4 {
        Ip4 {
            src,
            dst,
            protocol,
            id: 0x1234,
            fragment_offset: 0,
            more_fragments: false,
            options: Vec::new(),
        }
    }

    pub fn header(&self, payload_len: usize) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        let total = (header_len + payload_len) as u16;
        let flags = (self.fragment_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
        let mut out = vec![0x40 | (header_len / 4) as u8, 0];
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[64, self.protocol, 0, 0]);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(&self.options);
        out
    }
}

/// An IPv4 frame carrying `l4`.
pub fn pkt_ip4(ip: &Ip4, l4: &[u8]) -> Vec<u8> {
    let mut packet = ip.header(l4.len());
    packet.extend_from_slice(l4);
    pkt_eth(ETH_P_IPV4, &packet)
}

/// One IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestinationOptions,
    /// `offset` in 8-byte units.
    Fragment {
        offset: u16,
        more: bool,
        id: u32,
    },
    Authentication,
}

impl Ext {
    pub fn number(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment { .. } => 44,
            Ext::Authentication => 51,
            Ext::DestinationOptions => 60,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // A PadN option filling the 8 bytes.
            Ext::HopByHop | Ext::DestinationOptions => vec![next, 0, 1, 4, 0, 0, 0, 0],
            // Type 4 (segment routing) with no segments left; 16 bytes.
            Ext::Routing => {
                let mut out = vec![next, 1, 4, 0, 0, 0, 0, 0];
                out.extend_from_slice(&[0; 8]);
                out
            }
            Ext::Fragment { offset, more, id } => {
                let field = (offset << 3) | u16::from(more);
                let mut out = vec![next, 0];
                out.extend_from_slice(&field.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                out
            }
            // 12 bytes of header and 4 of ICV: payload length 16 / 4 - 2 = 2.
            Ext::Authentication => {
                let mut out = vec![next, 2, 0, 0];
                out.extend_from_slice(&0x100u32.to_be_bytes());
                out.extend_from_slice(&1u32.to_be_bytes());
                out.extend_from_slice(&[0; 4]);
                out
            }
        }
    }
}

/// The IPv6 header fields a test may want to vary.
#[derive(Clone, Debug)]
pub struct Ip6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub protocol: u8,
    pub hop_limit: u8,
    pub extensions: Vec<Ext>,
}

impl Ip6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8) -> Ip6 {
        Ip6 {
            src,
            dst,
            protocol,
            hop_limit: 64,
            extensions: Vec::new(),
        }
    }

    /// The fixed header and the extension chain.
    pub fn header(&self, payload_len: usize) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, ext) in self.extensions.iter().enumerate() {
            let next = self
                .extensions
                .get(i + 1)
                .map_or(self.protocol, |next| next.number());
            chain.extend_from_slice(&ext.bytes(next));
        }
        let first = self
            .extensions
            .first()
            .map_or(self.protocol, |ext| ext.number());
        let mut out = vec![0x60, 0, 0, 0];
        out.extend_from_slice(&((chain.len() + payload_len) as u16).to_be_bytes());
        out.extend_from_slice(&[first, self.hop_limit]);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(&chain);
        out
    }
}

/// An IPv6 frame carrying `l4`.
pub fn pkt_ip6(ip: &Ip6, l4: &[u8]) -> Vec<u8> {
    let mut packet = ip.header(l4.len());
    packet.extend_from_slice(l4);
    pkt_eth(ETH_P_IPV6, &packet)
}

/// A 20-byte TCP header.
pub fn pkt_tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&src_port.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    out
}

/// A UDP header with `payload_len` zero bytes of payload.
pub fn pkt_udp(src_port: u16, dst_port: u16, payload_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload_len);
    out.extend_from_slice(&src_port.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.resize(8 + payload_len, 0);
    out
}

/// An SCTP common header and an INIT chunk header.
pub fn pkt_sctp(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&src_port.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 4]);
    out
}

/// An ICMP or ICMPv6 message: type, code, identifier and sequence (or the unused word of an
/// error), then `body` (the quoted packet of an error).
pub fn pkt_icmp(icmp_type: u8, code: u8, id: u16, body: &[u8]) -> Vec<u8> {
    let mut out = vec![icmp_type, code, 0, 0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(body);
    out
}

/// The IP packet inside a frame (what an ICMP error quotes).
pub fn ip_payload(frame: &[u8]) -> &[u8] {
    &frame[14..]
}
