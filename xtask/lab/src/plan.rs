//! The lab a manifest directory asks for: nodes, pods with their node and addresses, Services with
//! their virtual IPs and the backend each port is translated to. It is also the lab's record of
//! what it built (`/run/netpol-lab/lab.json`), read by `status`, `probe` and the next `up`.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use anyhow::Result;
use policy_core::{
    manifest::{self, IpFamily},
    policy::{
        model::{ContainerPort, Pod, PortValue, Protocol},
        state::{ObjectRef, PodRef},
    },
};
use serde::{Deserialize, Serialize};

use super::{manifest::Manifests, names};

/// A pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPod {
    pub key: PodRef,
    /// 1-based node number.
    pub node: usize,
    /// IPv4 first.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    pub labels: BTreeMap<String, String>,
    /// `spec.hostNetwork`: the pod runs in its node's namespace, with its node's addresses.
    #[serde(default)]
    pub host_network: bool,
}

impl LabPod {
    /// The network namespace the pod's processes run in.
    pub fn netns(&self) -> String {
        if self.host_network {
            names::node_netns(self.node)
        } else {
            self.name()
        }
    }

    /// A name of the pod's own, for its server's files: the name its namespace would have.
    pub fn name(&self) -> String {
        names::pod_netns(self.node, &self.key)
    }

    pub fn ip(&self, v6: bool) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv6() == v6)
    }

    /// Every port number the pod's server answers on (over TCP and UDP), sorted.
    pub fn served_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.ports.iter().map(|port| port.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Where a Service port sends its traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub pod: PodRef,
    pub port: u16,
}

/// A Service port and its backend, if any pod is selected and has the target port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabServicePort {
    pub port: u16,
    pub protocol: Protocol,
    pub target: PortValue,
    /// The port every node's addresses forward to the backend (`type: NodePort`).
    #[serde(default)]
    pub node_port: Option<u16>,
    pub backend: Option<Backend>,
}

/// A Service with a virtual IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabService {
    pub key: ObjectRef,
    /// IPv4 first.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<LabServicePort>,
}

/// Everything the lab builds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub source: PathBuf,
    pub nodes: usize,
    pub family: IpFamily,
    pub pods: Vec<LabPod>,
    pub services: Vec<LabService>,
}

impl Plan {
    /// Places the pods of `manifests` and resolves their Services.
    ///
    /// A Service port is translated to one backend, the first selected pod in (namespace, name)
    /// order that has the target port, not to a random one as kube-proxy does: the lab must know
    /// which pod a probe through a Service reaches.
    pub fn new(
        source: PathBuf,
        manifests: &Manifests,
        nodes: usize,
        family: IpFamily,
    ) -> Result<Self> {
        let mut snapshot = manifests.snapshot.clone();
        manifest::address_cluster(&mut snapshot, nodes, family)?;
        let mut live: Vec<&Pod> = snapshot
            .pods
            .iter()
            .filter(|pod| !pod.phase.is_terminated())
            .collect();
        live.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let pods: Vec<LabPod> = live
            .into_iter()
            .map(|pod| LabPod {
                key: pod.pod_ref(),
                node: pod
                    .node
                    .as_deref()
                    .and_then(manifest::node_number)
                    .unwrap_or(1),
                ips: v4_first(&pod.ips),
                ports: pod.ports.clone(),
                labels: pod.labels.clone(),
                host_network: pod.host_network,
            })
            .collect();
        let mut addressed: Vec<_> = snapshot
            .services
            .iter()
            .filter(|service| !service.headless)
            .collect();
        addressed.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut services = Vec::new();
        for service in addressed {
            let key = service.object_ref();
            // A Service without selector has no endpoints the lab could derive.
            let selected: Vec<&LabPod> = if service.selector.is_empty() {
                Vec::new()
            } else {
                pods.iter()
                    .filter(|pod| {
                        pod.key.namespace == key.namespace
                            && service
                                .selector
                                .iter()
                                .all(|(label, value)| pod.labels.get(label) == Some(value))
                    })
                    .collect()
            };
            let ports = service
                .ports
                .iter()
                .map(|port| LabServicePort {
                    port: port.port,
                    protocol: port.protocol,
                    target: port.target_port.clone(),
                    node_port: port.node_port,
                    backend: selected.iter().find_map(|pod| {
                        let target = match &port.target_port {
                            PortValue::Number(number) => *number,
                            PortValue::Name(name) => {
                                pod.ports
                                    .iter()
                                    .find(|p| {
                                        p.name.as_deref() == Some(name)
                                            && p.protocol == port.protocol
                                    })?
                                    .port
                            }
                        };
                        Some(Backend {
                            pod: pod.key.clone(),
                            port: target,
                        })
                    }),
                })
                .collect();
            services.push(LabService {
                key,
                cluster_ips: v4_first(&service.cluster_ips),
                ports,
            });
        }
        Ok(Self {
            source,
            nodes,
            family,
            pods,
            services,
        })
    }

    pub fn pod(&self, key: &PodRef) -> Option<&LabPod> {
        self.pods.iter().find(|pod| pod.key == *key)
    }
}

fn v4_first(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut ips = ips.to_vec();
    ips.sort_by_key(IpAddr::is_ipv6);
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::from_texts;

    #[test]
    fn service_ports_resolve_named_target_ports_against_the_first_selected_pod() {
        let text = r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 9090, name: http}, {containerPort: 53, name: dns, protocol: UDP}]}]}
---
kind: Pod
apiVersion: v1
metadata: {name: c, namespace: y, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 7070, name: http}]}]}
---
kind: Service
apiVersion: v1
metadata: {name: web, namespace: x}
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: http}
  - {port: 53, targetPort: dns, protocol: UDP}
  - {port: 54, targetPort: dns}
"#;
        let manifests = from_texts(&[("x.yaml".into(), text.into())]).unwrap();
        let plan = Plan::new("/src".into(), &manifests, 2, IpFamily::Ipv4).unwrap();
        let ports = &plan.services[0].ports;
        let backend = |i: usize| {
            ports[i]
                .backend
                .as_ref()
                .map(|b| (b.pod.to_string(), b.port))
        };
        assert_eq!(backend(0), Some(("x/a".to_owned(), 8080)));
        assert_eq!(backend(1), Some(("x/b".to_owned(), 53)));
        assert_eq!(backend(2), None, "a named port matches its protocol too");
        assert_eq!(
            plan.services[0].cluster_ips,
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
    }
}
