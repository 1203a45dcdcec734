//! ClusterNetworkPolicy as the API server serves it: the type the reflector watches and the
//! CRD that `policy-agent crd` prints, both derived from the core's API types.

use kube::{CustomResource, CustomResourceExt as _};
use policy_core::api;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whom the policy applies to (`subject`), where it stands (`tier`, then `priority`, lower
/// first) and its ingress and egress rules, each deciding in written order.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    shortname = "cnp",
    status = "api::Status",
    doc = "Cluster-wide network policy: Admin and Baseline tiers of ordered Accept, Deny and \
           Pass rules around the namespaces' NetworkPolicies.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct ClusterNetworkPolicySpec(pub api::Spec);

impl ClusterNetworkPolicy {
    /// The object as the core reads it.
    pub fn to_api(&self) -> api::ClusterNetworkPolicy {
        api::ClusterNetworkPolicy {
            api_version: Some(api::API_VERSION.to_owned()),
            kind: Some(api::KIND.to_owned()),
            metadata: self.metadata.clone(),
            spec: self.spec.0.clone(),
            status: None,
        }
    }
}

/// The CRD of ClusterNetworkPolicy as YAML, what `deploy/` ships.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&ClusterNetworkPolicy::crd())
}

#[cfg(test)]
mod tests {
    use kube::Resource as _;

    use super::*;

    #[test]
    fn the_resource_is_the_apis_own() {
        assert_eq!(ClusterNetworkPolicy::group(&()), api::GROUP);
        assert_eq!(ClusterNetworkPolicy::version(&()), api::VERSION);
        assert_eq!(ClusterNetworkPolicy::kind(&()), api::KIND);
        assert_eq!(ClusterNetworkPolicy::plural(&()), api::PLURAL);
        assert_eq!(ClusterNetworkPolicy::api_version(&()), api::API_VERSION);
    }

    #[test]
    fn the_shipped_crd_is_the_one_the_types_generate() {
        let shipped = include_str!("../../../deploy/05-clusternetworkpolicy-crd.yaml");
        let generated = crd_yaml().expect("the CRD serialises");
        assert!(
            shipped.ends_with(&generated),
            "deploy/05-clusternetworkpolicy-crd.yaml is stale: regenerate it with `policy-agent crd`"
        );
    }

    #[test]
    fn the_schema_requires_what_the_api_requires_and_bounds_what_it_bounds() {
        let crd = serde_json::to_value(ClusterNetworkPolicy::crd()).expect("the CRD serialises");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"];
        assert_eq!(
            spec["required"],
            serde_json::json!(["priority", "subject", "tier"])
        );
        assert_eq!(
            spec["properties"]["tier"]["enum"],
            serde_json::json!(["Admin", "Baseline"])
        );
        assert_eq!(spec["properties"]["priority"]["maximum"], 1000.0);
        assert_eq!(spec["properties"]["ingress"]["maxItems"], 25);
        let rule = &spec["properties"]["egress"]["items"];
        assert_eq!(
            rule["properties"]["action"]["enum"],
            serde_json::json!(["Accept", "Deny", "Pass"])
        );
        assert_eq!(rule["properties"]["to"]["minItems"], 1);
        let peer = &rule["properties"]["to"]["items"];
        assert_eq!(peer["maxProperties"], 1);
        let range = &rule["properties"]["protocols"]["items"]["properties"]["tcp"]["properties"]["destinationPort"]
            ["properties"]["range"];
        assert_eq!(
            range["x-kubernetes-validations"][0]["rule"],
            "self.start < self.end"
        );
    }
}
