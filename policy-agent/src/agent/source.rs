//! Where the agent reads the cluster from, and how it learns of changes.

use std::{fmt, path::PathBuf, str::FromStr};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::AgentError;

/// The agent's source of Pods, Namespaces and NetworkPolicies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory of manifests, watched with inotify (`files:DIR`).
    Files(PathBuf),
}

/// A `--source` value the agent does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown source `{given}`: expected `files:DIR`")]
pub struct SourceParseError {
    given: String,
}

impl FromStr for Source {
    type Err = SourceParseError;

    fn from_str(text: &str) -> Result<Source, SourceParseError> {
        match text.split_once(':') {
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
            Source::Files(dir) => write!(f, "files:{}", dir.display()),
        }
    }
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
    fn other_sources_are_refused_by_name() {
        for given in ["kubernetes", "files:", "dir:/x"] {
            let error = given.parse::<Source>().expect_err("invalid source");
            assert!(error.to_string().contains(given), "{error}");
        }
    }
}
