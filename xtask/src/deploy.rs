//! The checks of `deploy/` that `cargo xtask check` runs, with no network and no cluster:
//!
//! - every Kubernetes object in a YAML file under `deploy/` (the examples included) matches the
//!   strict schema of its kind (see `policy_e2e::schema`);
//! - the kind cluster configuration uses only fields of kind's `v1alpha4` Cluster that the
//!   checker knows, with values of the right type;
//! - the Dockerfile builds with the pinned toolchain, runs xtask commands that exist and copies
//!   the binary from where `cargo xtask build --release` puts it, and the build context leaves
//!   out `target/`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use policy_core::manifest;
use policy_e2e::{kind::config::KindCluster, schema::Schemas};
use serde_json::Value;

use crate::Cli;

/// Where the built agent is, relative to the workspace root, after `cargo xtask build --release`.
const RELEASE_BINARY: &str = "target/release/policy-agent";

/// Validates every object under `deploy_dir`; returns how many objects in how many files.
pub fn check_manifests(deploy_dir: &Path) -> anyhow::Result<(usize, usize)> {
    let mut schemas = Schemas::vendored()?;
    let mut files = Vec::new();
    yaml_files(deploy_dir, &mut files)?;
    files.sort();
    let mut problems = Vec::new();
    let mut documents = Vec::new();
    for path in &files {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        match manifest::objects(path, &text) {
            Ok(values) => documents.extend(values.into_iter().map(|value| (path, value))),
            Err(error) => problems.push(format!("{:#}", anyhow::Error::new(error))),
        }
    }
    // The custom resources `deploy/` defines are checked against the schemas it ships.
    for (path, value) in &documents {
        if value.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
            schemas
                .add_custom_resource(value)
                .with_context(|| format!("reading the CRD in {}", path.display()))?;
        }
    }
    for (path, value) in &documents {
        for problem in check_object(&mut schemas, value)? {
            problems.push(format!("{}: {problem}", path.display()));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} problems in the manifests under {}:\n{}",
            problems.len(),
            deploy_dir.display(),
            problems.join("\n")
        );
    }
    Ok((documents.len(), files.len()))
}

/// What is wrong with one document: a kind cluster configuration or a Kubernetes object.
fn check_object(schemas: &mut Schemas, object: &Value) -> anyhow::Result<Vec<String>> {
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    if api_version.is_some_and(|version| version.starts_with("kind.x-k8s.io/")) {
        return Ok(KindCluster::check(object)
            .err()
            .map(|error| format!("kind Cluster: {error:#}"))
            .into_iter()
            .collect());
    }
    Ok(schemas
        .validate(object)?
        .iter()
        .map(ToString::to_string)
        .collect())
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            yaml_files(&path, found)?;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            found.push(path);
        }
    }
    Ok(())
}

/// Checks `deploy/Dockerfile` against the workspace at `root`.
pub fn check_dockerfile(root: &Path) -> anyhow::Result<()> {
    let path = root.join("deploy/Dockerfile");
    let dockerfile =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let toolchain_path = root.join("rust-toolchain.toml");
    let toolchain = fs::read_to_string(&toolchain_path)
        .with_context(|| format!("reading {}", toolchain_path.display()))?;
    let ignore_path = root.join(".dockerignore");
    let ignore = fs::read_to_string(&ignore_path)
        .with_context(|| format!("reading {}", ignore_path.display()))?;
    let problems = dockerfile_problems(&dockerfile, &toolchain, &ignore);
    if !problems.is_empty() {
        bail!("{}:\n{}", path.display(), problems.join("\n"));
    }
    Ok(())
}

/// Everything the Dockerfile gets wrong about the workspace, given the text of the Dockerfile,
/// of `rust-toolchain.toml` and of `.dockerignore`.
fn dockerfile_problems(dockerfile: &str, toolchain: &str, dockerignore: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let channel = toolchain.lines().find_map(|line| {
        let value = line
            .trim()
            .strip_prefix("channel")?
            .trim()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    });
    let rust_version = dockerfile
        .lines()
        .find_map(|line| line.trim().strip_prefix("ARG RUST_VERSION="));
    match (channel, rust_version) {
        (Some(channel), Some(version)) if channel == version => {}
        (channel, version) => problems.push(format!(
            "ARG RUST_VERSION is {version:?}, but rust-toolchain.toml pins {channel:?}"
        )),
    }
    let commands = xtask_commands(dockerfile);
    if commands.is_empty() {
        problems.push("it runs no `cargo xtask` command to build the agent".to_owned());
    }
    for command in &commands {
        let args = std::iter::once("xtask").chain(command.split_whitespace());
        if let Err(error) = Cli::try_parse_from(args) {
            problems.push(format!(
                "`cargo xtask {command}` is not an xtask command: {}",
                error.kind()
            ));
        }
    }
    if !commands.iter().any(|command| command == "build --release") {
        problems.push(format!(
            "it does not run `cargo xtask build --release`, which puts the agent at {RELEASE_BINARY}"
        ));
    }
    if !dockerfile.contains(&format!("cp {RELEASE_BINARY} ")) {
        problems.push(format!("it does not copy the agent from {RELEASE_BINARY}"));
    }
    let ignored: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .collect();
    if !ignored
        .iter()
        .any(|line| matches!(*line, "target" | "target/"))
    {
        problems.push(".dockerignore does not leave target/ out of the build context".to_owned());
    }
    problems
}

/// The arguments of every `cargo xtask ...` in the Dockerfile's instructions (comments left
/// out), up to the end of its shell command.
fn xtask_commands(dockerfile: &str) -> Vec<String> {
    let instructions: String = dockerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    instructions
        .match_indices("cargo xtask ")
        .map(|(at, found)| {
            let rest = &instructions[at + found.len()..];
            let end = rest.find(['&', '\\', '\n', ';', '|']).unwrap_or(rest.len());
            rest[..end].trim().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use policy_lab::workspace_root;

    use super::*;

    /// A scratch directory of this test process, emptied first.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("xtask-deploy-{}", std::process::id()))
            .join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_manifests_under_deploy_are_valid() {
        let (objects, files) = check_manifests(&workspace_root().join("deploy")).unwrap();
        assert!(
            objects >= 10 && files >= 5,
            "{objects} objects in {files} files"
        );
    }

    /// A typo'd field and a wrong type, each named with its file, object and field.
    #[test]
    fn a_broken_manifest_fails_naming_file_object_and_field() {
        let dir = scratch("broken");
        let daemonset = fs::read_to_string(workspace_root().join("deploy/20-daemonset.yaml"))
            .unwrap()
            .replace(
                "imagePullPolicy: IfNotPresent",
                "imagePullPolcy: IfNotPresent",
            )
            .replace("periodSeconds: 5", "periodSeconds: often");
        assert!(daemonset.contains("imagePullPolcy") && daemonset.contains("often"));
        fs::write(dir.join("daemonset.yaml"), daemonset).unwrap();
        let error = format!("{:#}", check_manifests(&dir).unwrap_err());
        let file = dir.join("daemonset.yaml").display().to_string();
        assert!(error.contains("2 problems"), "{error}");
        let typo = format!(
            "{file}: DaemonSet netpol-system/policy-agent: spec.template.spec.containers[0]: "
        );
        assert!(
            error
                .lines()
                .any(|line| line.starts_with(&typo) && line.contains("imagePullPolcy")),
            "{error}"
        );
        let wrong_type = format!(
            "{file}: DaemonSet netpol-system/policy-agent: \
             spec.template.spec.containers[0].readinessProbe.periodSeconds: "
        );
        assert!(
            error.lines().any(|line| line.starts_with(&wrong_type)),
            "{error}"
        );
    }

    #[test]
    fn a_broken_kind_config_is_named() {
        let dir = scratch("kind");
        let config = fs::read_to_string(workspace_root().join("deploy/kind/cluster.yaml"))
            .unwrap()
            .replace("disableDefaultCNI: true", "disableDefaultCni: true");
        fs::write(dir.join("cluster.yaml"), config).unwrap();
        let error = format!("{:#}", check_manifests(&dir).unwrap_err());
        assert!(
            error.contains("cluster.yaml: kind Cluster: ") && error.contains("disableDefaultCni"),
            "{error}"
        );
    }

    #[test]
    fn unparsable_yaml_is_named_with_its_file() {
        let dir = scratch("unparsable");
        fs::write(
            dir.join("bad.yaml"),
            "kind: Namespace\nmetadata: [unclosed\n",
        )
        .unwrap();
        let error = format!("{:#}", check_manifests(&dir).unwrap_err());
        assert!(error.contains("bad.yaml: document 1"), "{error}");
    }

    #[test]
    fn the_dockerfile_matches_the_workspace() {
        check_dockerfile(&workspace_root()).unwrap();
    }

    #[test]
    fn dockerfile_mismatches_are_reported() {
        let root = workspace_root();
        let dockerfile = fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
        let toolchain = fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
        let other_toolchain = toolchain.replace("channel = \"", "channel = \"0.");
        let problems = dockerfile_problems(&dockerfile, &other_toolchain, "target/\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("RUST_VERSION"), "{problems:?}");
        let unknown = dockerfile.replace("cargo xtask build --release", "cargo xtask compile");
        let problems = dockerfile_problems(&unknown, &toolchain, "# nothing\n");
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("`cargo xtask compile` is not an xtask command")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|problem| problem.contains("target/")),
            "{problems:?}"
        );
    }

    #[test]
    fn xtask_commands_end_with_their_shell_command() {
        assert_eq!(
            xtask_commands(
                "# runs `cargo xtask build --release`\nRUN cargo xtask build --release \\\n && cp a b\nRUN cargo xtask setup\n"
            ),
            ["build --release", "setup"]
        );
    }
}
