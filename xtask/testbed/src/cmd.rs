//! Running external commands (`cargo`, and the `ip`, `bridge` and `iptables` tools), with the
//! failing command line in every error.

use std::{
    io::Write,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context, Result, bail};

/// Runs `program args...` and returns its standard output; a non-zero exit is an error that
/// carries the command line and what the tool printed on standard error.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// Like [`run`], writing `input` to the tool's standard input.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    let line = describe(&command);
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}` (is {program} installed?)"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing the input of `{line}`"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("output of `{line}` is not UTF-8"))
}

/// `ip` inside the network namespace `netns` (`ip -n NETNS ...`).
pub fn ip(netns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs many `ip` commands inside `netns` in one process (`ip -n NETNS -batch -`).
pub fn ip_batch(netns: &str, commands: &[String]) -> Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let input = commands.join("\n") + "\n";
    run_with_input("ip", &["-n", netns, "-batch", "-"], Some(&input))
        .with_context(|| format!("in network namespace {netns}:\n{input}"))?;
    Ok(())
}

/// Runs `program args...` inside the network namespace `netns` through `ip netns exec`,
/// writing `input` to its standard input.
pub fn in_netns_with_input(
    netns: &str,
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<String> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run_with_input("ip", &full, Some(input))
}

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
