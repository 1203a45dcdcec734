//! Conversions between the agent's types and the kernel's map keys. Addresses go to the maps in
//! network order (as `octets()` gives them); integers stay in host order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use policy_common::maps::{FAMILY_V4, FAMILY_V6, HostAddrKey};

use crate::policy::state::Prefix;

/// A prefix as a key of one of the two peer tries.
#[derive(Clone, Copy)]
pub enum PeerKey {
    V4(Key<[u8; 4]>),
    V6(Key<[u8; 16]>),
}

/// The trie key of a prefix, or `None` when its length exceeds the family's width.
pub fn peer_key(prefix: &Prefix) -> Option<PeerKey> {
    match prefix.addr {
        IpAddr::V4(addr) if prefix.len <= 32 => {
            Some(PeerKey::V4(Key::new(u32::from(prefix.len), addr.octets())))
        }
        IpAddr::V6(addr) if prefix.len <= 128 => {
            Some(PeerKey::V6(Key::new(u32::from(prefix.len), addr.octets())))
        }
        _ => None,
    }
}

/// The prefix an IPv4 trie key stands for.
pub fn prefix_from_v4(key: &Key<[u8; 4]>) -> Prefix {
    Prefix {
        addr: IpAddr::V4(Ipv4Addr::from(key.data())),
        len: u8::try_from(key.prefix_len()).unwrap_or(u8::MAX),
    }
}

/// The prefix an IPv6 trie key stands for.
pub fn prefix_from_v6(key: &Key<[u8; 16]>) -> Prefix {
    Prefix {
        addr: IpAddr::V6(Ipv6Addr::from(key.data())),
        len: u8::try_from(key.prefix_len()).unwrap_or(u8::MAX),
    }
}

/// A 16-byte address field: IPv6 as is, IPv4 in the first 4 bytes.
pub fn addr_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    match addr {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (FAMILY_V4, bytes)
        }
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    }
}

/// The address in a 16-byte address field of the given family.
pub fn addr_from_bytes(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
    }
}

/// The host address map's key of an address.
pub fn host_addr_key(addr: IpAddr) -> HostAddrKey {
    let (family, addr) = addr_bytes(addr);
    HostAddrKey {
        family,
        _pad: [0; 3],
        addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_prefix_round_trips_in_network_order() {
        let prefix = Prefix {
            addr: "10.1.2.0".parse().unwrap(),
            len: 24,
        };
        let Some(PeerKey::V4(key)) = peer_key(&prefix) else {
            panic!("not a v4 key");
        };
        assert_eq!(key.data(), [10, 1, 2, 0]);
        assert_eq!(key.prefix_len(), 24);
        assert_eq!(prefix_from_v4(&key), prefix);
    }

    #[test]
    fn v6_prefix_round_trips() {
        let prefix = Prefix {
            addr: "fd00:10::".parse().unwrap(),
            len: 64,
        };
        let Some(PeerKey::V6(key)) = peer_key(&prefix) else {
            panic!("not a v6 key");
        };
        assert_eq!(&key.data()[..4], &[0xfd, 0x00, 0x00, 0x10]);
        assert_eq!(prefix_from_v6(&key), prefix);
    }

    #[test]
    fn overlong_prefixes_have_no_key() {
        let v4 = Prefix {
            addr: "10.0.0.0".parse().unwrap(),
            len: 33,
        };
        let v6 = Prefix {
            addr: "::".parse().unwrap(),
            len: 129,
        };
        assert!(peer_key(&v4).is_none());
        assert!(peer_key(&v6).is_none());
    }

    #[test]
    fn v4_host_address_sits_in_the_first_four_bytes() {
        let key = host_addr_key("192.168.7.9".parse().unwrap());
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(&key.addr[..4], &[192, 168, 7, 9]);
        assert!(key.addr[4..].iter().all(|&b| b == 0));
        assert_eq!(
            addr_from_bytes(key.family, key.addr),
            Some("192.168.7.9".parse().unwrap())
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let key = host_addr_key(v6);
        assert_eq!(addr_from_bytes(key.family, key.addr), Some(v6));
        assert_eq!(addr_from_bytes(9, key.addr), None);
    }
}
