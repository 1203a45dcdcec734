//! `cargo xtask bench`: the benchmarks, with their figures on standard output and in
//! `target/bench/`.
//!
//! - The resolver: a full resolve of 10,000 pods / 1,000 policies / 100 namespaces for one
//!   node's endpoints, incremental changes to a map delta, and peak memory (criterion bench
//!   `policy-agent/benches/resolve.rs`).
//! - The kernel programs (root): verifier-accepted instruction counts and ns per packet through
//!   BPF_PROG_TEST_RUN for established, new allowed and new denied flows with 10 and 10,000 policy
//!   entries, net of an empty classifier measured in the same run.

pub mod report;

use std::{fs, process::Command};

use anyhow::Context as _;

use crate::{check::workspace_root, run, setup};

pub fn run() -> anyhow::Result<()> {
    setup::ensure_bpf_linker(false)?;
    let out_dir = workspace_root().join("target/bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    println!("bench: the resolver (criterion; a few minutes)");
    let resolver = run::output(Command::new("cargo").args([
        "bench",
        "--package",
        "policy-agent",
        "--bench",
        "resolve",
    ]))?;
    print!("{resolver}");
    let resolver_file = out_dir.join("resolver.txt");
    fs::write(&resolver_file, &resolver)
        .with_context(|| format!("writing {}", resolver_file.display()))?;

    if !run::is_root() {
        println!("bench: the datapath figures need root (BPF_PROG_TEST_RUN); skipped");
        return Ok(());
    }
    println!("bench: the kernel programs (BPF_PROG_TEST_RUN, release build)");
    let datapath = run::output(Command::new("cargo").args([
        "test",
        "--release",
        "--package",
        "policy-agent",
        "--test",
        "testrun",
        "measure_instructions_and_ns_per_packet",
        "--",
        "--include-ignored",
        "--nocapture",
    ]))?;
    print!("{datapath}");
    let datapath_file = out_dir.join("datapath.txt");
    fs::write(&datapath_file, &datapath)
        .with_context(|| format!("writing {}", datapath_file.display()))?;
    println!(
        "bench: figures written to {} and {}",
        resolver_file.display(),
        datapath_file.display()
    );
    Ok(())
}
