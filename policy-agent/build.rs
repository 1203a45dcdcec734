//! Builds `policy-ebpf` for the BPF target so the agent can embed the object.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("policy-agent has no parent directory"))?;
    let ebpf_dir = workspace.join("policy-ebpf");
    let common_dir = workspace.join("policy-common");
    println!("cargo::rerun-if-changed={}", common_dir.display());
    // The pinned stable toolchain builds `core` for the BPF target only with bootstrap features,
    // which this child build alone gets.
    // The object must be what rustc itself makes of the sources: a wrapper of the outer build
    // (`cargo clippy --fix` sets one that runs clippy-driver, which builds without MIR
    // optimizations) would leave a program whose stack the verifier refuses, and aya-build
    // removes only the workspace wrapper.
    // SAFETY: the build script is single-threaded at this point.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        std::env::remove_var("RUSTC_WRAPPER");
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.99.1".to_owned());
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "policy-ebpf",
            root_dir,
            ..Package::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
