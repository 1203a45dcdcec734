//! Port ranges as port prefixes, and the order in which the programs probe the policy map.
//!
//! A NetworkPolicy port range `port..=endPort` becomes the smallest set of (port, prefix length)
//! pairs that covers it exactly, so that a lookup is a handful of exact-match hash probes: one per
//! prefix length that the endpoint actually uses (its [`LookupPlan`]), never one per rule.

use crate::maps::{
    ANY_PEER_CLASS, ANY_PROTOCOL, LookupPlan, PLAN_ANY_PROTOCOL, PolicyKey, any_peer_filter_bit,
};

/// The mask that keeps the top `prefix_len` bits of a port (0 to 16).
#[inline(always)]
pub const fn port_mask(prefix_len: u8) -> u16 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 16 {
        u16::MAX
    } else {
        !(u16::MAX >> prefix_len)
    }
}

/// The prefixes that cover `first..=last` exactly, in ascending port order.
///
/// At most 30 prefixes for any range; calls `emit(port, prefix_len)` for each.
pub fn range_to_prefixes(first: u16, last: u16, mut emit: impl FnMut(u16, u8)) {
    if first > last {
        return;
    }
    let mut start = u32::from(first);
    let end = u32::from(last);
    while start <= end {
        // The largest aligned block that starts at `start` and stays within `end`.
        let mut size_bits = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while start + (1u32 << size_bits) - 1 > end {
            size_bits -= 1;
        }
        emit(start as u16, 16 - size_bits as u8);
        start += 1u32 << size_bits;
    }
}

/// Probes the policy map for a packet the way the kernel programs do, returning the first hit.
///
/// Order: the packet's class before [`ANY_PEER_CLASS`]; within a class, the packet's protocol
/// from the longest port prefix down, then [`ANY_PROTOCOL`]. Only keys the plan says can exist
/// are probed (for the any-peer keys with a protocol, those its filter does not rule out), so
/// the number of probes depends on the plan, not on the number of entries.
#[inline(always)]
pub fn probe_policy<V>(
    endpoint_id: u32,
    plan: LookupPlan,
    direction: u8,
    peer_class: u32,
    protocol: u8,
    port: u16,
    mut lookup: impl FnMut(&PolicyKey) -> Option<V>,
) -> Option<V> {
    let classes = [(peer_class, plan.class), (ANY_PEER_CLASS, plan.any_peer)];
    let mut c = 0;
    while c < classes.len() {
        let (class, class_plan) = classes[c];
        c += 1;
        if class_plan == 0 {
            continue;
        }
        let filtered = class == ANY_PEER_CLASS;
        let mut key = PolicyKey {
            endpoint_id,
            peer_class: class,
            port: 0,
            direction,
            protocol,
            port_prefix_len: 0,
            _pad: [0; 3],
        };
        let mut prefix_len: u8 = 17;
        while prefix_len > 0 {
            prefix_len -= 1;
            if class_plan & (1 << prefix_len) != 0 {
                key.port = port & port_mask(prefix_len);
                key.port_prefix_len = prefix_len;
                if filtered
                    && plan.any_peer_filter & any_peer_filter_bit(protocol, key.port, prefix_len)
                        == 0
                {
                    continue;
                }
                if let Some(value) = lookup(&key) {
                    return Some(value);
                }
            }
        }
        if class_plan & PLAN_ANY_PROTOCOL != 0 {
            key.protocol = ANY_PROTOCOL;
            key.port = 0;
            key.port_prefix_len = 0;
            if let Some(value) = lookup(&key) {
                return Some(value);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    fn prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
        let mut out = Vec::new();
        range_to_prefixes(first, last, |port, len| out.push((port, len)));
        out
    }

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..=u16::MAX)
            .filter(|p| {
                prefixes
                    .iter()
                    .any(|&(base, len)| p & port_mask(len) == base)
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn single_port_is_one_full_prefix() {
        assert_eq!(prefixes(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn whole_space_is_one_empty_prefix() {
        assert_eq!(prefixes(0, u16::MAX), vec![(0, 0)]);
    }

    #[test]
    fn ranges_are_covered_exactly() {
        for (first, last) in [
            (32000, 32768),
            (1, 65535),
            (0, 0),
            (65535, 65535),
            (1000, 2000),
            (8080, 8089),
        ] {
            let set = prefixes(first, last);
            assert!(set.len() <= 30, "{first}-{last}: {} prefixes", set.len());
            assert_eq!(
                covered(&set),
                (first..=last).collect::<Vec<_>>(),
                "{first}-{last}"
            );
            for &(base, len) in &set {
                assert_eq!(base & port_mask(len), base, "unaligned prefix {base}/{len}");
            }
        }
    }

    #[test]
    fn empty_range_has_no_prefixes() {
        assert!(prefixes(10, 9).is_empty());
    }

    #[test]
    fn probe_visits_only_planned_keys_longest_first() {
        let plan = LookupPlan {
            class: (1 << 16) | (1 << 4) | PLAN_ANY_PROTOCOL,
            any_peer: (1 << 4) | PLAN_ANY_PROTOCOL,
            any_peer_filter: u32::MAX,
        };
        let mut seen = Vec::new();
        let hit: Option<()> = probe_policy(3, plan, 0, 9, 6, 0x1234, |key| {
            seen.push((key.peer_class, key.protocol, key.port, key.port_prefix_len));
            None
        });
        assert_eq!(hit, None);
        assert_eq!(
            seen,
            vec![
                (9, 6, 0x1234, 16),
                (9, 6, 0x1000, 4),
                (9, 0, 0, 0),
                (ANY_PEER_CLASS, 6, 0x1000, 4),
                (ANY_PEER_CLASS, 0, 0, 0),
            ]
        );
    }

    #[test]
    fn probe_skips_a_kind_of_class_without_keys() {
        let mut seen = Vec::new();
        let only_any_peer = LookupPlan {
            class: 0,
            any_peer: 1 << 16,
            any_peer_filter: u32::MAX,
        };
        let _: Option<()> = probe_policy(3, only_any_peer, 0, 9, 6, 22, |key| {
            seen.push(key.peer_class);
            None
        });
        let _: Option<()> = probe_policy(3, LookupPlan::EMPTY, 0, 9, 6, 22, |key| {
            seen.push(key.peer_class);
            None
        });
        assert_eq!(seen, vec![ANY_PEER_CLASS]);
    }

    #[test]
    fn probe_stops_at_first_hit() {
        let plan = LookupPlan {
            class: (1 << 16) | (1 << 0),
            any_peer: 1 << 16,
            any_peer_filter: u32::MAX,
        };
        let hit = probe_policy(1, plan, 1, 2, 17, 53, |key| {
            (key.port_prefix_len == 0).then_some(42)
        });
        assert_eq!(hit, Some(42));
    }

    fn key(peer_class: u32, protocol: u8, port: u16, port_prefix_len: u8) -> PolicyKey {
        PolicyKey {
            endpoint_id: 1,
            peer_class,
            protocol,
            port,
            port_prefix_len,
            ..PolicyKey::default()
        }
    }

    #[test]
    fn a_plan_records_each_key_under_its_kind_of_class() {
        let mut plan = LookupPlan::EMPTY;
        plan.record(&key(5, 6, 80, 16));
        plan.record(&key(5, ANY_PROTOCOL, 0, 0));
        plan.record(&key(ANY_PEER_CLASS, 17, 0x1000, 13));
        plan.record(&key(ANY_PEER_CLASS, ANY_PROTOCOL, 0, 0));
        assert_eq!(
            plan,
            LookupPlan {
                class: (1 << 16) | PLAN_ANY_PROTOCOL,
                any_peer: (1 << 13) | PLAN_ANY_PROTOCOL,
                any_peer_filter: any_peer_filter_bit(17, 0x1000, 13),
            }
        );
        assert!(!plan.is_empty() && LookupPlan::EMPTY.is_empty());
    }

    #[test]
    fn the_filter_skips_any_peer_keys_it_rules_out_and_never_one_that_exists() {
        // An Admin Deny of TCP 22 from any peer: a TCP packet to 81 (whose bit is clear) makes
        // no any-peer probe; to 22 it finds the key.
        let mut plan = LookupPlan::EMPTY;
        plan.record(&key(ANY_PEER_CLASS, 6, 22, 16));
        assert_eq!(plan.any_peer_filter & any_peer_filter_bit(6, 81, 16), 0);
        let mut probed = Vec::new();
        let _: Option<()> = probe_policy(1, plan, 0, 9, 6, 81, |key| {
            probed.push(key.port);
            None
        });
        assert!(probed.is_empty(), "{probed:?}");
        // Every key of a set of thousands, recorded, is found again: the filter only skips keys
        // that do not exist.
        let mut keys = Vec::new();
        let mut seed = 0x2545_f491_u32;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 17) as u8;
            let port = (seed >> 8) as u16 & port_mask(len);
            let protocol = [6, 17, 132][(seed >> 5) as usize % 3];
            keys.push(key(ANY_PEER_CLASS, protocol, port, len));
        }
        for (count, wanted) in keys.iter().enumerate() {
            let mut plan = LookupPlan::EMPTY;
            keys[..=count]
                .iter()
                .step_by(97)
                .for_each(|k| plan.record(k));
            plan.record(wanted);
            let hit = probe_policy(1, plan, 0, 9, wanted.protocol, wanted.port, |key| {
                (key == wanted).then_some(())
            });
            assert_eq!(hit, Some(()), "{wanted:?}");
        }
    }
}
