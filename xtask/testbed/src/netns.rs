//! Network namespaces: creating one (owned by a [`Netns`] guard that removes it when dropped, or
//! by name when it outlives the process, as the lab's do), entering one from a thread, starting a
//! detached process inside one, and removing one with every process inside it.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::cmd;

const NETNS_DIR: &str = "/run/netns";

fn open(netns: &str) -> Result<File> {
    let path = Path::new(NETNS_DIR).join(netns);
    File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))
}

/// Moves the calling thread into `netns`. Only this thread changes namespace.
pub fn enter(netns: &str) -> Result<()> {
    let file = open(netns)?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {netns}"))
}

/// Runs `work` on a thread inside `netns`.
pub fn run_inside<T: Send>(netns: &str, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(netns)?;
                work()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread inside {netns} panicked"))?
    })
}

/// Sets sysctls of `netns` (`net.*` keys are per network namespace).
pub fn sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<()> {
    run_inside(netns, || {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value)
                .with_context(|| format!("setting {key}={value} in network namespace {netns}"))?;
        }
        Ok(())
    })
}

/// Whether the network namespace exists.
pub fn exists(netns: &str) -> bool {
    Path::new(NETNS_DIR).join(netns).exists()
}

/// Every network namespace whose name `wanted` accepts, sorted.
pub fn list(wanted: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(error) => return Err(error).context("listing /run/netns"),
    };
    for entry in entries {
        let name = entry
            .context("listing /run/netns")?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if wanted(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Creates `netns` with its loopback up and IPv6 duplicate address detection off, so addresses
/// work at once.
pub fn create(netns: &str) -> Result<()> {
    cmd::run("ip", &["netns", "add", netns])?;
    cmd::ip(netns, &["link", "set", "lo", "up"])?;
    sysctls(
        netns,
        &[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ],
    )
}

/// Starts `command` inside `netns`, detached in its own session, output appended to `log`.
/// The process keeps the caller's mount namespace, so it sees the host's bpffs. It inherits no
/// descriptor but its standard streams: it outlives the caller, and must not keep the caller's
/// files open (a `flock` on a lock file the caller runs under would never be released).
pub fn spawn_detached(netns: &str, command: &mut Command, log: &Path) -> Result<u32> {
    let target = open(netns)?;
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let errors = output
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(output).stderr(errors);
    // SAFETY: between fork and exec the closure only makes the setns, setsid and close_range
    // system calls, which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            setns(&target, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // Close-on-exec rather than closed: std reports a failed exec through one of them.
            if libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {:?} in {netns}", command.get_program()))?;
    Ok(child.id())
}

/// The processes inside `netns`.
pub fn pids(netns: &str) -> Result<Vec<Pid>> {
    let output = cmd::run("ip", &["netns", "pids", netns])?;
    output
        .split_whitespace()
        .map(|pid| {
            pid.parse::<i32>()
                .map(Pid::from_raw)
                .with_context(|| format!("`ip netns pids {netns}` printed {pid:?}"))
        })
        .collect()
}

/// Stops every process inside `netns`: SIGTERM, then SIGKILL after two seconds.
pub fn stop_processes(netns: &str) -> Result<()> {
    let mut signal = Signal::SIGTERM;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids(netns)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            signal = Signal::SIGKILL;
        }
        for pid in pids {
            // A process that exited in the meantime is what we want.
            let _ = kill(pid, signal);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the processes inside `netns` and deletes it.
pub fn delete(netns: &str) -> Result<()> {
    if !exists(netns) {
        return Ok(());
    }
    stop_processes(netns)?;
    cmd::run("ip", &["netns", "del", netns])?;
    Ok(())
}

/// A network namespace that belongs to one run: removed, with every process inside it, when the
/// guard is dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (see [`create`]), first removing what a crashed run left under that name.
    pub fn create(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        delete(&name)?;
        create(&name)?;
        Ok(Netns { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work` on a thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T> {
        run_inside(&self.name, || Ok(work()))
    }

    /// Starts `work` on a thread that entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<T>> {
        let target = open(&self.name)?;
        let name = self.name.clone();
        Ok(thread::spawn(move || {
            if let Err(error) = setns(&target, CloneFlags::CLONE_NEWNET) {
                panic!("entering network namespace {name}: {error}");
            }
            work()
        }))
    }

    /// Sets sysctls of this namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        sysctls(&self.name, settings)
    }

    /// The index of the interface `ifname` of this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        self.run(|| nix::net::if_::if_nametoindex(ifname))?
            .with_context(|| format!("no interface {ifname} in network namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the run's own error.
        let _ = delete(&self.name);
    }
}
