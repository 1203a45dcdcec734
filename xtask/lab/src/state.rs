//! The lab's record of what it built, kept in `/run/netpol-lab/lab.json`.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{names, plan::Plan};

/// What `up` built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub plan: Plan,
    /// The agent binary the nodes run, or `None` when the lab runs without agents.
    pub agent: Option<PathBuf>,
}

impl State {
    /// The record of the lab that is up, if any.
    pub fn load() -> Result<Option<Self>> {
        let path = names::state_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is not a lab record; run `cargo xtask lab down`",
                path.display()
            )
        })
    }

    /// The record of the lab that is up, or an error that says to bring one up.
    pub fn require() -> Result<Self> {
        Self::load()?.context("no lab is up: run `cargo xtask lab up -f DIR` first")
    }

    pub fn save(&self) -> Result<()> {
        let path = names::state_file();
        let text = serde_json::to_string_pretty(self).context("encoding the lab record")?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}
