//! `policy-agent`: the command line.

use std::{
    io::{self, IsTerminal as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use policy_agent::{
    agent::{self, DEFAULT_INTERFACE_PREFIX, NewEndpointPolicy, NewEndpoints, RunConfig, Source},
    cli::{self, flows::FlowsOptions},
    datapath::{BPFFS_ROOT, DEFAULT_PIN_DIR, ensure_bpffs},
    explain::{self, ExplainOptions, OutputFormat, Via},
    k8s, manifest,
    policy::model::Protocol,
    printable,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(about = "Kubernetes NetworkPolicy enforcement with TC eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Who can reach whom under a set of manifests, decided by the compiled datapath state.
    Explain(ExplainArgs),
    /// Run the node agent: enforce the policies of SOURCE on this node's pods until stopped.
    Run(RunArgs),
    /// The kernel's drops (and new allowed flows where enabled) as the agent logged them.
    Flows(FlowsArgs),
    /// The endpoints, map usage and failures the agent last published.
    Status(StatusArgs),
    /// Print the generation (a hex hash of the manifests) of a manifest directory.
    Generation {
        /// The manifest directory.
        dir: PathBuf,
    },
    /// Mount bpffs at /sys/fs/bpf unless it is mounted there, and exit (the DaemonSet's init
    /// container, the one privileged step, runs this).
    MountBpffs,
    /// Print the CustomResourceDefinition of ClusterNetworkPolicy that the agent's types
    /// generate (what deploy/ ships), as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where the cluster's objects come from: `kubernetes` (the API server: in-cluster config,
    /// else the kubeconfig) or `files:DIR` (a directory of manifests, watched).
    #[arg(long, default_value = "kubernetes")]
    source: Source,
    /// The kubeconfig of the `kubernetes` source (default: in-cluster config, else KUBECONFIG,
    /// else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name, as in the Pods' `spec.nodeName`.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The bpffs directory for the maps, programs and links (mounted if bpffs is not).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Where the agent publishes its applied generation, status, last error and flow log.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// What a new pod's traffic meets before its programs are set up: `allow` (unfiltered until
    /// programmed) or `deny` (dropped from the moment its veth appears until programmed).
    #[arg(long, default_value_t = NewEndpoints::Allow)]
    new_endpoints: NewEndpoints,
    /// With `--new-endpoints deny`: the name prefix of pod veths (repeatable). Give one that
    /// no uplink or other veth of the node has.
    #[arg(long = "endpoint-interface-prefix", default_value = DEFAULT_INTERFACE_PREFIX)]
    endpoint_interface_prefixes: Vec<String>,
    /// Serve Prometheus metrics (/metrics) and probes (/healthz, /readyz) on this address,
    /// e.g. 0.0.0.0:9402. Off when absent.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Also log the first packet of every allowed new flow (with the rule that allowed it) in
    /// the flow log, not only drops.
    #[arg(long)]
    log_allowed: bool,
    /// A namespace whose pods may send from addresses that are not theirs (a VPN gateway, a
    /// pod that routes): their packets skip source validation. Repeat for more namespaces.
    #[arg(long = "any-source-namespace", value_name = "NAMESPACE")]
    any_source_namespaces: Vec<String>,
    /// How often to reconcile without being told of a change (`10s`, `500ms`): the pass that
    /// repairs map entries changed behind the agent's back.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    resync_interval: Duration,
}

/// A positive duration such as `10s` or `500ms`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration: jiff::SignedDuration = text.parse().map_err(|error| format!("{error}"))?;
    Duration::try_from(duration)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("`{text}` is not a positive duration"))
}

const DEFAULT_STATE_DIR: &str = "/run/netpol";

#[derive(clap::Args)]
struct FlowsArgs {
    /// The agent's state directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Keep printing flows as the agent logs them.
    #[arg(short = 'f', long)]
    follow: bool,
    /// One readable line per flow, or the JSON lines as logged.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The agent's state directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Readable tables, or the JSON the agent published.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// Manifest files or directories (multi-document YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// The server's port (1-65535).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The connection's protocol.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
    protocol: ProtocolArg,
    /// How the client addresses the server: its pod IP, or a Service's cluster IP that translates
    /// to it, where a pod reaching itself is decided by ClusterNetworkPolicy.
    #[arg(long, value_enum, default_value_t = ViaArg::Pod)]
    via: ViaArg,
    /// The client, as NAMESPACE/POD (with --to).
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// The server, as NAMESPACE/POD (with --from).
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// A readable grid (or verdict with reasons), or JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    #[value(name = "TCP")]
    Tcp,
    #[value(name = "UDP")]
    Udp,
    #[value(name = "SCTP")]
    Sctp,
}

#[derive(Clone, Copy, ValueEnum)]
enum ViaArg {
    Pod,
    Service,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Table,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", printable(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Explain(args) => {
            let options = ExplainOptions {
                paths: args.paths,
                port: args.port,
                protocol: match args.protocol {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                    ProtocolArg::Sctp => Protocol::Sctp,
                },
                via: match args.via {
                    ViaArg::Pod => Via::Pod,
                    ViaArg::Service => Via::Service,
                },
                from: args.from,
                to: args.to,
                output: match args.output {
                    OutputArg::Table => OutputFormat::Table,
                    OutputArg::Json => OutputFormat::Json,
                },
            };
            explain::run(&options, &mut io::stdout().lock(), &mut io::stderr().lock())?;
        }
        Command::Run(args) => {
            let source = match (args.source, args.kubeconfig) {
                (Source::Kubernetes { .. }, kubeconfig) => Source::Kubernetes { kubeconfig },
                (Source::Files(_), Some(_)) => {
                    anyhow::bail!("--kubeconfig only applies to --source kubernetes")
                }
                (files, None) => files,
            };
            let config = RunConfig {
                source,
                node_name: args.node_name,
                pin_dir: args.pin_dir,
                state_dir: args.state_dir,
                new_endpoints: NewEndpointPolicy {
                    mode: args.new_endpoints,
                    interface_prefixes: args.endpoint_interface_prefixes,
                },
                metrics_addr: args.metrics_addr,
                log_allowed: args.log_allowed,
                any_source_namespaces: args.any_source_namespaces.into_iter().collect(),
                resync_interval: args.resync_interval,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(agent::run(config))?;
        }
        Command::Flows(args) => {
            let options = FlowsOptions {
                state_dir: args.state_dir,
                follow: args.follow,
                json: matches!(args.output, OutputArg::Json),
            };
            cli::flows::run(&options, &mut io::stdout().lock())?;
        }
        Command::Status(args) => {
            let status = agent::status::read(&args.state_dir)?;
            match args.output {
                OutputArg::Table => print!("{}", cli::status::render(&status)),
                OutputArg::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
        }
        Command::Generation { dir } => println!("{}", manifest::generation(&dir)?),
        Command::MountBpffs => ensure_bpffs(Path::new(BPFFS_ROOT))?,
        Command::Crd => print!("{}", k8s::resource::crd_yaml()?),
    }
    Ok(())
}
