//! The Kubernetes source against recorded list and watch responses (`tests/kube/`), served by
//! an in-process stand-in for the API server that `kube::Client` talks to as it would to the
//! real one.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{
    StreamExt as _,
    stream::{self, BoxStream},
};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use policy_common::verdict::{Direction, DropReason};
use tokio::sync::mpsc;

use super::*;
use crate::policy::{
    cluster::Tier,
    lookup::Decision,
    model::Protocol,
    resolve::resolve,
    state::{Delta, NodeState, PodRef},
};

const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
const NODES: &str = "/api/v1/nodes";
const CLUSTER_POLICIES: &str = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";
const NODE: &str = "node-a";
/// kube's default watch backoff starts at 0.8 s (plus up to 100% jitter).
const MIN_BACKOFF: Duration = Duration::from_millis(800);
const PATIENCE: Duration = Duration::from_secs(10);

const PODS_WATCH: &str = include_str!("../../tests/kube/pods-watch.jsonl");
const POLICIES_WATCH: &str = include_str!("../../tests/kube/networkpolicies-watch.jsonl");
const CLUSTER_POLICIES_WATCH: &str =
    include_str!("../../tests/kube/clusternetworkpolicies-watch.jsonl");
const FORBIDDEN: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:kube-system:policy-agent\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;

const NOT_FOUND: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;

fn recorded_list(path: &str) -> String {
    match path {
        NAMESPACES => include_str!("../../tests/kube/namespaces.json"),
        PODS => include_str!("../../tests/kube/pods.json"),
        SERVICES => include_str!("../../tests/kube/services.json"),
        POLICIES => include_str!("../../tests/kube/networkpolicies.json"),
        NODES => include_str!("../../tests/kube/nodes.json"),
        CLUSTER_POLICIES => include_str!("../../tests/kube/clusternetworkpolicies.json"),
        _ => panic!("no recorded list for {path}"),
    }
    .to_owned()
}

/// Line `index` of a recorded watch stream.
fn event(stream: &str, index: usize) -> String {
    format!("{}\n", stream.lines().nth(index).expect("recorded event"))
}

/// A list at another resourceVersion, with some items left out.
fn relisted(path: &str, resource_version: &str, without: &[&str]) -> String {
    let mut list: serde_json::Value =
        serde_json::from_str(&recorded_list(path)).expect("recorded list");
    list["metadata"]["resourceVersion"] = resource_version.into();
    if let Some(items) = list["items"].as_array_mut() {
        items.retain(|item| {
            !without.contains(&item["metadata"]["name"].as_str().unwrap_or_default())
        });
    }
    list.to_string()
}

type Chunk = Result<Frame<Bytes>, io::Error>;
type Body = StreamBody<BoxStream<'static, Chunk>>;

/// One watch request the stand-in holds open: the test writes its events.
struct Watch {
    resource_version: String,
    at: Instant,
    events: mpsc::UnboundedSender<Chunk>,
}

impl Watch {
    fn send(&self, line: String) {
        self.events
            .send(Ok(Frame::data(Bytes::from(line))))
            .expect("watch open");
    }

    /// The connection breaks mid-stream.
    fn drop_connection(self) {
        self.events
            .send(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
            .expect("watch open");
    }
}

#[derive(Default)]
struct Served {
    /// Per path, the list responses still to give.
    lists: HashMap<String, VecDeque<(StatusCode, String)>>,
    /// Per path, the last list response given: it repeats when no other is queued.
    last_lists: HashMap<String, (StatusCode, String)>,
    /// Per path, where new watches go.
    watches: HashMap<String, mpsc::UnboundedSender<Watch>>,
    /// (path, is a watch, when) of every request.
    requests: Vec<(String, bool, Instant)>,
}

#[derive(Clone, Default)]
struct ApiServer {
    served: Arc<Mutex<Served>>,
}

impl ApiServer {
    fn respond(&self, request: &Request<kube::client::Body>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default();
        let parameter = |name: &str| {
            query.split('&').find_map(|pair| {
                pair.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            })
        };
        let is_watch = parameter("watch").as_deref() == Some("true");
        let mut served = self.served.lock().expect("not poisoned");
        served
            .requests
            .push((path.clone(), is_watch, Instant::now()));
        if is_watch {
            let (events, receiver) = mpsc::unbounded_channel();
            let watch = Watch {
                resource_version: parameter("resourceVersion").unwrap_or_default(),
                at: Instant::now(),
                events,
            };
            if let Some(watches) = served.watches.get(&path) {
                let _ = watches.send(watch);
            }
            let body = stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|chunk| (chunk, receiver))
            });
            return Response::new(StreamBody::new(body.boxed()));
        }
        let next = served.lists.entry(path.clone()).or_default().pop_front();
        if let Some(next) = next {
            served.last_lists.insert(path.clone(), next);
        }
        let (status, text) = served.last_lists.get(&path).cloned().unwrap_or((
            StatusCode::NOT_FOUND,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
                .to_owned(),
        ));
        let body = stream::iter([Ok(Frame::data(Bytes::from(text)))]);
        let mut response = Response::new(StreamBody::new(body.boxed()));
        *response.status_mut() = status;
        response
    }

    fn requests(&self, path: &str, watch: bool) -> Vec<Instant> {
        let served = self.served.lock().expect("not poisoned");
        served
            .requests
            .iter()
            .filter(|(p, w, _)| p == path && *w == watch)
            .map(|(_, _, at)| *at)
            .collect()
    }

    /// Queues list responses for `path` after the current ones.
    fn then_list(&self, path: &str, status: StatusCode, text: String) {
        let mut served = self.served.lock().expect("not poisoned");
        served
            .lists
            .entry(path.to_owned())
            .or_default()
            .push_back((status, text));
    }
}

/// The source under test, its stand-in API server and the open watches.
struct Harness {
    server: ApiServer,
    watches: HashMap<&'static str, mpsc::UnboundedReceiver<Watch>>,
    source: KubeSource,
    changes: mpsc::UnboundedReceiver<()>,
}

impl Harness {
    /// Serves the recorded lists, with `first` answering the first list of its path instead.
    fn start(first: &[(&'static str, StatusCode, String)]) -> Harness {
        let server = ApiServer::default();
        let mut watches = HashMap::new();
        for path in [
            NAMESPACES,
            PODS,
            SERVICES,
            POLICIES,
            NODES,
            CLUSTER_POLICIES,
        ] {
            for (_, status, text) in first.iter().filter(|(p, _, _)| *p == path) {
                server.then_list(path, *status, text.clone());
            }
            server.then_list(path, StatusCode::OK, recorded_list(path));
            let (sender, receiver) = mpsc::unbounded_channel();
            server
                .served
                .lock()
                .expect("not poisoned")
                .watches
                .insert(path.to_owned(), sender);
            watches.insert(path, receiver);
        }
        let handler = server.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let response = handler.respond(&request);
            async move { Ok::<_, Infallible>(response) }
        });
        let (source, changes) = KubeSource::start(Client::new(service, "default"), NODE);
        Harness {
            server,
            watches,
            source,
            changes,
        }
    }

    /// Waits, change after change, until the source's result satisfies `wanted`.
    async fn until<T>(
        &mut self,
        mut wanted: impl FnMut(Result<Content, NotReady>) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(found) = wanted(self.source.content()) {
                return found;
            }
            tokio::time::timeout_at(deadline, self.changes.recv())
                .await
                .expect("the wanted content in time")
                .expect("source running");
        }
    }

    async fn content(&mut self) -> Content {
        self.until(Result::ok).await
    }

    /// The next watch request on `path`.
    async fn watch(&mut self, path: &str) -> Watch {
        let watches = self.watches.get_mut(path).expect("known path");
        tokio::time::timeout(PATIENCE, watches.recv())
            .await
            .expect("a watch in time")
            .expect("server running")
    }
}

fn pod<'a>(
    content: &'a Content,
    namespace: &str,
    name: &str,
) -> Option<&'a crate::policy::model::Pod> {
    content
        .snapshot
        .pods
        .iter()
        .find(|pod| pod.namespace == namespace && pod.name == name)
}

fn pod_ref(namespace: &str, name: &str) -> PodRef {
    PodRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn resolved(content: &Content, previous: &NodeState) -> NodeState {
    resolve(&content.snapshot, NODE, previous).expect("resolvable")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// The rule an Admin `Deny` decision names; any other decision fails the test.
fn admin_denial(state: &NodeState, decision: Decision) -> String {
    let Decision::Denied {
        reason: DropReason::AdminDenied,
        rule_id,
    } = decision
    else {
        panic!("not an Admin denial: {decision:?}");
    };
    state.rules[&rule_id].to_string()
}

const API_POD: &str = "api-5c8f-xk2p9";
const WEB_POD: &str = "web-7d4b9c-abcde";

#[tokio::test]
async fn the_initial_list_converts_every_kind() {
    let mut harness = Harness::start(&[]);
    let content = harness.content().await;

    let namespaces: Vec<&str> = content
        .snapshot
        .namespaces
        .iter()
        .map(|namespace| namespace.name.as_str())
        .collect();
    assert_eq!(namespaces, ["default", "monitoring"]);
    let pods: Vec<(&str, &str)> = content
        .snapshot
        .pods
        .iter()
        .map(|pod| (pod.namespace.as_str(), pod.name.as_str()))
        .collect();
    assert_eq!(
        pods,
        [
            ("default", "db-0"),
            ("default", WEB_POD),
            ("monitoring", "prometheus-0")
        ]
    );
    let web = pod(&content, "default", WEB_POD).expect("web pod");
    assert_eq!(web.ips, [ip("10.244.1.5"), ip("fd00:10:244:1::5")]);
    assert_eq!(web.node.as_deref(), Some(NODE));
    assert_eq!(web.named_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(web.named_port("metrics", Protocol::Tcp), Some(9100));
    assert_eq!(content.snapshot.services.len(), 1);
    assert_eq!(
        content.snapshot.services[0].cluster_ips,
        [ip("10.96.0.20"), ip("fd00:10:96::20")]
    );
    assert_eq!(content.snapshot.policies.len(), 1);
    assert_eq!(content.snapshot.policies[0].name, "web-from-db");
    let cluster_policies: Vec<(&str, Tier, u32)> = content
        .snapshot
        .cluster_policies
        .iter()
        .map(|policy| (policy.name.as_str(), policy.tier, policy.priority))
        .collect();
    assert_eq!(
        cluster_policies,
        [
            ("default-keeps-off-the-control-plane", Tier::Baseline, 5),
            ("web-reaches-only-monitoring", Tier::Admin, 10)
        ]
    );
    let nodes: Vec<(&str, &[IpAddr])> = content
        .snapshot
        .nodes
        .iter()
        .map(|node| (node.name.as_str(), node.addresses.as_slice()))
        .collect();
    assert_eq!(
        nodes,
        [
            (NODE, &[ip("172.18.0.2")][..]),
            ("node-b", &[ip("172.18.0.3"), ip("203.0.113.3")][..])
        ]
    );
    assert!(content.rejected.is_empty());
    assert_eq!(content.generation.len(), 64);

    let state = resolved(&content, &NodeState::default());
    let endpoints: Vec<&PodRef> = state.endpoints.keys().collect();
    assert_eq!(
        endpoints,
        [
            &pod_ref("default", WEB_POD),
            &pod_ref("monitoring", "prometheus-0")
        ]
    );
}

#[tokio::test]
async fn the_cache_holds_only_the_fields_the_agent_reads() {
    let mut harness = Harness::start(&[]);
    harness.content().await;
    let source = &harness.source;

    let pods = source.pods.state();
    let web = pods
        .iter()
        .find(|pod| pod.metadata.name.as_deref() == Some(WEB_POD))
        .expect("web pod cached");
    let metadata = &web.metadata;
    assert_eq!(metadata.managed_fields, None);
    assert_eq!(metadata.annotations, None);
    assert_eq!(metadata.owner_references, None);
    assert_eq!(metadata.generate_name, None);
    assert_eq!(metadata.creation_timestamp, None);
    assert!(metadata.labels.as_ref().is_some_and(|l| l["app"] == "web"));
    assert!(metadata.uid.is_some() && metadata.resource_version.is_some());
    let spec = web.spec.as_ref().expect("spec kept");
    assert_eq!(spec.volumes, None);
    assert_eq!(spec.tolerations, None);
    assert_eq!(spec.service_account_name, None);
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    let container = &spec.containers[0];
    assert_eq!(container.image, None);
    assert_eq!(container.env, None);
    assert_eq!(container.args, None);
    assert_eq!(container.volume_mounts, None);
    let ports = container.ports.as_ref().expect("ports kept");
    assert_eq!(ports[1].host_port, None);
    assert_eq!(ports[1].name.as_deref(), Some("metrics"));
    let status = web.status.as_ref().expect("status kept");
    assert_eq!(status.conditions, None);
    assert_eq!(status.container_statuses, None);
    assert_eq!(status.host_ip, None);
    assert_eq!(status.start_time, None);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ips.as_ref().map(Vec::len), Some(2));

    for namespace in source.namespaces.state() {
        assert_eq!(namespace.metadata.annotations, None);
        assert_eq!(namespace.metadata.managed_fields, None);
        assert_eq!(namespace.spec, None);
        assert_eq!(namespace.status, None);
    }
    for policy in source.policies.state() {
        assert_eq!(policy.metadata.annotations, None);
        assert_eq!(policy.metadata.managed_fields, None);
        assert_eq!(policy.metadata.generation, None);
        assert!(policy.spec.is_some());
    }
    for service in source.services.state() {
        assert_eq!(service.metadata.annotations, None);
        assert_eq!(service.status, None);
        let spec = service.spec.as_ref().expect("spec kept");
        assert_eq!(spec.type_, None);
        assert_eq!(spec.session_affinity, None);
        assert_eq!(spec.ip_families, None);
        assert_eq!(spec.ports.as_ref().expect("ports kept")[0].name, None);
        assert_eq!(spec.cluster_ips.as_ref().map(Vec::len), Some(2));
    }
    let nodes = source.nodes.state();
    assert_eq!(nodes.len(), 2);
    let node = nodes
        .iter()
        .find(|node| node.metadata.name.as_deref() == Some(NODE))
        .expect("own node cached");
    assert!(
        node.metadata
            .labels
            .as_ref()
            .is_some_and(|labels| labels["kubernetes.io/hostname"] == NODE)
    );
    assert_eq!(node.metadata.annotations, None);
    assert_eq!(node.spec, None);
    let status = node.status.as_ref().expect("status kept");
    assert_eq!(status.capacity, None);
    assert_eq!(status.conditions, None);
    assert_eq!(status.node_info, None);
    assert_eq!(status.images, None);
    assert_eq!(status.addresses.as_ref().map(Vec::len), Some(2));
    for policy in source.cluster_policies.state() {
        assert_eq!(policy.metadata.annotations, None);
        assert_eq!(policy.metadata.managed_fields, None);
        assert_eq!(policy.metadata.creation_timestamp, None);
        assert_eq!(policy.status, None);
        assert!(policy.spec.0.tier.is_some());
    }
}

#[tokio::test]
async fn cluster_policies_decide_in_their_tiers_with_node_peers_from_the_node_list() {
    let mut harness = Harness::start(&[]);
    let content = harness.content().await;
    let state = resolved(&content, &NodeState::default());
    let web = pod_ref("default", WEB_POD);
    let (prometheus, db) = (ip("10.244.1.9"), ip("10.244.2.7"));
    let decide = |peer, port| {
        state
            .decide(&web, Direction::Egress, peer, 6, port)
            .expect("an endpoint of this node")
    };
    // Admin: web scrapes monitoring on 9090 and reaches no other pod.
    assert!(matches!(decide(prometheus, 9090), Decision::Allowed { .. }));
    for (peer, port) in [(prometheus, 9091), (db, 5432)] {
        assert_eq!(
            admin_denial(&state, decide(peer, port)),
            "Admin web-reaches-only-monitoring, egress rule \"no-other-pods\""
        );
    }
    // Baseline: default's pods do not reach the control plane's addresses, InternalIP and
    // ExternalIP alike (no Admin rule matches nodes); other addresses stay open.
    for node_address in [ip("172.18.0.3"), ip("203.0.113.3")] {
        assert!(matches!(
            decide(node_address, 443),
            Decision::Denied {
                reason: DropReason::BaselineDenied,
                ..
            }
        ));
    }
    assert_eq!(decide(ip("172.18.0.2"), 443), Decision::NotIsolated);
}

#[tokio::test]
async fn an_invalid_cluster_policy_is_rejected_by_field_and_still_denies_its_subject() {
    let mut harness = Harness::start(&[]);
    harness.content().await;
    let watch = harness.watch(CLUSTER_POLICIES).await;
    watch.send(event(CLUSTER_POLICIES_WATCH, 0));
    let content = harness
        .until(|content| content.ok().filter(|c| !c.rejected.is_empty()))
        .await;
    let [rejected] = &content.rejected[..] else {
        panic!("{:?}", content.rejected);
    };
    assert_eq!(rejected.object, "ClusterNetworkPolicy too-important");
    assert_eq!(rejected.field, "spec.priority");
    // It stands as a denial of all egress from its subject, at the priority that decides
    // first: the Accept it asked for opens nothing, and what it covers is closed.
    let state = resolved(&content, &NodeState::default());
    let web = pod_ref("default", WEB_POD);
    let denied = state
        .decide(&web, Direction::Egress, ip("192.0.2.1"), 6, 443)
        .expect("an endpoint of this node");
    assert_eq!(
        admin_denial(&state, denied),
        "Admin too-important, egress rule 0"
    );
    let prometheus = pod_ref("monitoring", "prometheus-0");
    assert_eq!(
        state.decide(&prometheus, Direction::Egress, ip("192.0.2.1"), 6, 443),
        Some(Decision::NotIsolated)
    );
    watch.send(event(CLUSTER_POLICIES_WATCH, 1));
    let content = harness
        .until(|content| {
            content.ok().filter(|c| {
                c.snapshot
                    .cluster_policies
                    .iter()
                    .all(|policy| policy.name != "web-reaches-only-monitoring")
            })
        })
        .await;
    let names: Vec<&str> = content
        .snapshot
        .cluster_policies
        .iter()
        .map(|policy| policy.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["default-keeps-off-the-control-plane", "too-important"]
    );
}

#[tokio::test]
async fn a_cluster_without_the_crd_enforces_network_policy_and_picks_the_crd_up_later() {
    let mut harness = Harness::start(&[(
        CLUSTER_POLICIES,
        StatusCode::NOT_FOUND,
        NOT_FOUND.to_owned(),
    )]);
    let without = harness.content().await;
    assert!(without.snapshot.cluster_policies.is_empty());
    assert_eq!(without.snapshot.policies.len(), 1);
    // The watcher retries the list; once the CRD is served its objects apply.
    let with = harness
        .until(|content| {
            content
                .ok()
                .filter(|c| !c.snapshot.cluster_policies.is_empty())
        })
        .await;
    assert_eq!(with.snapshot.cluster_policies.len(), 2);
    assert_ne!(with.generation, without.generation);
}

#[tokio::test]
async fn a_crd_removed_while_watched_takes_its_policies_with_it() {
    let mut harness = Harness::start(&[]);
    let with = harness.content().await;
    assert_eq!(with.snapshot.cluster_policies.len(), 2);
    let watch = harness.watch(CLUSTER_POLICIES).await;
    harness.server.then_list(
        CLUSTER_POLICIES,
        StatusCode::NOT_FOUND,
        NOT_FOUND.to_owned(),
    );
    // The watch expires and the relist finds no such resource.
    watch.send(event(PODS_WATCH, 4));
    let without = harness
        .until(|content| {
            content
                .ok()
                .filter(|c| c.snapshot.cluster_policies.is_empty())
        })
        .await;
    assert_eq!(without.snapshot.policies, with.snapshot.policies);
    assert_ne!(without.generation, with.generation);
}

#[tokio::test]
async fn watch_events_add_modify_and_delete_pods() {
    let mut harness = Harness::start(&[]);
    let initial = harness.content().await;
    let initial_state = resolved(&initial, &NodeState::default());
    let watch = harness.watch(PODS).await;
    assert_eq!(watch.resource_version, "1000", "watches from the list");

    // Scheduled, no IP yet: in the snapshot, but neither an endpoint nor a peer.
    watch.send(event(PODS_WATCH, 0));
    let added = harness
        .until(|content| {
            content
                .ok()
                .filter(|c| pod(c, "default", API_POD).is_some())
        })
        .await;
    let api = pod(&added, "default", API_POD).expect("added");
    assert!(api.ips.is_empty());
    assert!(!api.is_peer());
    assert_ne!(added.generation, initial.generation);
    let cached = harness.source.pods.state();
    let cached = cached
        .iter()
        .find(|pod| pod.metadata.name.as_deref() == Some(API_POD))
        .expect("cached");
    assert_eq!(cached.metadata.managed_fields, None);
    assert_eq!(
        cached.status.as_ref().and_then(|s| s.conditions.clone()),
        None
    );
    let state = resolved(&added, &initial_state);
    assert!(!state.endpoints.contains_key(&pod_ref("default", API_POD)));
    assert!(Delta::between(&initial_state, &state).is_empty());

    watch.send(event(PODS_WATCH, 1));
    let running = harness
        .until(|content| {
            content
                .ok()
                .filter(|c| pod(c, "default", API_POD).is_some_and(|p| !p.ips.is_empty()))
        })
        .await;
    let api = pod(&running, "default", API_POD).expect("modified");
    assert_eq!(api.ips, [ip("10.244.1.12")]);
    assert_eq!(api.named_port("grpc", Protocol::Tcp), Some(9090));
    let state = resolved(&running, &initial_state);
    assert!(state.endpoints.contains_key(&pod_ref("default", API_POD)));

    watch.send(event(PODS_WATCH, 2));
    watch.send(event(PODS_WATCH, 3));
    let deleted = harness
        .until(|content| {
            content
                .ok()
                .filter(|c| pod(c, "default", API_POD).is_none())
        })
        .await;
    assert_eq!(deleted.snapshot, initial.snapshot);
    assert_eq!(deleted.generation, initial.generation);
}

#[tokio::test]
async fn invalid_objects_are_rejected_one_by_one_and_the_rest_applies() {
    let mut harness = Harness::start(&[]);
    harness.content().await;
    let watch = harness.watch(POLICIES).await;
    watch.send(event(POLICIES_WATCH, 0));
    watch.send(event(POLICIES_WATCH, 1));
    let content = harness
        .until(|content| {
            content.ok().filter(|c| {
                c.snapshot
                    .policies
                    .iter()
                    .any(|policy| policy.name == "deny-egress")
            })
        })
        .await;
    let names: Vec<&str> = content
        .snapshot
        .policies
        .iter()
        .map(|policy| policy.name.as_str())
        .collect();
    assert_eq!(names, ["deny-egress", "icmp-only", "web-from-db"]);
    // The rejected policy still isolates what it selects, with none of its rules.
    let icmp_only = &content.snapshot.policies[1];
    assert_eq!(icmp_only.pod_selector, Default::default());
    assert_eq!(icmp_only.policy_types, [Direction::Ingress]);
    assert!(icmp_only.ingress.is_empty() && icmp_only.egress.is_empty());
    assert_eq!(content.rejected.len(), 1);
    let rejected = &content.rejected[0];
    assert_eq!(rejected.object, "NetworkPolicy default/icmp-only");
    assert_eq!(rejected.field, "spec.ingress[0].ports[0].protocol");
    assert!(matches!(&rejected.error, FieldError::Protocol { value } if value == "ICMP"));
    assert_eq!(
        error_chain(rejected),
        "NetworkPolicy default/icmp-only: spec.ingress[0].ports[0].protocol: unknown protocol \
         \"ICMP\" (expected TCP, UDP or SCTP)"
    );
}

#[tokio::test]
async fn a_policy_with_a_leading_zero_cidr_keeps_its_pod_isolated() {
    let mut harness = Harness::start(&[]);
    let before = harness.content().await;
    let prometheus = pod_ref("monitoring", "prometheus-0");
    let open = resolved(&before, &NodeState::default());
    assert!(
        !open.endpoints[&prometheus]
            .info
            .isolated(Direction::Ingress)
    );
    let web = ip("10.244.1.5");
    assert_eq!(
        open.decide(&prometheus, Direction::Ingress, web, 6, 9090),
        Some(Decision::NotIsolated)
    );

    // Older API servers stored `010.244.0.0/16`; the conversion rejects it.
    let watch = harness.watch(POLICIES).await;
    watch.send(event(POLICIES_WATCH, 2));
    let content = harness
        .until(|content| content.ok().filter(|c| !c.rejected.is_empty()))
        .await;
    let [rejected] = &content.rejected[..] else {
        panic!("{:?}", content.rejected);
    };
    assert_eq!(
        error_chain(rejected),
        "NetworkPolicy monitoring/scrapers: spec.ingress[0].from[0].ipBlock.cidr: \
         \"010.244.0.0/16\" has an invalid address: invalid IP address syntax"
    );
    let state = resolved(&content, &open);
    let endpoint = &state.endpoints[&prometheus];
    assert!(endpoint.info.isolated(Direction::Ingress));
    assert!(!endpoint.info.isolated(Direction::Egress));
    assert_eq!(
        state.decide(&prometheus, Direction::Ingress, web, 6, 9090),
        Some(Decision::Denied {
            reason: DropReason::PolicyDenied,
            rule_id: 0
        })
    );
    assert_ne!(content.generation, before.generation);
}

#[tokio::test]
async fn gone_relists_and_an_unchanged_relist_changes_nothing() {
    let mut harness = Harness::start(&[]);
    let before = harness.content().await;
    let before_state = resolved(&before, &NodeState::default());
    let watch = harness.watch(PODS).await;

    harness
        .server
        .then_list(PODS, StatusCode::OK, relisted(PODS, "1600", &[]));
    watch.send(event(PODS_WATCH, 4));
    let rewatch = harness.watch(PODS).await;
    assert_eq!(rewatch.resource_version, "1600", "watches from the relist");
    assert_eq!(harness.server.requests(PODS, false).len(), 2);
    let after = harness.content().await;
    assert_eq!(after.snapshot, before.snapshot);
    assert_eq!(after.generation, before.generation);
    let after_state = resolved(&after, &before_state);
    assert_eq!(after_state, before_state);
    assert!(Delta::between(&before_state, &after_state).is_empty());

    // db-0 went away while the watch was gone: the relist drops it.
    harness
        .server
        .then_list(PODS, StatusCode::OK, relisted(PODS, "1700", &["db-0"]));
    rewatch.send(event(PODS_WATCH, 4));
    assert_eq!(harness.watch(PODS).await.resource_version, "1700");
    let shrunk = harness.content().await;
    assert!(pod(&shrunk, "default", "db-0").is_none());
    assert!(pod(&shrunk, "default", WEB_POD).is_some());
    assert_ne!(shrunk.generation, before.generation);
    let shrunk_state = resolved(&shrunk, &after_state);
    assert!(!Delta::between(&after_state, &shrunk_state).is_empty());
}

#[tokio::test]
async fn a_dropped_connection_resumes_from_the_last_version_after_a_backoff() {
    let mut harness = Harness::start(&[]);
    harness.content().await;
    let watch = harness.watch(PODS).await;
    watch.send(event(PODS_WATCH, 0));
    watch.send(event(PODS_WATCH, 2));
    harness
        .until(|content| {
            content
                .ok()
                .filter(|c| pod(c, "default", API_POD).is_some())
        })
        .await;
    let dropped_at = Instant::now();
    watch.drop_connection();

    let resumed = harness.watch(PODS).await;
    assert_eq!(
        resumed.resource_version, "1500",
        "resumes from the bookmark"
    );
    let waited = resumed.at - dropped_at;
    assert!(waited >= MIN_BACKOFF, "retried after {waited:?}");
    assert_eq!(harness.server.requests(PODS, false).len(), 1, "no relist");

    resumed.send(event(PODS_WATCH, 1));
    let content = harness
        .until(|content| {
            content
                .ok()
                .filter(|c| pod(c, "default", API_POD).is_some_and(|p| !p.ips.is_empty()))
        })
        .await;
    assert!(content.rejected.is_empty());
}

#[tokio::test]
async fn a_failed_list_gives_nothing_and_is_retried_after_a_backoff() {
    let mut harness = Harness::start(&[(PODS, StatusCode::FORBIDDEN, FORBIDDEN.to_owned())]);
    let kinds = harness
        .until(|content| match content {
            Err(NotReady::NotListed { kinds }) if kinds == "Pod" => Some(kinds),
            _ => None,
        })
        .await;
    assert_eq!(kinds, "Pod");
    let content = harness.content().await;
    assert_eq!(content.snapshot.pods.len(), 3);
    let lists = harness.server.requests(PODS, false);
    assert_eq!(lists.len(), 2);
    assert!(
        lists[1] - lists[0] >= MIN_BACKOFF,
        "retried after {:?}",
        lists[1] - lists[0]
    );
}

#[tokio::test]
async fn nothing_is_given_until_the_own_node_exists() {
    let empty = relisted(NODES, "1000", &[NODE]);
    let mut harness = Harness::start(&[(NODES, StatusCode::OK, empty)]);
    let node = harness
        .until(|content| match content {
            Err(NotReady::NodeMissing { node }) => Some(node),
            _ => None,
        })
        .await;
    assert_eq!(node, NODE);
    let list: serde_json::Value =
        serde_json::from_str(&recorded_list(NODES)).expect("recorded list");
    let added = serde_json::json!({"type": "ADDED", "object": list["items"][0]});
    harness.watch(NODES).await.send(format!("{added}\n"));
    let content = harness.content().await;
    assert_eq!(content.snapshot.pods.len(), 3);
}

#[tokio::test]
async fn a_node_update_the_agent_does_not_read_changes_nothing() {
    let mut harness = Harness::start(&[]);
    harness.content().await;
    let watch = harness.watch(NODES).await;
    while harness.changes.try_recv().is_ok() {}
    let list: serde_json::Value =
        serde_json::from_str(&recorded_list(NODES)).expect("recorded list");
    let mut node = list["items"][0].clone();
    node["metadata"]["resourceVersion"] = "1100".into();
    node["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-05T10:35:00Z".into();
    let modified = |node: &serde_json::Value| {
        format!(
            "{}\n",
            serde_json::json!({"type": "MODIFIED", "object": node})
        )
    };
    watch.send(modified(&node));
    // The heartbeat reached the cache, and no change was announced for it.
    tokio::time::timeout(PATIENCE, async {
        while harness
            .source
            .nodes
            .state()
            .iter()
            .all(|cached| cached.metadata.resource_version.as_deref() != Some("1100"))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the update cached in time");
    assert!(harness.changes.try_recv().is_err());

    node["metadata"]["resourceVersion"] = "1200".into();
    node["status"]["addresses"][0]["address"] = "172.18.0.12".into();
    watch.send(modified(&node));
    let content = harness
        .until(|content| {
            content.ok().filter(|c| {
                c.snapshot
                    .nodes
                    .iter()
                    .any(|node| node.addresses.contains(&ip("172.18.0.12")))
            })
        })
        .await;
    assert_eq!(content.snapshot.nodes.len(), 2);
}
