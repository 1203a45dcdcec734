//! kind's cluster configuration (`kind.x-k8s.io/v1alpha4` `Cluster`), as far as this project
//! uses it.
//!
//! kind publishes no JSON schema for it, so the check is typed: the fields of kind's `Cluster`,
//! `Networking` and `Node` that a cluster for this agent needs, with their types and allowed
//! values, and any other field is an error (kind itself rejects unknown fields too).

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, ensure};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[expect(dead_code, reason = "some fields are only checked: they must parse")]
pub struct KindCluster {
    kind: String,
    api_version: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    pub networking: Networking,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    feature_gates: BTreeMap<String, bool>,
    #[serde(default)]
    kubeadm_config_patches: Vec<String>,
    #[serde(default)]
    containerd_config_patches: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[expect(dead_code, reason = "some fields are only checked: they must parse")]
pub struct Networking {
    #[serde(default)]
    pub ip_family: Option<IpFamily>,
    #[serde(default, rename = "disableDefaultCNI")]
    pub disable_default_cni: bool,
    #[serde(default)]
    pub kube_proxy_mode: Option<KubeProxyMode>,
    #[serde(default)]
    pub pod_subnet: Option<String>,
    #[serde(default)]
    pub service_subnet: Option<String>,
    #[serde(default)]
    api_server_address: Option<String>,
    #[serde(default)]
    api_server_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
    Dual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeProxyMode {
    Iptables,
    Ipvs,
    Nftables,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[expect(dead_code, reason = "some fields are only checked: they must parse")]
pub struct Node {
    pub role: Role,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    kubeadm_config_patches: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl KindCluster {
    /// Parses and checks a configuration document.
    pub fn check(value: &Value) -> anyhow::Result<Self> {
        let config = Self::deserialize(value)?;
        ensure!(
            config.kind == "Cluster" && config.api_version == "kind.x-k8s.io/v1alpha4",
            "expected kind Cluster of kind.x-k8s.io/v1alpha4, not {} of {}",
            config.kind,
            config.api_version
        );
        ensure!(
            config
                .nodes
                .iter()
                .any(|node| node.role == Role::ControlPlane)
                || config.nodes.is_empty(),
            "no node has the role control-plane"
        );
        Ok(config)
    }

    /// Reads and checks the configuration file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value =
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Self::check(&value).with_context(|| format!("in {}", path.display()))
    }

    /// How many workers the cluster has.
    pub fn workers(&self) -> usize {
        self.nodes
            .iter()
            .filter(|node| node.role == Role::Worker)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use policy_lab::workspace_root;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_e2e_cluster_has_no_enforcing_cni_and_two_workers() {
        let config = KindCluster::read(&workspace_root().join("deploy/kind/cluster.yaml")).unwrap();
        assert!(config.networking.disable_default_cni);
        assert_eq!(config.networking.ip_family, Some(IpFamily::Dual));
        assert_eq!(
            config.networking.kube_proxy_mode,
            Some(KubeProxyMode::Iptables)
        );
        assert_eq!(config.workers(), 2);
    }

    #[test]
    fn unknown_fields_and_wrong_values_are_errors() {
        let base = json!({"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4"});
        assert!(KindCluster::check(&base).is_ok());
        let mut typo = base.clone();
        typo["networking"] = json!({"disableDefaultCni": true});
        let error = KindCluster::check(&typo).unwrap_err().to_string();
        assert!(error.contains("disableDefaultCni"), "{error}");
        let mut family = base.clone();
        family["networking"] = json!({"ipFamily": "both"});
        assert!(KindCluster::check(&family).is_err());
        let mut role = base.clone();
        role["nodes"] = json!([{"role": "master"}]);
        assert!(KindCluster::check(&role).is_err());
        let mut other = base;
        other["apiVersion"] = json!("kind.x-k8s.io/v1alpha3");
        assert!(KindCluster::check(&other).is_err());
    }
}
