//! Offline validation of Kubernetes objects against the API's JSON schemas.
//!
//! The schemas are vendored in `xtask/e2e/schemas/kubernetes-v1.37.0` (see its README): the strict
//! variant, in which a field the API does not know is an error, as it is for
//! `kubectl apply --validate=strict`. Custom resources are checked against the schema of their
//! CustomResourceDefinition, made strict in the same way. Nothing is fetched: a kind without a
//! schema is an error that names it.

use std::{collections::BTreeMap, fmt, fs, path::PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The Kubernetes version of the vendored schemas.
pub const KUBERNETES_VERSION: &str = "v1.37.0";

/// Where every `$ref` of the vendored schemas points: the shared definitions.
const DEFINITIONS_REF: &str = "/api/_definitions.json#";
const DEFINITIONS_FILE: &str = "_definitions.json";
/// The definition of every object's `metadata`.
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Validators for the kinds that have a vendored schema, built on first use.
pub struct Schemas {
    dir: PathBuf,
    definitions: Value,
    /// The schemas of custom resources, by the file name a vendored schema would have.
    custom: BTreeMap<String, Value>,
    validators: BTreeMap<String, jsonschema::Validator>,
}

/// One object that does not match its schema, or has no schema.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    /// `Kind namespace/name`, as far as the object says.
    pub object: String,
    /// The field, as `spec.template.spec.containers[0]`; empty for the object itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}: {}: {}", self.object, self.field, self.message)
        }
    }
}

impl Schemas {
    /// The vendored schemas of the source tree.
    pub fn vendored() -> anyhow::Result<Self> {
        Self::load(
            policy_lab::workspace_root()
                .join("xtask/e2e/schemas")
                .join(format!("kubernetes-{KUBERNETES_VERSION}")),
        )
    }

    fn load(dir: PathBuf) -> anyhow::Result<Self> {
        let path = dir.join(DEFINITIONS_FILE);
        let definitions = read_json(&path)?
            .get("$defs")
            .cloned()
            .with_context(|| format!("{} has no $defs", path.display()))?;
        Ok(Self {
            dir,
            definitions,
            custom: BTreeMap::new(),
            validators: BTreeMap::new(),
        })
    }

    /// Adds the kinds a CustomResourceDefinition defines, one per served version, with their
    /// `openAPIV3Schema` made strict.
    pub fn add_custom_resource(&mut self, crd: &Value) -> anyhow::Result<()> {
        let text = |pointer: &str| {
            crd.pointer(pointer)
                .and_then(Value::as_str)
                .with_context(|| format!("the CRD has no {pointer}"))
        };
        let (group, kind) = (text("/spec/group")?, text("/spec/names/kind")?);
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .context("the CRD has no spec.versions")?;
        for version in versions {
            let name = version
                .get("name")
                .and_then(Value::as_str)
                .context("a version of the CRD has no name")?;
            let mut schema = version
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .with_context(|| format!("version {name} of the CRD has no schema"))?;
            let api_version = format!("{group}/{name}");
            // The API server supplies these three for every custom resource.
            if let Some(Value::Object(properties)) = schema.get_mut("properties") {
                properties.insert("apiVersion".to_owned(), json!({"enum": [api_version]}));
                properties.insert("kind".to_owned(), json!({"enum": [kind]}));
                properties.insert(
                    "metadata".to_owned(),
                    json!({"$ref": format!("{DEFINITIONS_REF}/$defs/{OBJECT_META}")}),
                );
            }
            make_strict(&mut schema);
            self.custom.insert(schema_file(&api_version, kind), schema);
        }
        Ok(())
    }

    /// What is wrong with `object`: nothing when it matches the schema of its kind.
    pub fn validate(&mut self, object: &Value) -> anyhow::Result<Vec<Violation>> {
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let name = format!(
            "{} {}{}",
            text("/kind").unwrap_or("(no kind)"),
            text("/metadata/namespace")
                .map(|namespace| format!("{namespace}/"))
                .unwrap_or_default(),
            text("/metadata/name").unwrap_or("(no name)")
        );
        let (Some(api_version), Some(kind)) = (text("/apiVersion"), text("/kind")) else {
            return Ok(vec![Violation {
                object: name,
                field: String::new(),
                message: "no apiVersion or kind".to_owned(),
            }]);
        };
        let file = schema_file(api_version, kind);
        if let Some(schema) = self.custom.get(&file)
            && !self.validators.contains_key(&file)
        {
            let validator = self
                .compile(schema)
                .with_context(|| format!("compiling the CRD's schema for {kind}"))?;
            self.validators.insert(file.clone(), validator);
        }
        if !self.validators.contains_key(&file) {
            let path = self.dir.join(&file);
            if !path.is_file() {
                return Ok(vec![Violation {
                    object: name,
                    field: String::new(),
                    message: format!(
                        "no vendored schema for {api_version} {kind} (expected {})",
                        path.display()
                    ),
                }]);
            }
            let validator = self
                .compile(&read_json(&path)?)
                .with_context(|| format!("compiling the schema {} for {kind}", path.display()))?;
            self.validators.insert(file.clone(), validator);
        }
        let Some(validator) = self.validators.get(&file) else {
            bail!("the validator for {file} was just compiled");
        };
        Ok(validator
            .iter_errors(object)
            .map(|error| Violation {
                object: name.clone(),
                field: field_path(error.instance_path().as_str()),
                message: error.to_string(),
            })
            .collect())
    }

    /// The kind's schema with the shared definitions inlined, its references made local.
    fn compile(&self, schema: &Value) -> anyhow::Result<jsonschema::Validator> {
        let mut schema = schema.clone();
        localize_refs(&mut schema);
        let mut definitions = self.definitions.clone();
        localize_refs(&mut definitions);
        if let Value::Object(map) = &mut schema {
            map.insert("$defs".to_owned(), definitions);
        }
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .map_err(|error| anyhow::anyhow!("{error}"))
    }
}

/// The vendored file of a kind: `daemonset-apps-v1.json` for `apps/v1` `DaemonSet`,
/// `clusterrole-rbac-v1.json` for `rbac.authorization.k8s.io/v1` (the group's first label).
fn schema_file(api_version: &str, kind: &str) -> String {
    let version = match api_version.split_once('/') {
        Some((group, version)) => {
            format!("{}-{version}", group.split('.').next().unwrap_or(group))
        }
        None => api_version.to_owned(),
    };
    format!("{}-{version}.json", kind.to_lowercase())
}

/// Forbids the fields a structural schema does not declare, as strict field validation does:
/// every object with `properties` that does not keep unknown fields gets
/// `additionalProperties: false`.
fn make_strict(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    let keeps_unknown = map
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if map.contains_key("properties") && !keeps_unknown && !map.contains_key("additionalProperties")
    {
        map.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    for (key, child) in map.iter_mut() {
        match (key.as_str(), child) {
            ("properties", Value::Object(properties)) => {
                properties.values_mut().for_each(make_strict);
            }
            // Not into allOf, anyOf and oneOf: their branches name only some of the fields.
            ("items" | "additionalProperties", child) => make_strict(child),
            _ => {}
        }
    }
}

/// Points every reference to the shared definitions at the document's own `$defs`.
fn localize_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(target) if key == "$ref" => {
                        if let Some(rest) = target.strip_prefix(DEFINITIONS_REF) {
                            *target = format!("#{rest}");
                        }
                    }
                    _ => localize_refs(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(localize_refs),
        _ => {}
    }
}

/// `/spec/containers/0/image` as `spec.containers[0].image`.
fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemonset() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "netpol-system"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{
                        "name": "agent",
                        "image": "policy-agent:dev",
                        "ports": [{"containerPort": 9402}],
                    }]},
                },
            },
        })
    }

    #[test]
    fn custom_resources_are_checked_strictly_against_their_crd() {
        let mut schemas = Schemas::vendored().unwrap();
        let path = policy_lab::workspace_root().join("deploy/05-clusternetworkpolicy-crd.yaml");
        let crd: Value = serde_norway::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        schemas.add_custom_resource(&crd).unwrap();
        let mut policy = json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "guard"},
            "spec": {
                "tier": "Admin",
                "priority": 10,
                "subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            },
        });
        assert_eq!(schemas.validate(&policy).unwrap(), []);
        policy["spec"]["ingress"][0]["acton"] = json!("Accept");
        let violations = schemas.validate(&policy).unwrap();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, "spec.ingress[0]");
        assert!(violations[0].message.contains("acton"), "{violations:?}");
    }

    #[test]
    fn schema_files_follow_the_group_and_version() {
        assert_eq!(
            schema_file("apps/v1", "DaemonSet"),
            "daemonset-apps-v1.json"
        );
        assert_eq!(schema_file("v1", "Pod"), "pod-v1.json");
        assert_eq!(
            schema_file("rbac.authorization.k8s.io/v1", "ClusterRole"),
            "clusterrole-rbac-v1.json"
        );
        assert_eq!(
            schema_file("networking.k8s.io/v1", "NetworkPolicy"),
            "networkpolicy-networking-v1.json"
        );
    }

    #[test]
    fn field_paths_read_like_kubectl_explain() {
        assert_eq!(
            field_path("/spec/template/spec/containers/0/ports/1"),
            "spec.template.spec.containers[0].ports[1]"
        );
        assert_eq!(field_path("/metadata/labels/a~1b"), "metadata.labels.a/b");
        assert_eq!(field_path(""), "");
    }

    #[test]
    fn a_valid_object_has_no_violations() {
        let mut schemas = Schemas::vendored().unwrap();
        assert_eq!(schemas.validate(&daemonset()).unwrap(), []);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_object_and_parent() {
        let mut schemas = Schemas::vendored().unwrap();
        let mut object = daemonset();
        object["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
        let violations = schemas.validate(&object).unwrap();
        assert_eq!(violations.len(), 1, "{violations:?}");
        let text = violations[0].to_string();
        assert!(
            text.starts_with("DaemonSet netpol-system/agent: spec.template.spec.containers[0]: "),
            "{text}"
        );
        assert!(text.contains("imagePullPolcy"), "{text}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_field() {
        let mut schemas = Schemas::vendored().unwrap();
        let mut object = daemonset();
        object["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
            json!("9402");
        let violations = schemas.validate(&object).unwrap();
        assert!(
            violations.iter().any(|violation| violation.field
                == "spec.template.spec.containers[0].ports[0].containerPort"),
            "{violations:?}"
        );
    }

    #[test]
    fn a_missing_required_field_is_an_error() {
        let mut schemas = Schemas::vendored().unwrap();
        let mut object = daemonset();
        object["spec"].as_object_mut().unwrap().remove("selector");
        let violations = schemas.validate(&object).unwrap();
        assert!(
            violations.iter().any(
                |violation| violation.field == "spec" && violation.message.contains("selector")
            ),
            "{violations:?}"
        );
    }

    #[test]
    fn a_kind_without_a_schema_is_named() {
        let mut schemas = Schemas::vendored().unwrap();
        let object =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
        let violations = schemas.validate(&object).unwrap();
        assert_eq!(violations.len(), 1);
        assert!(
            violations[0]
                .to_string()
                .starts_with("Widget w: no vendored schema for example.com/v1 Widget"),
            "{}",
            violations[0]
        );
    }
}
