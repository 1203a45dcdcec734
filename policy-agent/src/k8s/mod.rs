//! The Kubernetes source: reflectors over the API server feed the same snapshot -> resolve ->
//! delta path as the manifest source.
//!
//! What is watched (list + watch, with bookmarks):
//! - Pods of all namespaces: labels, node, phase, IPs and container ports. Policies select pods
//!   of every namespace as peers, so every pod is cached, not only this node's.
//! - Namespaces (labels, for namespaceSelectors), NetworkPolicies (the whole spec) and Services
//!   (ClusterIPs, selector, ports).
//! - ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`, the whole spec; [`resource`]).
//!   A cluster without their CRD has none: the list's 404 counts as an empty list, so the agent
//!   enforces NetworkPolicy there, and the watch keeps retrying until the CRD is installed. A
//!   CRD removed while the agent runs (a 404 on relisting or rewatching) empties the cache.
//! - Nodes (name, labels and addresses), for the `nodes` peers of ClusterNetworkPolicies. The
//!   agent enforces on the pods whose `spec.nodeName` is its `--node-name`; if no such Node
//!   exists, the name is wrong and enforcing would silently cover no pod, so no snapshot is
//!   given (the reconcile fails with a clear error) until the Node exists. Its addresses are
//!   logged when it appears. Nodes report their status every few minutes; only an update of
//!   their labels or addresses announces a change, so thousands of Nodes do not keep the agent
//!   resolving.
//!
//! EndpointSlices are not watched: the datapath decides a pod's egress to a ClusterIP after
//! kube-proxy's DNAT, against the backend pod's own IP (which the Pods already give), so it only
//! needs the ClusterIPs of the Services, never the list of their backends.
//!
//! Every object is stripped to the fields above before it is cached ([`strip`]). Watch errors
//! back off exponentially (kube's default, 0.8 s to 30 s) and the watch resumes from the last
//! resourceVersion; a 410 Gone relists, and the store swaps the relisted content in at once.
//! Content is only given once every kind has been listed completely, so a half-listed cluster
//! (pods without their policies) never opens anything.
//!
//! Objects the conversion rejects are reported one by one (object and field) and left out; the
//! rest applies. A rejected NetworkPolicy still isolates the pods it selects, with none of its
//! rules ([`convert::rejected_network_policy`]), and a rejected ClusterNetworkPolicy still denies
//! all to its subject at its tier and priority ([`cluster::rejected_cluster_network_policy`]), so
//! rejecting either never opens what it would have closed.
//! Pods without IPs or without a node are simply not endpoints or peers yet.

pub mod resource;
mod strip;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fmt::Debug,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    config::{Config, InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use self::resource::ClusterNetworkPolicy;
use crate::{
    error_chain,
    manifest::{
        cluster,
        convert::{self, FieldError, Invalid},
    },
    policy::model::Snapshot,
};

/// Why the Kubernetes client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot use the kubeconfig {path}", path = path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("no Kubernetes configuration: not running in a cluster, and no usable kubeconfig")]
    Infer {
        #[source]
        source: InferConfigError,
    },
    #[error("cannot create the Kubernetes client")]
    Client {
        #[source]
        source: kube::Error,
    },
}

/// Why the source has no content to give yet.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("waiting for the first complete list of {kinds} from the API server")]
    NotListed { kinds: String },
    #[error(
        "node {node} does not exist in the cluster: check --node-name (or NODE_NAME); nothing \
         is enforced for it until it does"
    )]
    NodeMissing { node: String },
}

/// An object the conversion rejected, with the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {field}")]
pub struct Rejected {
    pub object: String,
    pub field: String,
    #[source]
    pub error: FieldError,
}

/// What a source gives one reconcile: the converted snapshot and what stands for it.
#[derive(Debug)]
pub struct Content {
    pub snapshot: Snapshot,
    /// Equal content, equal generation. Here: a hex SHA-256 of the sorted (kind, uid,
    /// resourceVersion) of every converted object, so a relist of unchanged objects gives the
    /// same generation.
    pub generation: String,
    /// Objects left out of the snapshot, each with the field at fault.
    pub rejected: Vec<Rejected>,
}

/// The kinds the source watches, in the order the generation hashes them; the discriminant
/// indexes [`KubeSource::listed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Pod,
    Service,
    NetworkPolicy,
    Node,
    ClusterNetworkPolicy,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::NetworkPolicy,
        Kind::Node,
        Kind::ClusterNetworkPolicy,
    ];

    const fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// Whether the API server may not serve the kind at all (a CRD that is not installed).
    const fn optional(self) -> bool {
        matches!(self, Kind::ClusterNetworkPolicy)
    }
}

/// Builds a client from `kubeconfig`, or else as `kube` infers it: the in-cluster service
/// account, then `KUBECONFIG`, then `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| ClientError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => Config::infer()
            .await
            .map_err(|source| ClientError::Infer { source })?,
    };
    Client::try_from(config).map_err(|source| ClientError::Client { source })
}

/// The reflectors' caches. Dropping the source stops its watches.
pub struct KubeSource {
    node_name: String,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    policies: Store<NetworkPolicy>,
    nodes: Store<Node>,
    cluster_policies: Store<ClusterNetworkPolicy>,
    /// Per [`Kind`] (by position in [`Kind::ALL`]): whether its first list is complete.
    listed: Arc<[AtomicBool; Kind::ALL.len()]>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeSource {
    /// Starts the watches (on the current tokio runtime). Every change to a cache (an added,
    /// modified or deleted object, or a completed list) sends one `()`.
    pub fn start(client: Client, node_name: &str) -> (KubeSource, mpsc::UnboundedReceiver<()>) {
        let (changes, receiver) = mpsc::unbounded_channel();
        let listed = Arc::new([const { AtomicBool::new(false) }; Kind::ALL.len()]);
        let mut tasks = Vec::new();
        let mut watch = Watch {
            changes: &changes,
            listed: &listed,
            tasks: &mut tasks,
        };
        let everything = watcher::Config::default;
        let namespaces = watch.spawn(
            Kind::Namespace,
            Api::all(client.clone()),
            everything(),
            strip::namespace,
            Relevance::Every,
            |_| {},
        );
        let pods = watch.spawn(
            Kind::Pod,
            Api::all(client.clone()),
            everything(),
            strip::pod,
            Relevance::Every,
            |_| {},
        );
        let services = watch.spawn(
            Kind::Service,
            Api::all(client.clone()),
            everything(),
            strip::service,
            Relevance::Every,
            |_| {},
        );
        let policies = watch.spawn(
            Kind::NetworkPolicy,
            Api::all(client.clone()),
            everything(),
            strip::network_policy,
            Relevance::Every,
            |_| {},
        );
        let own_node = node_name.to_owned();
        let nodes = watch.spawn(
            Kind::Node,
            Api::all(client.clone()),
            everything(),
            strip::node,
            Relevance::Fingerprint(node_fingerprint),
            move |node: &Node| {
                if node.metadata.name.as_deref() == Some(own_node.as_str()) {
                    log_node(node);
                }
            },
        );
        let cluster_policies = watch.spawn(
            Kind::ClusterNetworkPolicy,
            Api::all(client),
            everything(),
            strip::cluster_network_policy,
            Relevance::Every,
            |_| {},
        );

        let source = KubeSource {
            node_name: node_name.to_owned(),
            namespaces,
            pods,
            services,
            policies,
            nodes,
            cluster_policies,
            listed,
            tasks,
        };
        (source, receiver)
    }

    /// Converts what the caches hold, once every kind is listed and this node exists.
    pub fn content(&self) -> Result<Content, NotReady> {
        let missing: Vec<&str> = Kind::ALL
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.listed[*index].load(Ordering::Acquire))
            .map(|(_, kind)| kind.name())
            .collect();
        if !missing.is_empty() {
            return Err(NotReady::NotListed {
                kinds: missing.join(", "),
            });
        }
        let own_node = self
            .nodes
            .find(|node| node.metadata.name.as_deref() == Some(self.node_name.as_str()));
        if own_node.is_none() {
            return Err(NotReady::NodeMissing {
                node: self.node_name.clone(),
            });
        }

        let mut converted = Converted::default();
        let snapshot = Snapshot {
            namespaces: converted.all(Kind::Namespace, &self.namespaces, convert::namespace),
            pods: converted.all(Kind::Pod, &self.pods, convert::pod),
            services: converted.all(Kind::Service, &self.services, convert::service),
            policies: converted.all_or(
                Kind::NetworkPolicy,
                &self.policies,
                convert::network_policy,
                |policy| {
                    serde_json::to_value(policy)
                        .ok()
                        .and_then(|value| convert::rejected_network_policy(&value))
                },
            ),
            cluster_policies: converted.all_or(
                Kind::ClusterNetworkPolicy,
                &self.cluster_policies,
                |policy| cluster::cluster_network_policy(&policy.to_api()),
                |policy| {
                    serde_json::to_value(policy.to_api())
                        .ok()
                        .and_then(|value| cluster::rejected_cluster_network_policy(&value))
                },
            ),
            nodes: converted.all(Kind::Node, &self.nodes, cluster::node),
        };
        let Converted {
            mut versions,
            rejected,
        } = converted;
        versions.sort();
        let mut hasher = Sha256::new();
        for (kind, uid, resource_version) in &versions {
            for part in [kind.name(), uid, resource_version] {
                hasher.update(part.as_bytes());
                hasher.update([0]);
            }
        }
        Ok(Content {
            snapshot,
            generation: format!("{:x}", hasher.finalize()),
            rejected,
        })
    }
}

/// What [`KubeSource::start`] shares with each watch task.
struct Watch<'a> {
    changes: &'a mpsc::UnboundedSender<()>,
    listed: &'a Arc<[AtomicBool; Kind::ALL.len()]>,
    tasks: &'a mut Vec<JoinHandle<()>>,
}

impl Watch<'_> {
    /// Spawns a watcher of `api`, stripped by `strip` and reflected into the returned store.
    fn spawn<K>(
        &mut self,
        kind: Kind,
        api: Api<K>,
        config: watcher::Config,
        strip: fn(&mut K),
        relevance: Relevance<K>,
        on_apply: impl Fn(&K) + Send + 'static,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (store, mut writer) = reflector::store();
        let index = kind as usize;
        let changes = self.changes.clone();
        let listed = Arc::clone(self.listed);
        let mut events = watcher(api, config).default_backoff().modify(strip).boxed();
        self.tasks.push(tokio::spawn(async move {
            // What the agent read of each object, for kinds that change in other ways often.
            let mut seen = HashMap::new();
            let mut relisted = HashMap::new();
            while let Some(event) = events.next().await {
                if let Ok(event) = &event {
                    writer.apply_watcher_event(event);
                }
                match event {
                    Ok(watcher::Event::InitDone) => {
                        seen = std::mem::take(&mut relisted);
                        listed[index].store(true, Ordering::Release);
                        info!(kind = kind.name(), "listed");
                    }
                    Ok(watcher::Event::Apply(object)) => {
                        if let Relevance::Fingerprint(fingerprint) = relevance {
                            let read = fingerprint(&object);
                            if seen.insert(object_key(&object), read) == Some(read) {
                                continue;
                            }
                        }
                        on_apply(&object);
                    }
                    Ok(watcher::Event::Delete(object)) => {
                        seen.remove(&object_key(&object));
                    }
                    // Until InitDone the store still holds the previous content.
                    Ok(watcher::Event::InitApply(object)) => {
                        if let Relevance::Fingerprint(fingerprint) = relevance {
                            relisted.insert(object_key(&object), fingerprint(&object));
                        }
                        on_apply(&object);
                        continue;
                    }
                    Ok(watcher::Event::Init) => {
                        relisted.clear();
                        continue;
                    }
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        info!(kind = kind.name(), "watch expired (410 Gone): relisting");
                        continue;
                    }
                    Err(
                        watcher::Error::InitialListFailed(kube::Error::Api(status))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(status)),
                    ) if status.code == 404 && kind.optional() => {
                        // No such resource: nothing of the kind exists, which is a complete
                        // list, and a CRD removed while watched took its objects with it. The
                        // watcher retries, so a CRD installed later is picked up.
                        let cached = !writer.as_reader().is_empty();
                        if cached {
                            writer.apply_watcher_event(&watcher::Event::Init);
                            writer.apply_watcher_event(&watcher::Event::InitDone);
                            seen.clear();
                        }
                        if !listed[index].swap(true, Ordering::AcqRel) || cached {
                            warn!(
                                kind = kind.name(),
                                "the API server does not serve this kind (CRD not installed?): \
                                 none apply until it does"
                            );
                        } else {
                            continue;
                        }
                    }
                    Err(error) => {
                        warn!(kind = kind.name(), "{}; retrying", error_chain(&error));
                        continue;
                    }
                }
                // The receiver is gone only while the agent exits.
                let _ = changes.send(());
            }
        }));
        store
    }
}

/// Which updates of a kind's objects concern the agent.
enum Relevance<K> {
    /// Every update.
    Every,
    /// Those that change this digest of what the agent reads: Nodes report their status every
    /// few minutes, and a cluster of thousands of them would otherwise keep the agent resolving.
    Fingerprint(fn(&K) -> u64),
}

impl<K> Clone for Relevance<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Relevance<K> {}

/// What the agent reads of a Node: its labels and addresses.
fn node_fingerprint(node: &Node) -> u64 {
    let mut hasher = DefaultHasher::new();
    node.metadata.labels.hash(&mut hasher);
    for address in node
        .status
        .iter()
        .flat_map(|status| status.addresses.iter().flatten())
    {
        (&address.type_, &address.address).hash(&mut hasher);
    }
    hasher.finish()
}

/// An object's namespace and name.
fn object_key<K: Resource>(object: &K) -> (Option<String>, Option<String>) {
    let metadata = object.meta();
    (metadata.namespace.clone(), metadata.name.clone())
}

/// Logs the node's addresses when it appears or changes.
fn log_node(node: &Node) {
    let addresses: Vec<String> = node
        .status
        .iter()
        .flat_map(|status| status.addresses.iter().flatten())
        .map(|address| format!("{}={}", address.type_, address.address))
        .collect();
    info!(
        node = node.metadata.name.as_deref().unwrap_or_default(),
        addresses = %addresses.join(","),
        "node found"
    );
}

/// Converted objects, their versions and the rejected ones.
#[derive(Default)]
struct Converted {
    versions: Vec<(Kind, String, String)>,
    rejected: Vec<Rejected>,
}

impl Converted {
    /// Converts every object of `store`, sorted by namespace and name so the resolver sees the
    /// same snapshot whatever order the cache holds them in.
    fn all<K, T>(
        &mut self,
        kind: Kind,
        store: &Store<K>,
        convert: fn(&K) -> Result<T, Invalid>,
    ) -> Vec<T>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        self.all_or(kind, store, convert, |_| None)
    }

    /// [`Converted::all`], where `rejected` gives what an object the conversion rejects
    /// still stands for (it is reported as rejected either way).
    fn all_or<K, T>(
        &mut self,
        kind: Kind,
        store: &Store<K>,
        convert: fn(&K) -> Result<T, Invalid>,
        rejected: fn(&K) -> Option<T>,
    ) -> Vec<T>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let mut objects = store.state();
        objects.sort_by(|a, b| {
            let key = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
            key(a).cmp(&key(b))
        });
        let mut converted = Vec::with_capacity(objects.len());
        for object in objects {
            let metadata = object.meta();
            let value = match convert(&object) {
                Ok(value) => Some(value),
                Err(invalid) => {
                    self.rejected.push(Rejected {
                        object: object_name(kind, metadata),
                        field: invalid.field,
                        error: invalid.error,
                    });
                    rejected(&object)
                }
            };
            if let Some(value) = value {
                converted.push(value);
                self.versions.push((
                    kind,
                    metadata.uid.clone().unwrap_or_default(),
                    metadata.resource_version.clone().unwrap_or_default(),
                ));
            }
        }
        converted
    }
}

/// `Kind namespace/name`, or `Kind name` for cluster-scoped kinds.
fn object_name(
    kind: Kind,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    let name = metadata.name.as_deref().unwrap_or("<unnamed>");
    match &metadata.namespace {
        Some(namespace) => format!("{} {namespace}/{name}", kind.name()),
        None => format!("{} {name}", kind.name()),
    }
}
