//! `lab down`: removes every lab namespace and the processes in them, the lab's
//! runtime directory and its bpffs pins. It needs no record of what was built, so it also cleans
//! up after a crash, and it is idempotent.

use std::{
    fmt, fs,
    io::ErrorKind,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{names, netns};

/// What `down` removed.
#[derive(Clone, Copy, Debug)]
pub struct Down {
    pub namespaces: usize,
    pub elapsed: Duration,
}

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab down: removed {} network namespaces, {} and {} in {} ms",
            self.namespaces,
            names::RUN_DIR,
            names::PIN_DIR,
            self.elapsed.as_millis()
        )
    }
}

/// Removes the lab.
pub fn down() -> Result<Down> {
    let start = Instant::now();
    let namespaces = names::lab_namespaces()?;
    for name in &namespaces {
        netns::delete(name)?;
    }
    for dir in [names::RUN_DIR, names::PIN_DIR] {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("removing {dir}")),
        }
    }
    let left: Vec<String> = names::lab_namespaces()?;
    if !left.is_empty() || Path::new(names::RUN_DIR).exists() {
        anyhow::bail!("the lab is not fully down; left: {left:?}");
    }
    Ok(Down {
        namespaces: namespaces.len(),
        elapsed: start.elapsed(),
    })
}
