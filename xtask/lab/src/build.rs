//! Building the workspace binaries the tasks run: the agent, and the lab's and the bench's own
//! binaries that run inside pods.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{cmd, workspace_root};

/// A cargo profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// Builds the binary of the workspace package `package` (named as the package) and returns its
/// path. Cargo's output is shown only when the build fails: the agent's build script replays
/// the eBPF build's messages, which would bury what the task prints.
pub fn binary(package: &str, profile: Profile) -> anyhow::Result<PathBuf> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo
        .args(["build", "--package", package, "--bin", package])
        .current_dir(workspace_root());
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    let output = cargo
        .output()
        .with_context(|| format!("could not run `{}`", cmd::describe(&cargo)))?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        bail!("`{}` failed: {}", cmd::describe(&cargo), output.status);
    }
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join(profile.dir())
        .join(package))
}
