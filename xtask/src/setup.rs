//! `cargo xtask setup`: installs what building and testing need, when it is missing or stale.
//!
//! - bpf-linker, built against the LLVM that the pinned rustc ships (prebuilt binaries cannot be
//!   fetched here, and bpf-linker must use exactly rustc's LLVM). Rebuilt when the toolchain changes.
//! - As root, the Debian packages the lab and the privileged tests use.
//!
//! Every other subcommand runs this first, so a fresh machine needs no manual step.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run;

/// Debian packages used by the lab, the privileged tests and the benchmarks, and the command (or,
/// for an absolute path, the file) each one provides.
const DEBIAN_PACKAGES: [(&str, &str); 5] = [
    ("iproute2", "ip"),
    ("iptables", "iptables"),
    ("nftables", "nft"),
    ("iperf3", "iperf3"),
    ("fonts-dejavu-core", crate::bench::report::FONT_FILE),
];

/// The nightly toolchain used only for rustfmt: the house rustfmt settings are unstable options.
pub const RUSTFMT_TOOLCHAIN: &str = "nightly-2026-10-15";

#[derive(clap::Args)]
pub struct Args {
    /// Rebuild bpf-linker even if it looks current.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure_bpf_linker(args.force)?;
    ensure_debian_packages()
}

/// Installs bpf-linker unless the installed one was built for the current rustc.
pub fn ensure_bpf_linker(force: bool) -> anyhow::Result<()> {
    let version = run::output(Command::new("rustc").arg("-vV"))?;
    let bin_dir = cargo_bin_dir()?;
    let linker = bin_dir.join("bpf-linker");
    let stamp = bin_dir.join(".bpf-linker.rustc");
    let current = !force
        && fs::read_to_string(&stamp).is_ok_and(|built_for| built_for == version)
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
    if current {
        return Ok(());
    }
    let llvm_major = llvm_major(&version)?;
    let sysroot =
        PathBuf::from(run::output(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let llvm_lib = find_llvm_lib(&sysroot.join("lib"))?;
    let prefix = bin_dir.join(".bpf-linker-llvm");
    fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("creating {}", prefix.display()))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm_lib, &link)
        .with_context(|| format!("linking {} to {}", link.display(), llvm_lib.display()))?;
    println!("setup: building bpf-linker against rustc's LLVM {llvm_major} (about a minute)");
    run::status(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm_major}")])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display()),
            ),
    )?;
    fs::write(&stamp, version).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// As root, installs the Debian packages whose commands are missing; otherwise names them.
pub fn ensure_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, provided)| {
            if provided.starts_with('/') {
                !Path::new(provided).exists()
            } else {
                which(provided).is_none()
            }
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !run::is_root() {
        println!(
            "setup: the lab and the privileged tests need these Debian packages: {} (run as root to install them)",
            missing.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    run::status(Command::new("apt-get").args(["update", "-qq"]))?;
    run::status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs the nightly toolchain's rustfmt if it is missing.
pub fn ensure_rustfmt_toolchain() -> anyhow::Result<()> {
    let installed = run::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if installed
        .lines()
        .any(|line| line.starts_with(RUSTFMT_TOOLCHAIN))
    {
        return Ok(());
    }
    run::status(Command::new("rustup").args([
        "toolchain",
        "install",
        RUSTFMT_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rustfmt",
    ]))
}

fn cargo_bin_dir() -> anyhow::Result<PathBuf> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
                .join(".cargo")
        }
    };
    Ok(home.join("bin"))
}

fn llvm_major(rustc_version: &str) -> anyhow::Result<String> {
    rustc_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .map(str::to_owned)
        .context("`rustc -vV` names no LLVM version")
}

fn find_llvm_lib(lib_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", lib_dir.display()))?
            .path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("libLLVM.so."))
        {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no libLLVM.so.* in {}: is the pinned toolchain installed?",
            lib_dir.display()
        ),
        _ => bail!("several libLLVM.so.* in {}: {found:?}", lib_dir.display()),
    }
}

/// The path of `command` on PATH, if any.
pub fn which(command: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join(command))
            .find(|path| path.is_file())
    })
}
