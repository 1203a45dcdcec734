//! Counters and the event ring.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use policy_common::{
    maps::{FlowEvent, counter_index},
    verdict::{Direction, Outcome},
};

use crate::{
    maps::{COUNTERS_MAP, EVENTS_MAP},
    parse::Packet,
};

/// Adds one packet of `bytes` to the endpoint's slot for this direction and outcome.
#[inline(always)]
pub fn count(endpoint_id: u32, direction: Direction, outcome: Outcome, bytes: u32) {
    if let Some(counter) = COUNTERS_MAP.get_ptr_mut(counter_index(endpoint_id, direction, outcome))
    {
        // SAFETY: a per-CPU slot: no other program touches it while this one runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(bytes);
        }
    }
}

/// Reports a packet to userspace. A full ring loses the event, never the verdict.
#[inline(always)]
pub fn report(
    endpoint_id: u32,
    ifindex: u32,
    direction: Direction,
    packet: &Packet,
    outcome: Outcome,
    rule_id: u32,
) {
    let Some(mut entry) = EVENTS_MAP.reserve::<FlowEvent>(0) else {
        return;
    };
    entry.write(FlowEvent {
        // SAFETY: a helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        endpoint_id,
        ifindex,
        rule_id,
        outcome,
        direction: direction as u8,
        family: packet.family,
        protocol: packet.protocol,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        _pad: [0; 4],
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
    });
    entry.submit(0);
}
