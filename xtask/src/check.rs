//! `cargo xtask check`: formatting, clippy with `-D warnings` on the host crates and on the eBPF
//! crate for its BPF target, the dependencies of the policy core, and `deploy/` (every manifest against
//! the vendored Kubernetes schemas, the kind config, the Dockerfile; see [`crate::deploy`]).

use std::process::Command;

use anyhow::{Context as _, bail};
use policy_e2e::schema;
use policy_lab::{cmd as run, workspace_root};

use crate::{deploy, setup};

/// Crate names the pure policy core must never mention.
/// What the policy core must not depend on, directly or not: it is tested without a cluster or
/// a kernel.
const IMPURE_CRATES: [&str; 4] = ["kube", "aya", "tokio", "aya-ebpf"];

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
        "check: the policy core depends on none of {}",
        IMPURE_CRATES.join(", ")
    );
    check_policy_purity()?;
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

/// Fails when `policy-core` depends on a crate it must not, directly or through another.
fn check_policy_purity() -> anyhow::Result<()> {
    let output = Command::new("cargo")
        .args(["tree", "--package", "policy-core", "--edges", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .context("running `cargo tree`")?;
    if !output.status.success() {
        bail!(
            "`cargo tree` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let offences = impure_dependencies(&tree);
    if !offences.is_empty() {
        bail!(
            "the policy core must stay pure, but depends on {}",
            offences.join(", ")
        );
    }
    Ok(())
}

/// The forbidden crates among the packages of a `cargo tree --format {p}` listing.
fn impure_dependencies(tree: &str) -> Vec<&str> {
    let mut found: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| IMPURE_CRATES.contains(name))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::impure_dependencies;

    #[test]
    fn forbidden_packages_are_found_by_name_and_others_are_not() {
        let tree = "policy-core v0.1.0 (/w/policy-agent/core)\nk8s-openapi v0.29.0\n\
                    tokio v1.47.0\nkube-core v5.0.0\ntokio v1.47.0 (*)\naya v0.16.0\n";
        assert_eq!(impure_dependencies(tree), ["aya", "tokio"]);
        assert!(impure_dependencies("policy-core v0.1.0\nserde v1.0.0\n").is_empty());
    }
}
