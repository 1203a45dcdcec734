//! What the reflectors keep of each object: only the fields the conversion, the generation and
//! the node check read. Everything else (managedFields, annotations, owner references, volumes,
//! env, conditions, container statuses, ...) is dropped before the object reaches the cache, so
//! the agent's memory follows the number of objects, not their size.

use k8s_openapi::{
    api::{
        core::v1::{
            Container, ContainerPort, Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus,
            Service, ServicePort, ServiceSpec,
        },
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::resource::ClusterNetworkPolicy;

/// Keeps name, namespace, labels, uid and resourceVersion.
fn metadata(metadata: &mut ObjectMeta) {
    *metadata = ObjectMeta {
        name: metadata.name.take(),
        namespace: metadata.namespace.take(),
        labels: metadata.labels.take(),
        uid: metadata.uid.take(),
        resource_version: metadata.resource_version.take(),
        ..ObjectMeta::default()
    };
}

/// Keeps labels, `spec.nodeName`, `spec.hostNetwork`, the containers' ports (name, protocol,
/// number), `status.phase`, `status.podIP` and `status.podIPs`.
pub fn pod(pod: &mut Pod) {
    metadata(&mut pod.metadata);
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec
            .containers
            .into_iter()
            .map(|container| Container {
                name: container.name,
                ports: container.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|port| ContainerPort {
                            name: port.name,
                            protocol: port.protocol,
                            container_port: port.container_port,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect(),
        node_name: spec.node_name,
        host_network: spec.host_network,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
}

/// Keeps the labels only (selectors read nothing else).
pub fn namespace(namespace: &mut Namespace) {
    metadata(&mut namespace.metadata);
    namespace.spec = None;
    namespace.status = None;
}

/// Keeps the whole spec: every field of it takes part in the policy's meaning.
pub fn network_policy(policy: &mut NetworkPolicy) {
    metadata(&mut policy.metadata);
}

/// Keeps the whole spec, as for NetworkPolicies; the status is the API server's, not read.
pub fn cluster_network_policy(policy: &mut ClusterNetworkPolicy) {
    metadata(&mut policy.metadata);
    policy.status = None;
}

/// Keeps the ClusterIPs, the selector and the ports (number, protocol, targetPort).
pub fn service(service: &mut Service) {
    metadata(&mut service.metadata);
    service.spec = service.spec.take().map(|spec| ServiceSpec {
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        selector: spec.selector,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|port| ServicePort {
                    port: port.port,
                    protocol: port.protocol,
                    target_port: port.target_port,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
    service.status = None;
}

/// Keeps the node's labels and addresses: what `nodes` peers select and match.
pub fn node(node: &mut Node) {
    metadata(&mut node.metadata);
    node.spec = None;
    node.status = node.status.take().map(|status| NodeStatus {
        addresses: status.addresses,
        ..NodeStatus::default()
    });
}
