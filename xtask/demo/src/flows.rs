//! The kernel's flow events, as each node's agent appends them to its `flows.jsonl`, and the
//! short list of drops the demo shows for a step.

use std::{
    fs::File,
    io::{ErrorKind, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use policy_core::telemetry::{FLOW_LOG, FlowRecord};

/// The lines of a flow log that parse, and how many did not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub events: Vec<FlowRecord>,
    pub unreadable: usize,
}

/// Parses complete JSON lines; blank lines are skipped.
pub fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(event) => parsed.events.push(event),
            Err(_) => parsed.unreadable += 1,
        }
    }
    parsed
}

/// Dropped packets of one kind: one endpoint, hook, protocol, port, reason and deciding rule;
/// the peers are the clients of an ingress drop or the servers of an egress drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drops {
    pub pod: String,
    pub direction: String,
    pub protocol: String,
    pub port: u16,
    pub reason: String,
    pub decided_by: String,
    /// In the order first seen, each once.
    pub peers: Vec<String>,
    pub packets: usize,
}

impl Drops {
    fn same_kind(&self, event: &FlowRecord, decided_by: &str) -> bool {
        (
            self.pod.as_str(),
            self.direction.as_str(),
            self.protocol.as_str(),
            self.port,
            self.reason.as_str(),
            self.decided_by.as_str(),
        ) == (
            endpoint(event),
            event.direction.as_str(),
            event.protocol.as_str(),
            event.dst_port,
            event.reason.as_str(),
            decided_by,
        )
    }
}

/// The drops among `events`, one entry per kind, in the order each kind was first seen.
pub fn summarise(events: &[FlowRecord]) -> Vec<Drops> {
    let mut drops: Vec<Drops> = Vec::new();
    for event in events.iter().filter(|event| event.verdict == "dropped") {
        let decided_by = event.decided_by.as_deref().unwrap_or("no rule recorded");
        let peer = if event.direction == "egress" {
            event
                .dst_pod
                .clone()
                .unwrap_or_else(|| event.dst.to_string())
        } else {
            event
                .src_pod
                .clone()
                .unwrap_or_else(|| event.src.to_string())
        };
        let index = match drops
            .iter()
            .position(|seen| seen.same_kind(event, decided_by))
        {
            Some(index) => index,
            None => {
                drops.push(Drops {
                    pod: endpoint(event).to_owned(),
                    direction: event.direction.clone(),
                    protocol: event.protocol.clone(),
                    port: event.dst_port,
                    reason: event.reason.clone(),
                    decided_by: decided_by.to_owned(),
                    peers: Vec::new(),
                    packets: 0,
                });
                drops.len() - 1
            }
        };
        let entry = &mut drops[index];
        entry.packets += 1;
        if !entry.peers.contains(&peer) {
            entry.peers.push(peer);
        }
    }
    drops
}

/// The pod whose program decided; the agent names every endpoint it programmed, so a nameless
/// one is an endpoint it had already removed.
fn endpoint(event: &FlowRecord) -> &str {
    event.pod.as_deref().unwrap_or("(removed endpoint)")
}

/// Two lines per kind of drop, the first aligned across kinds:
/// `shop/db  ingress  TCP 3306  2 packets  from shop/web, dev/tester`, then the reason and the
/// rule or isolation that decided, indented.
pub fn render(drops: &[Drops]) -> String {
    let rows: Vec<[String; 4]> = drops
        .iter()
        .map(|drop| {
            [
                drop.pod.clone(),
                drop.direction.clone(),
                format!("{} {}", drop.protocol, drop.port),
                format!(
                    "{} packet{}",
                    drop.packets,
                    if drop.packets == 1 { "" } else { "s" }
                ),
            ]
        })
        .collect();
    let mut widths = [0; 4];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    for (row, drop) in rows.iter().zip(drops) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let peers = if drop.direction == "egress" {
            "to"
        } else {
            "from"
        };
        text.push_str(&format!(
            "{}  {peers} {}\n",
            cells.join("  "),
            drop.peers.join(", ")
        ));
        text.push_str(&format!(
            "{:indent$}{}: {}\n",
            "",
            drop.reason,
            drop.decided_by,
            indent = widths[0] + 2
        ));
    }
    text
}

/// The flow logs of the lab's nodes and how far each had been read.
pub struct FlowLogs {
    logs: Vec<(PathBuf, u64)>,
}

impl FlowLogs {
    /// Marks the current end of every node's log under `run_dir` (a missing log is empty).
    pub fn mark(run_dir: &Path, nodes: usize) -> anyhow::Result<Self> {
        let logs = (1..=nodes)
            .map(|k| {
                let path = run_dir.join(format!("node-{k}")).join(FLOW_LOG);
                let length = match std::fs::metadata(&path) {
                    Ok(metadata) => metadata.len(),
                    Err(error) if error.kind() == ErrorKind::NotFound => 0,
                    Err(error) => {
                        return Err(error).with_context(|| format!("reading {}", path.display()));
                    }
                };
                Ok((path, length))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { logs })
    }

    /// The complete lines appended to every log since the mark, parsed.
    pub fn read_since_mark(&self) -> anyhow::Result<Parsed> {
        let mut text = String::new();
        for (path, offset) in &self.logs {
            let mut file = match File::open(path) {
                Ok(file) => file,
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("opening {}", path.display()));
                }
            };
            let mut appended = String::new();
            file.seek(SeekFrom::Start(*offset))
                .and_then(|_| file.read_to_string(&mut appended))
                .with_context(|| format!("reading {}", path.display()))?;
            // An agent may be writing the last line right now: only whole lines count.
            let complete = appended.rfind('\n').map_or(0, |end| end + 1);
            text.push_str(&appended[..complete]);
        }
        Ok(parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(src_pod: &str, dst_pod: &str, port: u16, verdict: &str, decided_by: &str) -> String {
        format!(
            r#"{{"time_ns":1,"node":"node-1","pod":"{dst_pod}","direction":"ingress","protocol":"TCP","src":"10.244.1.3","src_port":40000,"src_pod":"{src_pod}","dst":"10.244.2.4","dst_port":{port},"dst_pod":"{dst_pod}","verdict":"{verdict}","reason":"policy-denied","decided_by":"{decided_by}"}}"#
        )
    }

    const ISOLATED: &str = "default deny: isolated by shop/db-from-api-only";

    #[test]
    fn parses_events_and_counts_unreadable_lines() {
        let text = format!(
            "{}\n\nnot json\n{}\n",
            line("shop/web", "shop/db", 3306, "dropped", ISOLATED),
            line(
                "shop/api",
                "shop/db",
                3306,
                "allowed",
                "shop/db-from-api-only, ingress rule 0"
            ),
        );
        let parsed = parse(&text);
        assert_eq!(parsed.unreadable, 1);
        assert_eq!(parsed.events.len(), 2);
        assert_eq!(parsed.events[0].src_pod.as_deref(), Some("shop/web"));
        assert_eq!(parsed.events[0].dst_port, 3306);
        assert_eq!(parsed.events[1].verdict, "allowed");
    }

    #[test]
    fn peers_outside_the_cluster_are_named_by_address() {
        let text = r#"{"time_ns":1,"node":"node-2","pod":"shop/api","direction":"egress","protocol":"UDP","src":"10.244.2.3","src_port":40000,"src_pod":"shop/api","dst":"192.0.2.1","dst_port":53,"dst_pod":null,"verdict":"dropped","reason":"policy-denied","decided_by":null}"#;
        let drops = summarise(&parse(text).events);
        assert_eq!(drops.len(), 1);
        assert_eq!(drops[0].pod, "shop/api");
        assert_eq!(drops[0].peers, ["192.0.2.1"]);
        assert_eq!(drops[0].decided_by, "no rule recorded");
    }

    #[test]
    fn one_entry_per_kind_of_drop_with_its_peers_in_the_order_first_seen() {
        let text = [
            line("shop/web", "shop/db", 3306, "dropped", ISOLATED),
            line("dev/tester", "shop/db", 3306, "dropped", ISOLATED),
            line("shop/web", "shop/db", 3306, "dropped", ISOLATED),
            line(
                "shop/api",
                "shop/db",
                3306,
                "allowed",
                "shop/db-from-api-only, ingress rule 0",
            ),
            line("shop/web", "shop/db", 80, "dropped", ISOLATED),
        ]
        .join("\n");
        let drops = summarise(&parse(&text).events);
        let seen: Vec<(&str, u16, Vec<&str>, usize)> = drops
            .iter()
            .map(|drop| {
                let peers = drop.peers.iter().map(String::as_str).collect();
                (drop.pod.as_str(), drop.port, peers, drop.packets)
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("shop/db", 3306, vec!["shop/web", "dev/tester"], 3),
                ("shop/db", 80, vec!["shop/web"], 1),
            ]
        );
    }

    #[test]
    fn different_deciding_rules_are_different_kinds() {
        let text = [
            line("shop/web", "shop/db", 3306, "dropped", ISOLATED),
            line(
                "shop/web",
                "shop/db",
                3306,
                "dropped",
                "default deny: isolated by shop/deny-all",
            ),
        ]
        .join("\n");
        assert_eq!(summarise(&parse(&text).events).len(), 2);
    }

    #[test]
    fn renders_each_kind_and_why_it_was_dropped() {
        let egress = r#"{"time_ns":1,"node":"node-2","pod":"shop/api","direction":"egress","protocol":"TCP","src":"10.244.2.3","src_port":40000,"src_pod":"shop/api","dst":"10.244.1.2","dst_port":80,"dst_pod":"shop/web","verdict":"dropped","reason":"policy-denied","decided_by":"default deny: isolated by shop/api-egress"}"#;
        let text = [
            line("shop/web", "shop/db", 3306, "dropped", ISOLATED),
            line("dev/tester", "shop/db", 3306, "dropped", ISOLATED),
            egress.to_owned(),
        ]
        .join("\n");
        let rendered = render(&summarise(&parse(&text).events));
        let expected = [
            "shop/db   ingress  TCP 3306  2 packets  from shop/web, dev/tester",
            "          policy-denied: default deny: isolated by shop/db-from-api-only",
            "shop/api  egress   TCP 80    1 packet   to shop/web",
            "          policy-denied: default deny: isolated by shop/api-egress",
        ];
        assert_eq!(rendered.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn reads_only_whole_lines_appended_after_the_mark() {
        let dir = std::env::temp_dir().join(format!("demo-flows-{}", std::process::id()));
        let node = dir.join("node-1");
        std::fs::create_dir_all(&node).unwrap();
        let log = node.join("flows.jsonl");
        let old = line("shop/web", "shop/db", 80, "dropped", ISOLATED);
        std::fs::write(&log, format!("{old}\n")).unwrap();
        let logs = FlowLogs::mark(&dir, 2).unwrap();
        let new = line("shop/web", "shop/db", 3306, "dropped", ISOLATED);
        let partial = &new[..20];
        std::fs::write(&log, format!("{old}\n{new}\n{partial}")).unwrap();
        let parsed = logs.read_since_mark().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parsed.unreadable, 0);
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].dst_port, 3306);
    }
}
