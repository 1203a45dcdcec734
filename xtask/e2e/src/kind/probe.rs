//! Reachability in the kind cluster, probed from inside the client pods with agnhost's `connect`
//! (`kubectl exec`), as the upstream NetworkPolicy e2e tests do.
//!
//! `connect` exits 0 when the TCP connection opens or the UDP server answers, and otherwise says
//! why on standard error: `TIMEOUT` (silence: a policy drop), `REFUSED` (the packet reached the
//! pod and nothing listens: allowed, as in the lab), `OTHER: ...` (the network said unreachable).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::Mutex,
    thread,
};

use anyhow::{Context as _, bail};
use policy_core::{
    matrix::{Cell, Matrix},
    policy::{
        model::{Pod, PortValue, Service},
        state::ObjectRef,
    },
};
use policy_lab::{cmd as run, probe::Outcome};

use super::render::container_name;
use crate::scenario::{Family, Probe, Protocol, Via};

/// `kubectl exec` calls in flight at once.
const PARALLEL_EXECS: usize = 16;

/// What the cluster gave the step's pods and Services.
pub struct Addresses {
    pub pods: BTreeMap<ObjectRef, Vec<IpAddr>>,
    pub services: BTreeMap<ObjectRef, Vec<IpAddr>>,
}

/// Where a probe of `server` goes: its address of the family, or the ClusterIP and port of a
/// Service of its namespace that selects it and targets the probed port (by number, or by the
/// name of the pod's port).
pub fn target(
    probe: &Probe,
    server: &Pod,
    services: &[Service],
    addresses: &Addresses,
) -> Option<SocketAddr> {
    let v6 = probe.family == Family::V6;
    let family = |ips: &Vec<IpAddr>| ips.iter().copied().find(|ip| ip.is_ipv6() == v6);
    let wanted = probe.protocol.model();
    match probe.via {
        Via::Pod => addresses
            .pods
            .get(&server.pod_ref())
            .and_then(family)
            .map(|ip| SocketAddr::new(ip, probe.port)),
        // The lab knows each node's address; kind runs leave NodePort probes out (see
        // `run_scenarios`).
        Via::NodePort => None,
        Via::Service => services
            .iter()
            .filter(|service| service.namespace == server.namespace)
            // A Service without selector has no endpoints.
            .filter(|service| {
                !service.selector.is_empty()
                    && service
                        .selector
                        .iter()
                        .all(|(key, value)| server.labels.get(key) == Some(value))
            })
            .find_map(|service| {
                let port = service.ports.iter().find(|port| {
                    port.protocol == wanted
                        && match &port.target_port {
                            PortValue::Number(number) => *number == probe.port,
                            PortValue::Name(name) => server.ports.iter().any(|pod_port| {
                                pod_port.name.as_deref() == Some(name.as_str())
                                    && pod_port.port == probe.port
                                    && pod_port.protocol == wanted
                            }),
                        }
                })?;
                let ip = addresses
                    .services
                    .get(&service.object_ref())
                    .and_then(family)?;
                Some(SocketAddr::new(ip, port.port))
            }),
    }
}

/// The `kubectl` arguments of one probe from `client` (from its first container) to `address`.
pub fn connect_args(
    context: &str,
    client: &Pod,
    address: SocketAddr,
    protocol: Protocol,
) -> anyhow::Result<Vec<String>> {
    let Some(first) = client.ports.first() else {
        bail!("pod {} has no container to probe from", client.pod_ref());
    };
    Ok([
        "--context",
        context,
        "exec",
        "--namespace",
        &client.namespace,
        &client.name,
        "--container",
        &container_name(first.port, first.protocol),
        "--",
        "/agnhost",
        "connect",
        &address.to_string(),
        "--timeout=1s",
        &format!("--protocol={}", protocol.as_str().to_lowercase()),
    ]
    .map(str::to_owned)
    .to_vec())
}

/// What one `connect` saw, from its exit status and standard error; an error when `kubectl exec`
/// itself failed (no such pod, no such container).
pub fn outcome(success: bool, stderr: &str) -> anyhow::Result<Outcome> {
    if success {
        return Ok(Outcome::Answered);
    }
    let first = stderr.lines().map(str::trim).find(|line| !line.is_empty());
    match first {
        Some("TIMEOUT") => Ok(Outcome::Silent),
        Some("REFUSED") => Ok(Outcome::Refused),
        Some(line) if line.starts_with("OTHER:") => Ok(Outcome::Unreachable),
        _ => bail!("the probe failed: {}", stderr.trim()),
    }
}

/// The matrix of real connections over the step's pods for `probe`.
pub fn observe(
    context: &str,
    probe: &Probe,
    pods: &[Pod],
    services: &[Service],
    addresses: &Addresses,
) -> anyhow::Result<Matrix> {
    let names: Vec<String> = pods.iter().map(|pod| pod.pod_ref().to_string()).collect();
    let mut matrix = Matrix::filled(&names, Cell::Unserved);
    let mut jobs = Vec::new();
    for client in pods {
        for server in pods {
            if let Some(address) = target(probe, server, services, addresses) {
                jobs.push((client, server, address));
            }
        }
    }
    let queue = Mutex::new(jobs.into_iter());
    let results = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PARALLEL_EXECS {
            scope.spawn(|| {
                while let Some((client, server, address)) =
                    queue.lock().ok().and_then(|mut jobs| jobs.next())
                {
                    let result =
                        connect_args(context, client, address, probe.protocol).and_then(|args| {
                            let mut command = Command::new("kubectl");
                            command.args(&args);
                            let output = command.output().with_context(|| {
                                format!("running `{}`", run::describe(&command))
                            })?;
                            outcome(
                                output.status.success(),
                                &String::from_utf8_lossy(&output.stderr),
                            )
                            .with_context(|| format!("`{}`", run::describe(&command)))
                        });
                    if let Ok(mut results) = results.lock() {
                        results.push((
                            client.pod_ref().to_string(),
                            server.pod_ref().to_string(),
                            result,
                        ));
                    }
                }
            });
        }
    });
    for (client, server, result) in results.into_inner().unwrap_or_default() {
        let cell = if result?.allowed() {
            Cell::Allowed
        } else {
            Cell::Denied
        };
        matrix.set(&client, &server, cell);
    }
    Ok(matrix)
}

#[cfg(test)]
mod tests {
    use policy_core::policy::model::{self, ContainerPort, PodPhase, ServicePort, ServiceType};

    use super::*;

    fn key(namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn server() -> Pod {
        Pod {
            namespace: "x".into(),
            name: "a".into(),
            node: None,
            phase: PodPhase::Running,
            host_network: false,
            ips: Vec::new(),
            ports: vec![
                ContainerPort {
                    name: Some("serve-80-tcp".into()),
                    port: 80,
                    protocol: model::Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("serve-81-tcp".into()),
                    port: 81,
                    protocol: model::Protocol::Tcp,
                },
            ],
            labels: BTreeMap::from([("pod".into(), "a".into())]),
        }
    }

    fn services() -> Vec<Service> {
        vec![Service {
            namespace: "x".into(),
            name: "s-x-a".into(),
            service_type: ServiceType::ClusterIp,
            selector: BTreeMap::from([("pod".into(), "a".into())]),
            cluster_ips: Vec::new(),
            headless: false,
            ports: vec![
                ServicePort {
                    port: 80,
                    protocol: model::Protocol::Tcp,
                    target_port: PortValue::Number(80),
                    node_port: None,
                },
                ServicePort {
                    port: 8081,
                    protocol: model::Protocol::Tcp,
                    target_port: PortValue::Name("serve-81-tcp".into()),
                    node_port: None,
                },
            ],
        }]
    }

    fn addresses() -> Addresses {
        Addresses {
            pods: BTreeMap::from([(
                key("x", "a"),
                vec![
                    "10.244.2.7".parse().unwrap(),
                    "fd00:10:244:2::7".parse().unwrap(),
                ],
            )]),
            services: BTreeMap::from([(
                key("x", "s-x-a"),
                vec![
                    "10.96.0.20".parse().unwrap(),
                    "fd00:10:96::20".parse().unwrap(),
                ],
            )]),
        }
    }

    fn probe(port: u16, protocol: Protocol, via: Via, family: Family) -> Probe {
        Probe {
            port,
            protocol,
            via,
            family,
            explain: false,
            expected: Matrix::filled(&[], Cell::Allowed),
        }
    }

    #[test]
    fn pod_probes_go_to_the_pod_address_of_the_family() {
        let probe = probe(80, Protocol::Tcp, Via::Pod, Family::V6);
        assert_eq!(
            target(&probe, &server(), &services(), &addresses()),
            Some("[fd00:10:244:2::7]:80".parse().unwrap())
        );
    }

    #[test]
    fn service_probes_go_to_the_service_port_that_targets_the_pod_port() {
        let by_name = probe(81, Protocol::Tcp, Via::Service, Family::V4);
        assert_eq!(
            target(&by_name, &server(), &services(), &addresses()),
            Some("10.96.0.20:8081".parse().unwrap())
        );
        let by_number = probe(80, Protocol::Tcp, Via::Service, Family::V6);
        assert_eq!(
            target(&by_number, &server(), &services(), &addresses()),
            Some("[fd00:10:96::20]:80".parse().unwrap())
        );
        let unserved = probe(80, Protocol::Udp, Via::Service, Family::V4);
        assert_eq!(
            target(&unserved, &server(), &services(), &addresses()),
            None
        );
    }

    #[test]
    fn the_probe_runs_agnhost_connect_in_the_client_s_first_container() {
        let args = connect_args(
            "kind-e2e",
            &server(),
            "[fd00:10:96::20]:80".parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap();
        assert_eq!(
            args.join(" "),
            "--context kind-e2e exec --namespace x a --container serve-80-tcp -- /agnhost \
             connect [fd00:10:96::20]:80 --timeout=1s --protocol=udp"
        );
    }

    #[test]
    fn connect_results_become_outcomes() {
        assert_eq!(outcome(true, "").unwrap(), Outcome::Answered);
        assert_eq!(outcome(false, "TIMEOUT\n").unwrap(), Outcome::Silent);
        assert_eq!(outcome(false, "REFUSED\n").unwrap(), Outcome::Refused);
        assert_eq!(
            outcome(false, "OTHER: dial tcp: no route to host\n").unwrap(),
            Outcome::Unreachable
        );
        let error = outcome(
            false,
            "Error from server (NotFound): pods \"a\" not found\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("NotFound"), "{error}");
        assert!(Outcome::Refused.allowed() && !Outcome::Silent.allowed());
    }
}
