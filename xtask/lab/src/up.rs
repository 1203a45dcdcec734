//! `lab up`: builds the lab a manifest directory describes, or changes the lab that is
//! up to match it (pods added, removed or moved; Services and the rendered manifests updated).

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use policy_core::manifest::IpFamily;

use super::{
    agent,
    build::{self, Profile},
    cmd, down, manifest, names, netns,
    plan::{LabPod, Plan},
    render, services,
    state::State,
    topology::{self, CniStyle},
};

/// How long `up` waits for the agents to apply the manifests.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the lab should be: the arguments of `lab up`.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// The directory of manifests (Namespaces, Pods, Services, NetworkPolicies).
    #[arg(short = 'f', long = "file")]
    pub dir: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Which IP families pods and Services get: ipv4, ipv6 or dual.
    #[arg(long, default_value = "dual")]
    pub ip_family: IpFamily,
    /// Run no agents: the lab wires pods and Services, and nothing enforces policy.
    #[arg(long)]
    pub no_agent: bool,
    /// Do not build the agent first.
    #[arg(long)]
    pub no_build: bool,
    /// The agent binary (default: $NETPOL_AGENT_BIN, else target/debug/policy-agent, built first).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
}

/// What `up` did.
#[derive(Clone, Debug)]
pub struct Up {
    pub elapsed: Duration,
    /// Per node: its number, its CNI style and how many pods it has.
    pub nodes: Vec<(usize, CniStyle, usize)>,
    pub pods: usize,
    pub added: usize,
    pub removed: usize,
    pub services: usize,
    /// Whether the rendered manifests changed.
    pub rendered: bool,
    /// The agents started, by node name and pid.
    pub started: Vec<(String, u32)>,
    /// Whether agents run.
    pub agents: bool,
    /// The generation the agents applied, and how long after the manifests were written.
    pub applied: Option<(String, Duration)>,
}

impl fmt::Display for Up {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (node, pid) in &self.started {
            writeln!(f, "started the agent of {node} (pid {pid})")?;
        }
        for (k, style, pods) in &self.nodes {
            writeln!(
                f,
                "node-{k} ({} style): {pods} pods, netns {}",
                style.name(),
                names::node_netns(*k)
            )?;
        }
        writeln!(
            f,
            "lab up in {} ms: {} pods ({} added, {} removed), {} services, manifests {} in {}{}",
            self.elapsed.as_millis(),
            self.pods,
            self.added,
            self.removed,
            self.services,
            if self.rendered {
                "rendered"
            } else {
                "unchanged"
            },
            names::rendered_dir().display(),
            if self.agents { "" } else { "; no agents" },
        )?;
        if let Some((generation, latency)) = &self.applied {
            writeln!(
                f,
                "agents applied generation {generation} {} ms after the manifests were written",
                latency.as_millis()
            )?;
        }
        Ok(())
    }
}

/// Builds the lab `args` describes, or brings the lab that is up to it.
pub fn up(args: &UpArgs) -> Result<Up> {
    let start = Instant::now();
    let source = fs::canonicalize(&args.dir)
        .with_context(|| format!("finding the manifest directory {}", args.dir.display()))?;
    let manifests = manifest::load_dir(&source)?;
    let plan = Plan::new(source, &manifests, args.nodes, args.ip_family)?;
    let previous = State::load()?;
    let leftovers = !names::lab_namespaces()?.is_empty() || Path::new(names::PIN_DIR).exists();
    if previous.is_none() && leftovers {
        println!("removing what a lab that did not finish coming up left behind");
        down::down()?;
    }
    if let Some(previous) = &previous
        && (previous.plan.nodes != plan.nodes || previous.plan.family != plan.family)
    {
        bail!(
            "the lab is up with {} nodes ({}); run `cargo xtask lab down` before changing that",
            previous.plan.nodes,
            previous.plan.family.name()
        );
    }
    let agent = match (&previous, args.no_agent) {
        (_, true) => None,
        (Some(previous), false) if previous.agent.is_some() && args.agent_bin.is_none() => {
            previous.agent.clone()
        }
        (_, false) => {
            let binary = agent::binary(args.agent_bin.clone(), !args.no_build)?;
            if agent::supports_run(&binary) {
                Some(binary)
            } else {
                println!(
                    "warning: {} has no `run` subcommand; the lab comes up without agents and \
                     nothing enforces policy",
                    binary.display()
                );
                None
            }
        }
    };

    for dir in [
        PathBuf::from(names::RUN_DIR),
        names::pods_run_dir(),
        names::rendered_dir(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    if !netns::exists(names::UNDERLAY_NETNS) {
        topology::create_underlay()?;
    }
    let mut fresh_nodes = Vec::new();
    for k in 1..=plan.nodes {
        if !netns::exists(&names::node_netns(k)) {
            topology::create_node(k, plan.nodes, plan.family)?;
            fresh_nodes.push(k);
        }
    }

    // A pod is kept when it was built as planned now; anything else in a lab namespace goes.
    let built: Vec<&LabPod> = previous
        .as_ref()
        .map(|previous| previous.plan.pods.iter().collect())
        .unwrap_or_default();
    let unchanged = |pod: &LabPod| {
        built.iter().any(|old| {
            old.key == pod.key
                && old.node == pod.node
                && old.ips == pod.ips
                && old.ports == pod.ports
                && old.host_network == pod.host_network
        }) && netns::exists(&pod.netns())
            && !fresh_nodes.contains(&pod.node)
    };
    let keep: Vec<&LabPod> = plan.pods.iter().filter(|pod| unchanged(pod)).collect();
    let mut wanted: Vec<String> = vec![names::UNDERLAY_NETNS.to_owned()];
    wanted.extend((1..=plan.nodes).map(names::node_netns));
    wanted.extend(keep.iter().map(|pod| pod.netns()));
    let mut removed = 0;
    for old in &built {
        if !keep.iter().any(|pod| pod.key == old.key) {
            topology::delete_pod(old, plan.family)?;
            removed += 1;
        }
    }
    for stray in names::lab_namespaces()? {
        if !wanted.contains(&stray) {
            netns::delete(&stray)?;
        }
    }

    let mut added = Vec::new();
    let server = plan
        .pods
        .iter()
        .any(|pod| !unchanged(pod) && !pod.served_ports().is_empty())
        .then(|| build::binary("policy-lab", Profile::Debug))
        .transpose()?;
    for pod in plan.pods.iter().filter(|pod| !unchanged(pod)) {
        if !pod.host_network {
            topology::create_pod(pod, plan.family)?;
        }
        if let Some(server) = &server {
            start_server(server, pod)?;
        }
        added.push(pod);
    }
    wait_servers_ready(&added)?;
    services::apply(&plan)?;

    let files = render::render(&manifests, &plan)?;
    let rendered_at = Instant::now();
    let changed = render::write(&names::rendered_dir(), &names::render_scratch_dir(), &files)?;

    let state = State {
        plan: plan.clone(),
        agent: agent.clone(),
    };
    state.save()?;
    let previous_agent = previous
        .as_ref()
        .and_then(|previous| previous.agent.clone());
    if previous_agent.is_some() && previous_agent != agent {
        agent::stop_all(plan.nodes)?;
    }
    let mut applied = None;
    let mut started = Vec::new();
    if let Some(binary) = &agent {
        mount_bpffs()?;
        fs::create_dir_all(names::PIN_DIR)
            .with_context(|| format!("creating {}", names::PIN_DIR))?;
        started = agent::start_all(binary, plan.nodes)?;
        let generation = agent::expected_generation()?;
        agent::wait_applied(&generation, plan.nodes, APPLY_TIMEOUT)?;
        applied = Some((generation, rendered_at.elapsed()));
    }
    Ok(Up {
        elapsed: start.elapsed(),
        nodes: (1..=plan.nodes)
            .map(|k| {
                let pods = plan.pods.iter().filter(|pod| pod.node == k).count();
                (k, CniStyle::of_node(k), pods)
            })
            .collect(),
        pods: plan.pods.len(),
        added: added.len(),
        removed,
        services: plan.services.len(),
        rendered: changed,
        started,
        agents: agent.is_some(),
        applied,
    })
}

/// Starts the pod's server on its containerPorts; a pod without ports gets none.
fn start_server(server: &Path, pod: &LabPod) -> Result<()> {
    let ports = pod.served_ports();
    if ports.is_empty() {
        return Ok(());
    }
    let ready = names::server_ready_file(&pod.name());
    if ready.exists() {
        fs::remove_file(&ready).with_context(|| format!("removing {}", ready.display()))?;
    }
    let mut command = Command::new(server);
    command
        .args(["serve", "--reply", &pod.key.to_string()])
        .arg("--ready-file")
        .arg(&ready);
    for port in ports {
        command.args(["--port", &port.to_string()]);
    }
    // On its node's namespace, the server answers from the address it was reached on, as the
    // probes expect, and leaves the node's other addresses alone.
    if pod.host_network {
        for ip in &pod.ips {
            command.args(["--address", &ip.to_string()]);
        }
    }
    let log = names::server_log(&pod.name());
    let pid = netns::spawn_detached(&pod.netns(), &mut command, &log)?;
    if pod.host_network {
        let file = names::server_pid_file(&pod.name());
        fs::write(&file, pid.to_string()).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

fn wait_servers_ready(pods: &[&LabPod]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for pod in pods.iter().filter(|pod| !pod.served_ports().is_empty()) {
        while !names::server_ready_file(&pod.name()).exists() {
            if Instant::now() > deadline {
                let log = names::server_log(&pod.name());
                bail!(
                    "the server of pod {} did not start: {}",
                    pod.key,
                    fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf when it is not mounted (it is not at boot on these machines).
fn mount_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if !mounted {
        cmd::run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        bail!("/sys/fs/bpf is not a directory");
    }
    Ok(())
}
