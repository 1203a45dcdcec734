//! Shared harness of the BPF_PROG_TEST_RUN suites: a loaded copy of the programs with its own
//! pinned maps, and the packet builders in [`packets`].

pub mod packets;

use std::{
    ffi::CString,
    fs,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{ProgramError, ProgramInfo, SchedClassifier, TestRun, TestRunOptions},
};
use policy_common::{
    maps::{
        ANY_PROTOCOL, Counter, CtKey, CtValue, EndpointInfo, FAMILY_V4, FAMILY_V6, FlowEvent,
        FragKey, FragValue, HostAddrKey, PeerClass, PolicyAction, PolicyKey, PolicyValue,
        counter_index,
    },
    names,
    ports::range_to_prefixes,
    verdict::Direction,
};
use policy_testbed::bpf;

/// One allow rule of an endpoint, as the agent would encode it.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub direction: Direction,
    /// A peer class or `ANY_PEER_CLASS`.
    pub class: u32,
    /// An IP protocol or `ANY_PROTOCOL` (then `ports` is ignored).
    pub protocol: u8,
    pub ports: (u16, u16),
    /// What the entry does: allows, or drops as a ClusterNetworkPolicy `Deny` or isolation.
    pub action: PolicyAction,
    pub rule_id: u32,
}

/// Return value of a program that passed the packet on (`TC_ACT_UNSPEC`).
pub const PASS: i32 = -1;
/// Return value of a program that dropped the packet (`TC_ACT_SHOT`).
pub const DROP: i32 = 2;

/// Size of the kernel's `struct __sk_buff`, the context TEST_RUN takes in and gives back for TC
/// programs (its last field, `hwtstamp`, ends at byte 192).
const SK_BUFF_SIZE: usize = 192;
/// Offset of `mark` in `struct __sk_buff`, one of the fields TEST_RUN's `ctx_in` may set.
const SK_BUFF_MARK: usize = 8;

const BPF_FS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The interface BPF_PROG_TEST_RUN runs TC programs on when the context names none: `lo`.
pub fn setup_test_ifindex() -> u32 {
    let name = CString::new("lo").expect("static name without NUL");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no lo interface in this network namespace");
    index
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted already.
fn setup_bpffs() {
    static MOUNT: Once = Once::new();
    MOUNT.call_once(|| {
        let path = CString::new(BPF_FS).expect("static path without NUL");
        // SAFETY: `statfs` fills the zeroed struct; the path is NUL-terminated.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        let found = unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0;
        if found && stat.f_type as i64 == BPF_FS_MAGIC {
            return;
        }
        let fstype = CString::new("bpf").expect("static name without NUL");
        // SAFETY: NUL-terminated arguments, no data.
        let mounted = unsafe {
            libc::mount(
                fstype.as_ptr(),
                path.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            mounted,
            0,
            "mounting bpffs at {BPF_FS}: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// A pin directory of its own on bpffs, removed with everything in it on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> PinDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        setup_bpffs();
        let path = PathBuf::from(format!(
            "{BPF_FS}/np-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("creating a pin directory on bpffs");
        PinDir { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// One loaded copy of the programs and their maps. Maps are per load, so tests do not share
/// state; fields drop in order, so the object goes before its pins.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub pins: PinDir,
}

impl Datapath {
    pub fn load() -> Datapath {
        assert_eq!(
            // SAFETY: no preconditions.
            unsafe { libc::geteuid() },
            0,
            "loading BPF programs needs root: run through cargo xtask test"
        );
        let pins = PinDir::new();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.path)
            .load(policy_agent::EBPF_OBJECT)
            .expect("loading the eBPF object");
        for name in names::ALL_PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name}"))
                .try_into()
                .expect("a classifier");
            program
                .load()
                .unwrap_or_else(|error| panic!("verifying {name}: {error:?}"));
        }
        Datapath { ebpf, pins }
    }

    fn program(&self, name: &str) -> &SchedClassifier {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .try_into()
            .expect("a classifier")
    }

    /// The program that decides packets in `direction`.
    pub fn program_for(direction: Direction) -> &'static str {
        match direction {
            Direction::Egress => names::FROM_POD_PROG,
            Direction::Ingress => names::TO_POD_PROG,
        }
    }

    /// Runs the program of `direction` once on `frame`, returning its TC action.
    pub fn run(&self, direction: Direction, frame: &[u8]) -> i32 {
        self.run_repeat(direction, frame, 1).0
    }

    /// Runs the program of `direction` once, or says why the kernel refused to.
    pub fn try_run(&self, direction: Direction, frame: &[u8]) -> Result<i32, ProgramError> {
        self.program(Self::program_for(direction))
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::new()
            })
            .map(|result| result.return_value as i32)
    }

    /// Runs the program `repeat` times; returns the action and the kernel's time per run.
    pub fn run_repeat(&self, direction: Direction, frame: &[u8], repeat: u32) -> (i32, Duration) {
        let result = self
            .program(Self::program_for(direction))
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        (result.return_value as i32, result.duration)
    }

    /// Runs `program` once on `frame` with `skb->mark` set to `mark`; returns its TC action and
    /// the mark it left.
    pub fn run_with_mark(&self, program: &str, frame: &[u8], mark: u32) -> (i32, u32) {
        let mut ctx_in = [0; SK_BUFF_SIZE];
        ctx_in[SK_BUFF_MARK..SK_BUFF_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0; SK_BUFF_SIZE];
        let result = self
            .program(program)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {program}: {error:?}"));
        assert_eq!(result.ctx_size_out as usize, SK_BUFF_SIZE, "context size");
        let mut mark_out = [0; 4];
        mark_out.copy_from_slice(&ctx_out[SK_BUFF_MARK..SK_BUFF_MARK + 4]);
        (result.return_value as i32, u32::from_ne_bytes(mark_out))
    }

    pub fn info(&self, name: &str) -> ProgramInfo {
        self.program(name).info().expect("program info")
    }

    fn map(&mut self, name: &str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}"))
    }

    fn map_ref(&self, name: &str) -> &aya::maps::Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("no map {name}"))
    }

    /// Programs an endpoint of a pod with addresses `pod` on `ifindex`, with `flags` and the
    /// policy entries and lookup plans of `entries`.
    pub fn setup_endpoint(
        &mut self,
        ifindex: u32,
        endpoint_id: u32,
        pod: &[IpAddr],
        flags: u32,
        entries: &[Entry],
    ) -> EndpointInfo {
        let mut info = EndpointInfo {
            endpoint_id,
            flags,
            ..EndpointInfo::default()
        };
        for addr in pod {
            match addr {
                IpAddr::V4(addr) => info.addr4 = addr.octets(),
                IpAddr::V6(addr) => info.addr6 = addr.octets(),
            }
        }
        for entry in entries {
            let plan = match entry.direction {
                Direction::Ingress => &mut info.ingress_plan,
                Direction::Egress => &mut info.egress_plan,
            };
            let mut entries = Vec::new();
            if entry.protocol == ANY_PROTOCOL {
                entries.push((0, 0));
            } else {
                range_to_prefixes(entry.ports.0, entry.ports.1, |port, len| {
                    entries.push((port, len))
                });
            }
            for (port, len) in entries {
                let key = PolicyKey {
                    endpoint_id,
                    peer_class: entry.class,
                    port,
                    direction: entry.direction as u8,
                    protocol: entry.protocol,
                    port_prefix_len: len,
                    _pad: [0; 3],
                };
                plan.record(&key);
                self.set_policy(key, PolicyValue::new(entry.action, entry.rule_id));
            }
        }
        self.set_endpoint(ifindex, info);
        info
    }

    pub fn endpoint(&self, ifindex: u32) -> EndpointInfo {
        let map: HashMap<&MapData, u32, EndpointInfo> =
            HashMap::try_from(self.map_ref(names::ENDPOINTS_MAP)).expect("endpoint map");
        map.get(&ifindex, 0).expect("an endpoint")
    }

    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) {
        let mut map: HashMap<&mut MapData, u32, EndpointInfo> =
            HashMap::try_from(self.map(names::ENDPOINTS_MAP)).expect("endpoint map");
        map.insert(&ifindex, &info, 0)
            .expect("inserting an endpoint");
    }

    /// Makes `info` the endpoint of its id, where `svc_egress` finds a client away from its
    /// own interface.
    pub fn set_endpoint_id(&mut self, info: EndpointInfo) {
        let mut map: Array<&mut MapData, EndpointInfo> =
            Array::try_from(self.map(names::ENDPOINT_IDS_MAP)).expect("endpoint id map");
        map.set(info.endpoint_id, &info, 0)
            .expect("setting an endpoint by id");
    }

    /// Maps `addr/len` to peer class `class`.
    pub fn set_peer(&mut self, addr: IpAddr, len: u32, class: u32) {
        let value = PeerClass { id: class };
        match addr {
            IpAddr::V4(addr) => {
                let mut map: LpmTrie<&mut MapData, [u8; 4], PeerClass> =
                    LpmTrie::try_from(self.map(names::PEERS_V4_MAP)).expect("peer4 map");
                map.insert(&Key::new(len, addr.octets()), &value, 0)
                    .expect("inserting a v4 prefix");
            }
            IpAddr::V6(addr) => {
                let mut map: LpmTrie<&mut MapData, [u8; 16], PeerClass> =
                    LpmTrie::try_from(self.map(names::PEERS_V6_MAP)).expect("peer6 map");
                map.insert(&Key::new(len, addr.octets()), &value, 0)
                    .expect("inserting a v6 prefix");
            }
        }
    }

    pub fn set_policy(&mut self, key: PolicyKey, value: PolicyValue) {
        let mut map: HashMap<&mut MapData, PolicyKey, PolicyValue> =
            HashMap::try_from(self.map(names::POLICY_MAP)).expect("policy map");
        map.insert(&key, &value, 0)
            .expect("inserting a policy entry");
    }

    pub fn set_host(&mut self, addr: IpAddr) {
        let mut map: HashMap<&mut MapData, HostAddrKey, u8> =
            HashMap::try_from(self.map(names::HOST_ADDRS_MAP)).expect("host map");
        map.insert(&host_key(addr), &1, 0)
            .expect("inserting a host address");
    }

    /// Makes `addr` a Service's ClusterIP.
    pub fn set_service(&mut self, addr: IpAddr) {
        let mut map: HashMap<&mut MapData, HostAddrKey, u8> =
            HashMap::try_from(self.map(names::SERVICES_MAP)).expect("service map");
        map.insert(&host_key(addr), &1, 0)
            .expect("inserting a ClusterIP");
    }

    /// Every tracked flow, confirmed and unconfirmed.
    pub fn conntrack(&self) -> Vec<(CtKey, CtValue)> {
        let mut flows = self.flows_in(names::CONNTRACK_MAP);
        flows.extend(self.flows_in(names::UNCONFIRMED_MAP));
        flows
    }

    /// The flows of one of the two conntrack maps.
    pub fn flows_in(&self, name: &str) -> Vec<(CtKey, CtValue)> {
        let map: HashMap<&MapData, CtKey, CtValue> =
            HashMap::try_from(self.map_ref(name)).expect("conntrack map");
        map.iter()
            .collect::<Result<_, _>>()
            .expect("reading conntrack")
    }

    /// Tracks a confirmed flow.
    pub fn set_conntrack(&mut self, key: CtKey, value: CtValue) {
        let mut map: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.map(names::CONNTRACK_MAP)).expect("conntrack map");
        map.insert(&key, &value, 0).expect("inserting a flow");
    }

    pub fn clear_conntrack(&mut self) {
        for name in [names::CONNTRACK_MAP, names::UNCONFIRMED_MAP] {
            let keys: Vec<CtKey> = self
                .flows_in(name)
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            let mut map: HashMap<&mut MapData, CtKey, CtValue> =
                HashMap::try_from(self.map(name)).expect("conntrack map");
            for key in keys {
                map.remove(&key).expect("removing a flow");
            }
        }
    }

    pub fn fragments(&self) -> Vec<(FragKey, FragValue)> {
        let map: HashMap<&MapData, FragKey, FragValue> =
            HashMap::try_from(self.map_ref(names::FRAGMENTS_MAP)).expect("fragment map");
        map.iter()
            .collect::<Result<_, _>>()
            .expect("reading fragments")
    }

    pub fn clear_fragments(&mut self) {
        let keys: Vec<FragKey> = self.fragments().into_iter().map(|(key, _)| key).collect();
        let mut map: HashMap<&mut MapData, FragKey, FragValue> =
            HashMap::try_from(self.map(names::FRAGMENTS_MAP)).expect("fragment map");
        for key in keys {
            map.remove(&key).expect("removing a fragment");
        }
    }

    /// The counter slot summed over all CPUs.
    pub fn counter(&self, endpoint_id: u32, direction: Direction, outcome: u8) -> Counter {
        let map: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map_ref(names::COUNTERS_MAP)).expect("counter map");
        let values = map
            .get(&counter_index(endpoint_id, direction, outcome), 0)
            .expect("reading a counter");
        values
            .iter()
            .fold(Counter::default(), |sum, value| Counter {
                packets: sum.packets + value.packets,
                bytes: sum.bytes + value.bytes,
            })
    }

    /// Every counter slot with packets, summed over all CPUs: `(slot, counter)`.
    pub fn nonzero_counters(&self) -> Vec<(u32, Counter)> {
        let map: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map_ref(names::COUNTERS_MAP)).expect("counter map");
        (0..map.len())
            .filter_map(|slot| {
                let values = map.get(&slot, 0).expect("reading a counter");
                let sum = values
                    .iter()
                    .fold(Counter::default(), |sum, value| Counter {
                        packets: sum.packets + value.packets,
                        bytes: sum.bytes + value.bytes,
                    });
                (sum.packets > 0).then_some((slot, sum))
            })
            .collect()
    }

    /// Drains the event ring.
    pub fn events(&mut self) -> Vec<FlowEvent> {
        let mut ring = RingBuf::try_from(self.map(names::EVENTS_MAP)).expect("event ring");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), size_of::<FlowEvent>(), "event size");
            // SAFETY: the item holds exactly one FlowEvent written by the programs; any bit
            // pattern is a valid FlowEvent.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
        }
        events
    }
}

pub fn host_key(addr: IpAddr) -> HostAddrKey {
    HostAddrKey {
        family: family(addr),
        _pad: [0; 3],
        addr: addr16(addr),
    }
}

pub fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

/// An address as the 16-byte fields of the map types hold it.
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(addr) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&addr.octets());
            out
        }
        IpAddr::V6(addr) => addr.octets(),
    }
}

/// Kernel time per run of a classifier that only returns `TC_ACT_UNSPEC`: the cost TEST_RUN
/// itself adds to every repetition, to subtract from measured programs.
pub fn empty_classifier_ns(frame: &[u8], repeat: u32) -> u32 {
    let program = bpf::load_classifier(PASS).expect("loading the empty classifier");
    let (verdict, duration) =
        bpf::test_run(&program, frame, repeat).expect("running the empty classifier");
    assert_eq!(verdict, PASS);
    duration
}
