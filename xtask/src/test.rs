//! `cargo xtask test`: every test of the project.
//!
//! Runs the checks, the unprivileged tests, and, as root, the privileged ones (BPF_PROG_TEST_RUN,
//! attach and real traffic in network namespaces), which are marked `#[ignore = "needs root..."]`
//! so that a plain `cargo test` passes without root, and then, as root, the end-to-end scenarios
//! in the lab (`cargo xtask e2e`). Without root it runs what it can and fails with a message
//! saying what did not run.

use std::process::Command;

use anyhow::bail;
use policy_lab::cmd as run;

use crate::{check, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Skip formatting and clippy.
    #[arg(long)]
    pub no_check: bool,
    /// Only run tests whose name contains this filter (the end-to-end scenarios are skipped).
    pub filter: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    setup::ensure_bpf_linker(false)?;
    setup::ensure_packages(setup::Task::Test)?;
    if !args.no_check {
        check::run()?;
    }
    let root = run::is_root();
    let mut cargo = Command::new("cargo");
    // The default members: the eBPF crate is built for its own target by policy-agent.
    cargo.arg("test");
    cargo.arg("--");
    if let Some(filter) = &args.filter {
        cargo.arg(filter);
    }
    if root {
        cargo.arg("--include-ignored");
    }
    run::status(&mut cargo)?;
    if root && args.filter.is_none() {
        setup::ensure_packages(setup::Task::E2e)?;
        policy_e2e::run(&policy_e2e::Args {
            filter: None,
            keep_lab: false,
            no_explain: false,
        })?;
    }
    if !root {
        bail!(
            "the privileged tests (BPF_PROG_TEST_RUN, attach, real traffic) did not run: they need \
             root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run `sudo -E cargo xtask test`"
        );
    }
    println!("test: all tests passed, privileged and end-to-end ones included");
    Ok(())
}
