//! Reading a directory of Kubernetes manifests into the objects the lab wires: Pods, Services and
//! Namespaces. NetworkPolicies and everything else are carried through to the rendered copy
//! untouched; they are the agent's business.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::core::v1::{Pod, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A namespaced object, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol of Kubernetes ports.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "UPPERCASE")]
#[value(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(value: Option<&str>, object: &str) -> Result<Self> {
        match value.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => bail!("{object}: unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

/// One `containerPort` of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A Pod as the lab needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDecl {
    pub key: ObjectKey,
    pub node_name: Option<String>,
    /// `status.podIPs` (or `status.podIP`), when the manifest gives them.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    pub labels: BTreeMap<String, String>,
    /// Phase `Succeeded` or `Failed`: such a pod has no network and is no peer.
    pub terminated: bool,
}

/// The `targetPort` of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
    /// `nodePort` of a `type: NodePort` (or `LoadBalancer`) Service: every node's addresses
    /// forward it to the backend.
    #[serde(default)]
    pub node_port: Option<u16>,
}

/// A Service as the lab needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDecl {
    pub key: ObjectKey,
    /// `None` for a Service without selector: it has no endpoints the lab could derive.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.clusterIPs` (or `spec.clusterIP`), when the manifest gives them.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`: no virtual IP, so no DNAT.
    pub headless: bool,
    pub ports: Vec<ServicePort>,
}

/// One YAML or JSON document of a manifest file.
#[derive(Clone, Debug)]
pub struct Document {
    pub value: Value,
}

/// The documents of one manifest file, in file order.
#[derive(Clone, Debug)]
pub struct ManifestFile {
    pub name: String,
    pub documents: Vec<Document>,
}

/// Everything the lab reads from a manifest directory.
#[derive(Clone, Debug)]
pub struct Manifests {
    pub files: Vec<ManifestFile>,
    pub pods: Vec<PodDecl>,
    pub services: Vec<ServiceDecl>,
    /// Namespaces that have a Namespace object.
    pub declared_namespaces: BTreeSet<String>,
    /// Namespaces named by the `metadata.namespace` of some object.
    pub used_namespaces: BTreeSet<String>,
}

/// Whether `path` is a manifest file: `.yaml`, `.yml` or `.json`, and not hidden.
pub fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_none_or(|name| name.starts_with('.'));
    let extension = path.extension().and_then(|ext| ext.to_str());
    !hidden && matches!(extension, Some("yaml" | "yml" | "json"))
}

/// Reads every manifest file directly in `dir`, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Manifests> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading the manifest directory {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    paths.retain(|path| path.is_file() && is_manifest(path));
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let documents =
            parse_documents(&text).with_context(|| format!("parsing {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", path.display()))?
            .to_owned();
        files.push(ManifestFile { name, documents });
    }
    from_files(files)
}

/// Splits a YAML stream into documents; `kind: List` documents are flattened into their items.
pub fn parse_documents(text: &str) -> Result<Vec<Document>> {
    let mut documents = Vec::new();
    for (index, deserializer) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(deserializer).with_context(|| format!("document {}", index + 1))?;
        match value {
            Value::Null => {}
            Value::Object(ref object) if object.get("kind") == Some(&Value::from("List")) => {
                let items = object
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                documents.extend(items.into_iter().map(|value| Document { value }));
            }
            value => documents.push(Document { value }),
        }
    }
    Ok(documents)
}

/// Extracts the Pods, Services and Namespaces of parsed manifest files.
pub fn from_files(files: Vec<ManifestFile>) -> Result<Manifests> {
    let mut manifests = Manifests {
        files: Vec::new(),
        pods: Vec::new(),
        services: Vec::new(),
        declared_namespaces: BTreeSet::new(),
        used_namespaces: BTreeSet::new(),
    };
    for file in &files {
        for document in &file.documents {
            let kind = document.value.get("kind").and_then(Value::as_str);
            let name = document
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let context = || format!("{}: {} {name:?}", file.name, kind.unwrap_or("object"));
            let namespaced = matches!(kind, Some("Pod" | "Service" | "NetworkPolicy"));
            let namespace = document
                .value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .or(namespaced.then_some("default"));
            if let Some(namespace) = namespace {
                manifests.used_namespaces.insert(namespace.to_owned());
            }
            match kind {
                Some("Pod") => {
                    let pod: Pod =
                        serde_json::from_value(document.value.clone()).with_context(context)?;
                    manifests.pods.push(pod_decl(&pod).with_context(context)?);
                }
                Some("Service") => {
                    let service: Service =
                        serde_json::from_value(document.value.clone()).with_context(context)?;
                    manifests
                        .services
                        .push(service_decl(&service).with_context(context)?);
                }
                Some("Namespace") => {
                    manifests.declared_namespaces.insert(name.to_owned());
                }
                _ => {}
            }
        }
    }
    manifests.pods.sort_by(|a, b| a.key.cmp(&b.key));
    manifests.services.sort_by(|a, b| a.key.cmp(&b.key));
    for pair in manifests.pods.windows(2) {
        if pair[0].key == pair[1].key {
            bail!("pod {} is declared twice", pair[0].key);
        }
    }
    for pair in manifests.services.windows(2) {
        if pair[0].key == pair[1].key {
            bail!("service {} is declared twice", pair[0].key);
        }
    }
    manifests.files = files;
    Ok(manifests)
}

fn object_key(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<ObjectKey> {
    let name = metadata.name.clone().context("metadata.name is missing")?;
    let namespace = metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    Ok(ObjectKey { namespace, name })
}

fn parse_ip(text: &str, field: &str) -> Result<IpAddr> {
    text.parse()
        .with_context(|| format!("{field}: {text:?} is not an IP address"))
}

fn port_number(value: i32, field: &str) -> Result<u16> {
    u16::try_from(value)
        .ok()
        .filter(|port| *port != 0)
        .with_context(|| format!("{field}: {value} is not a port number"))
}

fn pod_decl(pod: &Pod) -> Result<PodDecl> {
    let key = object_key(&pod.metadata)?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut ips = Vec::new();
    if let Some(pod_ips) = status.and_then(|status| status.pod_ips.as_ref()) {
        for pod_ip in pod_ips {
            ips.push(parse_ip(&pod_ip.ip, "status.podIPs")?);
        }
    }
    if let Some(pod_ip) = status.and_then(|status| status.pod_ip.as_deref()) {
        let ip = parse_ip(pod_ip, "status.podIP")?;
        if !ips.contains(&ip) {
            ips.insert(0, ip);
        }
    }
    let mut ports = Vec::new();
    for container in spec
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default()
    {
        for port in container.ports.iter().flatten() {
            ports.push(ContainerPort {
                name: port.name.clone(),
                port: port_number(port.container_port, "containerPort")?,
                protocol: Protocol::parse(port.protocol.as_deref(), "containerPort")?,
            });
        }
    }
    if spec.and_then(|spec| spec.host_network) == Some(true) {
        bail!("hostNetwork pods are not supported by the lab");
    }
    let phase = status.and_then(|status| status.phase.as_deref());
    Ok(PodDecl {
        key,
        node_name: spec.and_then(|spec| spec.node_name.clone()),
        ips,
        ports,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        terminated: matches!(phase, Some("Succeeded" | "Failed")),
    })
}

fn service_decl(service: &Service) -> Result<ServiceDecl> {
    let key = object_key(&service.metadata)?;
    let spec = service.spec.clone().unwrap_or_default();
    let mut texts: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if let Some(cluster_ip) = &spec.cluster_ip
        && !texts.contains(cluster_ip)
    {
        texts.insert(0, cluster_ip.clone());
    }
    let headless = texts.iter().any(|text| text == "None");
    let cluster_ips = texts
        .iter()
        .filter(|text| !text.is_empty() && *text != "None")
        .map(|text| parse_ip(text, "spec.clusterIPs"))
        .collect::<Result<_>>()?;
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let exposed = matches!(service_type, "NodePort" | "LoadBalancer");
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let number = port_number(port.port, "spec.ports[].port")?;
        let target = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(value)) => {
                TargetPort::Number(port_number(*value, "spec.ports[].targetPort")?)
            }
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(value) => TargetPort::Number(port_number(value, "spec.ports[].targetPort")?),
                Err(_) => TargetPort::Name(name.clone()),
            },
        };
        let node_port = match port.node_port {
            Some(value) if exposed => Some(port_number(value, "spec.ports[].nodePort")?),
            Some(value) => bail!(
                "spec.ports[].nodePort: {value} on a Service of type {}: only NodePort and \
                 LoadBalancer Services have node ports",
                service_type
            ),
            // The API server would allocate one; the lab must know it to translate it.
            None if exposed => bail!(
                "spec.ports[].nodePort: a {service_type} Service in the lab names its node ports"
            ),
            None => None,
        };
        ports.push(ServicePort {
            port: number,
            protocol: Protocol::parse(port.protocol.as_deref(), "spec.ports[].protocol")?,
            target,
            node_port,
        });
    }
    Ok(ServiceDecl {
        key,
        selector: spec.selector.filter(|selector| !selector.is_empty()),
        cluster_ips,
        headless,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: shop
  labels: {app: db}
spec:
  nodeName: node-2
  containers:
  - name: mysql
    image: mysql
    ports:
    - {name: mysql, containerPort: 3306}
    - {containerPort: 53, protocol: UDP}
status:
  podIPs: [{ip: 10.244.2.9}, {ip: "fd00:10:244:2::9"}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: shop}
  spec:
    selector: {app: db}
    ports:
    - {port: 3306, targetPort: mysql}
    - {port: 53, protocol: UDP}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny, namespace: other}
  spec: {podSelector: {}}
"#;

    #[test]
    fn reads_pods_services_and_namespaces() {
        let documents = parse_documents(CLUSTER).unwrap();
        assert_eq!(documents.len(), 4, "the List is flattened");
        let manifests = from_files(vec![ManifestFile {
            name: "cluster.yaml".into(),
            documents,
        }])
        .unwrap();
        let db = &manifests.pods[0];
        assert_eq!(db.key.to_string(), "shop/db");
        assert_eq!(db.node_name.as_deref(), Some("node-2"));
        assert_eq!(
            db.ips,
            vec![
                "10.244.2.9".parse::<IpAddr>().unwrap(),
                "fd00:10:244:2::9".parse().unwrap()
            ]
        );
        assert_eq!(db.ports[0].name.as_deref(), Some("mysql"));
        assert_eq!(db.ports[1].protocol, Protocol::Udp);
        let service = &manifests.services[0];
        assert_eq!(service.ports[0].target, TargetPort::Name("mysql".into()));
        assert_eq!(service.ports[1].target, TargetPort::Number(53));
        assert!(service.cluster_ips.is_empty() && !service.headless);
        assert_eq!(
            manifests.declared_namespaces,
            BTreeSet::from(["shop".to_owned()])
        );
        assert_eq!(
            manifests.used_namespaces,
            BTreeSet::from(["other".to_owned(), "shop".to_owned()])
        );
    }

    #[test]
    fn rejects_an_unknown_protocol_naming_the_object() {
        let text = "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 80, protocol: ICMP}]\n";
        let error = from_files(vec![ManifestFile {
            name: "a.yaml".into(),
            documents: parse_documents(text).unwrap(),
        }])
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("a.yaml: Pod \"a\""), "{message}");
        assert!(message.contains("ICMP"), "{message}");
    }

    #[test]
    fn a_headless_service_has_no_cluster_ip() {
        let text = "kind: Service\napiVersion: v1\nmetadata: {name: h}\nspec: {clusterIP: None, selector: {a: b}}\n";
        let manifests = from_files(vec![ManifestFile {
            name: "h.yaml".into(),
            documents: parse_documents(text).unwrap(),
        }])
        .unwrap();
        assert!(manifests.services[0].headless);
        assert_eq!(manifests.services[0].key.namespace, "default");
        assert!(manifests.used_namespaces.contains("default"));
        assert!(manifests.services[0].cluster_ips.is_empty());
    }
}
