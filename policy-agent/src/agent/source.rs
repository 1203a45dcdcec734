//! Where the agent reads the cluster from, and how it learns of changes. Both sources give the
//! run loop the same thing: a [`Content`] (the converted snapshot and its generation), and a
//! channel that carries one `()` per change.

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
    k8s::{self, Content, KubeSource, NotReady},
    manifest::{self, ManifestError},
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

    /// The current content. Manifests with errors give none: a user editing files fixes them.
    /// The Kubernetes source leaves rejected objects out (each is in [`Content::rejected`]);
    /// manifests never reject one.
    pub fn load(&self) -> Result<Content, LoadError> {
        match self {
            Loader::Files { dir, .. } => load_files(dir),
            Loader::Kubernetes(source) => source.content().map_err(LoadError::NotReady),
        }
    }
}

fn load_files(dir: &Path) -> Result<Content, LoadError> {
    // The hash first: content read after it is at least as new, so a published generation
    // is never ahead of what was applied.
    let generation =
        manifest::generation(dir).map_err(|source| LoadError::Generation { source })?;
    let loaded = manifest::load(std::slice::from_ref(&dir.to_owned()));
    if !loaded.errors.is_empty() {
        return Err(LoadError::Manifests {
            errors: loaded.errors,
        });
    }
    for skipped in &loaded.skipped {
        debug!("{skipped}");
    }
    Ok(Content {
        snapshot: loaded.snapshot,
        generation,
        rejected: Vec::new(),
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
    fn rejected_objects_keep_the_whole_content_from_being_applied() {
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
            (
                "b.yaml",
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {name: other, namespace: shop}\n",
                "NetworkPolicy shop/other: spec: is required",
            ),
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
    fn other_sources_are_refused_by_name() {
        for given in ["kubernetes:", "kube", "files:", "dir:/x"] {
            let error = given.parse::<Source>().expect_err("invalid source");
            assert!(error.to_string().contains(given), "{error}");
        }
    }
}
