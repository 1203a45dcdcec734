//! `cargo xtask setup`: installs what building and testing need, when it is missing or stale.
//!
//! - bpf-linker, built against the LLVM that the pinned rustc ships (prebuilt binaries cannot be
//!   fetched here, and bpf-linker must use exactly rustc's LLVM). Rebuilt when the toolchain changes.
//! - As root, every Debian package of [`DEBIAN_PACKAGES`].
//!
//! The subcommands that build run [`ensure_bpf_linker`] first, and those that use a Debian package
//! run [`ensure_packages`] with their own name, so a fresh machine needs no manual step.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use policy_lab::cmd as run;

/// A subcommand that uses Debian packages, as [`DEBIAN_PACKAGES`] names its users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Installs every package of the table.
    Setup,
    Test,
    Bench,
    Lab,
    E2e,
    Demo,
}

impl Task {
    /// The subcommand's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Test => "test",
            Self::Bench => "bench",
            Self::Lab => "lab",
            Self::E2e => "e2e",
            Self::Demo => "demo",
        }
    }
}

/// A Debian package: what of it is used, and by which subcommands.
struct Package {
    name: &'static str,
    /// The commands (or, for an absolute path, the files) of the package that are used; the
    /// package counts as missing when any of them is.
    provides: &'static [&'static str],
    /// The subcommands that use them (besides `setup`, which installs every package).
    used_by: &'static [Task],
}

/// Every Debian package a subcommand uses: the lab runs `ip` and `iptables-restore` (the e2e
/// suite, the demo, the privileged tests and the traffic benchmarks run the lab), the privileged
/// tests `iptables`, the traffic benchmarks `iperf3` and `nft`, and the benchmark report's plots
/// (and its unit test) read the DejaVu font.
const DEBIAN_PACKAGES: [Package; 5] = [
    Package {
        name: "iproute2",
        provides: &["ip"],
        used_by: &[Task::Test, Task::Bench, Task::Lab, Task::E2e, Task::Demo],
    },
    Package {
        name: "iptables",
        provides: &["iptables", "iptables-restore", "ip6tables-restore"],
        used_by: &[Task::Test, Task::Bench, Task::Lab, Task::E2e, Task::Demo],
    },
    Package {
        name: "nftables",
        provides: &["nft"],
        used_by: &[Task::Bench],
    },
    Package {
        name: "iperf3",
        provides: &["iperf3"],
        used_by: &[Task::Bench],
    },
    Package {
        name: "fonts-dejavu-core",
        provides: &[policy_bench::report::FONT_FILE],
        used_by: &[Task::Test, Task::Bench],
    },
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
    ensure_packages(Task::Setup)
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

/// The Debian packages `task` uses, in table order.
fn packages(task: Task) -> impl Iterator<Item = &'static Package> {
    DEBIAN_PACKAGES
        .iter()
        .filter(move |package| task == Task::Setup || package.used_by.contains(&task))
}

/// Makes sure the Debian packages `task` uses are installed: as root, installs the missing ones
/// (one `apt-get update`, one `apt-get install`); otherwise fails, naming them and the command
/// that installs them.
pub fn ensure_packages(task: Task) -> anyhow::Result<()> {
    let missing: Vec<&Package> = packages(task)
        .filter(|package| {
            package.provides.iter().any(|provided| {
                if provided.starts_with('/') {
                    !Path::new(provided).exists()
                } else {
                    which(provided).is_none()
                }
            })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|package| package.name).collect();
    if !run::is_root() {
        let provided: Vec<String> = missing
            .iter()
            .map(|package| format!("{} ({})", package.name, package.provides.join(", ")))
            .collect();
        bail!(
            "cargo xtask {} needs the Debian packages {}, which are not installed: run it as \
             root to install them, or install them with `apt-get install --no-install-recommends {}`",
            task.name(),
            provided.join(", "),
            names.join(" ")
        );
    }
    println!("{}: installing {}", task.name(), names.join(" "));
    run::status(Command::new("apt-get").args(["update", "-qq"]))?;
    run::status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&names)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory as _;
    use policy_bench::report::FONT_FILE;

    use super::*;

    /// The package of the table that provides `thing`.
    fn provider(thing: &str) -> &'static str {
        DEBIAN_PACKAGES
            .iter()
            .find(|package| package.provides.contains(&thing))
            .map(|package| package.name)
            .unwrap_or_else(|| panic!("no package of the table provides {thing}"))
    }

    #[test]
    fn every_subcommand_asks_for_the_packages_it_uses() {
        let lab = ["ip", "iptables-restore", "ip6tables-restore"];
        let privileged_tests = ["ip", "iptables"];
        let traffic = ["iperf3", "nft"];
        let everything: Vec<&str> = DEBIAN_PACKAGES
            .iter()
            .flat_map(|package| package.provides.iter().copied())
            .collect();
        // What each subcommand runs or reads, as its code does.
        let uses: Vec<(&str, Vec<&str>)> = vec![
            ("setup", everything),
            ("build", vec![]),
            ("check", vec![]),
            ("test", [&lab[..], &privileged_tests, &[FONT_FILE]].concat()),
            ("bench", [&lab[..], &traffic, &[FONT_FILE]].concat()),
            ("lab", lab.to_vec()),
            ("e2e", lab.to_vec()),
            ("kind-e2e", vec![]),
            ("demo", lab.to_vec()),
        ];
        let subcommands: Vec<String> = crate::Cli::command()
            .get_subcommands()
            .map(|command| command.get_name().to_owned())
            .collect();
        let listed: Vec<&str> = uses.iter().map(|(name, _)| *name).collect();
        assert_eq!(subcommands, listed, "every subcommand says what it uses");
        let tasks = [
            Task::Setup,
            Task::Test,
            Task::Bench,
            Task::Lab,
            Task::E2e,
            Task::Demo,
        ];
        for (name, used) in &uses {
            let needed: BTreeSet<&str> = used.iter().map(|thing| provider(thing)).collect();
            let asked: BTreeSet<&str> = tasks
                .iter()
                .find(|task| task.name() == *name)
                .map(|task| packages(*task).map(|package| package.name).collect())
                .unwrap_or_default();
            assert_eq!(
                asked, needed,
                "the Debian packages `cargo xtask {name}` asks for"
            );
        }
        let demo: Vec<&str> = packages(Task::Demo).map(|package| package.name).collect();
        assert_eq!(demo, ["iproute2", "iptables"]);
    }
}
