//! The lab a manifest directory asks for: nodes, pods with their node and addresses, Services with
//! their virtual IPs and the backend each port is translated to. It is also the lab's record of
//! what it built (`/run/netpol-lab/lab.json`), read by `status`, `probe` and the next `up`.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{
    assign::{self, IpFamily},
    manifest::{ContainerPort, Manifests, ObjectKey, Protocol, TargetPort},
    names,
};

/// A pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPod {
    pub key: ObjectKey,
    /// 1-based node number.
    pub node: usize,
    /// IPv4 first.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    pub labels: BTreeMap<String, String>,
}

impl LabPod {
    pub fn netns(&self) -> String {
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
    pub pod: ObjectKey,
    pub port: u16,
}

/// A Service port and its backend, if any pod is selected and has the target port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabServicePort {
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
    /// The port every node's addresses forward to the backend (`type: NodePort`).
    #[serde(default)]
    pub node_port: Option<u16>,
    pub backend: Option<Backend>,
}

/// A Service with a virtual IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabService {
    pub key: ObjectKey,
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
        let placements = assign::place_pods(&manifests.pods, nodes, family)?;
        let pods: Vec<LabPod> = manifests
            .pods
            .iter()
            .filter_map(|pod| {
                let placement = placements.get(&pod.key)?;
                Some(LabPod {
                    key: pod.key.clone(),
                    node: placement.node,
                    ips: placement.ips.clone(),
                    ports: pod.ports.clone(),
                    labels: pod.labels.clone(),
                })
            })
            .collect();
        let cluster_ips = assign::service_ips(&manifests.services, family)?;
        let mut services = Vec::new();
        for service in &manifests.services {
            let Some(ips) = cluster_ips.get(&service.key) else {
                continue;
            };
            let selected: Vec<&LabPod> = match &service.selector {
                Some(selector) => pods
                    .iter()
                    .filter(|pod| {
                        pod.key.namespace == service.key.namespace
                            && selector
                                .iter()
                                .all(|(key, value)| pod.labels.get(key) == Some(value))
                    })
                    .collect(),
                None => Vec::new(),
            };
            let ports = service
                .ports
                .iter()
                .map(|port| LabServicePort {
                    port: port.port,
                    protocol: port.protocol,
                    target: port.target.clone(),
                    node_port: port.node_port,
                    backend: selected.iter().find_map(|pod| {
                        let target = match &port.target {
                            TargetPort::Number(number) => *number,
                            TargetPort::Name(name) => {
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
                key: service.key.clone(),
                cluster_ips: ips.clone(),
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

    pub fn pod(&self, key: &ObjectKey) -> Option<&LabPod> {
        self.pods.iter().find(|pod| pod.key == *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ManifestFile, from_files, parse_documents};

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
        let manifests = from_files(vec![ManifestFile {
            name: "x.yaml".into(),
            documents: parse_documents(text).unwrap(),
        }])
        .unwrap();
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
