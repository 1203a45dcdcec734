//! Kubernetes YAML (files or directories, multi-document) loaded into a [`Snapshot`] through
//! the k8s-openapi types, the same conversion the Kubernetes source uses.
//!
//! Each document is parsed on its own, so an unparsable document or an invalid object is
//! reported (file, object, field) and skipped while everything else loads. A NetworkPolicy
//! that is rejected still isolates the pods it selects, with none of its rules
//! ([`convert::rejected_network_policy`]): leaving it out would open them. Objects are decoded
//! strictly (module `strict`): a field the API does not define, a second definition of an object
//! or anything else that would be read other than as written is an error. Kinds other than
//! Namespace, Pod, Service and NetworkPolicy are skipped with a note; those four under another
//! apiVersion are an error.

mod addresses;
pub mod cluster;
pub mod convert;
mod strict;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

pub use addresses::{
    AddressError, IpFamily, IpFamilyParseError, MAX_NODES, address_cluster, assign_addresses,
    node_addresses, node_cidr_v4, node_cidr_v6, node_cidrs, node_count, node_name, node_number,
};
use k8s_openapi::api::networking::v1::NetworkPolicy as ApiPolicy;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{
    api,
    policy::{
        cluster::{ClusterNetworkPolicy, Node},
        model::{Namespace, NetworkPolicy, Pod, Service, Snapshot},
    },
};

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
    #[error("{path}: {object}: {field}: does not fit the {kind} schema", path = path.display())]
    Schema {
        path: PathBuf,
        object: String,
        kind: String,
        field: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: {object}: unknown field{} {}: the {kind} API does not define {}",
        if fields.len() == 1 { "" } else { "s" },
        fields.join(", "),
        if fields.len() == 1 { "it" } else { "them" },
        path = path.display()
    )]
    UnknownFields {
        path: PathBuf,
        object: String,
        kind: String,
        fields: Vec<String>,
    },
    #[error("{path}: {object}: {field}", path = path.display())]
    Invalid {
        path: PathBuf,
        object: String,
        field: String,
        #[source]
        error: convert::FieldError,
    },
    #[error(
        "{path}: {object}: apiVersion {api_version:?} is not read; this kind is read as {expected}",
        path = path.display()
    )]
    ApiVersion {
        path: PathBuf,
        object: String,
        api_version: String,
        expected: &'static str,
    },
    #[error(
        "{path}: {object}: already defined in {first}; this second definition is rejected",
        path = path.display(),
        first = first.display()
    )]
    Duplicate {
        path: PathBuf,
        object: String,
        first: PathBuf,
    },
}

/// An object of a kind the agent does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub object: String,
}

impl ManifestError {
    /// The kind of the object the error is about (`Pod`), when it is about one object.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ManifestError::Schema { kind, .. } | ManifestError::UnknownFields { kind, .. } => {
                Some(kind)
            }
            // The object is named `<kind> <namespace>/<name>` (or `Namespace <name>`).
            ManifestError::Invalid { object, .. }
            | ManifestError::ApiVersion { object, .. }
            | ManifestError::Duplicate { object, .. } => object.split(' ').next(),
            ManifestError::Read { .. }
            | ManifestError::Yaml { .. }
            | ManifestError::Shape { .. } => None,
        }
    }
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
    /// Indices into `errors` of the rejected policies that `snapshot` holds as what
    /// [`convert::rejected_network_policy`] (isolation with none of their rules) and
    /// [`cluster::rejected_cluster_network_policy`] (denying all from their subject) make of them.
    pub isolating: BTreeSet<usize>,
    /// The file that defined each loaded object, by its name (`Pod shop/web`).
    defined: BTreeMap<String, PathBuf>,
}

/// Loads every `*.yaml`, `*.yml` and `*.json` file under the given files and directories
/// (directories recursively, in sorted path order). A file reached twice (named twice, or
/// through a symbolic link) is read once.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut visited = Visited::default();
    for path in paths {
        match manifest_files(path, &mut visited) {
            Ok(files) => {
                for file in files {
                    match read_listed(&file).map(|bytes| bytes.map(String::from_utf8)) {
                        Ok(Some(Ok(text))) => load_text(&file, &text, &mut loaded),
                        Ok(Some(Err(error))) => loaded.errors.push(ManifestError::Read {
                            path: file,
                            source: io::Error::new(io::ErrorKind::InvalidData, error),
                        }),
                        Ok(None) => {}
                        Err(error) => loaded.errors.push(error),
                    }
                }
            }
            Err(error) => loaded.errors.push(error),
        }
    }
    loaded
}

/// One document of a manifest file, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1-based, among the file's documents that are not empty.
    pub number: usize,
    /// The line the document starts on.
    pub line: usize,
    pub value: serde_json::Value,
}

impl Document {
    /// The objects the document holds: the items of a `kind: List`, or the document itself.
    pub fn objects(&self) -> &[serde_json::Value] {
        if self.value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            self.value
                .get("items")
                .and_then(|items| items.as_array())
                .map_or(&[], Vec::as_slice)
        } else {
            std::slice::from_ref(&self.value)
        }
    }
}

/// The documents of one file's text, each parsed on its own, so that one broken document does
/// not hide the others; `path` only names the source. Empty documents are left out. Parsed one
/// at a time as the iterator is read, so that loading a large file holds one parsed document at
/// a time, not all of them.
pub fn documents<'a>(
    path: &'a Path,
    text: &'a str,
) -> impl Iterator<Item = Result<Document, ManifestError>> + 'a {
    split_documents(text)
        .into_iter()
        .enumerate()
        .filter_map(move |(index, (line, document))| {
            let number = index + 1;
            // The YAML value refuses a key given twice, which the JSON value would let the last
            // one win silently.
            let parsed = serde_norway::from_str::<serde_norway::Value>(document)
                .and_then(|_| serde_norway::from_str::<serde_json::Value>(document));
            match parsed {
                Ok(value) if value.is_null() => None,
                Ok(value) => Some(Ok(Document {
                    number,
                    line,
                    value,
                })),
                Err(source) => Some(Err(ManifestError::Yaml {
                    path: path.to_owned(),
                    document: number,
                    line,
                    source,
                })),
            }
        })
}

/// Every object of one file's text (a List's items in its place), or the first document that is
/// not YAML.
pub fn objects(path: &Path, text: &str) -> Result<Vec<serde_json::Value>, ManifestError> {
    let mut objects = Vec::new();
    for document in documents(path, text) {
        objects.extend_from_slice(document?.objects());
    }
    Ok(objects)
}

/// Loads the documents of one file's text into `loaded`; `path` only names the source.
pub fn load_text(path: &Path, text: &str, loaded: &mut Loaded) {
    for document in documents(path, text) {
        match document {
            Ok(document) => load_owned_document(path, document, loaded),
            Err(error) => loaded.errors.push(error),
        }
    }
}

/// Loads the objects of one document into `loaded`; `path` only names the source.
pub fn load_document(path: &Path, document: &Document, loaded: &mut Loaded) {
    load_owned_document(path, document.clone(), loaded);
}

/// [`load_document`] for a document the caller no longer needs: its objects are moved into
/// the conversion, not copied (a deep copy of every object is most of an allocation-bound load).
fn load_owned_document(path: &Path, document: Document, loaded: &mut Loaded) {
    let Document {
        number,
        line,
        mut value,
    } = document;
    let shape_error = |problem| ManifestError::Shape {
        path: path.to_owned(),
        document: number,
        line,
        problem,
    };
    let is_list = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(|kind| kind == "List");
    match is_list {
        None => loaded
            .errors
            .push(shape_error("not a Kubernetes object (no kind)")),
        Some(true) => match value.get_mut("items").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(items)) => {
                for object in items {
                    load_object(path, object, loaded);
                }
            }
            _ => loaded.errors.push(shape_error("a List without items")),
        },
        Some(false) => load_object(path, value, loaded),
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
        ("Namespace" | "Node" | "ClusterNetworkPolicy", _) => format!("{kind} {name}"),
        (_, Some(namespace)) => format!("{kind} {namespace}/{name}"),
        (_, None) => format!("{kind} default/{name}"),
    };
    let original =
        matches!(kind.as_str(), "NetworkPolicy" | "ClusterNetworkPolicy").then(|| value.clone());
    let converted = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            typed(path, &object, &kind, value, convert::namespace).map(Converted::Namespace)
        }
        ("v1", "Pod") => typed(path, &object, &kind, value, convert::pod).map(Converted::Pod),
        ("v1", "Service") => {
            typed(path, &object, &kind, value, convert::service).map(Converted::Service)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            typed(path, &object, &kind, value, |policy: &ApiPolicy| {
                strict::check_policy(policy)?;
                convert::network_policy(policy)
            })
            .map(Converted::Policy)
        }
        (api::API_VERSION, api::KIND) => {
            typed(path, &object, &kind, value, cluster::cluster_network_policy)
                .map(Converted::ClusterPolicy)
        }
        ("v1", "Node") => typed(path, &object, &kind, value, cluster::node).map(Converted::Node),
        // A kind the agent reads under another version: an old or mistyped apiVersion, not
        // some other resource to pass over.
        (_, "Namespace" | "Pod" | "Service" | "Node") => Err(ManifestError::ApiVersion {
            path: path.to_owned(),
            object: object.clone(),
            api_version,
            expected: "v1",
        }),
        (_, "NetworkPolicy") => Err(ManifestError::ApiVersion {
            path: path.to_owned(),
            object: object.clone(),
            api_version,
            expected: "networking.k8s.io/v1",
        }),
        (_, api::KIND) => Err(ManifestError::ApiVersion {
            path: path.to_owned(),
            object: object.clone(),
            api_version,
            expected: api::API_VERSION,
        }),
        _ => {
            loaded.skipped.push(Skipped {
                path: path.to_owned(),
                object: format!("{object} ({api_version})"),
            });
            return;
        }
    };
    let converted = match converted {
        Ok(converted) => converted,
        Err(error) => {
            let stand_in = original
                .as_ref()
                .and_then(|original| match kind.as_str() {
                    "NetworkPolicy" => {
                        convert::rejected_network_policy(original).map(Converted::Policy)
                    }
                    _ => cluster::rejected_cluster_network_policy(original)
                        .map(Converted::ClusterPolicy),
                })
                .filter(|_| !loaded.defined.contains_key(&object));
            if let Some(stand_in) = stand_in {
                loaded.defined.insert(object, path.to_owned());
                loaded.isolating.insert(loaded.errors.len());
                loaded.snapshot.add(stand_in);
            }
            loaded.errors.push(error);
            return;
        }
    };
    if let Some(first) = loaded.defined.get(&object) {
        loaded.errors.push(ManifestError::Duplicate {
            path: path.to_owned(),
            object,
            first: first.clone(),
        });
        return;
    }
    loaded.defined.insert(object, path.to_owned());
    loaded.snapshot.add(converted);
}

/// One object of a kind the snapshot holds.
enum Converted {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    Policy(NetworkPolicy),
    ClusterPolicy(ClusterNetworkPolicy),
    Node(Node),
}

impl Snapshot {
    fn add(&mut self, object: Converted) {
        match object {
            Converted::Namespace(namespace) => self.namespaces.push(namespace),
            Converted::Pod(pod) => self.pods.push(pod),
            Converted::Service(service) => self.services.push(service),
            Converted::Policy(policy) => self.policies.push(policy),
            Converted::ClusterPolicy(policy) => self.cluster_policies.push(policy),
            Converted::Node(node) => self.nodes.push(node),
        }
    }
}

/// Decodes strictly into the k8s-openapi type `A`, then converts.
fn typed<A: DeserializeOwned, T>(
    path: &Path,
    object: &str,
    kind: &str,
    value: serde_json::Value,
    convert: impl FnOnce(&A) -> Result<T, convert::Invalid>,
) -> Result<T, ManifestError> {
    let api: A = strict::decode(value).map_err(|error| match error {
        strict::DecodeError::Unknown { fields } => ManifestError::UnknownFields {
            path: path.to_owned(),
            object: object.to_owned(),
            kind: kind.to_owned(),
            fields,
        },
        strict::DecodeError::Type { field, source } => ManifestError::Schema {
            path: path.to_owned(),
            object: object.to_owned(),
            kind: kind.to_owned(),
            field,
            source,
        },
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

/// The files and directories a listing has reached, by device and inode, so that a second
/// path to one (a symbolic link, a path named twice) adds nothing and a link to an ancestor
/// directory does not loop.
#[derive(Default)]
struct Visited {
    files: BTreeSet<(u64, u64)>,
    directories: BTreeSet<(u64, u64)>,
}

fn identity(metadata: &fs::Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

/// The manifest files of a path not yet visited: the file itself, or every manifest under a
/// directory, sorted. Each file is listed once, under the first path in sorted order that
/// reaches it.
fn manifest_files(path: &Path, visited: &mut Visited) -> Result<Vec<PathBuf>, ManifestError> {
    let metadata = fs::metadata(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    if metadata.is_dir() {
        if visited.directories.insert(identity(&metadata)) {
            walk(path, visited, &mut files)?;
        }
    } else if visited.files.insert(identity(&metadata)) {
        files.push(path.to_owned());
    }
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, visited: &mut Visited, files: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(read_error)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    entries.sort();
    for entry in entries {
        match fs::metadata(&entry) {
            Ok(metadata) if metadata.is_dir() => {
                if visited.directories.insert(identity(&metadata)) {
                    walk(&entry, visited, files)?;
                }
            }
            Ok(metadata) => {
                if is_manifest(&entry) && visited.files.insert(identity(&metadata)) {
                    files.push(entry);
                }
            }
            // A manifest that cannot be examined (a dangling link) is listed so that reading
            // it reports why; one removed since the directory was read is not there.
            Err(_) => {
                if is_manifest(&entry) && !removed(&entry) {
                    files.push(entry);
                }
            }
        }
    }
    Ok(())
}

/// The bytes of a listed file, or `None` when it was removed since it was listed: a file
/// deleted while a directory is read is not part of the content (and no error), as if the
/// listing had come a moment later. The removal's own notification brings the next load.
fn read_listed(file: &Path) -> Result<Option<Vec<u8>>, ManifestError> {
    match fs::read(file) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(source) if source.kind() == io::ErrorKind::NotFound && removed(file) => Ok(None),
        Err(source) => Err(ManifestError::Read {
            path: file.to_owned(),
            source,
        }),
    }
}

/// Whether nothing is at `path` any more, not even a dangling link.
fn removed(path: &Path) -> bool {
    fs::symlink_metadata(path).is_err_and(|error| error.kind() == io::ErrorKind::NotFound)
}

/// A hex SHA-256 of a manifest directory's content: every `*.yaml`, `*.yml` and `*.json` file,
/// in sorted order of relative path, each as its relative path, a NUL, its length (8 bytes,
/// little endian) and its bytes. Equal content gives the same generation on every machine.
pub fn generation(dir: &Path) -> Result<String, ManifestError> {
    let mut hasher = Sha256::new();
    let mut files: Vec<(String, PathBuf)> = manifest_files(dir, &mut Visited::default())?
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
        let Some(bytes) = read_listed(&file)? else {
            continue;
        };
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_removed_after_listing_is_absent_and_a_dangling_link_is_an_error() {
        let dir = std::env::temp_dir().join(format!("netpol-listed-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let gone = dir.join("gone.yaml");
        assert!(matches!(read_listed(&gone), Ok(None)));
        let dangling = dir.join("dangling.yaml");
        let _ = fs::remove_file(&dangling);
        std::os::unix::fs::symlink(dir.join("nowhere.yaml"), &dangling).unwrap();
        assert!(matches!(
            read_listed(&dangling),
            Err(ManifestError::Read { path, .. }) if path == dangling
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
