//! `cargo xtask lab down`: removes every lab namespace and the processes in them, the lab's
//! runtime directory and its bpffs pins. It needs no record of what was built, so it also cleans
//! up after a crash, and it is idempotent.

use std::{fs, io::ErrorKind, path::Path, time::Instant};

use anyhow::{Context, Result};

use super::{names, netns};

pub fn run() -> Result<()> {
    let start = Instant::now();
    let namespaces = netns::lab_namespaces()?;
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
    let left: Vec<String> = netns::lab_namespaces()?;
    if !left.is_empty() || Path::new(names::RUN_DIR).exists() {
        anyhow::bail!("the lab is not fully down; left: {left:?}");
    }
    println!(
        "lab down: removed {} network namespaces, {} and {} in {} ms",
        namespaces.len(),
        names::RUN_DIR,
        names::PIN_DIR,
        start.elapsed().as_millis()
    );
    Ok(())
}
