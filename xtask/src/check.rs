//! `cargo xtask check`: formatting, clippy with `-D warnings` on the host crates and on the eBPF
//! crate for its BPF target, the purity of the policy core, and `deploy/` (every manifest against
//! the vendored Kubernetes schemas, the kind config, the Dockerfile; see [`crate::deploy`]).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{deploy, run, schema, setup};

/// Crate names the pure policy core must never mention.
const IMPURE_CRATES: [&str; 4] = ["kube", "k8s_openapi", "aya", "tokio"];

pub fn run() -> anyhow::Result<()> {
    setup::ensure_bpf_linker(false)?;
    setup::ensure_rustfmt_toolchain()?;
    println!("check: rustfmt");
    run::status(Command::new("cargo").args([
        &format!("+{}", setup::RUSTFMT_TOOLCHAIN),
        "fmt",
        "--all",
        "--check",
    ]))?;
    println!("check: clippy on the host crates");
    run::status(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "policy-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("check: clippy on the eBPF crate");
    run::status(
        Command::new("cargo")
            .args([
                "clippy",
                "--package",
                "policy-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .env("RUSTC_BOOTSTRAP", "1"),
    )?;
    println!(
        "check: the policy core names none of {}",
        IMPURE_CRATES.join(", ")
    );
    check_policy_purity(&workspace_root().join("policy-agent/src/policy"))?;
    println!(
        "check: the manifests under deploy/ against the Kubernetes {} schemas (strict, offline)",
        schema::KUBERNETES_VERSION
    );
    let (objects, files) = deploy::check_manifests(&workspace_root().join("deploy"))?;
    println!("check: {objects} objects in {files} files are valid");
    println!("check: deploy/Dockerfile against the workspace");
    deploy::check_dockerfile(&workspace_root())?;
    println!("check: all clean");
    Ok(())
}

/// Fails when a source file under `dir` names a crate the pure core must not depend on.
fn check_policy_purity(dir: &Path) -> anyhow::Result<()> {
    let mut offences = Vec::new();
    visit_rust_files(dir, &mut |path, text| {
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for name in IMPURE_CRATES {
                if mentions_crate(code, name) {
                    offences.push(format!("{}:{}: names `{name}`", path.display(), number + 1));
                }
            }
        }
    })?;
    if !offences.is_empty() {
        bail!("the policy core must stay pure:\n{}", offences.join("\n"));
    }
    Ok(())
}

/// Whether `code` uses `name` as a path root (`name::` or `use name`), not as part of a word.
fn mentions_crate(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + name.len()..];
        let starts_word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        starts_word
            && (after.starts_with("::") || (after.starts_with(';') && code.contains("use ")))
    })
}

fn visit_rust_files(dir: &Path, visit: &mut dyn FnMut(&Path, &str)) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            visit_rust_files(&path, visit)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            visit(&path, &text);
        }
    }
    Ok(())
}

/// The workspace root: xtask's manifest directory's parent.
pub fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::mentions_crate;

    #[test]
    fn crate_paths_are_found_and_words_are_not() {
        assert!(mentions_crate("use kube::Api;", "kube"));
        assert!(mentions_crate("let x = aya::maps::HashMap::new();", "aya"));
        assert!(mentions_crate("use tokio;", "tokio"));
        assert!(!mentions_crate("let kubelet = 1;", "kube"));
        assert!(!mentions_crate("fn my_aya::x", "aya"));
        assert!(!mentions_crate("the kube API", "kube"));
    }
}
