//! Reading a directory of Kubernetes manifests for the lab, through the policy core's loading: the
//! Pods, Services and Namespaces it wires, and every file's objects as written, which the lab
//! renders with what a cluster would fill in. NetworkPolicies and everything else are carried
//! through to the rendered copy untouched, valid or not; they are the agent's business.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use policy_core::{
    manifest::{self, Loaded},
    policy::model::Snapshot,
};
use serde_json::Value;

/// The objects of one manifest file, in file order, a List's items in its place.
#[derive(Clone, Debug)]
pub struct ManifestFile {
    pub name: String,
    pub objects: Vec<Value>,
}

/// Everything the lab reads from a manifest directory.
#[derive(Clone, Debug)]
pub struct Manifests {
    pub files: Vec<ManifestFile>,
    /// The Namespaces, Pods and Services (and the NetworkPolicies, which the lab does not read).
    pub snapshot: Snapshot,
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
    let mut texts = Vec::new();
    for path in paths {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", path.display()))?
            .to_owned();
        texts.push((name, text));
    }
    from_texts(&texts)
}

/// Reads manifest files given as (file name, text). A document that is not YAML, or a Pod, Service
/// or Namespace the policy core rejects, is an error: the lab cannot build what it cannot read.
pub fn from_texts(texts: &[(String, String)]) -> Result<Manifests> {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for (name, text) in texts {
        let path = Path::new(name);
        let mut objects = Vec::new();
        for document in manifest::documents(path, text) {
            let document = document.with_context(|| format!("parsing {name}"))?;
            manifest::load_document(path, &document, &mut loaded);
            objects.extend_from_slice(document.objects());
        }
        files.push(ManifestFile {
            name: name.clone(),
            objects,
        });
    }
    let wired: Vec<String> = std::mem::take(&mut loaded.errors)
        .into_iter()
        .filter(|error| matches!(error.kind(), Some("Pod" | "Service" | "Namespace")))
        .map(|error| format!("{:#}", anyhow::Error::new(error)))
        .collect();
    if !wired.is_empty() {
        bail!("{}", wired.join("\n"));
    }
    check_supported(&loaded.snapshot)?;
    let mut declared_namespaces = BTreeSet::new();
    let mut used_namespaces = BTreeSet::new();
    for object in files.iter().flat_map(|file| &file.objects) {
        let kind = object.get("kind").and_then(Value::as_str);
        let namespaced = matches!(kind, Some("Pod" | "Service" | "NetworkPolicy"));
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .or(namespaced.then_some("default"));
        if let Some(namespace) = namespace {
            used_namespaces.insert(namespace.to_owned());
        }
        if kind == Some("Namespace")
            && let Some(name) = object.pointer("/metadata/name").and_then(Value::as_str)
        {
            declared_namespaces.insert(name.to_owned());
        }
    }
    Ok(Manifests {
        files,
        snapshot: loaded.snapshot,
        declared_namespaces,
        used_namespaces,
    })
}

/// What valid manifests may ask for that the lab cannot build.
fn check_supported(snapshot: &Snapshot) -> Result<()> {
    for service in &snapshot.services {
        let service_type = service.service_type;
        for (i, port) in service.ports.iter().enumerate() {
            let field = format!("Service {}: spec.ports[{i}].nodePort", service.object_ref());
            match port.node_port {
                Some(value) if !service_type.has_node_ports() => bail!(
                    "{field}: {value} on a Service of type {service_type}: only NodePort and \
                     LoadBalancer Services have node ports"
                ),
                // The API server would allocate one; the lab must know it to translate it.
                None if service_type.has_node_ports() => {
                    bail!("{field}: a {service_type} Service in the lab names its node ports")
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use policy_core::policy::model::{PortValue, Protocol};

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

    fn load(name: &str, text: &str) -> Result<Manifests> {
        from_texts(&[(name.to_owned(), text.to_owned())])
    }

    #[test]
    fn reads_pods_services_and_namespaces() {
        let manifests = load("cluster.yaml", CLUSTER).unwrap();
        assert_eq!(manifests.files[0].objects.len(), 4, "the List is flattened");
        let db = &manifests.snapshot.pods[0];
        assert_eq!(db.pod_ref().to_string(), "shop/db");
        assert_eq!(db.node.as_deref(), Some("node-2"));
        assert_eq!(
            db.ips,
            vec![
                "10.244.2.9".parse::<std::net::IpAddr>().unwrap(),
                "fd00:10:244:2::9".parse().unwrap()
            ]
        );
        assert_eq!(db.ports[0].name.as_deref(), Some("mysql"));
        assert_eq!(db.ports[1].protocol, Protocol::Udp);
        let service = &manifests.snapshot.services[0];
        assert_eq!(
            service.ports[0].target_port,
            PortValue::Name("mysql".into())
        );
        assert_eq!(service.ports[1].target_port, PortValue::Number(53));
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
    fn rejects_an_unknown_protocol_naming_the_object_and_field() {
        let text = "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 80, protocol: ICMP}]\n";
        let message = format!("{:#}", load("a.yaml", text).unwrap_err());
        assert!(
            message.contains("a.yaml: Pod default/a: spec.containers[0].ports[0].protocol"),
            "{message}"
        );
        assert!(message.contains("ICMP"), "{message}");
    }

    #[test]
    fn an_invalid_network_policy_passes_through() {
        let text = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p}\nspec: {podSelector: {}, policyTypes: [Sideways]}\n";
        let manifests = load("p.yaml", text).unwrap();
        assert_eq!(manifests.files[0].objects.len(), 1);
    }

    #[test]
    fn node_ports_must_match_the_service_type() {
        let service = |spec: &str| {
            format!("kind: Service\napiVersion: v1\nmetadata: {{name: s}}\nspec: {spec}\n")
        };
        let cases = [
            (
                "{type: NodePort, ports: [{port: 80}]}",
                "Service default/s: spec.ports[0].nodePort: a NodePort Service",
            ),
            (
                "{ports: [{port: 80, nodePort: 30080}]}",
                "Service default/s: spec.ports[0].nodePort: 30080 on a Service of type ClusterIP",
            ),
        ];
        for (spec, expected) in cases {
            let message = format!("{:#}", load("s.yaml", &service(spec)).unwrap_err());
            assert!(message.contains(expected), "{message}");
        }
        let exposed = load(
            "s.yaml",
            &service("{type: NodePort, ports: [{port: 80, nodePort: 30080}]}"),
        )
        .unwrap();
        assert_eq!(exposed.snapshot.services[0].ports[0].node_port, Some(30080));
    }

    #[test]
    fn a_pod_declared_twice_is_an_error() {
        let pod =
            "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n";
        let message = format!(
            "{:#}",
            load("a.yaml", &format!("{pod}---\n{pod}")).unwrap_err()
        );
        assert!(
            message.contains("Pod default/a: already defined"),
            "{message}"
        );
    }

    #[test]
    fn a_headless_service_has_no_cluster_ip() {
        let text = "kind: Service\napiVersion: v1\nmetadata: {name: h}\nspec: {clusterIP: None, selector: {a: b}}\n";
        let manifests = load("h.yaml", text).unwrap();
        let service = &manifests.snapshot.services[0];
        assert!(service.headless);
        assert_eq!(service.namespace, "default");
        assert!(manifests.used_namespaces.contains("default"));
        assert!(service.cluster_ips.is_empty());
    }
}
