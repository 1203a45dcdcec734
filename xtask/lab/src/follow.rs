//! The lab follows its manifest directory: `probe` and `status` read DIR again and bring the lab to
//! its current content before they look at the lab. What needs no new pod namespace follows at
//! once: the rendered manifests the agents watch (policies, namespaces, Services, pods' labels) and
//! the Services' DNAT rules. A pod added, removed, moved to another node, readdressed or given
//! other ports needs namespaces, veths and servers, which is `lab up`'s work: such a difference is
//! reported, and nothing is changed.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use policy_core::{manifest::node_name, policy::state::PodRef};

use super::{
    manifest, names,
    plan::{LabPod, Plan},
    render, services,
    state::State,
};

/// Where the lab stands against DIR after [`follow`].
pub enum Followed {
    /// The lab holds DIR's current content; `rendered` says whether that took new manifests.
    Current { rendered: bool },
    /// DIR's pods differ from the lab's, one line per pod; nothing was changed.
    NeedsUp(Vec<String>),
}

/// What `probe` fails with and `status` warns of when DIR's pods differ from the lab's.
pub fn needs_up_message(source: &Path, changes: &[String]) -> String {
    format!(
        "the pods of {} differ from the lab's ({}): run `cargo xtask lab up -f {}` to add, \
         remove or rewire their namespaces",
        source.display(),
        changes.join("; "),
        source.display()
    )
}

/// Reads DIR again and brings the lab's rendered manifests, Service rules and record to it, unless
/// its pods differ from the lab's.
pub fn follow(state: &mut State) -> Result<Followed> {
    let source = &state.plan.source;
    let manifests = manifest::load_dir(source)
        .with_context(|| format!("reading {}, which the lab follows", source.display()))?;
    let plan = Plan::new(
        source.clone(),
        &manifests,
        state.plan.nodes,
        state.plan.family,
    )?;
    let changes = pod_changes(&state.plan, &plan);
    if !changes.is_empty() {
        return Ok(Followed::NeedsUp(changes));
    }
    if plan.services != state.plan.services {
        services::apply(&plan)?;
    }
    let files = render::render(&manifests, &plan)?;
    let rendered = render::write(&names::rendered_dir(), &names::render_scratch_dir(), &files)?;
    if plan != state.plan {
        state.plan = plan;
        state.save()?;
    }
    Ok(Followed::Current { rendered })
}

/// What differs between the pods the lab built and those `wanted` asks for, in a way only `lab up`
/// can change: one line per pod, in (namespace, name) order. Labels are not in it: they follow.
pub fn pod_changes(built: &Plan, wanted: &Plan) -> Vec<String> {
    let by_key = |plan: &Plan| -> BTreeMap<PodRef, LabPod> {
        plan.pods
            .iter()
            .map(|pod| (pod.key.clone(), pod.clone()))
            .collect()
    };
    let (built, wanted) = (by_key(built), by_key(wanted));
    let mut keys: Vec<&PodRef> = built.keys().chain(wanted.keys()).collect();
    keys.sort();
    keys.dedup();
    let addresses = |pod: &LabPod| {
        pod.ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut changes = Vec::new();
    for key in keys {
        match (built.get(key), wanted.get(key)) {
            (None, Some(pod)) => changes.push(format!("{key} is new, for {}", node_name(pod.node))),
            (Some(_), None) => changes.push(format!("{key} is gone")),
            (Some(old), Some(new)) if old.host_network != new.host_network => {
                changes.push(format!(
                    "{key} {} hostNetwork",
                    if new.host_network {
                        "turns to"
                    } else {
                        "leaves"
                    }
                ))
            }
            (Some(old), Some(new)) if old.node != new.node => changes.push(format!(
                "{key} moves from {} to {}",
                node_name(old.node),
                node_name(new.node)
            )),
            (Some(old), Some(new)) if old.ips != new.ips => changes.push(format!(
                "{key} has addresses {} instead of {}",
                addresses(new),
                addresses(old)
            )),
            (Some(old), Some(new)) if old.ports != new.ports => {
                changes.push(format!("{key} has other container ports"));
            }
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use policy_core::manifest::IpFamily;

    use super::*;
    use crate::manifest::from_texts;

    fn plan(text: &str) -> Plan {
        let manifests = from_texts(&[("x.yaml".into(), text.into())]).unwrap();
        Plan::new("/src".into(), &manifests, 2, IpFamily::Ipv4).unwrap()
    }

    const BASE: &str = r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-2, containers: [{name: c, ports: [{containerPort: 80}]}]}
"#;

    #[test]
    fn labels_and_policies_follow_without_up() {
        let edited = format!(
            "{}---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: p, namespace: x}}\nspec: {{podSelector: {{}}}}\n",
            BASE.replace("labels: {app: a}", "labels: {app: a, tier: web}")
        );
        assert_eq!(
            pod_changes(&plan(BASE), &plan(&edited)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn pods_added_removed_moved_readdressed_or_with_other_ports_need_up() {
        let changed = format!(
            "{}---\nkind: Pod\napiVersion: v1\nmetadata: {{name: c, namespace: x}}\nspec: {{nodeName: node-1, containers: [{{name: c}}]}}\n",
            BASE.replace("name: b,", "name: d,").replace(
                "nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]",
                "nodeName: node-2, containers: [{name: c, ports: [{containerPort: 80}]}]"
            )
        );
        assert_eq!(
            pod_changes(&plan(BASE), &plan(&changed)),
            [
                "x/a moves from node-1 to node-2",
                "x/b is gone",
                "x/c is new, for node-1",
                "x/d is new, for node-2",
            ]
        );
        let readdressed = format!("{BASE}status: {{podIPs: [{{ip: 10.244.2.9}}]}}\n");
        assert_eq!(
            pod_changes(&plan(BASE), &plan(&readdressed)),
            ["x/b has addresses 10.244.2.9 instead of 10.244.2.2"]
        );
        let ports = BASE.replacen("containerPort: 80", "containerPort: 81", 1);
        assert_eq!(
            pod_changes(&plan(BASE), &plan(&ports)),
            ["x/a has other container ports"]
        );
    }
}
