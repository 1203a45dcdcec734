//! Conversion of ClusterNetworkPolicies and Nodes into the snapshot, with every rule of the
//! API's schema and CEL validations checked and the field of each problem named.

use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::api::core::v1 as core;

use crate::{
    api,
    manifest::convert::{FieldError, Invalid, invalid, label_selector, object_key, port_number},
    policy::{
        cluster::{
            Action, ClusterNetworkPolicy, ClusterPeer, ClusterProtocol, ClusterRule, MAX_PRIORITY,
            MAX_RULES, Node, PodsSelector, PortRange, Subject, Tier,
        },
        model::{LabelSelector, Protocol},
        state::Prefix,
    },
};

type Result<T> = std::result::Result<T, Invalid>;

/// The longest rule `name` the API accepts.
const MAX_RULE_NAME: usize = 100;

/// What is wrong with one field of a ClusterNetworkPolicy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterFieldError {
    #[error("unknown tier {value:?} (expected Admin or Baseline)")]
    Tier { value: String },
    #[error("priority {value} is outside 0-{MAX_PRIORITY}")]
    Priority { value: i64 },
    #[error("unknown action {value:?} (expected Accept, Deny or Pass)")]
    Action { value: String },
    #[error("needs exactly one of {fields}")]
    OneOf { fields: &'static str },
    #[error("holds {count} items; at most {MAX_RULES} are allowed")]
    TooMany { count: usize },
    #[error("needs at least one item")]
    Empty,
    #[error("{value:?} is listed twice")]
    Repeated { value: String },
    #[error("the rule name is {len} characters long; at most {MAX_RULE_NAME} are allowed")]
    NameTooLong { len: usize },
    #[error("{value:?} is not a CIDR (ADDRESS/LENGTH)")]
    Cidr { value: String },
    #[error("{value:?} is an IPv4-mapped IPv6 CIDR; write the IPv4 CIDR")]
    MappedCidr { value: String },
    #[error("{value:?} is not a domain name (or `*.` and a domain name)")]
    DomainName { value: String },
    #[error("start port {start} must be less than end port {end}")]
    RangeOrder { start: u16, end: u16 },
    #[error(
        "networks, nodes and domainNames peers cannot be combined with destinationNamedPort: \
         only pods have named ports"
    )]
    NamedPortWithAddressPeer,
}

fn cluster_invalid(field: impl Into<String>, error: ClusterFieldError) -> Invalid {
    invalid(field, FieldError::Cluster(error))
}

/// Converts and validates a ClusterNetworkPolicy.
pub fn cluster_network_policy(object: &api::ClusterNetworkPolicy) -> Result<ClusterNetworkPolicy> {
    let (_, name) = object_key(&object.metadata, false)?;
    let spec = &object.spec;
    let tier = tier(spec.tier.as_deref())?;
    let priority = priority(spec.priority)?;
    let subject = subject(spec.subject.as_ref())?;
    let ingress = rules(spec.ingress.as_deref(), "spec.ingress", |rule, field| {
        let peers = list(rule.from.as_deref(), &format!("{field}.from"))?
            .iter()
            .enumerate()
            .map(|(i, peer)| ingress_peer(peer, &format!("{field}.from[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        cluster_rule(
            rule.name.as_deref(),
            rule.action.as_deref(),
            peers,
            rule.protocols.as_deref(),
            field,
        )
    })?;
    let egress = rules(spec.egress.as_deref(), "spec.egress", |rule, field| {
        let peers = list(rule.to.as_deref(), &format!("{field}.to"))?
            .iter()
            .enumerate()
            .map(|(i, peer)| egress_peer(peer, &format!("{field}.to[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let converted = cluster_rule(
            rule.name.as_deref(),
            rule.action.as_deref(),
            peers,
            rule.protocols.as_deref(),
            field,
        )?;
        let address_peer = converted.peers.iter().any(|peer| {
            matches!(
                peer,
                ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_)
            )
        });
        let named_port = converted
            .protocols
            .iter()
            .any(|protocol| matches!(protocol, ClusterProtocol::Named(_)));
        if address_peer && named_port {
            return Err(cluster_invalid(
                field,
                ClusterFieldError::NamedPortWithAddressPeer,
            ));
        }
        Ok(converted)
    })?;
    Ok(ClusterNetworkPolicy {
        name,
        tier,
        priority,
        subject,
        ingress,
        egress,
    })
}

/// What a ClusterNetworkPolicy the conversion rejects still means, read from the object as
/// written: in each direction it has rules for, it denies everything from its subject at its
/// tier and priority, so that rejecting it never opens what it would have closed (an Admin
/// `Deny` that cannot be read still denies). A tier or priority that cannot be read is taken
/// as the one that decides first (Admin, 0): wherever the policy would have stood, its denial
/// comes no later. `None` when the name or the subject cannot be read: nothing says whom it
/// would deny, and denying every pod would spread one object's error over the cluster.
pub fn rejected_cluster_network_policy(object: &serde_json::Value) -> Option<ClusterNetworkPolicy> {
    let name = object.get("metadata")?.get("name")?.as_str()?.to_owned();
    let spec = object.get("spec")?;
    let tier = tier(spec.get("tier").and_then(serde_json::Value::as_str)).unwrap_or(Tier::Admin);
    let priority =
        priority(spec.get("priority").and_then(serde_json::Value::as_i64)).unwrap_or_default();
    let subject = spec
        .get("subject")
        .and_then(|value| serde_json::from_value::<api::Subject>(value.clone()).ok())
        .and_then(|value| self::subject(Some(&value)).ok())?;
    let deny_all = |key: &str| {
        let has_rules = spec
            .get(key)
            .is_some_and(|rules| rules.as_array().is_none_or(|rules| !rules.is_empty()));
        if has_rules {
            vec![ClusterRule {
                name: None,
                action: Action::Deny,
                peers: vec![ClusterPeer::Unknown],
                protocols: Vec::new(),
            }]
        } else {
            Vec::new()
        }
    };
    Some(ClusterNetworkPolicy {
        name,
        tier,
        priority,
        subject,
        ingress: deny_all("ingress"),
        egress: deny_all("egress"),
    })
}

/// Converts a Node: its name, labels and the InternalIP and ExternalIP addresses of
/// `status.addresses`, the ones a `nodes` peer matches.
pub fn node(object: &core::Node) -> Result<Node> {
    let (_, name) = object_key(&object.metadata, false)?;
    let mut addresses = Vec::new();
    let listed = object
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_deref())
        .unwrap_or_default();
    for address in listed {
        let matched = matches!(address.type_.as_str(), "InternalIP" | "ExternalIP");
        if matched
            && let Ok(ip) = address.address.parse::<IpAddr>()
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    }
    Ok(Node {
        name,
        labels: object.metadata.labels.clone().unwrap_or_default(),
        addresses,
    })
}

fn tier(value: Option<&str>) -> Result<Tier> {
    let value = value.ok_or_else(|| invalid("spec.tier", FieldError::Missing))?;
    Tier::ALL
        .into_iter()
        .find(|tier| tier.name() == value)
        .ok_or_else(|| {
            cluster_invalid(
                "spec.tier",
                ClusterFieldError::Tier {
                    value: value.to_owned(),
                },
            )
        })
}

fn priority(value: Option<i64>) -> Result<u32> {
    let value = value.ok_or_else(|| invalid("spec.priority", FieldError::Missing))?;
    u32::try_from(value)
        .ok()
        .filter(|priority| *priority <= MAX_PRIORITY)
        .ok_or_else(|| cluster_invalid("spec.priority", ClusterFieldError::Priority { value }))
}

fn subject(value: Option<&api::Subject>) -> Result<Subject> {
    let field = "spec.subject";
    let value = value.ok_or_else(|| invalid(field, FieldError::Missing))?;
    match (&value.namespaces, &value.pods) {
        (Some(namespaces), None) => Ok(Subject::Namespaces(label_selector(
            namespaces,
            &format!("{field}.namespaces"),
        )?)),
        (None, Some(pods)) => Ok(Subject::Pods(namespaced_pod(
            pods,
            &format!("{field}.pods"),
        )?)),
        _ => Err(cluster_invalid(
            field,
            ClusterFieldError::OneOf {
                fields: "namespaces or pods",
            },
        )),
    }
}

fn namespaced_pod(value: &api::NamespacedPod, field: &str) -> Result<PodsSelector> {
    let pods = value
        .pod_selector
        .as_ref()
        .ok_or_else(|| invalid(format!("{field}.podSelector"), FieldError::Missing))?;
    Ok(PodsSelector {
        namespaces: match &value.namespace_selector {
            Some(selector) => label_selector(selector, &format!("{field}.namespaceSelector"))?,
            None => LabelSelector::default(),
        },
        pods: label_selector(pods, &format!("{field}.podSelector"))?,
    })
}

/// A list the API bounds to 1..=25 items.
fn list<'a, T>(items: Option<&'a [T]>, field: &str) -> Result<&'a [T]> {
    let items = items.ok_or_else(|| invalid(field, FieldError::Missing))?;
    bounded(items, field)?;
    if items.is_empty() {
        return Err(cluster_invalid(field, ClusterFieldError::Empty));
    }
    Ok(items)
}

fn bounded<T>(items: &[T], field: &str) -> Result<()> {
    if items.len() > MAX_RULES {
        return Err(cluster_invalid(
            field,
            ClusterFieldError::TooMany { count: items.len() },
        ));
    }
    Ok(())
}

/// The rules of one direction: at most 25, each converted by `convert`.
fn rules<R>(
    rules: Option<&[R]>,
    field: &str,
    convert: impl Fn(&R, &str) -> Result<ClusterRule>,
) -> Result<Vec<ClusterRule>> {
    let rules = rules.unwrap_or_default();
    bounded(rules, field)?;
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| convert(rule, &format!("{field}[{i}]")))
        .collect()
}

fn cluster_rule(
    name: Option<&str>,
    action: Option<&str>,
    peers: Vec<ClusterPeer>,
    protocols: Option<&[api::Protocol]>,
    field: &str,
) -> Result<ClusterRule> {
    if let Some(name) = name
        && name.chars().count() > MAX_RULE_NAME
    {
        return Err(cluster_invalid(
            format!("{field}.name"),
            ClusterFieldError::NameTooLong {
                len: name.chars().count(),
            },
        ));
    }
    let action_field = format!("{field}.action");
    let action = action.ok_or_else(|| invalid(&action_field, FieldError::Missing))?;
    let action = Action::ALL
        .into_iter()
        .find(|known| known.name() == action)
        .ok_or_else(|| {
            cluster_invalid(
                &action_field,
                ClusterFieldError::Action {
                    value: action.to_owned(),
                },
            )
        })?;
    let protocols = match protocols {
        None => Vec::new(),
        Some(items) => {
            let protocols_field = format!("{field}.protocols");
            list(Some(items), &protocols_field)?
                .iter()
                .enumerate()
                .map(|(i, item)| protocol(item, &format!("{protocols_field}[{i}]")))
                .collect::<Result<_>>()?
        }
    };
    Ok(ClusterRule {
        name: name.map(str::to_owned),
        action,
        peers,
        protocols,
    })
}

fn ingress_peer(peer: &api::IngressPeer, field: &str) -> Result<ClusterPeer> {
    let peer = api::EgressPeer {
        namespaces: peer.namespaces.clone(),
        pods: peer.pods.clone(),
        ..api::EgressPeer::default()
    };
    self::peer(&peer, field, "namespaces or pods")
}

fn egress_peer(peer: &api::EgressPeer, field: &str) -> Result<ClusterPeer> {
    self::peer(
        peer,
        field,
        "namespaces, pods, networks, nodes or domainNames",
    )
}

/// A peer of either direction; `fields` names the ones its direction has.
fn peer(peer: &api::EgressPeer, field: &str, fields: &'static str) -> Result<ClusterPeer> {
    let set = [
        peer.namespaces.is_some(),
        peer.pods.is_some(),
        peer.networks.is_some(),
        peer.nodes.is_some(),
        peer.domain_names.is_some(),
    ];
    if set.iter().filter(|set| **set).count() != 1 {
        return Err(cluster_invalid(field, ClusterFieldError::OneOf { fields }));
    }
    if let Some(namespaces) = &peer.namespaces {
        return Ok(ClusterPeer::Namespaces(label_selector(
            namespaces,
            &format!("{field}.namespaces"),
        )?));
    }
    if let Some(pods) = &peer.pods {
        return Ok(ClusterPeer::Pods(namespaced_pod(
            pods,
            &format!("{field}.pods"),
        )?));
    }
    if let Some(nodes) = &peer.nodes {
        return Ok(ClusterPeer::Nodes(label_selector(
            nodes,
            &format!("{field}.nodes"),
        )?));
    }
    if let Some(networks) = &peer.networks {
        let field = format!("{field}.networks");
        let networks = set_of(networks, &field)?
            .iter()
            .enumerate()
            .map(|(i, text)| cidr(text, &format!("{field}[{i}]")))
            .collect::<Result<_>>()?;
        return Ok(ClusterPeer::Networks(networks));
    }
    let field = format!("{field}.domainNames");
    let names = set_of(peer.domain_names.as_deref().unwrap_or_default(), &field)?;
    for (i, name) in names.iter().enumerate() {
        if !is_domain_name(name) {
            return Err(cluster_invalid(
                format!("{field}[{i}]"),
                ClusterFieldError::DomainName {
                    value: name.clone(),
                },
            ));
        }
    }
    Ok(ClusterPeer::DomainNames(names.to_vec()))
}

/// A list the API bounds to 1..=25 items and treats as a set: no item twice.
fn set_of<'a>(items: &'a [String], field: &str) -> Result<&'a [String]> {
    let items = list(Some(items), field)?;
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(item) {
            return Err(cluster_invalid(
                format!("{field}[{i}]"),
                ClusterFieldError::Repeated {
                    value: item.clone(),
                },
            ));
        }
    }
    Ok(items)
}

/// A CIDR as the API's `isCIDR` accepts it: host bits may be set (they are cleared), an
/// IPv4-mapped IPv6 prefix may not.
fn cidr(text: &str, field: &str) -> Result<Prefix> {
    let prefix: Prefix = text.parse().map_err(|_| {
        cluster_invalid(
            field,
            ClusterFieldError::Cidr {
                value: text.to_owned(),
            },
        )
    })?;
    if let IpAddr::V6(address) = text
        .split_once('/')
        .and_then(|(address, _)| address.parse::<IpAddr>().ok())
        .unwrap_or(prefix.addr)
        && address.to_ipv4_mapped().is_some()
    {
        return Err(cluster_invalid(
            field,
            ClusterFieldError::MappedCidr {
                value: text.to_owned(),
            },
        ));
    }
    Ok(prefix)
}

/// The API's pattern for `domainNames`: two or more labels of letters, digits, `-` and `_`
/// (neither `-` nor `_` first or last), an optional leading `*.` and trailing dot.
fn is_domain_name(text: &str) -> bool {
    let text = text.strip_prefix("*.").unwrap_or(text);
    let text = text.strip_suffix('.').unwrap_or(text);
    let labels: Vec<&str> = text.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            let edges_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
            edges_ok(label.chars().next())
                && edges_ok(label.chars().last())
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn protocol(item: &api::Protocol, field: &str) -> Result<ClusterProtocol> {
    let ports = [
        (Protocol::Tcp, &item.tcp, "tcp"),
        (Protocol::Udp, &item.udp, "udp"),
        (Protocol::Sctp, &item.sctp, "sctp"),
    ];
    let set = ports.iter().filter(|(_, value, _)| value.is_some()).count()
        + usize::from(item.destination_named_port.is_some());
    if set != 1 {
        return Err(cluster_invalid(
            field,
            ClusterFieldError::OneOf {
                fields: "tcp, udp, sctp or destinationNamedPort",
            },
        ));
    }
    if let Some(name) = &item.destination_named_port {
        return Ok(ClusterProtocol::Named(name.clone()));
    }
    let (protocol, value, key) = ports
        .into_iter()
        .find(|(_, value, _)| value.is_some())
        .expect("exactly one protocol is set");
    let field = format!("{field}.{key}.destinationPort");
    let port = value
        .as_ref()
        .and_then(|value| value.destination_port.as_ref())
        .ok_or_else(|| invalid(&field, FieldError::Missing))?;
    let ports = match (port.number, &port.range) {
        (Some(number), None) => {
            let number = port_number(number, &format!("{field}.number"))?;
            PortRange {
                first: number,
                last: number,
            }
        }
        (None, Some(range)) => {
            let bound = |value: Option<i64>, key: &str| {
                let bound_field = format!("{field}.range.{key}");
                let value = value.ok_or_else(|| invalid(&bound_field, FieldError::Missing))?;
                port_number(value, &bound_field)
            };
            let (start, end) = (bound(range.start, "start")?, bound(range.end, "end")?);
            if start >= end {
                return Err(cluster_invalid(
                    format!("{field}.range"),
                    ClusterFieldError::RangeOrder { start, end },
                ));
            }
            PortRange {
                first: start,
                last: end,
            }
        }
        _ => {
            return Err(cluster_invalid(
                field,
                ClusterFieldError::OneOf {
                    fields: "number or range",
                },
            ));
        }
    };
    Ok(ClusterProtocol::Ports { protocol, ports })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

    use super::*;

    #[test]
    fn domain_names_follow_the_api_pattern() {
        for good in [
            "example.com",
            "*.example.com",
            "example.com.",
            "a_b.example.com",
            "x1.y2",
        ] {
            assert!(is_domain_name(good), "{good}");
        }
        for bad in [
            "com",
            "*.com",
            "-a.example.com",
            "a-.example.com",
            "a.*.example.com",
            "**.example.com",
            "example..com",
            "",
            "exa mple.com",
        ] {
            assert!(!is_domain_name(bad), "{bad}");
        }
    }

    #[test]
    fn networks_clear_host_bits_and_refuse_mapped_addresses() {
        assert_eq!(
            cidr("10.1.2.3/8", "f").unwrap(),
            "10.0.0.0/8".parse().unwrap()
        );
        assert!(cidr("::ffff:10.0.0.0/104", "f").is_err());
        assert!(cidr("10.0.0.1", "f").is_err());
        assert!(cidr("10.0.0.0/33", "f").is_err());
    }

    #[test]
    fn a_port_range_needs_start_below_end() {
        let item = |start, end| api::Protocol {
            tcp: Some(api::PortProtocol {
                destination_port: Some(api::Port {
                    number: None,
                    range: Some(api::PortRange {
                        start: Some(start),
                        end: Some(end),
                    }),
                }),
            }),
            ..api::Protocol::default()
        };
        assert!(protocol(&item(80, 80), "p").is_err());
        assert_eq!(
            protocol(&item(80, 81), "p").unwrap(),
            ClusterProtocol::Ports {
                protocol: Protocol::Tcp,
                ports: PortRange {
                    first: 80,
                    last: 81
                }
            }
        );
        let empty = api::Protocol {
            tcp: Some(api::PortProtocol::default()),
            ..api::Protocol::default()
        };
        let error = protocol(&empty, "p").unwrap_err();
        assert_eq!(error.field, "p.tcp.destinationPort");
    }

    #[test]
    fn a_node_without_status_has_no_addresses() {
        let node = node(&core::Node {
            metadata: meta::ObjectMeta {
                name: Some("n".into()),
                ..meta::ObjectMeta::default()
            },
            ..core::Node::default()
        })
        .unwrap();
        assert!(node.addresses.is_empty());
    }

    /// A valid policy with `patch` merged into its spec (a `null` removes a field).
    fn policy_with(patch: serde_json::Value) -> serde_json::Value {
        let mut object = serde_json::json!({
            "apiVersion": api::API_VERSION,
            "kind": api::KIND,
            "metadata": {"name": "p"},
            "spec": {
                "tier": "Admin",
                "priority": 10,
                "subject": {"namespaces": {}},
                "ingress": [{"name": "in", "action": "Deny", "from": [{"namespaces": {}}]}],
                "egress": [{
                    "action": "Accept",
                    "to": [{"networks": ["10.0.0.0/8"]}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]
                }]
            }
        });
        let spec = object["spec"].as_object_mut().expect("an object");
        for (key, value) in patch.as_object().expect("an object") {
            if value.is_null() {
                spec.remove(key);
            } else {
                spec.insert(key.clone(), value.clone());
            }
        }
        object
    }

    fn convert(object: &serde_json::Value) -> Result<ClusterNetworkPolicy> {
        cluster_network_policy(&serde_json::from_value(object.clone()).expect("the API shape"))
    }

    #[test]
    fn invalid_policies_are_rejected_naming_the_field() {
        use serde_json::json;
        let peer = |peer: serde_json::Value| json!({"egress": [{"action": "Deny", "to": [peer]}]});
        let protocol = |protocol: serde_json::Value| {
            json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                                "protocols": [protocol]}]})
        };
        let rules = |count: usize| {
            let rule = json!({"action": "Deny", "from": [{"namespaces": {}}]});
            json!({ "ingress": vec![rule; count] })
        };
        let cases = [
            (json!({"tier": null}), "spec.tier", "is required"),
            (
                json!({"tier": "admin"}),
                "spec.tier",
                "unknown tier \"admin\"",
            ),
            (json!({"priority": null}), "spec.priority", "is required"),
            (
                json!({"priority": 1001}),
                "spec.priority",
                "priority 1001 is outside",
            ),
            (
                json!({"priority": -1}),
                "spec.priority",
                "priority -1 is outside",
            ),
            (json!({"subject": null}), "spec.subject", "is required"),
            (json!({"subject": {}}), "spec.subject", "exactly one of"),
            (
                json!({"subject": {"namespaces": {}, "pods": {"podSelector": {}}}}),
                "spec.subject",
                "exactly one of",
            ),
            (
                json!({"subject": {"pods": {"namespaceSelector": {}}}}),
                "spec.subject.pods.podSelector",
                "is required",
            ),
            (rules(26), "spec.ingress", "holds 26 items; at most 25"),
            (
                json!({"ingress": [{"from": [{"namespaces": {}}]}]}),
                "spec.ingress[0].action",
                "is required",
            ),
            (
                json!({"ingress": [{"action": "Allow", "from": [{"namespaces": {}}]}]}),
                "spec.ingress[0].action",
                "unknown action \"Allow\"",
            ),
            (
                json!({"ingress": [{"action": "Deny", "from": []}]}),
                "spec.ingress[0].from",
                "at least one item",
            ),
            (
                json!({"ingress": [{"name": "n".repeat(101), "action": "Deny",
                                    "from": [{"namespaces": {}}]}]}),
                "spec.ingress[0].name",
                "101 characters long",
            ),
            (
                peer(json!({"namespaces": {}, "networks": ["10.0.0.0/8"]})),
                "spec.egress[0].to[0]",
                "exactly one of",
            ),
            (
                peer(json!({"networks": ["10.0.0.0/33"]})),
                "spec.egress[0].to[0].networks[0]",
                "not a CIDR",
            ),
            (
                peer(json!({"networks": ["10.0.0.0/8", "10.0.0.0/8"]})),
                "spec.egress[0].to[0].networks[1]",
                "listed twice",
            ),
            (
                peer(json!({"networks": ["::ffff:10.0.0.0/104"]})),
                "spec.egress[0].to[0].networks[0]",
                "IPv4-mapped",
            ),
            (
                peer(json!({"domainNames": ["-bad-.example"]})),
                "spec.egress[0].to[0].domainNames[0]",
                "not a domain name",
            ),
            (
                protocol(json!({})),
                "spec.ingress[0].protocols[0]",
                "exactly one of",
            ),
            (
                protocol(json!({"tcp": {"destinationPort": {"number": 0}}})),
                "spec.ingress[0].protocols[0].tcp.destinationPort.number",
                "",
            ),
            (
                protocol(json!({"udp": {"destinationPort": {"range": {"start": 90, "end": 80}}}})),
                "spec.ingress[0].protocols[0].udp.destinationPort.range",
                "start port 90 must be less than end port 80",
            ),
            (
                json!({"egress": [{"action": "Accept", "to": [{"networks": ["10.0.0.0/8"]}],
                                   "protocols": [{"destinationNamedPort": "http"}]}]}),
                "spec.egress[0]",
                "only pods have named ports",
            ),
        ];
        let mut wrong = Vec::new();
        for (patch, field, message) in cases {
            match convert(&policy_with(patch.clone())) {
                Ok(policy) => wrong.push(format!("{patch} was accepted: {policy:?}")),
                Err(error)
                    if error.field != field || !error.error.to_string().contains(message) =>
                {
                    wrong.push(format!("{patch}: {}: {}", error.field, error.error));
                }
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert!(convert(&policy_with(serde_json::json!({}))).is_ok());
    }

    #[test]
    fn a_rejected_policy_denies_all_from_its_subject_at_the_first_place_it_could_stand() {
        let readable = policy_with(serde_json::json!({"tier": "Baseline", "priority": 7,
            "egress": [{"action": "Bogus", "to": []}]}));
        let standing = rejected_cluster_network_policy(&readable).expect("a stand-in");
        assert_eq!((standing.tier, standing.priority), (Tier::Baseline, 7));
        for rules in [&standing.ingress, &standing.egress] {
            assert_eq!(rules.len(), 1);
            assert_eq!(rules[0].action, Action::Deny);
            assert_eq!(rules[0].peers, [ClusterPeer::Unknown]);
        }
        let unreadable = policy_with(serde_json::json!({"tier": "admin", "priority": 5000,
            "ingress": null}));
        let standing = rejected_cluster_network_policy(&unreadable).expect("a stand-in");
        assert_eq!((standing.tier, standing.priority), (Tier::Admin, 0));
        assert!(standing.ingress.is_empty());
        assert_eq!(standing.egress.len(), 1);
        let no_subject = policy_with(serde_json::json!({"subject": {}}));
        assert_eq!(rejected_cluster_network_policy(&no_subject), None);
    }
}
