//! The datapath adapter: loads the embedded eBPF object, pins its maps, programs and links under
//! one bpffs directory, attaches the programs to pod interfaces through TCX, keeps the maps in
//! sync with the desired [`NodeState`], and reads counters and flow events back.
//!
//! # Pin layout
//! ```text
//! <pin_dir>/maps/<MAP NAME>          every map of policy_common::names::ALL_MAPS
//! <pin_dir>/programs/<program>       from_pod, to_pod, svc_egress
//! <pin_dir>/links/<ifindex>-<program> one TCX link per interface and hook
//! ```
//! Pod interfaces get `from_pod`, `to_pod` and, first on TC egress, `svc_egress`
//! ([`Datapath::attach`]); the node's other interfaces (its uplinks) get `svc_egress` alone
//! ([`Datapath::attach_uplink`]).
//!
//! # Services
//! The maps hold every Service's ClusterIPs ([`Datapath::set_service_addrs`]) and, besides the
//! endpoint map keyed by interface, an array of the same endpoints keyed by endpoint id, which
//! [`Datapath::apply`] and [`Datapath::sync`] keep in step with it. Together they let the
//! programs decide a pod's egress to a ClusterIP after kube-proxy's DNAT: on the backend's
//! `to_pod` when the backend is local, on `svc_egress` of the uplink when it is not.
//! Links are pinned, so the kernel keeps enforcing while the agent is down: dropping a
//! [`Datapath`] (or the process dying) closes descriptors but detaches nothing.
//!
//! # Adoption and upgrade
//! [`Datapath::open`] reuses what is pinned:
//! - Map pins whose names this build does not define (an older layout version) are removed. A
//!   pin with a current name but a different type, key or value size, capacity or flags is
//!   removed and created anew with a warning; its old contents are never read.
//! - The programs of the embedded object are always loaded. When a pinned program has the same
//!   instruction tag and uses the same pinned maps, the pinned one is kept (same program id) and
//!   the fresh copy is dropped. Otherwise (an upgrade, or a map was replaced) every pinned link
//!   of that hook is switched to the new program with `BPF_LINK_UPDATE`, which swaps the program
//!   of a TCX link atomically: every packet sees either the old program or the new one, never
//!   none. Only then is the program pin replaced.
//! - Link pins whose interface is gone (the kernel leaves such TCX links defunct) are removed.
//!
//! TCX needs Linux 6.6; there is no clsact fallback, and [`Datapath::attach`] fails on older
//! kernels.
//!
//! # Map updates and failures
//! [`Datapath::apply`] writes a [`Delta`] in its documented order. A failed write never leaves an
//! endpoint more open than its policy: when a policy entry of an endpoint cannot be written or
//! removed, that endpoint is fenced (its entry gets `ENDPOINT_NOT_READY`, which drops all its
//! traffic) until a later update succeeds; when a peer prefix cannot be written or removed, the
//! class of some addresses is wrong for every endpoint, so every isolated endpoint is fenced.
//! Writing the endpoint entry itself can fail too (the endpoint map is full); then the error
//! names the pod and the caller must not attach its interface. [`Datapath::sync`] diffs the
//! desired state against what the maps really hold, so it heals after any failure.
//!
//! Call order for a new pod: `apply` (or `sync`) with its endpoint, then `attach`.
//!
//! # Held interfaces
//! [`Datapath::hold`] gives an interface whose pod is not known yet the pod programs and an entry
//! that drops all its traffic (reason `NotReady`); programming the pod's endpoint replaces it,
//! [`Datapath::release`] removes it when the interface is no candidate any more.

mod bpffs;
mod encode;
mod error;
mod hold;
mod links;
mod record;
mod sync;
mod telemetry;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, MapInfo, PerCpuArray, RingBuf},
    programs::{ProgramInfo, SchedClassifier, TcAttachType},
};
use policy_common::{
    maps::{Counter, EndpointInfo, HostAddrKey, PeerClass, PolicyKey, PolicyValue},
    names::{
        ALL_MAPS, COUNTERS_MAP, ENDPOINT_IDS_MAP, ENDPOINTS_MAP, EVENTS_MAP, FROM_POD_PROG,
        HOST_ADDRS_MAP, PEERS_V4_MAP, PEERS_V6_MAP, POLICY_MAP, SERVICES_MAP, SVC_EGRESS_PROG,
        TO_POD_PROG,
    },
};
use tracing::{info, warn};

use self::{bpffs::PinLayout, record::Record};
pub use self::{
    bpffs::{BPFFS_ROOT, ensure_bpffs},
    error::{ApplyError, DatapathError, UpdateError},
    hold::{HELD, is_held},
    sync::{ApplyStats, EndpointDifference},
    telemetry::{AsyncEventReader, CounterReader, CounterReading, EventError, EventReader, Flow},
};
#[cfg(doc)]
use crate::policy::state::{Delta, NodeState};

/// Where one node's agent pins its objects by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netpol";
/// Where the agent keeps its record of what it programmed by default.
pub const DEFAULT_STATE_FILE: &str = "/run/netpol/datapath.json";

/// Where a datapath keeps its pins and its record. The lab runs one agent per node, each with
/// its own pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    pub pin_dir: PathBuf,
    pub state_file: PathBuf,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            pin_dir: DEFAULT_PIN_DIR.into(),
            state_file: DEFAULT_STATE_FILE.into(),
        }
    }
}

/// A TC hook the programs attach to: two on a pod's host-side interface, one on an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// TC ingress of the host veth: what the pod sends.
    FromPod,
    /// TC egress of the host veth: what the pod receives.
    ToPod,
    /// TC egress of an uplink or of a pod's host veth (before `to_pod`): deferred egress of pod
    /// packets to a ClusterIP.
    SvcEgress,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::FromPod, Hook::ToPod, Hook::SvcEgress];
    /// The hooks of a pod's host-side interface: `svc_egress` runs first on its TC egress, so a
    /// pending Service egress is decided before the pod's own ingress.
    pub const POD: [Hook; 3] = [Hook::FromPod, Hook::SvcEgress, Hook::ToPod];

    pub const fn program_name(self) -> &'static str {
        match self {
            Hook::FromPod => FROM_POD_PROG,
            Hook::ToPod => TO_POD_PROG,
            Hook::SvcEgress => SVC_EGRESS_PROG,
        }
    }

    const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromPod => TcAttachType::Ingress,
            Hook::ToPod | Hook::SvcEgress => TcAttachType::Egress,
        }
    }

    const fn index(self) -> usize {
        match self {
            Hook::FromPod => 0,
            Hook::ToPod => 1,
            Hook::SvcEgress => 2,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program_name())
    }
}

/// What [`Datapath::open`] found pinned and what it did with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Map pins of names this build does not define, removed.
    pub removed_maps: Vec<String>,
    /// Map pins of a current name but another layout, replaced by new empty maps.
    pub replaced_maps: Vec<String>,
    /// Pinned programs kept as they were.
    pub adopted_programs: Vec<Hook>,
    /// Programs newly pinned (first start, or replacing a different pinned program).
    pub installed_programs: Vec<Hook>,
    /// Pinned links kept (`(ifindex, hook)`).
    pub adopted_links: Vec<(u32, Hook)>,
    /// Link pins removed because their interface is gone.
    pub removed_links: Vec<(u32, Hook)>,
}

/// The kernel ids of everything pinned, to tell adoption (same ids) from re-creation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedIds {
    pub maps: BTreeMap<String, u32>,
    pub programs: BTreeMap<Hook, u32>,
    pub links: BTreeMap<(u32, Hook), u32>,
}

struct Maps {
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    peers_v4: LpmTrie<MapData, [u8; 4], PeerClass>,
    peers_v6: LpmTrie<MapData, [u8; 16], PeerClass>,
    policy: HashMap<MapData, PolicyKey, PolicyValue>,
    host_addrs: HashMap<MapData, HostAddrKey, u8>,
    services: HashMap<MapData, HostAddrKey, u8>,
    endpoint_ids: Array<MapData, EndpointInfo>,
    counters: PerCpuArray<MapData, Counter>,
    events: Option<RingBuf<MapData>>,
}

/// The loaded and pinned datapath of one node.
pub struct Datapath {
    config: DatapathConfig,
    layout: PinLayout,
    maps: Maps,
    /// The pinned programs, by [`Hook::index`].
    programs: [SchedClassifier; 3],
    program_ids: [u32; 3],
    record: Record,
    report: OpenReport,
}

impl Datapath {
    /// Opens the datapath pinned under `config.pin_dir`, creating what is missing and adopting
    /// what is there (see the module documentation).
    pub fn open(config: DatapathConfig) -> Result<Datapath, DatapathError> {
        Self::open_object(config, crate::EBPF_OBJECT)
    }

    /// [`Datapath::open`] with another build of the eBPF object, as an upgrade brings.
    pub fn open_object(config: DatapathConfig, object: &[u8]) -> Result<Datapath, DatapathError> {
        let layout = PinLayout::new(&config.pin_dir);
        bpffs::ensure_bpffs(&layout.root)?;
        layout.create()?;
        let mut report = OpenReport {
            removed_maps: bpffs::remove_unknown_map_pins(&layout.maps)?,
            ..OpenReport::default()
        };
        let mut ebpf = load_object(&layout, object, &mut report.replaced_maps)?;
        let maps = take_maps(&mut ebpf)?;
        let pinned_map_ids = pinned_map_ids(&layout)?;

        let (adopted_links, removed_links) = links::prune_defunct(&layout)?;
        report.adopted_links = adopted_links;
        report.removed_links = removed_links;

        let from_pod = install_program(
            &mut ebpf,
            &layout,
            Hook::FromPod,
            &pinned_map_ids,
            &mut report,
        )?;
        let to_pod = install_program(
            &mut ebpf,
            &layout,
            Hook::ToPod,
            &pinned_map_ids,
            &mut report,
        )?;
        let svc_egress = install_program(
            &mut ebpf,
            &layout,
            Hook::SvcEgress,
            &pinned_map_ids,
            &mut report,
        )?;
        let program_ids = [
            program_id(&from_pod, Hook::FromPod)?,
            program_id(&to_pod, Hook::ToPod)?,
            program_id(&svc_egress, Hook::SvcEgress)?,
        ];
        let record = Record::load(&config.state_file)?;
        info!(
            pin_dir = %layout.root.display(),
            replaced_maps = ?report.replaced_maps,
            adopted_programs = ?report.adopted_programs,
            installed_programs = ?report.installed_programs,
            adopted_links = report.adopted_links.len(),
            removed_links = report.removed_links.len(),
            endpoints = record.endpoints.len(),
            "datapath open"
        );
        Ok(Datapath {
            config,
            layout,
            maps,
            programs: [from_pod, to_pod, svc_egress],
            program_ids,
            record,
            report,
        })
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    /// What [`Datapath::open`] adopted, replaced and removed.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The ids of the pinned maps, programs and links.
    pub fn pinned_ids(&self) -> Result<PinnedIds, DatapathError> {
        let mut ids = PinnedIds {
            maps: pinned_map_ids(&self.layout)?,
            ..PinnedIds::default()
        };
        for hook in Hook::ALL {
            ids.programs.insert(hook, self.program_ids[hook.index()]);
        }
        for (ifindex, hook, path) in links::pinned_links(&self.layout)? {
            let info = links::read_link(&path)?;
            ids.links.insert((ifindex, hook), info.link_id);
        }
        Ok(ids)
    }
}

/// Loads the object with its maps pinned by name under `maps/`, replacing each pinned map that
/// aya finds incompatible with the object's definition.
fn load_object(
    layout: &PinLayout,
    object: &[u8],
    replaced: &mut Vec<String>,
) -> Result<Ebpf, DatapathError> {
    loop {
        let error = match EbpfLoader::new()
            .default_map_pin_directory(&layout.maps)
            .load(object)
        {
            Ok(ebpf) => return Ok(ebpf),
            Err(error) => error,
        };
        if let EbpfError::MapError(MapError::IncompatiblePinnedMap {
            name,
            property,
            expected,
            actual,
        }) = &error
            && ALL_MAPS.contains(&name.as_str())
            && !replaced.contains(name)
        {
            warn!(
                map = %name,
                property,
                expected,
                actual,
                "pinned map has another layout than this build; replacing it with an empty one"
            );
            bpffs::remove_pin(&layout.maps.join(name))?;
            replaced.push(name.clone());
            continue;
        }
        return Err(DatapathError::Load {
            pin_dir: layout.root.clone(),
            source: Box::new(error),
        });
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name)
        .ok_or(DatapathError::MissingMap { name })
}

fn take_maps(ebpf: &mut Ebpf) -> Result<Maps, DatapathError> {
    macro_rules! typed {
        ($name:expr) => {
            take_map(ebpf, $name)?
                .try_into()
                .map_err(|source| DatapathError::MapType {
                    name: $name,
                    source,
                })?
        };
    }
    Ok(Maps {
        endpoints: typed!(ENDPOINTS_MAP),
        peers_v4: typed!(PEERS_V4_MAP),
        peers_v6: typed!(PEERS_V6_MAP),
        policy: typed!(POLICY_MAP),
        host_addrs: typed!(HOST_ADDRS_MAP),
        services: typed!(SERVICES_MAP),
        endpoint_ids: typed!(ENDPOINT_IDS_MAP),
        counters: typed!(COUNTERS_MAP),
        events: Some(typed!(EVENTS_MAP)),
    })
}

fn pinned_map_ids(layout: &PinLayout) -> Result<BTreeMap<String, u32>, DatapathError> {
    let mut ids = BTreeMap::new();
    for name in bpffs::pin_names(&layout.maps)? {
        let path = layout.maps.join(&name);
        let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::MapInfo {
            path: path.clone(),
            source,
        })?;
        ids.insert(name, info.id());
    }
    Ok(ids)
}

fn program_error(hook: Hook) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        name: hook.program_name(),
        source,
    }
}

fn program_id(program: &SchedClassifier, hook: Hook) -> Result<u32, DatapathError> {
    Ok(program.info().map_err(program_error(hook))?.id())
}

/// Whether a pinned program can stay: same instructions (the tag ignores map fds) and every
/// pinned map the new program uses is one the pinned program uses.
fn same_program(
    pinned: &ProgramInfo,
    fresh: &ProgramInfo,
    pinned_maps: &BTreeSet<u32>,
    hook: Hook,
) -> Result<bool, DatapathError> {
    if pinned.tag() != fresh.tag() {
        return Ok(false);
    }
    let pinned_uses: BTreeSet<u32> = pinned
        .map_ids()
        .map_err(program_error(hook))?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let fresh_uses = fresh
        .map_ids()
        .map_err(program_error(hook))?
        .unwrap_or_default();
    Ok(fresh_uses
        .iter()
        .filter(|id| pinned_maps.contains(id))
        .all(|id| pinned_uses.contains(id)))
}

/// Loads one program of the object and keeps the pinned one or replaces it (see the module
/// documentation); returns a handle on the pinned program.
fn install_program(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    hook: Hook,
    pinned_map_ids: &BTreeMap<String, u32>,
    report: &mut OpenReport,
) -> Result<SchedClassifier, DatapathError> {
    let name = hook.program_name();
    let fresh: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(program_error(hook))?;
    fresh.load().map_err(program_error(hook))?;
    let fresh_info = fresh.info().map_err(program_error(hook))?;
    let pin = layout.programs.join(name);
    let pinned_maps: BTreeSet<u32> = pinned_map_ids.values().copied().collect();
    let keep = if pin.exists() {
        let pinned_info = ProgramInfo::from_pin(&pin).map_err(program_error(hook))?;
        same_program(&pinned_info, &fresh_info, &pinned_maps, hook)?
    } else {
        false
    };
    if keep {
        report.adopted_programs.push(hook);
    } else {
        links::update_links(layout, hook, fresh)?;
        if pin.exists() {
            bpffs::remove_pin(&pin)?;
        }
        fresh
            .pin(&pin)
            .map_err(|source| DatapathError::PinProgram {
                name,
                path: pin.clone(),
                source,
            })?;
        info!(program = name, id = fresh_info.id(), "installed program");
        report.installed_programs.push(hook);
    }
    SchedClassifier::from_pin(&pin).map_err(program_error(hook))
}
