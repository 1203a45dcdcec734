//! Policy lookup: the peer's class from the LPM tries, then the endpoint's policy entries.

use aya_ebpf::maps::lpm_trie::Key;
use policy_common::{
    maps::{EndpointInfo, FAMILY_V4, HostAddrKey, PolicyValue, WORLD_CLASS},
    ports::probe_policy,
    verdict::Direction,
};

use crate::{
    maps::{HOST_ADDRS_MAP, PEERS_V4_MAP, PEERS_V6_MAP, POLICY_MAP, SERVICES_MAP},
    parse::Packet,
};

/// The address on the far side of the endpoint: the destination of what the pod sends, the
/// source of what it receives.
#[inline(always)]
pub const fn peer_addr(packet: &Packet, direction: Direction) -> &[u8; 16] {
    match direction {
        Direction::Egress => &packet.dst_addr,
        Direction::Ingress => &packet.src_addr,
    }
}

/// `HostAddrKey`'s layout with its family and padding as one word: the struct itself is all
/// bytes, and building it field by field costs a byte-at-a-time `memset` call.
#[repr(C)]
struct HostAddrWords {
    family: u32,
    addr: [u8; 16],
}

const _: () = assert!(size_of::<HostAddrWords>() == size_of::<HostAddrKey>());

/// Whether the peer is an address of this node.
#[inline(always)]
pub fn is_host(packet: &Packet, direction: Direction) -> bool {
    let words = HostAddrWords {
        // Little-endian: the family is the first byte, the padding the three zero bytes after.
        family: u32::from(packet.family),
        addr: *peer_addr(packet, direction),
    };
    // SAFETY: same size, every byte initialised, and `HostAddrKey` is valid for any bytes.
    let key = unsafe { core::mem::transmute::<HostAddrWords, HostAddrKey>(words) };
    HOST_ADDRS_MAP.get_ptr(&key).is_some()
}

/// Whether an IPv6 address is link-local (fe80::/10).
#[inline(always)]
pub const fn is_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// Whether an IPv6 address is multicast (ff00::/8).
#[inline(always)]
pub const fn is_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff
}

/// Whether the packet goes to a Service's ClusterIP.
#[inline(always)]
pub fn is_service(packet: &Packet) -> bool {
    let key = HostAddrKey {
        family: packet.family,
        _pad: [0; 3],
        addr: packet.dst_addr,
    };
    SERVICES_MAP.get_ptr(&key).is_some()
}

/// The class of `addr` (of the packet's family): the longest matching prefix, or `WORLD_CLASS`.
#[inline(always)]
fn peer_class(family: u8, addr: &[u8; 16]) -> u32 {
    let class = if family == FAMILY_V4 {
        let key = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        PEERS_V4_MAP.get(&key).map(|class| class.id)
    } else {
        PEERS_V6_MAP
            .get(&Key::new(128, *addr))
            .map(|class| class.id)
    };
    class.unwrap_or(WORLD_CLASS)
}

/// The endpoint's policy entry for `packet` in `direction` with `peer` on the other end, if
/// any.
///
/// Not inlined: its keys would otherwise share the programs' frame, which the verifier's
/// 512-byte stack limit does not allow.
#[inline(never)]
pub fn lookup(
    endpoint: &EndpointInfo,
    direction: Direction,
    packet: &Packet,
    peer: &[u8; 16],
) -> Option<PolicyValue> {
    probe_policy(
        endpoint.endpoint_id,
        endpoint.plan(direction),
        direction as u8,
        peer_class(packet.family, peer),
        packet.protocol,
        packet.policy_port(),
        |key| {
            POLICY_MAP.get_ptr(key).map(|value| {
                // SAFETY: a live map value, read once.
                unsafe { *value }
            })
        },
    )
}
