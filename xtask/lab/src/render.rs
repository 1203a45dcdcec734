//! The rendered copy of the manifest directory that the agents watch: the user's manifests with
//! what a real cluster would have filled in (every Pod's node, phase and addresses, every
//! Service's cluster IPs, every lab Node's addresses), a Namespace object for every namespace
//! only named by objects, and a Node object for every lab node no manifest describes.
//! Files are written elsewhere and renamed into place, so a watcher never reads half a file.

use std::{collections::BTreeMap, fs, net::IpAddr, path::Path};

use anyhow::{Context, Result, bail};
use policy_core::{
    manifest::{node_addresses, node_name, node_number},
    policy::state::ObjectRef,
};
use serde_json::{Value, json};

use super::{manifest::Manifests, plan::Plan};

/// The file that holds the Namespace objects the lab adds.
const IMPLIED_NAMESPACES_FILE: &str = "lab-namespaces.yaml";
/// The file that holds the Node objects the lab adds.
const IMPLIED_NODES_FILE: &str = "lab-nodes.yaml";

/// The rendered files, by file name.
pub fn render(manifests: &Manifests, plan: &Plan) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for file in &manifests.files {
        if [IMPLIED_NAMESPACES_FILE, IMPLIED_NODES_FILE].contains(&file.name.as_str()) {
            bail!("{} is a file name the lab reserves; rename it", file.name);
        }
        let mut text = String::new();
        for object in &file.objects {
            let mut value = object.clone();
            fill_in(&mut value, plan);
            text.push_str("---\n");
            text.push_str(
                &serde_norway::to_string(&value)
                    .with_context(|| format!("rendering a document of {}", file.name))?,
            );
        }
        files.insert(file.name.clone(), text);
    }
    let implied: Vec<&String> = manifests
        .used_namespaces
        .difference(&manifests.declared_namespaces)
        .collect();
    if !implied.is_empty() {
        let mut text = String::new();
        for namespace in implied {
            let object = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace},
            });
            text.push_str("---\n");
            text.push_str(&serde_norway::to_string(&object).context("rendering a Namespace")?);
        }
        files.insert(IMPLIED_NAMESPACES_FILE.to_owned(), text);
    }
    let described: Vec<&str> = manifests
        .files
        .iter()
        .flat_map(|file| &file.objects)
        .filter(|object| object.get("kind").and_then(Value::as_str) == Some("Node"))
        .filter_map(|object| object.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    let mut text = String::new();
    for k in (1..=plan.nodes).filter(|k| !described.contains(&node_name(*k).as_str())) {
        let mut object = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node_name(k)},
        });
        fill_in(&mut object, plan);
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(&object).context("rendering a Node")?);
    }
    if !text.is_empty() {
        files.insert(IMPLIED_NODES_FILE.to_owned(), text);
    }
    Ok(files)
}

fn key_of(value: &Value) -> Option<ObjectRef> {
    Some(ObjectRef {
        namespace: value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned(),
        name: value.pointer("/metadata/name")?.as_str()?.to_owned(),
    })
}

fn family_name(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn object_field<'a>(
    value: &'a mut Value,
    field: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    let object = value.as_object_mut()?;
    let entry = object
        .entry(field)
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(serde_json::Map::new());
    }
    entry.as_object_mut()
}

fn fill_in(value: &mut Value, plan: &Plan) {
    let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
    let Some(key) = key_of(value) else {
        return;
    };
    match kind.as_deref() {
        Some("Pod") => {
            let Some(pod) = plan.pod(&key) else {
                return;
            };
            if let Some(spec) = object_field(value, "spec") {
                spec.insert("nodeName".into(), json!(node_name(pod.node)));
            }
            if let Some(status) = object_field(value, "status") {
                status.insert("phase".into(), json!("Running"));
                if let Some(first) = pod.ips.first() {
                    status.insert("podIP".into(), json!(first.to_string()));
                }
                let ips: Vec<Value> = pod
                    .ips
                    .iter()
                    .map(|ip| json!({"ip": ip.to_string()}))
                    .collect();
                status.insert("podIPs".into(), Value::Array(ips));
            }
        }
        Some("Node") => {
            let Some(k) = node_number(&key.name).filter(|k| *k <= plan.nodes) else {
                return;
            };
            let Some(status) = object_field(value, "status") else {
                return;
            };
            let gives_ips = status
                .get("addresses")
                .and_then(Value::as_array)
                .is_some_and(|addresses| {
                    addresses.iter().any(|address| {
                        matches!(
                            address.get("type").and_then(Value::as_str),
                            Some("InternalIP" | "ExternalIP")
                        )
                    })
                });
            if !gives_ips {
                let mut addresses: Vec<Value> = node_addresses(k, plan.family)
                    .iter()
                    .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
                    .collect();
                if let Some(given) = status.get("addresses").and_then(Value::as_array) {
                    addresses.extend(given.iter().cloned());
                }
                status.insert("addresses".into(), Value::Array(addresses));
            }
        }
        Some("Service") => {
            let Some(service) = plan.services.iter().find(|service| service.key == key) else {
                return;
            };
            if let Some(spec) = object_field(value, "spec") {
                if let Some(first) = service.cluster_ips.first() {
                    spec.insert("clusterIP".into(), json!(first.to_string()));
                }
                let ips: Vec<String> = service.cluster_ips.iter().map(IpAddr::to_string).collect();
                let families: Vec<&str> = service.cluster_ips.iter().map(family_name).collect();
                spec.insert("clusterIPs".into(), json!(ips));
                spec.insert("ipFamilies".into(), json!(families));
            }
        }
        _ => {}
    }
}

/// Every file under `dir`, by its path relative to `dir`.
fn existing_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in
            fs::read_dir(&current).with_context(|| format!("listing {}", current.display()))?
        {
            let path = entry
                .with_context(|| format!("listing {}", current.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path.strip_prefix(dir).ok().and_then(|name| name.to_str()) {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// Makes `dir` hold exactly `files` (named by relative path): changed files are written to
/// `scratch` and renamed into place, files that are gone are removed, unchanged files are left
/// alone. Returns whether anything changed.
pub fn write(dir: &Path, scratch: &Path, files: &BTreeMap<String, String>) -> Result<bool> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut changed = false;
    for name in existing_files(dir)? {
        if !files.contains_key(&name) {
            let path = dir.join(&name);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            changed = true;
        }
    }
    for (name, text) in files {
        let target = dir.join(name);
        if fs::read_to_string(&target).is_ok_and(|current| current == *text) {
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let staged = scratch.join(name.replace('/', "%"));
        fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
        fs::rename(&staged, &target)
            .with_context(|| format!("moving {} to {}", staged.display(), target.display()))?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use policy_core::manifest::{IpFamily, objects};

    use super::*;
    use crate::manifest::from_texts;

    fn parse(text: &str) -> Vec<Value> {
        objects(Path::new("x.yaml"), text).unwrap()
    }

    #[test]
    fn pods_and_services_get_what_a_cluster_would_fill_in() {
        let text = r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c}]}
---
kind: Service
apiVersion: v1
metadata: {name: s, namespace: x}
spec: {selector: {app: a}, ports: [{port: 80}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec: {podSelector: {}}
"#;
        let manifests = from_texts(&[("x.yaml".into(), text.into())]).unwrap();
        let plan = Plan::new("/src".into(), &manifests, 2, IpFamily::Dual).unwrap();
        let files = render(&manifests, &plan).unwrap();
        let rendered = parse(&files["x.yaml"]);
        let pod = &rendered[0];
        assert_eq!(pod.pointer("/spec/nodeName"), Some(&json!("node-1")));
        assert_eq!(pod.pointer("/status/phase"), Some(&json!("Running")));
        assert_eq!(pod.pointer("/status/podIP"), Some(&json!("10.244.1.2")));
        assert_eq!(
            pod.pointer("/status/podIPs"),
            Some(&json!([{"ip": "10.244.1.2"}, {"ip": "fd00:10:244:1::2"}]))
        );
        let service = &rendered[1];
        assert_eq!(
            service.pointer("/spec/clusterIP"),
            Some(&json!("10.96.0.10"))
        );
        assert_eq!(
            service.pointer("/spec/ipFamilies"),
            Some(&json!(["IPv4", "IPv6"]))
        );
        assert_eq!(rendered[2], parse(text)[2]);
        let namespaces = parse(&files[IMPLIED_NAMESPACES_FILE]);
        assert_eq!(namespaces[0].pointer("/metadata/name"), Some(&json!("x")));
    }

    #[test]
    fn write_replaces_changed_files_and_removes_stale_ones() {
        let base = std::env::temp_dir().join(format!("np-render-{}", std::process::id()));
        let (dir, scratch) = (base.join("out"), base.join("scratch"));
        let first = BTreeMap::from([
            ("a.yaml".to_owned(), "a: 1\n".to_owned()),
            ("b.yaml".to_owned(), "b: 1\n".to_owned()),
        ]);
        assert!(write(&dir, &scratch, &first).unwrap());
        assert!(!write(&dir, &scratch, &first).unwrap(), "nothing changed");
        let second = BTreeMap::from([
            ("a.yaml".to_owned(), "a: 2\n".to_owned()),
            ("sub/c.yaml".to_owned(), "c: 1\n".to_owned()),
        ]);
        assert!(write(&dir, &scratch, &second).unwrap());
        assert_eq!(fs::read_to_string(dir.join("a.yaml")).unwrap(), "a: 2\n");
        assert_eq!(
            fs::read_to_string(dir.join("sub/c.yaml")).unwrap(),
            "c: 1\n"
        );
        assert!(!dir.join("b.yaml").exists());
        assert!(!write(&dir, &scratch, &second).unwrap(), "nothing changed");
        fs::remove_dir_all(&base).unwrap();
    }
}
