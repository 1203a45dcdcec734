//! Traffic through the lab's veths: TCP throughput (iperf3), request/response latency and new
//! connections per second from a client pod to a server pod on the same node and on the other
//! node, for five setups (no filtering, an empty TC program, the agent's enforcement, linear
//! iptables rules, an nftables set) at several rule counts, in interleaved rounds.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use policy_core::{manifest::IpFamily, policy::state::PodRef};
use policy_lab::{
    build::{self, Profile},
    cmd, names, netns,
    plan::LabPod,
    state::State,
    up::UpArgs,
};

use super::{
    median,
    report::{Plot, Section, Series, Table, Target},
    rules, tcx,
};

/// Rule counts measured.
pub const RULE_COUNTS: [usize; 4] = [10, 100, 1_000, 10_000];
/// Every traffic process runs at this `nice` setting, so that other work on the machine
/// disturbs the figures less.
const NICE: [&str; 2] = ["-n", "-20"];
/// A port no server listens on and no rule allows: a filtering setup drops a SYN to it, an
/// open path refuses it.
const UNLISTED_PORT: u16 = 7002;

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub rounds: usize,
    /// Each iperf3 run (iperf3 takes whole seconds).
    pub iperf_seconds: u64,
    /// Each latency and each connection-rate run.
    pub run_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    None,
    Empty,
    Ours,
    Iptables,
    Nftables,
}

const SETUPS: [Setup; 5] = [
    Setup::None,
    Setup::Empty,
    Setup::Ours,
    Setup::Iptables,
    Setup::Nftables,
];

impl Setup {
    fn title(self) -> &'static str {
        match self {
            Self::None => "no filtering",
            Self::Empty => "empty TC program",
            Self::Ours => "our enforcement",
            Self::Iptables => "iptables, linear",
            Self::Nftables => "nftables set",
        }
    }

    fn filters(self) -> bool {
        matches!(self, Self::Ours | Self::Iptables | Self::Nftables)
    }

    fn paragraph(self) -> String {
        let (first, last) = rules::PORTS;
        match self {
            Self::None => "**No filtering** (the baseline): the pods as the CNI wires them, no \
                           program and no rule on their path; every ratio divides by this \
                           setup's figure of the same round."
                .to_owned(),
            Self::Empty => "**Empty TC program**: a two-instruction program that passes every \
                            packet, attached through TCX to both hooks of the host-side veth of \
                            each bench pod, where the agent attaches its programs: the cost of \
                            running any TC program at all."
                .to_owned(),
            Self::Ours => format!(
                "**Our enforcement**: the real agent (release build) on each node, given a \
                 NetworkPolicy that isolates the servers' ingress with N rules, each allowing \
                 TCP {first}-{last} from one ipBlock /32: N - 1 addresses that never send, then \
                 the client. The agent resolves it into its maps and attaches `from_pod` and \
                 `to_pod` to every local pod's host-side veth."
            ),
            Self::Iptables => format!(
                "**iptables, linear** (the kube-router style): in each server's node, FORWARD \
                 sends traffic to the server into a chain that accepts ESTABLISHED,RELATED \
                 first, then has one rule per allowed source (`-s SOURCE/32 -p tcp --dport \
                 {first}:{last} -j ACCEPT`) in the same order, ending in the client, then DROP: \
                 a new connection of the client walks all N rules."
            ),
            Self::Nftables => format!(
                "**nftables set**: in each server's node, a forward-hook chain that accepts \
                 established and related flows, then accepts TCP {first}-{last} to the server \
                 whose source is in a set of the N allowed addresses, then drops the rest: one \
                 hash lookup whatever N."
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    SameNode,
    CrossNode,
}

const ROUTES: [Route; 2] = [Route::SameNode, Route::CrossNode];

impl Route {
    fn title(self) -> &'static str {
        match self {
            Self::SameNode => "same node",
            Self::CrossNode => "across nodes",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    Throughput,
    Latency,
    Connections,
}

/// One figure of one round.
type Key = (Metric, Route, Setup, usize);

/// Runs every round on a lab of its own and returns one section per metric.
pub fn measure(
    agent: &Path,
    work_dir: &Path,
    durations: Durations,
) -> anyhow::Result<Vec<Section>> {
    if State::load()?.is_some() {
        bail!("a lab is up; the bench builds its own: run `cargo xtask lab down` first");
    }
    // In the debug profile, as the figures have always been taken.
    let tools = build::binary("policy-bench", Profile::Debug)?;
    let measured = Lab::up(&tools, agent, work_dir).and_then(|lab| lab.rounds(durations));
    let down = policy_lab::down::down();
    let figures = measured?;
    down?;
    Ok(sections(&figures, durations))
}

struct Lab {
    /// The `policy-bench` binary.
    tools: PathBuf,
    agent: PathBuf,
    manifests: PathBuf,
    client: LabPod,
    servers: [LabPod; 2],
    /// The CPUs of the client and of the servers.
    cpus: [Option<usize>; 2],
}

impl Lab {
    fn up(tools: &Path, agent: &Path, work_dir: &Path) -> anyhow::Result<Self> {
        let manifests = work_dir.join("lab-manifests");
        if manifests.exists() {
            fs::remove_dir_all(&manifests)
                .with_context(|| format!("removing {}", manifests.display()))?;
        }
        fs::create_dir_all(&manifests)
            .with_context(|| format!("creating {}", manifests.display()))?;
        let cluster = manifests.join("cluster.yaml");
        fs::write(&cluster, rules::cluster_manifest())
            .with_context(|| format!("writing {}", cluster.display()))?;
        let cpus = match thread::available_parallelism().map(usize::from) {
            Ok(n) if n >= 2 => [Some(0), Some(1)],
            _ => [None, None],
        };
        let mut lab = Self {
            tools: tools.to_owned(),
            agent: agent.to_owned(),
            manifests,
            client: placeholder_pod(),
            servers: [placeholder_pod(), placeholder_pod()],
            cpus,
        };
        println!("bench: bringing up the lab (2 nodes, IPv4)");
        lab.lab_up(false)?;
        let state = State::require()?;
        let pod = |name: &str| {
            state
                .plan
                .pods
                .iter()
                .find(|pod| pod.key.namespace == rules::NAMESPACE && pod.key.name == name)
                .cloned()
                .with_context(|| format!("the lab has no pod {name}"))
        };
        lab.client = pod("client")?;
        lab.servers = [pod("server-local")?, pod("server-remote")?];
        netns::sysctls(
            &lab.client.netns(),
            &[("net.ipv4.ip_local_port_range", "1024 65535")],
        )?;
        for server in &lab.servers {
            lab.start_servers(server)?;
        }
        Ok(lab)
    }

    fn lab_up(&self, with_agent: bool) -> anyhow::Result<()> {
        policy_lab::up::up(&UpArgs {
            dir: self.manifests.clone(),
            nodes: 2,
            ip_family: IpFamily::Ipv4,
            no_agent: !with_agent,
            no_build: true,
            agent_bin: with_agent.then(|| self.agent.clone()),
        })?;
        Ok(())
    }

    fn start_servers(&self, server: &LabPod) -> anyhow::Result<()> {
        let cpu = self.cpus[1].map(|cpu| cpu.to_string());
        let log = names::pods_run_dir().join(format!("{}.bench.log", server.netns()));
        let mut echo = std::process::Command::new("nice");
        echo.args(NICE).arg(&self.tools).args([
            "tool",
            "server",
            "--port",
            &rules::PORTS.0.to_string(),
        ]);
        if let Some(cpu) = &cpu {
            echo.args(["--cpu", cpu]);
        }
        netns::spawn_detached(&server.netns(), &mut echo, &log)?;
        let mut iperf = std::process::Command::new("nice");
        iperf
            .args(NICE)
            .args(["iperf3", "--server", "--port", &rules::PORTS.1.to_string()]);
        if let Some(cpu) = &cpu {
            iperf.args(["--affinity", cpu]);
        }
        netns::spawn_detached(&server.netns(), &mut iperf, &log)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        for port in [rules::PORTS.0, rules::PORTS.1] {
            while self.probe(server, port)? != "open" {
                if Instant::now() > deadline {
                    bail!(
                        "the bench servers of {} did not start: {}",
                        server.key,
                        fs::read_to_string(&log).unwrap_or_default().trim()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn address(&self, pod: &LabPod, port: u16) -> anyhow::Result<SocketAddr> {
        pod.ip(false)
            .map(|ip| SocketAddr::new(ip, port))
            .with_context(|| format!("pod {} has no IPv4 address", pod.key))
    }

    fn ipv4(&self, pod: &LabPod) -> anyhow::Result<Ipv4Addr> {
        match pod.ip(false) {
            Some(IpAddr::V4(ip)) => Ok(ip),
            _ => bail!("pod {} has no IPv4 address", pod.key),
        }
    }

    /// Runs a bench tool inside the client pod and returns what it printed.
    fn client_tool(&self, args: &[&str]) -> anyhow::Result<String> {
        let tools = self.tools.to_string_lossy();
        let netns = self.client.netns();
        let mut full = vec!["netns", "exec", &netns, "nice"];
        full.extend(NICE);
        full.extend([&*tools, "tool"]);
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    fn probe(&self, server: &LabPod, port: u16) -> anyhow::Result<String> {
        let to = self.address(server, port)?.to_string();
        Ok(self.client_tool(&["probe", "--to", &to])?.trim().to_owned())
    }

    fn client_cpu(&self) -> Vec<String> {
        self.cpus[0]
            .map(|cpu| vec!["--cpu".to_owned(), cpu.to_string()])
            .unwrap_or_default()
    }

    fn rounds(&self, durations: Durations) -> anyhow::Result<BTreeMap<Key, Vec<f64>>> {
        let mut figures: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
        for round in 0..durations.rounds {
            let start = Instant::now();
            for &rules in &RULE_COUNTS {
                // The setups take turns going first, so none of them always meets a machine
                // warmed up (or slowed down) by the others.
                let mut order = SETUPS;
                order.rotate_left(round % SETUPS.len());
                for setup in order {
                    let guard = self.enter(setup, rules)?;
                    for route in ROUTES {
                        for (metric, value) in self.measure_route(route, durations)? {
                            figures
                                .entry((metric, route, setup, rules))
                                .or_default()
                                .push(value);
                        }
                    }
                    self.leave(setup, guard)?;
                }
            }
            println!(
                "bench: lab round {}/{} in {:.0} s",
                round + 1,
                durations.rounds,
                start.elapsed().as_secs_f64()
            );
        }
        Ok(figures)
    }

    /// Installs `setup` with `rules` rules and checks that it filters (or not) as it should.
    fn enter(&self, setup: Setup, rules: usize) -> anyhow::Result<Vec<tcx::EmptyProgram>> {
        let sources = rules::allowed_sources(rules, self.ipv4(&self.client)?);
        let mut guard = Vec::new();
        match setup {
            Setup::None => {}
            Setup::Empty => {
                for node in [1, 2] {
                    let veths: Vec<String> = [&self.client, &self.servers[0], &self.servers[1]]
                        .into_iter()
                        .filter(|pod| pod.node == node)
                        .map(|pod| names::host_veth(&pod.key))
                        .collect();
                    guard.push(tcx::attach(&names::node_netns(node), &veths)?);
                }
            }
            Setup::Ours => {
                let policy = self.manifests.join("policy.yaml");
                fs::write(&policy, rules::network_policy(&sources))
                    .with_context(|| format!("writing {}", policy.display()))?;
                self.lab_up(true)?;
            }
            Setup::Iptables => {
                for server in &self.servers {
                    let text = rules::iptables_restore(self.ipv4(server)?, &sources);
                    cmd::in_netns_with_input(
                        &names::node_netns(server.node),
                        "iptables-restore",
                        &["--noflush"],
                        &text,
                    )?;
                }
            }
            Setup::Nftables => {
                for server in &self.servers {
                    let text = rules::nft_ruleset(self.ipv4(server)?, &sources);
                    cmd::in_netns_with_input(
                        &names::node_netns(server.node),
                        "nft",
                        &["-f", "-"],
                        &text,
                    )?;
                }
            }
        }
        let expected = if setup.filters() {
            "filtered"
        } else {
            "refused"
        };
        for server in &self.servers {
            let outcome = self.probe(server, UNLISTED_PORT)?;
            if outcome != expected {
                bail!(
                    "{} with {rules} rules: a SYN to {}:{UNLISTED_PORT} was {outcome}, not \
                     {expected}",
                    setup.title(),
                    server.key
                );
            }
        }
        Ok(guard)
    }

    fn leave(&self, setup: Setup, guard: Vec<tcx::EmptyProgram>) -> anyhow::Result<()> {
        drop(guard);
        match setup {
            Setup::None | Setup::Empty => {}
            Setup::Ours => {
                let policy = self.manifests.join("policy.yaml");
                fs::remove_file(&policy)
                    .with_context(|| format!("removing {}", policy.display()))?;
                self.lab_up(false)?;
                // The agents are stopped; their pinned links keep the programs attached
                // until the pins go.
                fs::remove_dir_all(names::PIN_DIR)
                    .with_context(|| format!("removing {}", names::PIN_DIR))?;
            }
            Setup::Iptables => {
                for server in &self.servers {
                    let node = names::node_netns(server.node);
                    for args in rules::iptables_removal(self.ipv4(server)?) {
                        let mut full = vec!["netns", "exec", &node, "iptables"];
                        full.extend(args.iter().map(String::as_str));
                        cmd::run("ip", &full)?;
                    }
                }
            }
            Setup::Nftables => {
                for server in &self.servers {
                    cmd::run(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            &names::node_netns(server.node),
                            "nft",
                            "delete",
                            "table",
                            "inet",
                            rules::NFT_TABLE,
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    fn measure_route(
        &self,
        route: Route,
        durations: Durations,
    ) -> anyhow::Result<Vec<(Metric, f64)>> {
        let server = match route {
            Route::SameNode => &self.servers[0],
            Route::CrossNode => &self.servers[1],
        };
        let cpu = self.client_cpu();
        let cpu: Vec<&str> = cpu.iter().map(String::as_str).collect();
        let ms = durations.run_ms.to_string();

        let mut iperf = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.client.netns(),
            "nice".to_owned(),
            NICE[0].to_owned(),
            NICE[1].to_owned(),
            "iperf3".to_owned(),
            "--client".to_owned(),
            self.ipv4(server)?.to_string(),
            "--port".to_owned(),
            rules::PORTS.1.to_string(),
            "--time".to_owned(),
            durations.iperf_seconds.to_string(),
            "--json".to_owned(),
        ];
        if let Some(cpu) = self.cpus[0] {
            iperf.extend(["--affinity".to_owned(), cpu.to_string()]);
        }
        let iperf: Vec<&str> = iperf.iter().map(String::as_str).collect();
        let gbits = iperf_gbits(&cmd::run("ip", &iperf)?)?;

        let to = self.address(server, rules::PORTS.0)?.to_string();
        let mut latency = vec!["latency", "--to", &to, "--ms", &ms];
        latency.extend(&cpu);
        let p50_us = parse_latency(&self.client_tool(&latency)?)?;
        let mut connections = vec!["connections", "--to", &to, "--ms", &ms];
        connections.extend(&cpu);
        let per_second = parse_connections(&self.client_tool(&connections)?)?;
        Ok(vec![
            (Metric::Throughput, gbits),
            (Metric::Latency, p50_us),
            (Metric::Connections, per_second),
        ])
    }
}

fn placeholder_pod() -> LabPod {
    LabPod {
        key: PodRef {
            namespace: String::new(),
            name: String::new(),
        },
        node: 0,
        ips: Vec::new(),
        ports: Vec::new(),
        labels: BTreeMap::new(),
        host_network: false,
    }
}

/// The receiver's throughput in Gbit/s from `iperf3 --json`.
fn iperf_gbits(json: &str) -> anyhow::Result<f64> {
    let value: serde_json::Value = serde_json::from_str(json).context("reading iperf3's JSON")?;
    value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|bits| bits / 1e9)
        .with_context(|| format!("iperf3 reported no received throughput: {json}"))
}

/// The median round trip in µs from `rr <requests> <p50> <p99>`.
fn parse_latency(line: &str) -> anyhow::Result<f64> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["rr", _, p50, _] => p50.parse().with_context(|| format!("latency in {line:?}")),
        _ => bail!("the latency client printed {line:?}"),
    }
}

fn parse_connections(line: &str) -> anyhow::Result<f64> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["cps", rate] => rate
            .parse()
            .with_context(|| format!("connection rate in {line:?}")),
        _ => bail!("the connection client printed {line:?}"),
    }
}

const METRICS: [Metric; 3] = [Metric::Throughput, Metric::Latency, Metric::Connections];

impl Metric {
    fn title(self) -> &'static str {
        match self {
            Self::Throughput => "TCP throughput",
            Self::Latency => "request/response latency",
            Self::Connections => "new connections per second",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Throughput => "Gbit/s",
            Self::Latency => "µs",
            Self::Connections => "connections/s",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Self::Throughput => "lab-throughput.png",
            Self::Latency => "lab-latency.png",
            Self::Connections => "lab-connections.png",
        }
    }
}

/// The median of `setup`'s figure and the median of its per-round ratio to `against`.
fn against(
    figures: &BTreeMap<Key, Vec<f64>>,
    (metric, route, setup, rules): Key,
    against: Setup,
) -> Option<(f64, f64)> {
    let runs = figures.get(&(metric, route, setup, rules))?;
    let base = figures.get(&(metric, route, against, rules))?;
    let ratios: Vec<f64> = runs
        .iter()
        .zip(base)
        .map(|(run, base)| run / base)
        .collect();
    Some((median(runs), median(&ratios)))
}

fn sections(figures: &BTreeMap<Key, Vec<f64>>, durations: Durations) -> Vec<Section> {
    let rounds = figures.values().map(Vec::len).min().unwrap_or(0);
    METRICS
        .iter()
        .map(|&metric| {
            let mut rows = Vec::new();
            let mut series = Vec::new();
            for route in ROUTES {
                for setup in SETUPS {
                    let mut row = vec![route.title().to_owned(), setup.title().to_owned()];
                    let mut points = Vec::new();
                    for rules in RULE_COUNTS {
                        match against(figures, (metric, route, setup, rules), Setup::None) {
                            Some((value, ratio)) => {
                                row.push(format!("{value:.2} ({ratio:.2}x)"));
                                points.push((rules as f64, ratio));
                            }
                            None => row.push("-".to_owned()),
                        }
                    }
                    rows.push(row);
                    if setup != Setup::None {
                        series.push(Series {
                            name: format!("{}, {}", setup.title(), route.title()),
                            points,
                        });
                    }
                }
            }
            let mut columns = vec!["route".to_owned(), "setup".to_owned()];
            columns.extend(RULE_COUNTS.iter().map(|rules| format!("{rules} rules")));
            Section {
                title: format!("Lab: {}", metric.title()),
                setup: setup_text(metric, durations, rounds),
                tables: vec![Table {
                    caption: format!(
                        "{} in {}, median of {rounds} rounds (ratio to no filtering)",
                        metric.title(),
                        metric.unit()
                    ),
                    columns,
                    rows,
                }],
                plots: vec![Plot {
                    file: metric.file().to_owned(),
                    title: format!("{}: ratio to no filtering", metric.title()),
                    x_label: "rules".to_owned(),
                    y_label: "ratio to no filtering".to_owned(),
                    log_x: true,
                    series,
                }],
                targets: targets(figures, metric),
            }
        })
        .collect()
}

fn targets(figures: &BTreeMap<Key, Vec<f64>>, metric: Metric) -> Vec<Target> {
    let mut targets = Vec::new();
    let floor = match metric {
        Metric::Throughput => 0.95,
        Metric::Connections => 0.90,
        Metric::Latency => return targets,
    };
    for route in ROUTES {
        for rules in RULE_COUNTS {
            if let Some((value, ratio)) =
                against(figures, (metric, route, Setup::Ours, rules), Setup::None)
            {
                targets.push(Target {
                    what: format!("our enforcement, {}, {rules} rules", route.title()),
                    goal: format!(">= {:.0}% of no filtering", floor * 100.0),
                    measured: format!("{:.1}% ({value:.2} {})", ratio * 100.0, metric.unit()),
                    met: ratio >= floor,
                });
            }
        }
    }
    if metric == Metric::Connections {
        for route in ROUTES {
            for rules in RULE_COUNTS.into_iter().filter(|&rules| rules >= 100) {
                if let Some((value, ratio)) = against(
                    figures,
                    (metric, route, Setup::Ours, rules),
                    Setup::Iptables,
                ) {
                    targets.push(Target {
                        what: format!(
                            "our enforcement ahead of linear iptables, {}, {rules} rules",
                            route.title()
                        ),
                        goal: "> 1.00x iptables".to_owned(),
                        measured: format!("{ratio:.2}x ({value:.0} connections/s)"),
                        met: ratio > 1.0,
                    });
                }
            }
        }
    }
    targets
}

fn setup_text(metric: Metric, durations: Durations, rounds: usize) -> String {
    let how = match metric {
        Metric::Throughput => format!(
            "iperf3 over one TCP connection for {} s per run (its receiver's figure).",
            durations.iperf_seconds
        ),
        Metric::Latency => format!(
            "one TCP connection (TCP_NODELAY) carrying one-byte requests back to back for {} \
             ms per run, each answered by one byte; the figure is the median round trip.",
            durations.run_ms
        ),
        Metric::Connections => format!(
            "for {} ms per run, one connection after the other: connect, a one-byte request, \
             its answer, and the server closes; the figure is connections per second. Every \
             connection is a new flow, decided by each setup's rules.",
            durations.run_ms
        ),
    };
    let mut text = format!(
        "{} between two pods of the network-namespace lab (`cargo xtask lab`, IPv4): node-1 is \
         wired like the ptp CNI plugin (routes to host-side veths), node-2 like the bridge \
         plugin, and an underlay bridge links them. The client pod and one server pod are on \
         node-1 (same node: routed by node-1); another server is on node-2 (across nodes: \
         node-1, the underlay, node-2's bridge). Client processes are pinned to CPU 0 and \
         server processes to CPU 1, all at nice -20 so that other work on the machine \
         disturbs them less. Measured: {how} Each of the {rounds} rounds visits every rule \
         count, and at each every setup in turn (the order rotates from round to round), on \
         both routes; before measuring, a SYN to a port no rule allows checks that the setup \
         is in force (dropped under a filtering setup, refused otherwise). Figures are medians \
         over the rounds; ratios are medians of per-round ratios to the no-filtering figure of \
         the same round and rule count. The machine is shared with other work, so figures are \
         noisy.",
        metric.title()
    );
    if metric == Metric::Throughput {
        for setup in SETUPS {
            text.push_str("\n\n");
            text.push_str(&setup.paragraph());
        }
    } else {
        text.push_str(" The setups are described in the throughput section.");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_output_parses() {
        assert_eq!(parse_latency("rr 1200 41.50 88.00\n").unwrap(), 41.5);
        assert_eq!(parse_connections("cps 5321.7\n").unwrap(), 5321.7);
        assert!(parse_latency("cps 1").is_err());
        let json = r#"{"end": {"sum_received": {"bits_per_second": 2.5e10}}}"#;
        assert_eq!(iperf_gbits(json).unwrap(), 25.0);
        assert!(iperf_gbits(r#"{"error": "unable to connect"}"#).is_err());
    }

    #[test]
    fn ratios_are_per_round_and_targets_judge_them() {
        let mut figures = BTreeMap::new();
        for rules in RULE_COUNTS {
            for route in ROUTES {
                let metric = Metric::Connections;
                figures.insert(
                    (metric, route, Setup::None, rules),
                    vec![1000.0, 2000.0, 1000.0],
                );
                figures.insert(
                    (metric, route, Setup::Ours, rules),
                    vec![950.0, 1900.0, 900.0],
                );
                let linear = 10_000.0 / rules as f64;
                figures.insert(
                    (metric, route, Setup::Iptables, rules),
                    vec![linear, linear, linear],
                );
            }
        }
        let key = (Metric::Connections, Route::SameNode, Setup::Ours, 10);
        assert_eq!(against(&figures, key, Setup::None), Some((950.0, 0.95)));
        let targets = targets(&figures, Metric::Connections);
        assert_eq!(targets.len(), 8 + 6);
        assert!(targets[..8].iter().all(|target| target.met));
        assert_eq!(targets[0].measured, "95.0% (950.00 connections/s)");
        // iptables' rate falls with its rule count: ours is ahead from 100 rules on.
        let ahead: Vec<bool> = targets[8..].iter().map(|target| target.met).collect();
        assert!(ahead.iter().all(|met| *met));
        let sections = sections(
            &figures,
            Durations {
                rounds: 3,
                iperf_seconds: 1,
                run_ms: 500,
            },
        );
        let connections = &sections[2];
        assert_eq!(
            connections.tables[0].rows[1][2], "-",
            "no empty-program figures"
        );
        assert_eq!(connections.tables[0].rows[2][2], "950.00 (0.95x)");
        assert!(sections[0].setup.contains("**iptables, linear**"));
        for section in &sections {
            assert!(!section.setup.contains("  "), "{}", section.setup);
        }
    }
}
