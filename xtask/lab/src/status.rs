//! `cargo xtask lab status`: the nodes, pods and Services of the lab that is up, once it follows
//! the current content of its manifest directory (see [`super::follow`]); a warning says when
//! DIR's pods differ from the lab's and need `lab up`.

use anyhow::Result;
use policy_core::{
    manifest::{node_cidrs, node_name},
    policy::model::PortValue,
};
use serde::Serialize;

use super::{
    follow::{self, Followed},
    plan::Plan,
    state::State,
    topology::CniStyle,
};

/// Arguments of `lab status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Serialize)]
struct Status {
    nodes: Vec<NodeStatus>,
    pods: Vec<PodStatus>,
    services: Vec<ServiceStatus>,
}

#[derive(Serialize)]
struct NodeStatus {
    name: String,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Vec<String>,
}

#[derive(Serialize)]
struct PodStatus {
    name: String,
    node: String,
    ips: Vec<String>,
}

#[derive(Serialize)]
struct ServiceStatus {
    name: String,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    ports: Vec<PortStatus>,
}

#[derive(Serialize)]
struct PortStatus {
    port: u16,
    protocol: &'static str,
    #[serde(rename = "targetPort")]
    target_port: PortValue,
}

fn status(plan: &Plan) -> Status {
    Status {
        nodes: (1..=plan.nodes)
            .map(|k| NodeStatus {
                name: node_name(k),
                pod_cidrs: node_cidrs(k, plan.family)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            })
            .collect(),
        pods: plan
            .pods
            .iter()
            .map(|pod| PodStatus {
                name: pod.key.to_string(),
                node: node_name(pod.node),
                ips: pod.ips.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        services: plan
            .services
            .iter()
            .map(|service| ServiceStatus {
                name: service.key.to_string(),
                cluster_ips: service
                    .cluster_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                ports: service
                    .ports
                    .iter()
                    .map(|port| PortStatus {
                        port: port.port,
                        protocol: port.protocol.name(),
                        target_port: port.target.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub fn run(args: StatusArgs) -> Result<()> {
    let mut state = State::require()?;
    if let Followed::NeedsUp(changes) = follow::follow(&mut state)? {
        eprintln!(
            "warning: {}",
            follow::needs_up_message(&state.plan.source, &changes)
        );
    }
    let status = status(&state.plan);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Table => print_table(&state, &status),
    }
    Ok(())
}

fn print_table(state: &State, status: &Status) {
    println!("manifests: {}", state.plan.source.display());
    match &state.agent {
        Some(binary) => println!("agents:    {}", binary.display()),
        None => println!("agents:    none (nothing enforces policy)"),
    }
    println!("\nNODE      STYLE   POD CIDRS");
    for (k, node) in status.nodes.iter().enumerate() {
        println!(
            "{:<9} {:<7} {}",
            node.name,
            CniStyle::of_node(k + 1).name(),
            node.pod_cidrs.join(", ")
        );
    }
    let width = status
        .pods
        .iter()
        .map(|pod| pod.name.len())
        .max()
        .unwrap_or(3)
        .max(3);
    println!("\n{:<width$}  NODE      IPS", "POD");
    for pod in &status.pods {
        println!(
            "{:<width$}  {:<9} {}",
            pod.name,
            pod.node,
            pod.ips.join(", ")
        );
    }
    if status.services.is_empty() {
        return;
    }
    let width = status
        .services
        .iter()
        .map(|service| service.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!(
        "\n{:<width$}  CLUSTER IPS                  PORTS",
        "SERVICE"
    );
    for (service, planned) in status.services.iter().zip(&state.plan.services) {
        let ports: Vec<String> = planned
            .ports
            .iter()
            .map(|port| {
                let target = port.target.to_string();
                let backend = port.backend.as_ref().map_or_else(
                    || "no backend".to_owned(),
                    |backend| format!("{}:{}", backend.pod, backend.port),
                );
                format!(
                    "{}/{}->{target} ({backend})",
                    port.port,
                    port.protocol.name()
                )
            })
            .collect();
        println!(
            "{:<width$}  {:<28} {}",
            service.name,
            service.cluster_ips.join(", "),
            ports.join(", ")
        );
    }
}
