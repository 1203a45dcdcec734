//! The bench's node: one network namespace with the real agent, its endpoints wired like the ptp
//! CNI plugin (a host-side veth per pod and a /32 route to the pod through it), and the agent's
//! memory read back from the kernel.
//!
//! Endpoints come in two kinds. A *sink* endpoint only needs an interface the agent can find and
//! attach its programs to: its pod side sits, with all other sink ends, in one shared namespace,
//! holds the pod's address and carries no traffic. A *probe pod* is a real pod namespace with its address and default
//! route, so traffic between probe pods crosses the node and both their programs.
//!
//! Everything is removed when the [`Bed`] is dropped, also when a measurement fails.

use std::{
    fs::{self, File},
    net::Ipv4Addr,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, LpmTrie, Map, MapData};
use jiff::Timestamp;
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use policy_common::{
    maps::{
        CtKey, CtValue, EndpointInfo, FragKey, FragValue, HostAddrKey, PeerClass, PolicyKey,
        PolicyValue,
    },
    names::{
        ALL_MAPS, CONNTRACK_MAP, ENDPOINTS_MAP, FRAGMENTS_MAP, HOST_ADDRS_MAP, PEERS_V4_MAP,
        PEERS_V6_MAP, POLICY_MAP, SERVICES_MAP,
    },
};
use policy_lab::{
    cmd as run,
    netns::Netns,
    telemetry::{self, Status, millis_between},
};
use policy_testbed::wire::{self, LINK_LOCAL_GATEWAYS, PodLink, Wiring};
use serde::Serialize;

/// The bench's namespaces start with this; the lab's start with `np-node-` and `np-underlay`.
const NETNS_PREFIX: &str = "np-bench-";
/// Where the bench keeps the agent's pins (a directory per run).
const PIN_ROOT: &str = "/sys/fs/bpf/netpol-bench";
/// Where the bench keeps the agent's state directories and logs.
const RUN_ROOT: &str = "/run/netpol-bench";
/// The longest a started agent may take to publish its first generation.
const FIRST_GENERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest from the agent publishing a generation to its status following.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// One node with its endpoints; at most one agent runs on it at a time.
pub struct Bed {
    name: String,
    node: Netns,
    sink: Netns,
    probe_pods: Vec<Netns>,
    endpoints: usize,
    agent: Option<Child>,
    run_dir: PathBuf,
    pin_dir: PathBuf,
}

impl Bed {
    /// Creates the node namespace `np-bench-<name>` and its sink namespace.
    pub fn new(name: &str) -> Result<Self> {
        let run_dir = Path::new(RUN_ROOT).join(name);
        let pin_dir = Path::new(PIN_ROOT).join(name);
        remove_dir(&run_dir)?;
        remove_dir(&pin_dir)?;
        let node = Netns::create(format!("{NETNS_PREFIX}{name}"))?;
        let sink = Netns::create(format!("{NETNS_PREFIX}{name}-sink"))?;
        node.sysctls(&[("net.ipv4.ip_forward", "1")])?;
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        Ok(Self {
            name: name.to_owned(),
            node,
            sink,
            probe_pods: Vec::new(),
            endpoints: 0,
            agent: None,
            run_dir,
            pin_dir,
        })
    }

    /// Wires a sink endpoint for each address: the agent finds an interface for each and
    /// attaches its programs to it.
    pub fn add_sink_endpoints(&mut self, addresses: &[Ipv4Addr]) -> Result<()> {
        let first = self.endpoints;
        let mut in_node = Vec::new();
        let mut in_sink = Vec::new();
        for (i, address) in addresses.iter().enumerate() {
            let (host, peer) = veth_names(first + i);
            in_node.push(format!(
                "link add {host} type veth peer name {peer} netns {}",
                self.sink.name()
            ));
            // The agent binds a pod to the veth whose other end holds the pod's address.
            in_sink.push(format!("addr add {address}/32 dev {peer}"));
            in_sink.push(format!("link set {peer} up"));
            in_node.push(format!("link set {host} up"));
            in_node.push(format!("route add {address}/32 dev {host}"));
        }
        // Links first (they create the sink ends), then the sink ends up, then routes: a route
        // through a veth needs the veth up.
        let (links, rest): (Vec<String>, Vec<String>) = in_node
            .into_iter()
            .partition(|command| command.starts_with("link add"));
        run::ip_batch(self.node.name(), &links)?;
        run::ip_batch(self.sink.name(), &in_sink)?;
        run::ip_batch(self.node.name(), &rest)?;
        self.endpoints += addresses.len();
        Ok(())
    }

    /// Wires a real pod namespace `np-bench-<name>-<pod>` with `address`, and returns its name.
    pub fn add_probe_pod(&mut self, pod: &str, address: Ipv4Addr) -> Result<String> {
        let pod = Netns::create(format!("{NETNS_PREFIX}{}-{pod}", self.name))?;
        let pod_netns = pod.name().to_owned();
        self.probe_pods.push(pod);
        let (host, _) = veth_names(self.endpoints);
        self.endpoints += 1;
        let link = PodLink {
            node: self.node.name(),
            pod: &pod_netns,
            host_if: &host,
            pod_if: "eth0",
            mac: None,
            addresses: &[address.into()],
        };
        wire::attach(&link, &Wiring::Ptp(LINK_LOCAL_GATEWAYS))?;
        Ok(pod_netns)
    }

    /// Starts `agent run` on the node against `manifests`, with fresh pins and state (so the
    /// agent programs everything, adopting nothing), and returns its pid.
    pub fn start_agent(&mut self, agent: &Path, manifests: &Path, node: &str) -> Result<u32> {
        self.stop_agent()?;
        remove_dir(&self.pin_dir)?;
        let state_dir = self.state_dir();
        remove_dir(&state_dir)?;
        let log = self.run_dir.join("agent.log");
        let output = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let errors = output
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        let target = File::open(Path::new("/run/netns").join(self.node.name()))
            .with_context(|| format!("opening network namespace {}", self.node.name()))?;
        let mut command = Command::new(agent);
        command
            .arg("run")
            .arg("--source")
            .arg(format!("files:{}", manifests.display()))
            .args(["--node-name", node])
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        // SAFETY: between fork and exec the closure only makes the setns system call, which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || setns(&target, CloneFlags::CLONE_NEWNET).map_err(Into::into));
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", run::describe(&command)))?;
        let pid = child.id();
        self.agent = Some(child);
        Ok(pid)
    }

    /// Waits until the agent has published `generation` as applied; fails when it exits first.
    pub fn wait_generation(&mut self, generation: &str, timeout: Duration) -> Result<()> {
        let file = self.state_dir().join("generation");
        let deadline = Instant::now() + timeout;
        loop {
            if fs::read_to_string(&file).is_ok_and(|applied| applied.trim() == generation) {
                return Ok(());
            }
            if let Some(agent) = &mut self.agent
                && let Some(status) = agent.try_wait().context("checking on the agent")?
            {
                bail!("the agent exited ({status}); see {}", self.log().display());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not apply generation {generation} within {timeout:?}; see {}",
                    self.log().display()
                );
            }
            thread::sleep(Duration::from_micros(500));
        }
    }

    /// Starts the agent and measures its start: the time to its first published generation,
    /// its peak resident memory and the maps it programmed.
    pub fn measure_start(
        &mut self,
        agent: &Path,
        manifests: &Path,
        node: &str,
        generation: &str,
    ) -> Result<Start> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let pid = self.start_agent(agent, manifests, node)?;
        self.wait_generation(generation, FIRST_GENERATION_TIMEOUT)?;
        let elapsed = started.elapsed();
        let peak_rss_bytes = peak_rss(pid)?;
        let maps = self.maps()?;
        let published = self.telemetry(generation)?;
        self.stop_agent()?;
        Ok(Start {
            first_generation_ms: elapsed.as_secs_f64() * 1e3,
            phases: Phases::from_telemetry(&published, started_at),
            peak_rss_bytes,
            maps,
        })
    }

    /// Every map the agent pinned: its kernel-reported memory and, for hash maps and LPM
    /// tries, the entries in use.
    pub fn maps(&self) -> Result<Vec<MapMemory>> {
        ALL_MAPS
            .iter()
            .map(|name| map_memory(&self.pin_dir.join("maps").join(name), name))
            .collect()
    }

    /// Stops the agent (SIGTERM, SIGKILL after two seconds) and reaps it.
    pub fn stop_agent(&mut self) -> Result<()> {
        let Some(mut agent) = self.agent.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(agent.id()).context("a pid beyond i32")?);
        // An agent that already exited is what we want.
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while agent.try_wait().context("waiting for the agent")?.is_none() {
            if Instant::now() > deadline {
                let _ = agent.kill();
                agent.wait().context("waiting for the agent")?;
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn state_dir(&self) -> PathBuf {
        self.run_dir.join("state")
    }

    /// Milliseconds from `written_at` to the end of the agent's last reconcile that wrote the
    /// maps (and attached the programs), once it has published `generation`; `None` when that
    /// reconcile came before `written_at`.
    pub fn updated_after(&self, generation: &str, written_at: SystemTime) -> Result<Option<f64>> {
        let published = self.telemetry(generation)?;
        Ok(updated_after(&published, written_at))
    }

    /// The agent's telemetry once its status shows `generation` applied (the status follows
    /// the generation file).
    fn telemetry(&self, generation: &str) -> Result<Status> {
        telemetry::wait(
            &self.state_dir(),
            STATUS_TIMEOUT,
            &format!("generation {generation}"),
            |published| published.applied_generation.as_deref() == Some(generation),
        )
    }

    /// The agent's log.
    pub fn log(&self) -> PathBuf {
        self.run_dir.join("agent.log")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Teardown is best effort: a failure here must not hide the measurement's own error.
        // The namespaces go with their guards, after the agent inside one has stopped.
        let _ = self.stop_agent();
        let _ = remove_dir(&self.pin_dir);
    }
}

/// What starting the agent took.
#[derive(Clone, Debug, Serialize)]
pub struct Start {
    pub first_generation_ms: f64,
    /// Where the time went, from the agent's status; `None` when it lacks the first reconcile.
    pub phases: Option<Phases>,
    pub peak_rss_bytes: u64,
    pub maps: Vec<MapMemory>,
}

/// The agent's start in three phases, in milliseconds, from its `status.json`: loading the
/// eBPF object (the verifier) until the datapath was open, resolving and writing the maps until
/// its first reconcile had written them, and attaching the programs until that reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Phases {
    pub load_ms: f64,
    pub resolve_and_write_ms: f64,
    pub attach_ms: f64,
}

impl Phases {
    fn from_telemetry(published: &Status, started_at: SystemTime) -> Option<Phases> {
        let open = published.start.as_ref()?.datapath_open;
        let first = published.first_reconcile.as_ref()?;
        Some(Phases {
            load_ms: millis_between(timestamp(started_at)?, open),
            resolve_and_write_ms: millis_between(open, first.written),
            attach_ms: millis_between(first.written, first.finished),
        })
    }
}

/// See [`Bed::updated_after`].
fn updated_after(published: &Status, written_at: SystemTime) -> Option<f64> {
    let updated = published.last_update.as_ref()?.finished;
    let millis = millis_between(timestamp(written_at)?, updated);
    (millis >= 0.0).then_some(millis)
}

fn timestamp(time: SystemTime) -> Option<Timestamp> {
    Timestamp::try_from(time).ok()
}

/// One pinned map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    /// What the kernel charges for the map (`memlock` in its fdinfo): since Linux 6.4 the
    /// map's actual usage, so it grows with the entries of maps that are not preallocated.
    pub memlock_bytes: u64,
    /// Entries in use, for hash maps and LPM tries; `None` for arrays and the ring buffer,
    /// whose size is fixed.
    pub entries: Option<u64>,
}

/// The host-side and pod-side names of endpoint `i`'s veth.
fn veth_names(i: usize) -> (String, String) {
    (format!("bh{i}"), format!("bp{i}"))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The process's peak resident set (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    kilobytes_field(&status, "VmHWM:")
        .map(|kib| kib * 1024)
        .with_context(|| format!("{path} has no VmHWM"))
}

/// The value of a `Name:   N kB` line.
fn kilobytes_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `memlock:` line of an fdinfo file.
fn memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()
}

fn map_memory(pin: &Path, name: &str) -> Result<MapMemory> {
    let data = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let info = data
        .info()
        .with_context(|| format!("reading the info of {name}"))?;
    let fdinfo_path = format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd());
    let fdinfo =
        fs::read_to_string(&fdinfo_path).with_context(|| format!("reading {fdinfo_path}"))?;
    let memlock_bytes =
        memlock(&fdinfo).with_context(|| format!("{fdinfo_path} has no memlock line"))?;
    let max_entries = info.max_entries();
    let map = Map::from_map_data(data).with_context(|| format!("opening {name}"))?;
    let entries = count_entries(map, name)?;
    Ok(MapMemory {
        name: name.to_owned(),
        max_entries,
        memlock_bytes,
        entries,
    })
}

/// The entries in use of the maps whose size follows their content.
fn count_entries(map: Map, name: &str) -> Result<Option<u64>> {
    fn hash<K: aya::Pod, V: aya::Pod>(map: Map, name: &str) -> Result<u64> {
        let map = HashMap::<MapData, K, V>::try_from(map)
            .with_context(|| format!("{name} is not the hash map this build expects"))?;
        count(map.keys(), name)
    }
    fn trie<K: aya::Pod>(map: Map, name: &str) -> Result<u64> {
        let map = LpmTrie::<MapData, K, PeerClass>::try_from(map)
            .with_context(|| format!("{name} is not the LPM trie this build expects"))?;
        count(map.keys(), name)
    }
    fn count<K>(
        keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
        name: &str,
    ) -> Result<u64> {
        let mut entries = 0;
        for key in keys {
            key.with_context(|| format!("listing the keys of {name}"))?;
            entries += 1;
        }
        Ok(entries)
    }
    Ok(Some(match name {
        ENDPOINTS_MAP => hash::<u32, EndpointInfo>(map, name)?,
        PEERS_V4_MAP => trie::<[u8; 4]>(map, name)?,
        PEERS_V6_MAP => trie::<[u8; 16]>(map, name)?,
        POLICY_MAP => hash::<PolicyKey, PolicyValue>(map, name)?,
        CONNTRACK_MAP => hash::<CtKey, CtValue>(map, name)?,
        FRAGMENTS_MAP => hash::<FragKey, FragValue>(map, name)?,
        HOST_ADDRS_MAP | SERVICES_MAP => hash::<HostAddrKey, u8>(map, name)?,
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn reads_the_peak_resident_set_and_memlock() {
        let status =
            "Name:\tpolicy-agent\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(kilobytes_field(status, "VmHWM:"), Some(51234));
        assert_eq!(kilobytes_field(status, "VmSwap:"), None);
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t11\n\
                      key_size:\t8\nvalue_size:\t4\nmax_entries:\t262144\nmap_flags:\t0x1\n\
                      map_extra:\t0x0\nmemlock:\t4194304\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(memlock(fdinfo), Some(4_194_304));
        assert_eq!(memlock("pos:\t0\n"), None);
    }

    /// A reconcile report, as `"field": value` pairs of the timestamps and the writes.
    fn reconcile(times_and_writes: &str) -> String {
        format!(
            r#"{{"generation": "g", "started": "2026-11-26T07:28:00Z", {times_and_writes},
                "endpoints": 0, "waiting": 0, "held": 0, "attached": 0, "detached": 0,
                "repaired": 0}}"#
        )
    }

    fn published(last_update: &str) -> Status {
        let first = reconcile(
            r#""written": "2026-11-26T07:28:00.809913Z",
               "finished": "2026-11-26T07:28:01.499672Z", "writes": 52847"#,
        );
        serde_json::from_str(&format!(
            r#"{{"node": "node-1", "source": "files:/m", "time": "2026-11-26T07:30:00Z",
                "applied_generation": "g", "ready": true, "endpoints": [], "maps": [],
                "failures": [], "last_error": null,
                "start": {{"time": "2026-11-26T07:28:00Z",
                          "datapath_open": "2026-11-26T07:28:00.659020Z",
                          "adopted_programs": [],
                          "installed_programs": ["from_pod", "to_pod", "svc_egress"],
                          "replaced_maps": [], "held_closed": []}},
                "first_reconcile": {first},
                "last_update": {last_update}}}"#
        ))
        .unwrap()
    }

    fn at(seconds: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(1_795_678_080.0 + seconds)
    }

    #[test]
    fn phases_come_from_the_published_timestamps() {
        let phases = Phases::from_telemetry(&published("null"), at(-0.5)).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 0.01;
        assert!(close(phases.load_ms, 659.020 + 500.0), "{phases:?}");
        assert!(close(phases.resolve_and_write_ms, 150.893), "{phases:?}");
        assert!(close(phases.attach_ms, 689.759), "{phases:?}");
        let mut unfinished = published("null");
        unfinished.first_reconcile = None;
        assert_eq!(Phases::from_telemetry(&unfinished, at(0.0)), None);
    }

    #[test]
    fn the_agent_share_is_the_last_update_after_the_write() {
        let updated = published(&reconcile(
            r#""written": "2026-11-26T07:28:02.2Z", "finished": "2026-11-26T07:28:02.25Z",
               "writes": 5"#,
        ));
        let share = updated_after(&updated, at(2.2)).unwrap();
        assert!((share - 50.0).abs() < 0.01, "{share}");
        assert_eq!(
            updated_after(&updated, at(3.0)),
            None,
            "no update after the write"
        );
        assert_eq!(updated_after(&published("null"), at(0.0)), None);
    }

    #[test]
    fn this_process_reports_its_own_peak() {
        let peak = peak_rss(std::process::id()).unwrap();
        assert!(peak > 0);
    }

    #[test]
    fn veth_names_fit_the_kernel_limit() {
        let (host, peer) = veth_names(99_999);
        assert!(host.len() <= 15 && peer.len() <= 15);
        assert_ne!(veth_names(1), veth_names(2));
    }
}
