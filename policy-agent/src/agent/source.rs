//! Where the agent reads the cluster from, and how it learns of changes. Both sources give the
//! run loop the same thing: a [`Loaded`] (the converted snapshot, its generation and the objects
//! rejected), and a channel that carries one `()` per change.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::debug;

use super::AgentError;
use crate::{
    error_chain,
    k8s::{self, Content, KubeSource, NotReady, Rejected},
    manifest::{self, ManifestError},
    policy::model::Snapshot,
};

/// The agent's source of Pods, Namespaces, Services and NetworkPolicies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The API server (`kubernetes`): the in-cluster service account, or a kubeconfig (this
    /// one, else `KUBECONFIG`, else `~/.kube/config`).
    Kubernetes { kubeconfig: Option<PathBuf> },
    /// A directory of manifests, watched with inotify (`files:DIR`).
    Files(PathBuf),
}

/// A `--source` value the agent does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown source `{given}`: expected `kubernetes` or `files:DIR`")]
pub struct SourceParseError {
    given: String,
}

impl FromStr for Source {
    type Err = SourceParseError;

    fn from_str(text: &str) -> Result<Source, SourceParseError> {
        match text.split_once(':') {
            None if text == "kubernetes" => Ok(Source::Kubernetes { kubeconfig: None }),
            Some(("files", dir)) if !dir.is_empty() => Ok(Source::Files(PathBuf::from(dir))),
            _ => Err(SourceParseError {
                given: text.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Kubernetes { .. } => f.write_str("kubernetes"),
            Source::Files(dir) => write!(f, "files:{}", dir.display()),
        }
    }
}

/// Why a source gave no content to apply.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "the manifests have {} error(s); keeping the last good state. First: {}",
        errors.len(),
        errors.first().map(|error| error_chain(error)).unwrap_or_default()
    )]
    Manifests { errors: Vec<ManifestError> },
    #[error("cannot hash the manifests")]
    Generation {
        #[source]
        source: ManifestError,
    },
    #[error("keeping the last good state")]
    NotReady(#[source] NotReady),
}

/// An object the source rejected: reported while the rest applies.
#[derive(Debug, thiserror::Error)]
pub enum RejectedObject {
    #[error(transparent)]
    Kubernetes(#[from] Rejected),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// What one reconcile applies: the snapshot, its generation, and the objects rejected (a
/// rejected NetworkPolicy is in the snapshot as isolation without its rules).
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub generation: String,
    pub rejected: Vec<RejectedObject>,
}

/// A started source.
pub enum Loader {
    Files {
        dir: PathBuf,
        _watcher: notify::RecommendedWatcher,
    },
    Kubernetes(KubeSource),
}

impl Loader {
    /// Starts watching `source`; the receiver gets one `()` per change.
    pub async fn start(
        source: &Source,
        node_name: &str,
    ) -> Result<(Loader, mpsc::UnboundedReceiver<()>), AgentError> {
        match source {
            Source::Files(dir) => {
                let (watcher, changes) = watch(dir)?;
                let loader = Loader::Files {
                    dir: dir.clone(),
                    _watcher: watcher,
                };
                Ok((loader, changes))
            }
            Source::Kubernetes { kubeconfig } => {
                let client = k8s::client(kubeconfig.as_deref()).await?;
                let (source, changes) = KubeSource::start(client, node_name);
                Ok((Loader::Kubernetes(source), changes))
            }
        }
    }

    /// The current content. Both sources apply a rejected NetworkPolicy as isolation without
    /// its rules and report it. The Kubernetes source leaves other rejected objects out; manifests
    /// with any other error (an unparsable document, an invalid Pod, Namespace or Service, a
    /// second definition) give no content: the last good state stays, since leaving such an
    /// object out could open a pod, and a user editing files fixes them.
    pub fn load(&self) -> Result<Loaded, LoadError> {
        match self {
            Loader::Files { dir, .. } => load_files(dir),
            Loader::Kubernetes(source) => {
                let Content {
                    snapshot,
                    generation,
                    rejected,
                } = source.content().map_err(LoadError::NotReady)?;
                Ok(Loaded {
                    snapshot,
                    generation,
                    rejected: rejected.into_iter().map(RejectedObject::from).collect(),
                })
            }
        }
    }
}

fn load_files(dir: &Path) -> Result<Loaded, LoadError> {
    // The hash first: content read after it is at least as new, so a published generation
    // is never ahead of what was applied.
    let generation =
        manifest::generation(dir).map_err(|source| LoadError::Generation { source })?;
    let loaded = manifest::load(std::slice::from_ref(&dir.to_owned()));
    if loaded.errors.len() > loaded.isolating.len() {
        return Err(LoadError::Manifests {
            errors: loaded.errors,
        });
    }
    for skipped in &loaded.skipped {
        debug!("{skipped}");
    }
    Ok(Loaded {
        snapshot: loaded.snapshot,
        generation,
        rejected: loaded
            .errors
            .into_iter()
            .map(RejectedObject::Manifest)
            .collect(),
    })
}

/// Watches `dir` (recursively); every change sends one `()`. The watcher stops when dropped.
pub fn watch(
    dir: &std::path::Path,
) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>), AgentError> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let watch_error = |source| AgentError::Watch {
        dir: dir.to_owned(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.is_ok_and(|event| !event.kind.is_access());
        if relevant {
            // The receiver is gone only while the agent exits.
            let _ = sender.send(());
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(watch_error)?;
    Ok((watcher, receiver))
}

#[cfg(test)]
mod tests {
    use policy_common::verdict::Direction;

    use super::*;

    #[test]
    fn files_source_parses_and_prints() {
        let source: Source = "files:/run/manifests".parse().expect("valid source");
        assert_eq!(source, Source::Files(PathBuf::from("/run/manifests")));
        assert_eq!(source.to_string(), "files:/run/manifests");
    }

    #[test]
    fn kubernetes_source_parses_and_prints() {
        let source: Source = "kubernetes".parse().expect("valid source");
        assert_eq!(source, Source::Kubernetes { kubeconfig: None });
        assert_eq!(source.to_string(), "kubernetes");
    }

    /// A manifest directory removed when the test ends.
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn objects_that_could_open_a_pod_keep_the_whole_content_from_being_applied() {
        let dir = Dir(std::env::temp_dir().join(format!("source-strict-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                      metadata: {name: db, namespace: shop}\nspec: {podSelector: {}}\n";
        std::fs::write(dir.0.join("a.yaml"), policy).unwrap();
        let content = load_files(&dir.0).expect("valid manifests load");
        assert_eq!(content.snapshot.policies.len(), 1);
        for (file, text, expected) in [
            (
                "b.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n\
                 spec: {containers: [{name: c, image: i, portz: []}]}\n",
                "unknown field spec.containers[0].portz",
            ),
            ("b.yaml", policy, "already defined in"),
            ("b.yaml", "kind: [", "not valid YAML"),
        ] {
            std::fs::write(dir.0.join(file), text).unwrap();
            match load_files(&dir.0) {
                Err(LoadError::Manifests { errors }) => {
                    let message = error_chain(&errors[0]);
                    assert!(message.contains(expected), "{message}");
                }
                Err(other) => panic!("{expected}: {other}"),
                Ok(_) => panic!("{expected}: content with a rejected object was given"),
            }
        }
    }

    #[test]
    fn a_rejected_policy_applies_as_isolation_with_the_rest() {
        let dir = Dir(std::env::temp_dir().join(format!("source-closed-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(
            dir.0.join("a.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: deny, namespace: other}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        std::fs::write(
            dir.0.join("b.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: db, namespace: shop}\n\
             spec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress, Egress]\n\
             \x20 ingress: [{from: [{ipBlock: {cidr: 010.0.0.0/8}}]}]\n",
        )
        .unwrap();
        let content = load_files(&dir.0).expect("a rejected policy does not stop the rest");
        let [rejected] = &content.rejected[..] else {
            panic!("{:?}", content.rejected);
        };
        let message = error_chain(rejected);
        assert!(
            message.contains("NetworkPolicy shop/db: spec.ingress[0].from[0].ipBlock.cidr"),
            "{message}"
        );
        let names: Vec<&str> = content
            .snapshot
            .policies
            .iter()
            .map(|policy| policy.name.as_str())
            .collect();
        assert_eq!(names, ["deny", "db"]);
        let db = &content.snapshot.policies[1];
        assert!(db.ingress.is_empty() && db.egress.is_empty());
        assert_eq!(db.policy_types, [Direction::Ingress, Direction::Egress]);
        assert_eq!(db.pod_selector.to_string(), "app=db");
    }

    #[test]
    fn other_sources_are_refused_by_name() {
        for given in ["kubernetes:", "kube", "files:", "dir:/x"] {
            let error = given.parse::<Source>().expect_err("invalid source");
            assert!(error.to_string().contains(given), "{error}");
        }
    }
}
