//! Resolver benchmark on a synthetic cluster: 10,000 pods in 100 namespaces on 100 nodes,
//! 1,000 NetworkPolicies, resolved for one node (about 100 endpoints).
//!
//! Reports first, in plain figures: a full resolve, an incremental change (one pod's labels, one
//! policy edited) resolved against the previous state plus its map delta, and the peak heap the
//! resolve takes and the heap the resolved state keeps. Then criterion measures the same paths.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion};
use policy_common::verdict::Direction;
use policy_core::policy::{
    model::{
        ContainerPort, IpBlock, LabelSelector, Labels, Namespace, NamespaceScope, NetworkPolicy,
        Operator, Peer, Pod, PodPeer, PodPhase, PortSpec, PortValue, Protocol, Requirement, Rule,
        Snapshot,
    },
    resolve::resolve,
    state::{Delta, NodeState, Prefix},
};

/// The system allocator, counting live and peak bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NAMESPACES: usize = 100;
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
const NODES: usize = 100;
const NODE: &str = "node-7";
const APPS: usize = 20;

fn selector(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

fn port(number: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: Some(PortValue::Number(number)),
        end_port: None,
    }
}

fn cluster() -> Snapshot {
    let mut snapshot = Snapshot::default();
    for n in 0..NAMESPACES {
        let labels: Labels = [
            ("team".to_owned(), format!("team-{}", n % 10)),
            (
                "env".to_owned(),
                ["prod", "staging", "dev"][n % 3].to_owned(),
            ),
        ]
        .into_iter()
        .collect();
        snapshot.namespaces.push(Namespace {
            name: format!("ns-{n}"),
            labels,
        });
    }
    for p in 0..PODS {
        let namespace = p % NAMESPACES;
        let app = (p / NAMESPACES) % APPS;
        let labels: Labels = [
            ("app".to_owned(), format!("app-{app}")),
            ("tier".to_owned(), ["web", "api", "db"][app % 3].to_owned()),
            ("version".to_owned(), format!("v{}", p % 4)),
        ]
        .into_iter()
        .collect();
        let host = p as u32 + 256;
        snapshot.pods.push(Pod {
            namespace: format!("ns-{namespace}"),
            name: format!("pod-{p}"),
            labels,
            node: Some(format!("node-{}", (p / NAMESPACES) % NODES)),
            phase: PodPhase::Running,
            host_network: false,
            ips: vec![
                IpAddr::V4(Ipv4Addr::from_bits(0x0af4_0000 + host)),
                IpAddr::V6(Ipv6Addr::from_bits(
                    0xfd00_0010_0244_0000_0000_0000_0000_0000 + u128::from(host),
                )),
            ],
            ports: vec![
                ContainerPort {
                    name: Some("http".to_owned()),
                    protocol: Protocol::Tcp,
                    port: 8000 + (app % 5) as u16,
                },
                ContainerPort {
                    name: Some("metrics".to_owned()),
                    protocol: Protocol::Tcp,
                    port: 9090,
                },
            ],
        });
    }
    for i in 0..POLICIES {
        snapshot.policies.push(policy(i, 0));
    }
    snapshot
}

/// Policy `i` of ten kinds; `variant` changes its ports, for the "policy edited" change.
fn policy(i: usize, variant: u16) -> NetworkPolicy {
    let namespace = format!("ns-{}", i % NAMESPACES);
    let kind = i / NAMESPACES;
    let app = |offset: usize| format!("app-{}", (i + offset) % APPS);
    let own = |pods: LabelSelector| {
        Peer::Pods(PodPeer {
            namespaces: NamespaceScope::Own(namespace.clone()),
            pods,
        })
    };
    let mut policy = NetworkPolicy {
        namespace: namespace.clone(),
        name: format!("policy-{i}"),
        pod_selector: LabelSelector::default(),
        policy_types: Vec::new(),
        ingress: Vec::new(),
        egress: Vec::new(),
    };
    match kind {
        0 => policy.policy_types = vec![Direction::Ingress],
        1 => {
            policy.pod_selector = selector(&[("app", app(0))]);
            policy.ingress.push(Rule {
                peers: vec![own(selector(&[("app", app(1))]))],
                ports: vec![port(8080 + variant)],
            });
        }
        2 => {
            policy.pod_selector = selector(&[("tier", "db".to_owned())]);
            policy.ingress.push(Rule {
                peers: vec![Peer::Pods(PodPeer {
                    namespaces: NamespaceScope::Selected(selector(&[(
                        "team",
                        format!("team-{}", i % 10),
                    )])),
                    pods: selector(&[("tier", "api".to_owned())]),
                })],
                ports: vec![port(5432 + variant)],
            });
        }
        3 => {
            policy.pod_selector = selector(&[("app", app(2))]);
            policy.policy_types = vec![Direction::Egress];
            policy.egress.push(Rule {
                peers: vec![Peer::Pods(PodPeer {
                    namespaces: NamespaceScope::Selected(selector(&[(
                        "kubernetes.io/metadata.name",
                        "ns-0".to_owned(),
                    )])),
                    pods: selector(&[("app", "app-0".to_owned())]),
                })],
                ports: vec![PortSpec {
                    protocol: Protocol::Udp,
                    port: Some(PortValue::Number(53)),
                    end_port: None,
                }],
            });
        }
        4 => {
            policy.pod_selector = selector(&[("tier", "web".to_owned())]);
            policy.ingress.push(Rule {
                peers: vec![Peer::IpBlock(IpBlock {
                    cidr: Prefix::new(IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
                    except: vec![Prefix::new(
                        IpAddr::V4(Ipv4Addr::new(172, 16, (i % 200) as u8, 0)),
                        24,
                    )],
                })],
                ports: vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortValue::Number(30000 + variant)),
                    end_port: Some(32767),
                }],
            });
        }
        5 => {
            policy.pod_selector = LabelSelector {
                match_labels: Labels::new(),
                match_expressions: vec![Requirement {
                    key: "version".to_owned(),
                    operator: Operator::In,
                    values: vec!["v0".to_owned(), "v1".to_owned()],
                }],
            };
            policy.ingress.push(Rule {
                peers: vec![Peer::Pods(PodPeer {
                    namespaces: NamespaceScope::Selected(selector(&[("env", "prod".to_owned())])),
                    pods: LabelSelector::default(),
                })],
                ports: vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortValue::Name("http".to_owned())),
                    end_port: None,
                }],
            });
        }
        6 => {
            policy.pod_selector = selector(&[("app", app(3))]);
            policy.policy_types = vec![Direction::Egress];
            policy.egress.push(Rule {
                peers: vec![own(LabelSelector::default())],
                ports: vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortValue::Name("metrics".to_owned())),
                    end_port: None,
                }],
            });
            policy.egress.push(Rule {
                peers: vec![Peer::IpBlock(IpBlock {
                    cidr: Prefix::new(
                        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0)),
                        32,
                    ),
                    except: Vec::new(),
                })],
                ports: vec![port(443 + variant)],
            });
        }
        7 => {
            policy.pod_selector = selector(&[("tier", "api".to_owned())]);
            policy.ingress.push(Rule {
                peers: vec![own(selector(&[("tier", "web".to_owned())]))],
                ports: vec![port(8000 + variant), port(8443)],
            });
        }
        8 => {
            policy.pod_selector = selector(&[("app", app(4))]);
            policy.ingress.push(Rule::default());
        }
        _ => {
            policy.pod_selector = selector(&[("app", app(5))]);
            policy.policy_types = vec![Direction::Ingress, Direction::Egress];
            policy.ingress.push(Rule {
                peers: vec![Peer::Pods(PodPeer {
                    namespaces: NamespaceScope::Selected(LabelSelector::default()),
                    pods: selector(&[("app", app(6))]),
                })],
                ports: vec![port(7000 + variant)],
            });
            policy.egress.push(Rule {
                peers: vec![own(selector(&[("app", app(7))]))],
                ports: Vec::new(),
            });
        }
    }
    policy
}

/// One pod of another node gets new labels.
fn relabel(snapshot: &Snapshot) -> Snapshot {
    let mut next = snapshot.clone();
    let pod = next
        .pods
        .iter_mut()
        .find(|pod| pod.node.as_deref() != Some(NODE) && pod.namespace == "ns-7")
        .expect("a remote pod in ns-7");
    pod.labels.insert("app".to_owned(), "app-3".to_owned());
    pod.labels.insert("tier".to_owned(), "api".to_owned());
    next
}

/// One policy that selects local endpoints gets new ports.
fn edit_policy(snapshot: &Snapshot) -> Snapshot {
    let mut next = snapshot.clone();
    next.policies[107] = policy(107, 1);
    next
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// Median and maximum of `runs` timings of `f`, in milliseconds.
fn timings<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let (value, took) = time(&mut f);
            black_box(value);
            took.as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[runs / 2], times[runs - 1])
}

fn report() {
    let snapshot = cluster();
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let (state, full) = time(|| resolve(&snapshot, NODE, &NodeState::default()).expect("resolves"));
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    let kept = LIVE.load(Ordering::Relaxed) - baseline;
    println!(
        "cluster: {PODS} pods, {NAMESPACES} namespaces, {POLICIES} policies, {NODES} nodes; \
         {NODE}: {} endpoints, {} peer prefixes, {} classes, {} policy entries",
        state.endpoints.len(),
        state.peers.len(),
        state.ids.classes.len(),
        state.policy.len()
    );
    let (median, max) = timings(20, || resolve(&snapshot, NODE, &NodeState::default()));
    println!(
        "full resolve: first {:.1} ms, then median {median:.1} ms, max {max:.1} ms of 20",
        full.as_secs_f64() * 1e3
    );
    println!(
        "heap: peak {:.1} MB during the resolve, {:.1} MB kept by the resolved state",
        peak as f64 / 1e6,
        kept as f64 / 1e6
    );
    for (name, next) in [
        ("one pod's labels", relabel(&snapshot)),
        ("one policy edited", edit_policy(&snapshot)),
    ] {
        let new_state = resolve(&next, NODE, &state).expect("resolves");
        let delta = Delta::between(&state, &new_state);
        let (median, max) = timings(20, || {
            let new_state = resolve(&next, NODE, &state).expect("resolves");
            Delta::between(&state, &new_state)
        });
        println!(
            "incremental ({name}): new state and delta of {} map operations in median \
             {median:.1} ms, max {max:.1} ms of 20",
            delta.len()
        );
    }
}

/// 100 pods of one namespace on [`NODE`], all selected by `policy` (in that namespace).
fn one_policy(policy: NetworkPolicy) -> Snapshot {
    let pods = (0..100u32)
        .map(|n| Pod {
            namespace: "big".to_owned(),
            name: format!("pod-{n}"),
            labels: Labels::new(),
            node: Some(NODE.to_owned()),
            phase: PodPhase::Running,
            host_network: false,
            ips: vec![IpAddr::V4(Ipv4Addr::from_bits(0x0af4_0000 + n))],
            ports: Vec::new(),
        })
        .collect();
    Snapshot {
        pods,
        policies: vec![policy],
        ..Snapshot::default()
    }
}

/// A policy of namespace `big` selecting all its pods, admitting `ports` from `blocks`.
fn big_policy(blocks: Vec<IpBlock>, ports: Vec<PortSpec>) -> NetworkPolicy {
    NetworkPolicy {
        namespace: "big".to_owned(),
        name: "big".to_owned(),
        pod_selector: LabelSelector::default(),
        policy_types: Vec::new(),
        ingress: vec![Rule {
            peers: blocks.into_iter().map(Peer::IpBlock).collect(),
            ports,
        }],
        egress: Vec::new(),
    }
}

/// The large inputs one namespace owner can write: an ipBlock with 8,000 excepts, and the
/// 950 KB policy of 65,535 single ports times 9 ipBlocks.
fn report_large() {
    let except: Vec<Prefix> = (0..8000u32)
        .map(|n| Prefix {
            addr: IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n * 97)),
            len: 32,
        })
        .collect();
    let excepts = one_policy(big_policy(
        vec![IpBlock {
            cidr: Prefix {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
                len: 8,
            },
            except,
        }],
        vec![port(80)],
    ));
    let state = resolve(&excepts, NODE, &NodeState::default()).expect("resolves");
    let (median, max) = timings(20, || resolve(&excepts, NODE, &NodeState::default()));
    println!(
        "ipBlock with 8,000 excepts, 100 endpoints: {} peer prefixes; full resolve median \
         {median:.1} ms, max {max:.1} ms of 20",
        state.peers.len()
    );
    let blocks: Vec<IpBlock> = (1..=9u8)
        .map(|n| IpBlock {
            cidr: Prefix {
                addr: IpAddr::V4(Ipv4Addr::new(10, n, 0, 0)),
                len: 16,
            },
            except: Vec::new(),
        })
        .collect();
    let all_ports = one_policy(big_policy(blocks, (1..=u16::MAX).map(port).collect()));
    let state = resolve(&all_ports, NODE, &NodeState::default()).expect("resolves");
    let (median, max) = timings(5, || resolve(&all_ports, NODE, &NodeState::default()));
    println!(
        "65,535 single ports x 9 ipBlocks, 100 endpoints: {} policy entries ({} per endpoint); \
         full resolve median {median:.1} ms, max {max:.1} ms of 5",
        state.policy.len(),
        state.policy.len() / state.endpoints.len().max(1)
    );
}

fn main() {
    report();
    report_large();
    let snapshot = cluster();
    let state = resolve(&snapshot, NODE, &NodeState::default()).expect("resolves");
    let relabeled = relabel(&snapshot);
    let mut criterion = Criterion::default().sample_size(10).configure_from_args();
    criterion.bench_function("full resolve", |b| {
        b.iter(|| resolve(black_box(&snapshot), NODE, &NodeState::default()))
    });
    criterion.bench_function("incremental: one pod's labels, to delta", |b| {
        b.iter_batched(
            || (),
            |()| {
                let next = resolve(black_box(&relabeled), NODE, &state).expect("resolves");
                Delta::between(&state, &next)
            },
            BatchSize::SmallInput,
        )
    });
    criterion.final_summary();
}
