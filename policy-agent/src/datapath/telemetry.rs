//! Reading what the programs report: per-CPU counters and the flow event ring buffer.

use std::{
    mem::offset_of,
    net::{IpAddr, Ipv4Addr},
};

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use policy_common::{
    maps::{Counter, FlowEvent, counter_index},
    names::COUNTERS_MAP,
    verdict::{self, Direction, DropReason, OUTCOMES, Verdict},
};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Datapath, DatapathError, encode};

/// The packets and bytes of one endpoint, direction and outcome, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterReading {
    pub direction: Direction,
    pub outcome: Result<Verdict, DropReason>,
    pub packets: u64,
    pub bytes: u64,
}

/// One decoded [`FlowEvent`]: a drop, or a new allowed flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    pub endpoint_id: u32,
    pub ifindex: u32,
    /// The rule that allowed the flow; 0 for drops and flows no rule decided.
    pub rule_id: u32,
    pub outcome: Result<Verdict, DropReason>,
    pub direction: Direction,
    pub protocol: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

/// A ring buffer record that does not decode.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event record of {len} bytes, expected {expected}")]
    Truncated { len: usize, expected: usize },
    #[error("event with unknown outcome code {code}")]
    UnknownOutcome { code: u8 },
    #[error("event with unknown direction {code}")]
    UnknownDirection { code: u8 },
    #[error("event with unknown address family {code}")]
    UnknownFamily { code: u8 },
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_ne_bytes([bytes[offset], bytes[offset + 1]])
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_ne_bytes(raw)
}

fn addr_at(bytes: &[u8], offset: usize) -> [u8; 16] {
    let mut raw = [0; 16];
    raw.copy_from_slice(&bytes[offset..offset + 16]);
    raw
}

/// Decodes one ring buffer record (a [`FlowEvent`] in host byte order, addresses in network
/// order).
pub fn decode_flow(bytes: &[u8]) -> Result<Flow, EventError> {
    let expected = size_of::<FlowEvent>();
    if bytes.len() < expected {
        return Err(EventError::Truncated {
            len: bytes.len(),
            expected,
        });
    }
    let mut timestamp = [0; 8];
    timestamp.copy_from_slice(&bytes[offset_of!(FlowEvent, timestamp_ns)..][..8]);
    let outcome_code = bytes[offset_of!(FlowEvent, outcome)];
    let direction_code = bytes[offset_of!(FlowEvent, direction)];
    let family = bytes[offset_of!(FlowEvent, family)];
    // Family 0: a frame that carried no IP header the programs could read (a malformed
    // packet, a frame that is not IP); its event has no addresses.
    let address = |offset| match family {
        0 => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        _ => encode::addr_from_bytes(family, addr_at(bytes, offset))
            .ok_or(EventError::UnknownFamily { code: family }),
    };
    Ok(Flow {
        timestamp_ns: u64::from_ne_bytes(timestamp),
        endpoint_id: u32_at(bytes, offset_of!(FlowEvent, endpoint_id)),
        ifindex: u32_at(bytes, offset_of!(FlowEvent, ifindex)),
        rule_id: u32_at(bytes, offset_of!(FlowEvent, rule_id)),
        outcome: verdict::outcome_from_u8(outcome_code)
            .ok_or(EventError::UnknownOutcome { code: outcome_code })?,
        direction: Direction::from_u8(direction_code).ok_or(EventError::UnknownDirection {
            code: direction_code,
        })?,
        protocol: bytes[offset_of!(FlowEvent, protocol)],
        src: address(offset_of!(FlowEvent, src_addr))?,
        src_port: u16_at(bytes, offset_of!(FlowEvent, src_port)),
        dst: address(offset_of!(FlowEvent, dst_addr))?,
        dst_port: u16_at(bytes, offset_of!(FlowEvent, dst_port)),
    })
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<Result<Flow, EventError>> {
    let mut flows = Vec::new();
    while let Some(item) = ring.next() {
        flows.push(decode_flow(&item));
    }
    flows
}

/// Reads flow events without blocking.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    /// Every event in the ring now.
    pub fn read_available(&mut self) -> Vec<Result<Flow, EventError>> {
        drain(&mut self.ring)
    }

    /// An async reader woken by the ring buffer's epoll notifications (needs a tokio runtime).
    pub fn into_async(self) -> Result<AsyncEventReader, DatapathError> {
        // SAFETY: the ring buffer owns its map descriptor and returns that same open descriptor
        // for as long as it lives, which is as long as the `AsyncFd` that owns it.
        let ring = unsafe { AsyncFd::register_with_interest(self.ring, Interest::READABLE) }
            .map_err(|error| DatapathError::WatchEvents {
                source: error.into_parts().1,
            })?;
        Ok(AsyncEventReader { ring })
    }
}

/// Reads flow events as they arrive.
pub struct AsyncEventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl AsyncEventReader {
    /// Waits for events and returns every one available, at least one.
    pub async fn next_batch(&mut self) -> Result<Vec<Result<Flow, EventError>>, DatapathError> {
        loop {
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(|source| DatapathError::WatchEvents { source })?;
            let flows = drain(guard.get_inner_mut());
            guard.clear_ready();
            if !flows.is_empty() {
                return Ok(flows);
            }
        }
    }
}

impl Datapath {
    /// The event ring buffer's reader; there is one reader per datapath.
    pub fn take_events(&mut self) -> Result<EventReader, DatapathError> {
        let ring = self.maps.events.take().ok_or(DatapathError::EventsTaken)?;
        Ok(EventReader { ring })
    }

    /// One counter, summed over CPUs.
    pub fn counter(
        &self,
        endpoint_id: u32,
        direction: Direction,
        outcome: Result<Verdict, DropReason>,
    ) -> Result<Counter, DatapathError> {
        read_counter(&self.maps.counters, endpoint_id, direction, outcome)
    }

    /// Every non-zero counter of one endpoint.
    pub fn endpoint_counters(
        &self,
        endpoint_id: u32,
    ) -> Result<Vec<CounterReading>, DatapathError> {
        read_endpoint_counters(&self.maps.counters, endpoint_id)
    }

    /// A reader of the counters with its own descriptor of the pinned map, for a metrics
    /// endpoint that runs beside the agent's loop.
    pub fn counter_reader(&self) -> Result<CounterReader, DatapathError> {
        let path = self.layout.maps.join(COUNTERS_MAP);
        let data = MapData::from_pin(&path).map_err(|source| DatapathError::OpenPinnedMap {
            path: path.clone(),
            source,
        })?;
        let counters = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|source| {
            DatapathError::MapType {
                name: COUNTERS_MAP,
                source,
            }
        })?;
        Ok(CounterReader { counters })
    }
}

/// Reads the per-CPU counters of the pinned map.
pub struct CounterReader {
    counters: PerCpuArray<MapData, Counter>,
}

impl CounterReader {
    /// Every non-zero counter of one endpoint.
    pub fn endpoint_counters(
        &self,
        endpoint_id: u32,
    ) -> Result<Vec<CounterReading>, DatapathError> {
        read_endpoint_counters(&self.counters, endpoint_id)
    }
}

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterReader")
    }
}

fn read_counter(
    counters: &PerCpuArray<MapData, Counter>,
    endpoint_id: u32,
    direction: Direction,
    outcome: Result<Verdict, DropReason>,
) -> Result<Counter, DatapathError> {
    let index = counter_index(endpoint_id, direction, verdict::outcome(outcome));
    let per_cpu = counters
        .get(&index, 0)
        .map_err(|source| DatapathError::ReadMap {
            name: COUNTERS_MAP,
            source,
        })?;
    Ok(per_cpu
        .iter()
        .fold(Counter::default(), |sum, counter| Counter {
            packets: sum.packets + counter.packets,
            bytes: sum.bytes + counter.bytes,
        }))
}

fn read_endpoint_counters(
    counters: &PerCpuArray<MapData, Counter>,
    endpoint_id: u32,
) -> Result<Vec<CounterReading>, DatapathError> {
    let mut readings = Vec::new();
    for direction in Direction::ALL {
        for code in 0..OUTCOMES as u8 {
            let Some(outcome) = verdict::outcome_from_u8(code) else {
                continue;
            };
            let counter = read_counter(counters, endpoint_id, direction, outcome)?;
            if counter.packets > 0 {
                readings.push(CounterReading {
                    direction,
                    outcome,
                    packets: counter.packets,
                    bytes: counter.bytes,
                });
            }
        }
    }
    Ok(readings)
}

#[cfg(test)]
mod tests {
    use policy_common::maps::{FAMILY_V4, FAMILY_V6};

    use super::*;

    fn put(bytes: &mut [u8], offset: usize, value: &[u8]) {
        bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    fn record(family: u8, outcome: u8, direction: u8) -> Vec<u8> {
        let mut bytes = vec![0; size_of::<FlowEvent>()];
        put(
            &mut bytes,
            offset_of!(FlowEvent, timestamp_ns),
            &99u64.to_ne_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(FlowEvent, endpoint_id),
            &5u32.to_ne_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(FlowEvent, ifindex),
            &12u32.to_ne_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(FlowEvent, rule_id),
            &0u32.to_ne_bytes(),
        );
        bytes[offset_of!(FlowEvent, outcome)] = outcome;
        bytes[offset_of!(FlowEvent, direction)] = direction;
        bytes[offset_of!(FlowEvent, family)] = family;
        bytes[offset_of!(FlowEvent, protocol)] = 6;
        put(
            &mut bytes,
            offset_of!(FlowEvent, src_port),
            &40000u16.to_ne_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(FlowEvent, dst_port),
            &80u16.to_ne_bytes(),
        );
        let (src, dst) = if family == FAMILY_V6 {
            (
                "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            )
        } else {
            let mut src = [0; 16];
            let mut dst = [0; 16];
            src[..4].copy_from_slice(&[10, 0, 0, 1]);
            dst[..4].copy_from_slice(&[10, 0, 0, 2]);
            (src, dst)
        };
        put(&mut bytes, offset_of!(FlowEvent, src_addr), &src);
        put(&mut bytes, offset_of!(FlowEvent, dst_addr), &dst);
        bytes
    }

    #[test]
    fn drop_event_decodes_with_addresses_and_ports() {
        let flow = decode_flow(&record(FAMILY_V4, DropReason::PolicyDenied as u8, 0)).unwrap();
        assert_eq!(
            flow,
            Flow {
                timestamp_ns: 99,
                endpoint_id: 5,
                ifindex: 12,
                rule_id: 0,
                outcome: Err(DropReason::PolicyDenied),
                direction: Direction::Ingress,
                protocol: 6,
                src: "10.0.0.1".parse().unwrap(),
                src_port: 40000,
                dst: "10.0.0.2".parse().unwrap(),
                dst_port: 80,
            }
        );
    }

    #[test]
    fn v6_allow_event_decodes() {
        let flow = decode_flow(&record(FAMILY_V6, Verdict::Policy as u8, 1)).unwrap();
        assert_eq!(flow.outcome, Ok(Verdict::Policy));
        assert_eq!(flow.direction, Direction::Egress);
        assert_eq!(flow.dst, "fd00::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_event_without_an_ip_header_decodes_without_addresses() {
        let flow = decode_flow(&record(0, DropReason::NotIp as u8, 1)).unwrap();
        assert_eq!(flow.outcome, Err(DropReason::NotIp));
        assert_eq!(flow.src, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(flow.dst, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn bad_records_are_rejected() {
        assert_eq!(
            decode_flow(&[0; 10]),
            Err(EventError::Truncated {
                len: 10,
                expected: 64
            })
        );
        assert_eq!(
            decode_flow(&record(3, 0, 0)),
            Err(EventError::UnknownFamily { code: 3 })
        );
        let unknown = OUTCOMES as u8;
        assert_eq!(
            decode_flow(&record(FAMILY_V4, unknown, 0)),
            Err(EventError::UnknownOutcome { code: unknown })
        );
        assert_eq!(
            decode_flow(&record(FAMILY_V4, 0, 2)),
            Err(EventError::UnknownDirection { code: 2 })
        );
    }
}
