//! Names of the lab's network namespaces, links and files. Link names are at most 15 characters,
//! so per-pod links are named by a hash of the pod.

use std::path::PathBuf;

use policy_core::policy::state::PodRef;

/// Node namespaces, and the pod namespaces named after their node, start with this.
const NODE_NETNS_PREFIX: &str = "np-node-";
/// The namespace of the link layer between nodes.
pub const UNDERLAY_NETNS: &str = "np-underlay";
/// The bridge in the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "underlay0";
/// Each node's link to the underlay, inside the node.
pub const NODE_UPLINK: &str = "eth0";
/// The bridge of bridge-style nodes.
pub const NODE_BRIDGE: &str = "cni0";
/// A pod's interface, inside the pod.
pub const POD_LINK: &str = "eth0";
/// The lab's runtime directory.
pub const RUN_DIR: &str = "/run/netpol-lab";
/// Where the lab pins are kept (one directory per node, used by its agent).
pub const PIN_DIR: &str = "/sys/fs/bpf/netpol-lab";

/// The record of the lab that is up.
pub fn state_file() -> PathBuf {
    PathBuf::from(RUN_DIR).join("lab.json")
}

/// The rendered manifests the agents watch.
pub fn rendered_dir() -> PathBuf {
    PathBuf::from(RUN_DIR).join("manifests")
}

/// Where rendered files are written before they are moved into [`rendered_dir`].
pub fn render_scratch_dir() -> PathBuf {
    PathBuf::from(RUN_DIR).join(".render")
}

/// Node `k`'s agent state directory (its log and its applied generation).
pub fn node_run_dir(node: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(node)
}

/// Logs and readiness markers of the pods' servers.
pub fn pods_run_dir() -> PathBuf {
    PathBuf::from(RUN_DIR).join("pods")
}

/// Created by a pod's server once it listens (`pod` is the pod's [`pod_netns`] name).
pub fn server_ready_file(pod: &str) -> PathBuf {
    pods_run_dir().join(format!("{pod}.ready"))
}

/// The output of a pod's server.
pub fn server_log(pod: &str) -> PathBuf {
    pods_run_dir().join(format!("{pod}.log"))
}

/// The process id of a hostNetwork pod's server, which no namespace of its own ends.
pub fn server_pid_file(pod: &str) -> PathBuf {
    pods_run_dir().join(format!("{pod}.pid"))
}

pub fn node_netns(k: usize) -> String {
    format!("{NODE_NETNS_PREFIX}{k}")
}

/// Whether `name` is a network namespace of the lab: the underlay, `np-node-<k>` or
/// `np-node-<k>-...`. Other `np-` names are not the lab's business.
pub fn is_lab_netns(name: &str) -> bool {
    if name == UNDERLAY_NETNS {
        return true;
    }
    let Some(rest) = name.strip_prefix(NODE_NETNS_PREFIX) else {
        return false;
    };
    let (number, _) = rest.split_once('-').unwrap_or((rest, ""));
    !number.is_empty() && number.bytes().all(|byte| byte.is_ascii_digit())
}

/// `np-node-<k>-<namespace>-<pod>`, or a hash of the pod where that would be too long.
pub fn pod_netns(node: usize, pod: &PodRef) -> String {
    let name = format!("{NODE_NETNS_PREFIX}{node}-{}-{}", pod.namespace, pod.name);
    if name.len() <= 200 {
        name
    } else {
        format!("{NODE_NETNS_PREFIX}{node}-{:016x}", fnv1a(&pod.to_string()))
    }
}

/// The name prefix of every pod's node-side veth, and of no other interface.
pub const HOST_VETH_PREFIX: &str = "vnp";

/// The node-side veth of a pod.
pub fn host_veth(pod: &PodRef) -> String {
    format!("{HOST_VETH_PREFIX}{:08x}", fnv1a(&pod.to_string()) as u32)
}

/// Node `k`'s link to the underlay, inside the underlay namespace.
pub fn underlay_port(k: usize) -> String {
    format!("node-{k}")
}

/// A locally administered MAC address for the pod's interface, stable across `up`s.
pub fn pod_mac(pod: &PodRef) -> String {
    let bytes = fnv1a(&pod.to_string()).to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]
    )
}

/// FNV-1a, 64 bits: short stable names from long ones.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Every lab network namespace, sorted.
pub fn lab_namespaces() -> anyhow::Result<Vec<String>> {
    policy_testbed::netns::list(is_lab_netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_namespaces_are_told_from_other_np_names() {
        for name in ["np-underlay", "np-node-1", "np-node-12-x-a"] {
            assert!(is_lab_netns(name), "{name}");
        }
        for name in [
            "np-test-31549-10",
            "np-node-",
            "np-node-x",
            "np-nodes-1",
            "other",
        ] {
            assert!(!is_lab_netns(name), "{name}");
        }
    }

    #[test]
    fn per_pod_names_fit_and_differ() {
        let a = PodRef {
            namespace: "a-very-long-namespace-name".into(),
            name: "a-very-long-pod-name-0".into(),
        };
        let b = PodRef {
            name: "a-very-long-pod-name-1".into(),
            ..a.clone()
        };
        assert!(host_veth(&a).len() <= 15);
        assert_ne!(host_veth(&a), host_veth(&b));
        assert_ne!(pod_mac(&a), pod_mac(&b));
        assert_eq!(
            pod_netns(2, &a),
            "np-node-2-a-very-long-namespace-name-a-very-long-pod-name-0"
        );
    }
}
