//! `policy-agent status`: the status a running agent published, as tables or as its JSON.

use crate::{
    agent::status::{EndpointPhase, InterfaceRef, Status},
    cli::columns,
};

/// The readable form of a status: a summary line, the endpoints, the maps, the failures and
/// the last error.
pub fn render(status: &Status) -> String {
    let mut text = format!(
        "node {node}  source {source}  generation {generation}  {ready}  published {time}\n",
        node = status.node,
        source = status.source,
        generation = status
            .applied_generation
            .as_deref()
            .map_or("none", short_generation),
        ready = if status.ready { "ready" } else { "not ready" },
        time = status.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
    );
    if let Some(last) = &status.last_reconcile {
        text.push_str(&format!(
            "last reconcile at {time}: {writes} map writes in {ms} ms; {endpoints} endpoints, \
             {waiting} waiting for an interface, {held} interfaces held\n",
            time = last.finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
            writes = last.writes,
            ms = last.finished.duration_since(last.started).as_millis(),
            endpoints = last.endpoints,
            waiting = last.waiting,
            held = last.held,
        ));
    }

    text.push('\n');
    let mut rows = vec![
        [
            "ENDPOINT",
            "INTERFACE",
            "IFINDEX",
            "ID",
            "INGRESS",
            "EGRESS",
            "STATE",
            "GENERATION",
            "POLICY ENTRIES",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for endpoint in &status.endpoints {
        rows.push(vec![
            endpoint.pod.clone(),
            endpoint.interface.clone().unwrap_or_else(|| "-".to_owned()),
            endpoint
                .ifindex
                .map_or_else(|| "-".to_owned(), |ifindex| ifindex.to_string()),
            endpoint.endpoint_id.to_string(),
            isolation(endpoint.ingress_isolated),
            isolation(endpoint.egress_isolated),
            match endpoint.state {
                EndpointPhase::Programmed => "programmed",
                EndpointPhase::Fenced => "fenced (denies all)",
                EndpointPhase::WaitingForInterface => "waiting for interface",
                EndpointPhase::Conflict => "conflict (denies all)",
            }
            .to_owned(),
            endpoint
                .generation
                .as_deref()
                .map_or("-", short_generation)
                .to_owned(),
            endpoint.policy_entries.to_string(),
        ]);
    }
    text.push_str(&columns(&rows));

    if !status.conflicts.is_empty() {
        text.push('\n');
        let mut rows = vec![
            ["CONFLICT", "BOUND TO", "CLAIMED BY (HELD CLOSED)"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for conflict in &status.conflicts {
            rows.push(vec![
                conflict.pod.clone(),
                conflict
                    .bound
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), interface),
                conflict
                    .claimants
                    .iter()
                    .map(interface)
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        text.push_str(&columns(&rows));
    }

    text.push('\n');
    let mut rows = vec![
        ["MAP", "ENTRIES", "CAPACITY", "FILL"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for map in &status.maps {
        rows.push(vec![
            map.map.clone(),
            map.entries.to_string(),
            map.capacity.to_string(),
            fill(map.entries, map.capacity),
        ]);
    }
    text.push_str(&columns(&rows));

    text.push('\n');
    if status.failures.is_empty() {
        text.push_str("no failures\n");
    } else {
        let mut rows = vec![
            ["FAILURE", "OBJECT", "SINCE", "COUNT", "ERROR"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for failure in &status.failures {
            rows.push(vec![
                failure.kind.name().to_owned(),
                failure.object.clone(),
                failure.since.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                failure.count.to_string(),
                failure.error.clone(),
            ]);
        }
        text.push_str(&columns(&rows));
    }
    if let Some(last) = &status.last_error {
        text.push_str(&format!(
            "last error at {}: {}\n",
            last.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            last.error
        ));
    }
    text
}

/// `name (ifindex)`, or the index alone for an interface that is gone.
fn interface(interface: &InterfaceRef) -> String {
    match &interface.interface {
        Some(name) => format!("{name} ({})", interface.ifindex),
        None => format!("ifindex {}", interface.ifindex),
    }
}

fn isolation(isolated: bool) -> String {
    if isolated { "isolated" } else { "open" }.to_owned()
}

/// The first 12 hex digits, enough to tell generations apart.
fn short_generation(generation: &str) -> &str {
    generation.get(..12).unwrap_or(generation)
}

fn fill(entries: u64, capacity: u64) -> String {
    if capacity == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", entries as f64 * 100.0 / capacity as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::{
        ConflictStatus, EndpointStatus, Failure, FailureKind, LastError, MapUsage, ReconcileReport,
        Status,
    };

    fn status() -> Status {
        let time = "2026-11-26T07:00:00Z".parse().unwrap();
        Status {
            node: "node-1".into(),
            source: "files:/etc/netpol".into(),
            time,
            applied_generation: Some("0123456789abcdef0123".into()),
            ready: true,
            endpoints: vec![
                EndpointStatus {
                    pod: "shop/db".into(),
                    interface: Some("veth1a2b".into()),
                    ifindex: Some(7),
                    endpoint_id: 2,
                    ingress_isolated: true,
                    egress_isolated: false,
                    state: EndpointPhase::Programmed,
                    generation: Some("0123456789abcdef0123".into()),
                    policy_entries: 3,
                },
                EndpointStatus {
                    pod: "shop/web".into(),
                    interface: None,
                    ifindex: None,
                    endpoint_id: 3,
                    ingress_isolated: false,
                    egress_isolated: false,
                    state: EndpointPhase::WaitingForInterface,
                    generation: None,
                    policy_entries: 0,
                },
                EndpointStatus {
                    pod: "shop/x".into(),
                    interface: Some("veth9c8d".into()),
                    ifindex: Some(9),
                    endpoint_id: 4,
                    ingress_isolated: false,
                    egress_isolated: false,
                    state: EndpointPhase::Conflict,
                    generation: None,
                    policy_entries: 0,
                },
            ],
            conflicts: vec![ConflictStatus {
                pod: "shop/db".into(),
                bound: Some(InterfaceRef {
                    ifindex: 7,
                    interface: Some("veth1a2b".into()),
                }),
                claimants: vec![
                    InterfaceRef {
                        ifindex: 9,
                        interface: Some("veth9c8d".into()),
                    },
                    InterfaceRef {
                        ifindex: 11,
                        interface: None,
                    },
                ],
            }],
            maps: vec![MapUsage {
                map: "NP_ENDPOINT_V3".into(),
                entries: 2,
                capacity: 1024,
            }],
            failures: vec![Failure {
                kind: FailureKind::InvalidObject,
                object: "NetworkPolicy shop/bad (/etc/netpol/bad.yaml)".into(),
                error: "invalid cidr".into(),
                count: 1,
                since: time,
            }],
            last_error: Some(LastError {
                time,
                error: "the manifests have 1 error(s)".into(),
            }),
            start: None,
            first_reconcile: None,
            last_reconcile: Some(ReconcileReport {
                generation: "0123456789abcdef0123".into(),
                started: "2026-11-26T06:59:59.950Z".parse().unwrap(),
                written: "2026-11-26T06:59:59.990Z".parse().unwrap(),
                finished: "2026-11-26T06:59:59.998Z".parse().unwrap(),
                writes: 5,
                endpoints: 2,
                waiting: 1,
                held: 1,
                attached: 1,
                detached: 0,
                repaired: 0,
            }),
            last_update: None,
        }
    }

    #[test]
    fn status_reads_as_tables() {
        let expected = "\
node node-1  source files:/etc/netpol  generation 0123456789ab  ready  published 2026-11-26T07:00:00Z
last reconcile at 2026-11-26T06:59:59Z: 5 map writes in 48 ms; 2 endpoints, 1 waiting for an interface, 1 interfaces held

ENDPOINT  INTERFACE  IFINDEX  ID  INGRESS   EGRESS  STATE                  GENERATION    POLICY ENTRIES
shop/db   veth1a2b   7        2   isolated  open    programmed             0123456789ab  3
shop/web  -          -        3   open      open    waiting for interface  -             0
shop/x    veth9c8d   9        4   open      open    conflict (denies all)  -             0

CONFLICT  BOUND TO      CLAIMED BY (HELD CLOSED)
shop/db   veth1a2b (7)  veth9c8d (9), ifindex 11

MAP             ENTRIES  CAPACITY  FILL
NP_ENDPOINT_V3  2        1024      0.2%

FAILURE         OBJECT                                         SINCE                 COUNT  ERROR
invalid-object  NetworkPolicy shop/bad (/etc/netpol/bad.yaml)  2026-11-26T07:00:00Z  1      invalid cidr
last error at 2026-11-26T07:00:00Z: the manifests have 1 error(s)
";
        assert_eq!(render(&status()), expected);
    }

    #[test]
    fn status_json_round_trips() {
        let json = serde_json::to_string(&status()).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status());
        assert!(json.contains(r#""kind":"invalid-object""#), "{json}");
        assert!(
            json.contains(r#""state":"waiting-for-interface""#),
            "{json}"
        );
    }

    #[test]
    fn a_status_without_telemetry_still_reads() {
        let mut json = serde_json::to_value(status()).unwrap();
        let object = json.as_object_mut().unwrap();
        for field in ["start", "first_reconcile", "last_reconcile", "last_update"] {
            object.remove(field);
        }
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back.last_reconcile, None);
        assert_eq!(back.node, "node-1");
    }
}
