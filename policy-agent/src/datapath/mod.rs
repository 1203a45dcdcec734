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
//! - When a map other than the flow and telemetry maps starts empty (a new layout) while
//!   interfaces are managed, every managed interface is held closed in the new maps before any
//!   link switches (see [`upgrade`]); the first [`Datapath::sync`] writes the real state.
//! - Flow state (connection tracking, fragments) of endpoint ids no endpoint entry holds is
//!   deleted, once the packets in flight have finished.
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
mod tracking;
mod upgrade;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, MapInfo, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TcAttachType},
};
use policy_common::{
    maps::{
        Counter, CtKey, CtValue, EndpointInfo, FragKey, FragValue, HostAddrKey, PeerClass,
        PolicyKey, PolicyValue,
    },
    names::{
        ALL_MAPS, CONNTRACK_MAP, COUNTERS_MAP, ENDPOINT_IDS_MAP, ENDPOINTS_MAP, EVENTS_MAP,
        FRAGMENTS_MAP, FROM_POD_PROG, HOST_ADDRS_MAP, PEERS_V4_MAP, PEERS_V6_MAP, POLICY_MAP,
        SERVICES_MAP, SVC_EGRESS_PROG, TO_POD_PROG, UNCONFIRMED_MAP,
    },
};
use tracing::{info, warn};

use self::{bpffs::PinLayout, record::Record, tracking::FlowMap};
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
    /// Maps that started empty: every map on a first start, the replaced ones, and maps of a
    /// name no pin had.
    pub created_maps: Vec<String>,
    /// Interfaces held closed because maps the programs decide by started empty while they
    /// were managed; the first [`Datapath::sync`] gives them their real entries.
    pub held_closed: Vec<u32>,
    /// Flow-state entries deleted because no endpoint holds their endpoint id.
    pub forgotten_flows: usize,
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
    /// Every map keyed by the flows of an endpoint id, emptied of an id when it is freed.
    flows: Vec<Box<dyn FlowMap>>,
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
        let pinned_before = bpffs::pin_names(&layout.maps)?;
        let mut ebpf = load_object(&layout, object, &mut report.replaced_maps)?;
        report.created_maps = ALL_MAPS
            .iter()
            .filter(|name| {
                !pinned_before.iter().any(|pinned| pinned == *name)
                    || report
                        .replaced_maps
                        .iter()
                        .any(|replaced| replaced == *name)
            })
            .map(|name| (*name).to_owned())
            .collect();
        let mut maps = take_maps(&mut ebpf)?;
        let pinned_map_ids = pinned_map_ids(&layout)?;

        let (adopted_links, removed_links) = links::prune_defunct(&layout)?;
        report.adopted_links = adopted_links;
        report.removed_links = removed_links;

        // Before any link can switch to programs that read the new maps.
        let mut record = Record::load(&config.state_file)?;
        let held = upgrade::hold_closed(
            &mut maps,
            &layout,
            &mut record,
            &config.state_file,
            &report.created_maps,
        )?;
        report.held_closed = held.interfaces;

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
        info!(
            pin_dir = %layout.root.display(),
            replaced_maps = ?report.replaced_maps,
            created_maps = ?report.created_maps,
            adopted_programs = ?report.adopted_programs,
            installed_programs = ?report.installed_programs,
            adopted_links = report.adopted_links.len(),
            removed_links = report.removed_links.len(),
            endpoints = record.endpoints.len(),
            "datapath open"
        );
        if !report.held_closed.is_empty() {
            warn!(
                interfaces = ?report.held_closed,
                "maps of a new layout start empty: every managed interface denies all its \
                 traffic until the first reconcile"
            );
        }
        let mut datapath = Datapath {
            config,
            layout,
            maps,
            programs: [from_pod, to_pod, svc_egress],
            program_ids,
            record,
            report,
        };
        datapath.report.forgotten_flows = datapath.forget_unused_ids(&held.reassigned)?;
        Ok(datapath)
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
        flows: vec![
            tracking::take::<CtKey, CtValue>(ebpf, CONNTRACK_MAP)?,
            tracking::take::<CtKey, CtValue>(ebpf, UNCONFIRMED_MAP)?,
            tracking::take::<FragKey, FragValue>(ebpf, FRAGMENTS_MAP)?,
        ],
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
    pinned: &SchedClassifier,
    fresh: &SchedClassifier,
    pinned_maps: &BTreeSet<u32>,
    hook: Hook,
) -> Result<bool, DatapathError> {
    let tag = |program: &SchedClassifier| -> Result<u64, DatapathError> {
        Ok(program.info().map_err(program_error(hook))?.tag())
    };
    if tag(pinned)? != tag(fresh)? {
        return Ok(false);
    }
    let map_ids = |program: &SchedClassifier| -> Result<Vec<u32>, DatapathError> {
        let fd = program.fd().map_err(program_error(hook))?;
        program_map_ids(fd.as_fd()).map_err(|source| DatapathError::ProgramMaps {
            name: hook.program_name(),
            source,
        })
    };
    let pinned_uses: BTreeSet<u32> = map_ids(pinned)?.into_iter().collect();
    Ok(map_ids(fresh)?
        .iter()
        .filter(|id| pinned_maps.contains(id))
        .all(|id| pinned_uses.contains(id)))
}

/// The ids of the maps a program uses, read through its own descriptor with
/// `BPF_OBJ_GET_INFO_BY_FD`. aya's `ProgramInfo::map_ids` reopens the program by id instead,
/// which takes CAP_SYS_ADMIN.
fn program_map_ids(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    /// `struct bpf_prog_info` up to `map_ids`; the kernel fills no more than it is given.
    #[repr(C)]
    #[derive(Default)]
    struct ProgInfoHead {
        prog_type: u32,
        id: u32,
        tag: [u8; 8],
        jited_prog_len: u32,
        xlated_prog_len: u32,
        jited_prog_insns: u64,
        xlated_prog_insns: u64,
        load_time: u64,
        created_by_uid: u32,
        nr_map_ids: u32,
        map_ids: u64,
    }
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let bpf_fd =
        u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut ids = vec![0u32; ALL_MAPS.len()];
    loop {
        let mut info = ProgInfoHead {
            nr_map_ids: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            map_ids: ids.as_mut_ptr() as u64,
            ..ProgInfoHead::default()
        };
        let attr = InfoAttr {
            bpf_fd,
            info_len: size_of::<ProgInfoHead>() as u32,
            info: &raw mut info as u64,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for this command; `info` and `ids` outlive
        // the call, and the kernel writes at most `info_len` bytes to `info` and at most
        // `nr_map_ids` ids to `ids`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                &raw const attr,
                size_of::<InfoAttr>(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        let used = info.nr_map_ids as usize;
        if used <= ids.len() {
            ids.truncate(used);
            return Ok(ids);
        }
        ids = vec![0; used];
    }
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
        let pinned = SchedClassifier::from_pin(&pin).map_err(program_error(hook))?;
        same_program(&pinned, fresh, &pinned_maps, hook)?
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
