//! What the maps cannot say about themselves, kept in a small JSON file beside them: which pod,
//! addresses and endpoint id each endpoint-map entry (keyed by ifindex) belongs to, and what each
//! rule id stands for. bpffs holds only BPF objects, so the file lives outside the pin directory (by
//! default under `/run`, which, like bpffs, lasts exactly as long as the node's uptime).
//!
//! It is written atomically (a temporary file renamed over it) and ahead of the endpoint-map
//! writes it describes, so every endpoint in the map is always in the file.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    net::IpAddr,
    path::Path,
};

use policy_common::verdict::Direction;
use serde::{Deserialize, Serialize};

use super::DatapathError;
use crate::policy::{
    cluster::{ClusterRuleRef, Tier},
    state::{PodRef, PolicyRule, RuleRef},
};

/// The pod behind one endpoint-map entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    pub pod: PodRef,
    pub ips: Vec<IpAddr>,
    /// The endpoint's id, so an endpoint map of a new layout can give each endpoint the id its
    /// flows and counters are kept under; `None` in a file an older build wrote.
    pub endpoint_id: Option<u32>,
}

/// The whole record, by ifindex and by rule id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub endpoints: BTreeMap<u32, EndpointRecord>,
    pub rules: BTreeMap<u32, PolicyRule>,
}

impl Record {
    pub fn ifindex_of(&self, pod: &PodRef) -> Option<u32> {
        self.endpoints
            .iter()
            .find(|(_, record)| &record.pod == pod)
            .map(|(&ifindex, _)| ifindex)
    }

    /// The record in `path`, or an empty one when there is none yet.
    pub fn load(path: &Path) -> Result<Record, DatapathError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(source) => {
                return Err(DatapathError::ReadStateFile {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let file: RecordFile =
            serde_json::from_str(&text).map_err(|source| DatapathError::ParseStateFile {
                path: path.to_owned(),
                source,
            })?;
        Ok(file.into())
    }

    /// Writes the record to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), DatapathError> {
        let write_error = |source| DatapathError::WriteStateFile {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(write_error)?;
        }
        let text = serde_json::to_vec_pretty(&RecordFile::from(self))
            .map_err(|source| write_error(io::Error::other(source)))?;
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = Path::new(&tmp_name);
        let mut file = fs::File::create(tmp).map_err(write_error)?;
        file.write_all(&text).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        fs::rename(tmp, path).map_err(write_error)
    }
}

#[derive(Serialize, Deserialize)]
struct RecordFile {
    endpoints: Vec<EndpointEntry>,
    rules: Vec<RuleEntry>,
}

#[derive(Serialize, Deserialize)]
struct EndpointEntry {
    ifindex: u32,
    namespace: String,
    name: String,
    ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint_id: Option<u32>,
}

/// A rule id and what it stands for: a NetworkPolicy's rule (with its namespace), or a
/// ClusterNetworkPolicy's (with its tier, and its name when it has one).
#[derive(Serialize, Deserialize)]
struct RuleEntry {
    id: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    policy: String,
    direction: DirectionName,
    index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<TierName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule_name: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum TierName {
    Admin,
    Baseline,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectionName {
    Ingress,
    Egress,
}

impl RuleEntry {
    fn of(id: u32, rule: &PolicyRule) -> RuleEntry {
        let direction = |direction| match direction {
            Direction::Ingress => DirectionName::Ingress,
            Direction::Egress => DirectionName::Egress,
        };
        match rule {
            PolicyRule::Network(rule) => RuleEntry {
                id,
                namespace: rule.namespace.clone(),
                policy: rule.policy.clone(),
                direction: direction(rule.direction),
                index: rule.index,
                tier: None,
                rule_name: None,
            },
            PolicyRule::Cluster(rule) => RuleEntry {
                id,
                namespace: String::new(),
                policy: rule.policy.clone(),
                direction: direction(rule.direction),
                index: rule.index,
                tier: Some(match rule.tier {
                    Tier::Admin => TierName::Admin,
                    Tier::Baseline => TierName::Baseline,
                }),
                rule_name: rule.name.clone(),
            },
        }
    }

    fn rule(self) -> PolicyRule {
        let direction = match self.direction {
            DirectionName::Ingress => Direction::Ingress,
            DirectionName::Egress => Direction::Egress,
        };
        match self.tier {
            None => PolicyRule::Network(RuleRef {
                namespace: self.namespace,
                policy: self.policy,
                direction,
                index: self.index,
            }),
            Some(tier) => PolicyRule::Cluster(ClusterRuleRef {
                tier: match tier {
                    TierName::Admin => Tier::Admin,
                    TierName::Baseline => Tier::Baseline,
                },
                policy: self.policy,
                direction,
                index: self.index,
                name: self.rule_name,
            }),
        }
    }
}

impl From<&Record> for RecordFile {
    fn from(record: &Record) -> Self {
        RecordFile {
            endpoints: record
                .endpoints
                .iter()
                .map(|(&ifindex, endpoint)| EndpointEntry {
                    ifindex,
                    namespace: endpoint.pod.namespace.clone(),
                    name: endpoint.pod.name.clone(),
                    ips: endpoint.ips.clone(),
                    endpoint_id: endpoint.endpoint_id,
                })
                .collect(),
            rules: record
                .rules
                .iter()
                .map(|(&id, rule)| RuleEntry::of(id, rule))
                .collect(),
        }
    }
}

impl From<RecordFile> for Record {
    fn from(file: RecordFile) -> Self {
        Record {
            endpoints: file
                .endpoints
                .into_iter()
                .map(|entry| {
                    let record = EndpointRecord {
                        pod: PodRef {
                            namespace: entry.namespace,
                            name: entry.name,
                        },
                        ips: entry.ips,
                        endpoint_id: entry.endpoint_id,
                    };
                    (entry.ifindex, record)
                })
                .collect(),
            rules: file
                .rules
                .into_iter()
                .map(|entry| (entry.id, entry.rule()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut record = Record::default();
        record.endpoints.insert(
            7,
            EndpointRecord {
                pod: PodRef {
                    namespace: "prod".into(),
                    name: "web-0".into(),
                },
                ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
                endpoint_id: Some(4),
            },
        );
        record.rules.insert(
            3,
            PolicyRule::Network(RuleRef {
                namespace: "prod".into(),
                policy: "allow-web".into(),
                direction: Direction::Egress,
                index: 1,
            }),
        );
        record.rules.insert(
            4,
            PolicyRule::Cluster(ClusterRuleRef {
                tier: Tier::Baseline,
                policy: "default-deny".into(),
                direction: Direction::Ingress,
                index: 0,
                name: Some("deny-all".into()),
            }),
        );
        record
    }

    #[test]
    fn record_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("np-record-{}", std::process::id()));
        let path = dir.join("state.json");
        let record = sample();
        record.save(&path).unwrap();
        assert_eq!(Record::load(&path).unwrap(), record);
        assert!(!dir.join("state.json.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_without_endpoint_ids_still_loads() {
        let dir = std::env::temp_dir().join(format!("np-record-old-{}", std::process::id()));
        let path = dir.join("state.json");
        fs::create_dir_all(&dir).unwrap();
        let text = r#"{"endpoints":[{"ifindex":7,"namespace":"prod","name":"web-0","ips":[]}],"rules":[]}"#;
        fs::write(&path, text).unwrap();
        let record = Record::load(&path).unwrap();
        assert_eq!(record.endpoints[&7].endpoint_id, None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_empty_record() {
        let path = Path::new("/nonexistent/np-record/state.json");
        assert_eq!(Record::load(path).unwrap(), Record::default());
    }

    #[test]
    fn ifindex_is_found_by_pod() {
        let record = sample();
        let pod = PodRef {
            namespace: "prod".into(),
            name: "web-0".into(),
        };
        assert_eq!(record.ifindex_of(&pod), Some(7));
        let other = PodRef {
            namespace: "prod".into(),
            name: "web-1".into(),
        };
        assert_eq!(record.ifindex_of(&other), None);
    }
}
