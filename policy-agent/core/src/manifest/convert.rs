//! Conversion of k8s-openapi objects into the policy core's snapshot types, with the field of
//! every problem named (`spec.ingress[0].from[1].ipBlock.cidr`).

use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1 as core,
        networking::v1::{NetworkPolicy as ApiPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1 as meta, util::intstr::IntOrString},
};
use policy_common::verdict::Direction;

use crate::{
    manifest::cluster::ClusterFieldError,
    policy::{
        model::{
            ContainerPort, IpBlock, LabelSelector, NAMESPACE_NAME_LABEL, Namespace, NamespaceScope,
            NetworkPolicy, Operator, Peer, Pod, PodPeer, PodPhase, PortSpec, PortValue, Protocol,
            Requirement, Rule, Service, ServicePort, ServiceType,
        },
        state::{Prefix, PrefixParseError},
    },
};

/// What is wrong with one field of an object.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("is required")]
    Missing,
    #[error(transparent)]
    Cidr(PrefixParseError),
    #[error(
        "\"{address}/{len}\" has host bits set: write the network {network} or the address \
         {address}/{max}",
        network = Prefix::new(*address, *len),
        max = Prefix::max_len(*address)
    )]
    HostBits { address: IpAddr, len: u8 },
    #[error("{except} is not strictly inside the cidr {cidr}")]
    ExceptOutsideCidr { except: Prefix, cidr: Prefix },
    #[error("{value:?} is not an IP address")]
    Ip {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("unknown protocol {value:?} (expected TCP, UDP or SCTP)")]
    Protocol { value: String },
    #[error("port {value} is outside 1-65535")]
    PortRange { value: i64 },
    #[error("{value:?} is not a valid port name")]
    PortName { value: String },
    #[error("endPort needs a numeric port")]
    EndPortWithoutNumericPort,
    #[error("endPort {end_port} is below port {port}")]
    EndPortBelowPort { port: u16, end_port: i64 },
    #[error(
        "unknown Service type {value:?} (expected ClusterIP, NodePort, LoadBalancer or \
         ExternalName)"
    )]
    ServiceType { value: String },
    #[error("unknown policy type {value:?} (expected Ingress or Egress)")]
    PolicyType { value: String },
    #[error("unknown selector operator {value:?} (expected In, NotIn, Exists or DoesNotExist)")]
    Operator { value: String },
    #[error("operator {operator} needs at least one value")]
    NoValues { operator: String },
    #[error("operator {operator} takes no values")]
    UnexpectedValues { operator: String },
    #[error("a peer needs podSelector, namespaceSelector or ipBlock")]
    EmptyPeer,
    #[error("ipBlock cannot be combined with podSelector or namespaceSelector")]
    IpBlockWithSelector,
    #[error(transparent)]
    Cluster(ClusterFieldError),
}

/// A [`FieldError`] and the field it is about.
#[derive(Debug)]
pub struct Invalid {
    pub field: String,
    pub error: FieldError,
}

pub(crate) fn invalid(field: impl Into<String>, error: FieldError) -> Invalid {
    Invalid {
        field: field.into(),
        error,
    }
}

type Result<T> = std::result::Result<T, Invalid>;

/// Namespace and name of an object (namespaced kinds default to `default`).
pub fn object_key(metadata: &meta::ObjectMeta, namespaced: bool) -> Result<(String, String)> {
    let name = metadata
        .name
        .clone()
        .ok_or_else(|| invalid("metadata.name", FieldError::Missing))?;
    let namespace = if namespaced {
        metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned())
    } else {
        String::new()
    };
    Ok((namespace, name))
}

pub fn namespace(object: &core::Namespace) -> Result<Namespace> {
    let (_, name) = object_key(&object.metadata, false)?;
    let mut labels = object.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
    Ok(Namespace { name, labels })
}

pub fn pod(object: &core::Pod) -> Result<Pod> {
    let (namespace, name) = object_key(&object.metadata, true)?;
    let spec = object.spec.as_ref();
    let status = object.status.as_ref();
    let mut ports = Vec::new();
    for (c, container) in spec.map_or(&[][..], |s| &s.containers).iter().enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{p}]");
            ports.push(ContainerPort {
                name: port.name.clone(),
                protocol: protocol(port.protocol.as_deref(), &field)?,
                port: port_number(
                    i64::from(port.container_port),
                    &format!("{field}.containerPort"),
                )?,
            });
        }
    }
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        None | Some("Running") => PodPhase::Running,
        Some("Pending") => PodPhase::Pending,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some(_) => PodPhase::Unknown,
    };
    let mut ips = Vec::new();
    match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(pod_ips) if !pod_ips.is_empty() => {
            for (i, pod_ip) in pod_ips.iter().enumerate() {
                ips.push(ip(&pod_ip.ip, &format!("status.podIPs[{i}].ip"))?);
            }
        }
        _ => {
            if let Some(pod_ip) = status.and_then(|s| s.pod_ip.as_deref()) {
                ips.push(ip(pod_ip, "status.podIP")?);
            }
        }
    }
    Ok(Pod {
        namespace,
        name,
        labels: object.metadata.labels.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()),
        phase,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
        ports,
    })
}

pub fn service(object: &core::Service) -> Result<Service> {
    let (namespace, name) = object_key(&object.metadata, true)?;
    let spec = object.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref() {
        None => ServiceType::ClusterIp,
        Some(value) => ServiceType::ALL
            .into_iter()
            .find(|known| known.name() == value)
            .ok_or_else(|| {
                invalid(
                    "spec.type",
                    FieldError::ServiceType {
                        value: value.to_owned(),
                    },
                )
            })?,
    };
    let mut cluster_ips = Vec::new();
    let mut headless = false;
    let listed = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, value)| (format!("spec.clusterIPs[{i}]"), value.clone()))
            .collect(),
        (_, Some(value)) => vec![("spec.clusterIP".to_owned(), value.clone())],
        _ => Vec::new(),
    };
    for (field, value) in listed {
        // Headless Services have no virtual address.
        if value == "None" {
            headless = true;
        } else if !value.is_empty() {
            cluster_ips.push(ip(&value, &field)?);
        }
    }
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = port_number(i64::from(port.port), &format!("{field}.port"))?;
        let target_port = match &port.target_port {
            None => PortValue::Number(number),
            Some(value) => port_value(value, &format!("{field}.targetPort"))?,
        };
        let node_port = match port.node_port {
            Some(value) => Some(port_number(i64::from(value), &format!("{field}.nodePort"))?),
            None => None,
        };
        ports.push(ServicePort {
            protocol: protocol(port.protocol.as_deref(), &field)?,
            port: number,
            target_port,
            node_port,
        });
    }
    Ok(Service {
        namespace,
        name,
        service_type,
        selector: spec.selector.unwrap_or_default(),
        cluster_ips,
        headless,
        ports,
    })
}

pub fn network_policy(object: &ApiPolicy) -> Result<NetworkPolicy> {
    let (namespace, name) = object_key(&object.metadata, true)?;
    let spec = object.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(selector) => label_selector(selector, "spec.podSelector")?,
        None => LabelSelector::default(),
    };
    let mut policy_types = Vec::new();
    for (i, value) in spec.policy_types.iter().flatten().enumerate() {
        policy_types.push(match value.as_str() {
            "Ingress" => Direction::Ingress,
            "Egress" => Direction::Egress,
            _ => {
                return Err(invalid(
                    format!("spec.policyTypes[{i}]"),
                    FieldError::PolicyType {
                        value: value.clone(),
                    },
                ));
            }
        });
    }
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        ingress.push(self::rule(
            &namespace,
            rule.from.as_deref(),
            rule.ports.as_deref(),
            &field,
            "from",
        )?);
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        egress.push(self::rule(
            &namespace,
            rule.to.as_deref(),
            rule.ports.as_deref(),
            &field,
            "to",
        )?);
    }
    Ok(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

/// What a NetworkPolicy the conversion rejects still means, read from the object as written:
/// it isolates the pods it selects in its directions, with none of its rules, so rejecting it
/// never opens a pod it would have closed. A podSelector that does not convert (or is absent)
/// selects every pod of the namespace; policyTypes that do not convert isolate both directions;
/// without policyTypes, Ingress, and Egress when the object has egress rules (or an egress
/// section that cannot be read). `None` for an object without a name: nothing identifies it.
pub fn rejected_network_policy(object: &serde_json::Value) -> Option<NetworkPolicy> {
    let metadata = object.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_owned();
    let namespace = metadata
        .get("namespace")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let field = |key: &str| {
        object
            .get("spec")
            .and_then(|spec| spec.get(key))
            .filter(|value| !value.is_null())
    };
    let pod_selector = field("podSelector")
        .and_then(|value| serde_json::from_value::<meta::LabelSelector>(value.clone()).ok())
        .and_then(|selector| label_selector(&selector, "spec.podSelector").ok())
        .unwrap_or_default();
    let both = vec![Direction::Ingress, Direction::Egress];
    let by_default = || {
        let has_egress = field("egress")
            .is_some_and(|egress| egress.as_array().is_none_or(|rules| !rules.is_empty()));
        if has_egress {
            both.clone()
        } else {
            vec![Direction::Ingress]
        }
    };
    let policy_types = match field("policyTypes").map(serde_json::Value::as_array) {
        None => by_default(),
        Some(Some(items)) if items.is_empty() => by_default(),
        Some(Some(items)) => {
            let parsed: Option<Vec<Direction>> = items
                .iter()
                .map(|item| match item.as_str() {
                    Some("Ingress") => Some(Direction::Ingress),
                    Some("Egress") => Some(Direction::Egress),
                    _ => None,
                })
                .collect();
            parsed.unwrap_or_else(|| both.clone())
        }
        Some(None) => both.clone(),
    };
    Some(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        policy_types,
        ingress: Vec::new(),
        egress: Vec::new(),
    })
}

fn rule(
    namespace: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    field: &str,
    peers_name: &str,
) -> Result<Rule> {
    let mut rule = Rule::default();
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        rule.peers.push(self::peer(
            namespace,
            peer,
            &format!("{field}.{peers_name}[{i}]"),
        )?);
    }
    for (i, port) in ports.unwrap_or_default().iter().enumerate() {
        rule.ports
            .push(port_spec(port, &format!("{field}.ports[{i}]"))?);
    }
    Ok(rule)
}

fn peer(namespace: &str, peer: &NetworkPolicyPeer, field: &str) -> Result<Peer> {
    let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    if let Some(block) = &peer.ip_block {
        if has_selector {
            return Err(invalid(field, FieldError::IpBlockWithSelector));
        }
        let cidr_field = format!("{field}.ipBlock.cidr");
        let cidr: Prefix = block
            .cidr
            .parse()
            .map_err(|e| invalid(&cidr_field, FieldError::Cidr(e)))?;
        let mut except = Vec::new();
        for (i, text) in block.except.iter().flatten().enumerate() {
            let except_field = format!("{field}.ipBlock.except[{i}]");
            let prefix: Prefix = text
                .parse()
                .map_err(|e| invalid(&except_field, FieldError::Cidr(e)))?;
            if !(cidr.covers(&prefix) && prefix.len > cidr.len) {
                return Err(invalid(
                    except_field,
                    FieldError::ExceptOutsideCidr {
                        except: prefix,
                        cidr,
                    },
                ));
            }
            except.push(prefix);
        }
        except.sort();
        except.dedup();
        return Ok(Peer::IpBlock(IpBlock { cidr, except }));
    }
    if !has_selector {
        return Err(invalid(field, FieldError::EmptyPeer));
    }
    let namespaces = match &peer.namespace_selector {
        Some(selector) => NamespaceScope::Selected(label_selector(
            selector,
            &format!("{field}.namespaceSelector"),
        )?),
        None => NamespaceScope::Own(namespace.to_owned()),
    };
    let pods = match &peer.pod_selector {
        Some(selector) => label_selector(selector, &format!("{field}.podSelector"))?,
        None => LabelSelector::default(),
    };
    Ok(Peer::Pods(PodPeer { namespaces, pods }))
}

fn port_spec(port: &NetworkPolicyPort, field: &str) -> Result<PortSpec> {
    let protocol = protocol(port.protocol.as_deref(), field)?;
    let value = match &port.port {
        None => None,
        Some(value) => Some(port_value(value, &format!("{field}.port"))?),
    };
    let end_port = match (port.end_port, &value) {
        (None, _) => None,
        (Some(end), Some(PortValue::Number(first))) => {
            let end_field = format!("{field}.endPort");
            let end_number = port_number(i64::from(end), &end_field)?;
            if end_number < *first {
                return Err(invalid(
                    end_field,
                    FieldError::EndPortBelowPort {
                        port: *first,
                        end_port: i64::from(end),
                    },
                ));
            }
            Some(end_number)
        }
        (Some(_), _) => {
            return Err(invalid(
                format!("{field}.endPort"),
                FieldError::EndPortWithoutNumericPort,
            ));
        }
    };
    Ok(PortSpec {
        protocol,
        port: value,
        end_port,
    })
}

pub(crate) fn label_selector(selector: &meta::LabelSelector, field: &str) -> Result<LabelSelector> {
    let mut converted = LabelSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let operator_field = format!("{field}.matchExpressions[{i}].operator");
        let operator = match requirement.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(invalid(
                    operator_field,
                    FieldError::Operator {
                        value: other.to_owned(),
                    },
                ));
            }
        };
        let mut values = requirement.values.clone().unwrap_or_default();
        values.sort();
        values.dedup();
        let values_field = format!("{field}.matchExpressions[{i}].values");
        let name = requirement.operator.clone();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(invalid(
                    values_field,
                    FieldError::NoValues { operator: name },
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(invalid(
                    values_field,
                    FieldError::UnexpectedValues { operator: name },
                ));
            }
            _ => {}
        }
        converted.match_expressions.push(Requirement {
            key: requirement.key.clone(),
            operator,
            values,
        });
    }
    converted.match_expressions.sort();
    Ok(converted)
}

fn protocol(value: Option<&str>, field: &str) -> Result<Protocol> {
    match value {
        None => Ok(Protocol::Tcp),
        Some(name) => Protocol::from_name(name).ok_or_else(|| {
            invalid(
                format!("{field}.protocol"),
                FieldError::Protocol {
                    value: name.to_owned(),
                },
            )
        }),
    }
}

pub(crate) fn port_number(value: i64, field: &str) -> Result<u16> {
    u16::try_from(value)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| invalid(field, FieldError::PortRange { value }))
}

/// A number, or a port name as the API validates it: 1 to 15 lowercase letters, digits and
/// dashes, with at least one letter.
fn port_value(value: &IntOrString, field: &str) -> Result<PortValue> {
    match value {
        IntOrString::Int(number) => Ok(PortValue::Number(port_number(i64::from(*number), field)?)),
        IntOrString::String(name) => {
            let valid = (1..=15).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && name.chars().any(|c| c.is_ascii_lowercase());
            if valid {
                Ok(PortValue::Name(name.clone()))
            } else {
                Err(invalid(
                    field,
                    FieldError::PortName {
                        value: name.clone(),
                    },
                ))
            }
        }
    }
}

fn ip(value: &str, field: &str) -> Result<IpAddr> {
    value.parse().map_err(|source| {
        invalid(
            field,
            FieldError::Ip {
                value: value.to_owned(),
                source,
            },
        )
    })
}
