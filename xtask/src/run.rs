//! Running external commands with errors that say what failed.

use std::process::{Command, ExitStatus};

use anyhow::{Context as _, bail};

/// Runs `cmd` with inherited stdio and fails with the command line if it does not succeed.
pub fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let status = spawn_status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn spawn_status(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not run `{}`", describe(cmd)))
}

/// Runs `cmd`, captures its standard output and fails with its standard error if it fails.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("could not run `{}`", describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
