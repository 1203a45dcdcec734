//! Kubernetes YAML (files or directories, multi-document) loaded into a [`Snapshot`] through
//! the k8s-openapi types, the same conversion the Kubernetes source uses.
//!
//! Each document is parsed on its own, so an unparsable document or an invalid object is
//! reported (file, object, field) and skipped while everything else loads. Kinds other than
//! Namespace, Pod, Service and NetworkPolicy are skipped with a note.

mod addresses;
pub mod convert;

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

pub use addresses::{AddressError, assign_addresses, node_count, node_name};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::policy::model::Snapshot;

/// A file, document or object that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: document {document} (line {line}): not valid YAML", path = path.display())]
    Yaml {
        path: PathBuf,
        document: usize,
        line: usize,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{path}: document {document} (line {line}): {problem}", path = path.display())]
    Shape {
        path: PathBuf,
        document: usize,
        line: usize,
        problem: &'static str,
    },
    #[error("{path}: {object}: does not fit the {kind} schema", path = path.display())]
    Schema {
        path: PathBuf,
        object: String,
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {object}: {field}", path = path.display())]
    Invalid {
        path: PathBuf,
        object: String,
        field: String,
        #[source]
        error: convert::FieldError,
    },
}

/// An object of a kind the agent does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub object: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: kind not used by NetworkPolicy, skipped",
            self.path.display(),
            self.object
        )
    }
}

/// What loading produced: the snapshot of every valid object, and what was left out.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub errors: Vec<ManifestError>,
    pub skipped: Vec<Skipped>,
}

/// Loads every `*.yaml`, `*.yml` and `*.json` file under the given files and directories
/// (directories recursively, in sorted path order).
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        match manifest_files(path) {
            Ok(files) => {
                for file in files {
                    match fs::read_to_string(&file) {
                        Ok(text) => load_text(&file, &text, &mut loaded),
                        Err(source) => loaded
                            .errors
                            .push(ManifestError::Read { path: file, source }),
                    }
                }
            }
            Err(error) => loaded.errors.push(error),
        }
    }
    loaded
}

/// Loads the documents of one file's text into `loaded`; `path` only names the source.
pub fn load_text(path: &Path, text: &str, loaded: &mut Loaded) {
    for (index, (line, document)) in split_documents(text).into_iter().enumerate() {
        let document_number = index + 1;
        let value: serde_json::Value = match serde_norway::from_str(document) {
            Ok(value) => value,
            Err(source) => {
                loaded.errors.push(ManifestError::Yaml {
                    path: path.to_owned(),
                    document: document_number,
                    line,
                    source,
                });
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let shape_error = |problem| ManifestError::Shape {
            path: path.to_owned(),
            document: document_number,
            line,
            problem,
        };
        let Some(kind) = value
            .get("kind")
            .and_then(|k| k.as_str())
            .map(str::to_owned)
        else {
            loaded
                .errors
                .push(shape_error("not a Kubernetes object (no kind)"));
            continue;
        };
        if kind == "List" {
            match value.get("items").and_then(|items| items.as_array()) {
                Some(items) => {
                    for item in items {
                        load_object(path, item.clone(), loaded);
                    }
                }
                None => loaded.errors.push(shape_error("a List without items")),
            }
            continue;
        }
        load_object(path, value, loaded);
    }
}

fn load_object(path: &Path, value: serde_json::Value, loaded: &mut Loaded) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let metadata = value.get("metadata");
    let text = |key: &str| {
        metadata
            .and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let name = text("name").unwrap_or_else(|| "<unnamed>".to_owned());
    let object = match (kind.as_str(), text("namespace")) {
        ("Namespace", _) => format!("Namespace {name}"),
        (_, Some(namespace)) => format!("{kind} {namespace}/{name}"),
        (_, None) => format!("{kind} default/{name}"),
    };
    let snapshot = &mut loaded.snapshot;
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => typed(path, &object, &kind, value, convert::namespace)
            .map(|ns| snapshot.namespaces.push(ns)),
        ("v1", "Pod") => {
            typed(path, &object, &kind, value, convert::pod).map(|pod| snapshot.pods.push(pod))
        }
        ("v1", "Service") => typed(path, &object, &kind, value, convert::service)
            .map(|service| snapshot.services.push(service)),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            typed(path, &object, &kind, value, convert::network_policy)
                .map(|policy| snapshot.policies.push(policy))
        }
        _ => {
            loaded.skipped.push(Skipped {
                path: path.to_owned(),
                object: format!("{object} ({api_version})"),
            });
            Ok(())
        }
    };
    if let Err(error) = result {
        loaded.errors.push(error);
    }
}

/// Deserializes into the k8s-openapi type `A`, then converts.
fn typed<A: DeserializeOwned, T>(
    path: &Path,
    object: &str,
    kind: &str,
    value: serde_json::Value,
    convert: impl FnOnce(&A) -> Result<T, convert::Invalid>,
) -> Result<T, ManifestError> {
    let api: A = serde_json::from_value(value).map_err(|source| ManifestError::Schema {
        path: path.to_owned(),
        object: object.to_owned(),
        kind: kind.to_owned(),
        source,
    })?;
    convert(&api).map_err(|invalid| ManifestError::Invalid {
        path: path.to_owned(),
        object: object.to_owned(),
        field: invalid.field,
        error: invalid.error,
    })
}

/// Splits a YAML stream at `---` lines, with the 1-based line each document starts on, so
/// that one broken document does not hide the others.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end();
        if content == "---" || content.starts_with("--- ") {
            documents.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = number + 2;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
        .into_iter()
        .filter(|(_, document)| {
            document
                .lines()
                .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        })
        .collect()
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// The manifest files of a path: the file itself, or every manifest under a directory, sorted.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = fs::metadata(path).map_err(read_error)?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| ManifestError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ManifestError::Read {
                path: dir.clone(),
                source,
            })?;
            let entry_path = entry.path();
            if entry_path.is_dir() {
                pending.push(entry_path);
            } else if is_manifest(&entry_path) {
                files.push(entry_path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A hex SHA-256 of a manifest directory's content: every `*.yaml`, `*.yml` and `*.json` file,
/// in sorted order of relative path, each as its relative path, a NUL, its length (8 bytes,
/// little endian) and its bytes. Equal content gives the same generation on every machine.
pub fn generation(dir: &Path) -> Result<String, ManifestError> {
    let mut hasher = Sha256::new();
    let mut files: Vec<(String, PathBuf)> = manifest_files(dir)?
        .into_iter()
        .map(|file| {
            let relative = file
                .strip_prefix(dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .into_owned();
            (relative, file)
        })
        .collect();
    files.sort();
    for (relative, file) in files {
        let bytes = fs::read(&file).map_err(|source| ManifestError::Read {
            path: file.clone(),
            source,
        })?;
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("{:x}", hasher.finalize()))
}
