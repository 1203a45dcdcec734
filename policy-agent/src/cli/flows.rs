//! `policy-agent flows`: the agent's flow log (drops, and new allowed flows where enabled), one
//! readable line per flow or the JSON lines as written. `--follow` keeps reading as the agent
//! appends, across the log's rotation.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

pub use policy_core::telemetry::FLOW_LOG;

use crate::agent::{FlowRecord, rotated_path};

/// How often `--follow` looks for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Why the flow log cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error(
        "no flow log in {dir} (is `policy-agent run` running with this --state-dir?)",
        dir = dir.display()
    )]
    Missing { dir: PathBuf },
    #[error("cannot read {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the output")]
    Write {
        #[source]
        source: io::Error,
    },
}

/// What `policy-agent flows` was asked for.
#[derive(Clone, Debug)]
pub struct FlowsOptions {
    pub state_dir: PathBuf,
    pub follow: bool,
    pub json: bool,
}

/// Prints the flow log (the rotated part first), then, with `follow`, every line appended until
/// the process is stopped.
pub fn run(options: &FlowsOptions, out: &mut impl Write) -> Result<(), FlowsError> {
    let log = options.state_dir.join(FLOW_LOG);
    let rotated = rotated_path(&log);
    if !log.exists() && !rotated.exists() && !options.follow {
        return Err(FlowsError::Missing {
            dir: options.state_dir.clone(),
        });
    }
    let mut print = |lines: Vec<String>| -> Result<(), FlowsError> {
        for line in lines {
            writeln!(out, "{}", render_line(&line, options.json))
                .map_err(|source| FlowsError::Write { source })?;
        }
        out.flush().map_err(|source| FlowsError::Write { source })
    };
    if rotated.exists() {
        let mut old = Tail::new(rotated);
        print(old.read_new()?)?;
    }
    let mut tail = Tail::new(log);
    print(tail.read_new()?)?;
    if !options.follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        print(tail.read_new()?)?;
    }
}

/// One line of the log as printed: as is for JSON, else the record on one line (or marked
/// unreadable).
fn render_line(line: &str, json: bool) -> String {
    if json {
        return line.to_owned();
    }
    match serde_json::from_str::<FlowRecord>(line) {
        Ok(record) => record.to_string(),
        Err(_) => format!("unreadable flow record: {line}"),
    }
}

/// Reads the whole lines appended to a file since the last read, following it when it is
/// replaced (rotation) or truncated.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            file: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
        }
    }

    fn read_error(&self) -> impl FnOnce(io::Error) -> FlowsError + '_ {
        |source| FlowsError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// The complete lines written since the last call.
    fn read_new(&mut self) -> Result<Vec<String>, FlowsError> {
        let mut lines = Vec::new();
        if self.file.is_none() && !self.open()? {
            return Ok(lines);
        }
        self.drain(&mut lines)?;
        match current_inode(&self.path).map_err(self.read_error())? {
            // Rotated: the rest of the old file was drained above; the new one is read whole.
            Some(inode) if inode != self.inode => {
                if self.open()? {
                    self.drain(&mut lines)?;
                }
            }
            Some(_) => {
                let len = self
                    .file
                    .as_ref()
                    .map(File::metadata)
                    .transpose()
                    .map_err(self.read_error())?
                    .map_or(0, |metadata| metadata.len());
                if len < self.offset {
                    self.offset = 0;
                    self.partial.clear();
                    self.drain(&mut lines)?;
                }
            }
            None => {}
        }
        Ok(lines)
    }

    /// Opens the file from its start; false when it does not exist (yet).
    fn open(&mut self) -> Result<bool, FlowsError> {
        match File::open(&self.path) {
            Ok(file) => {
                self.inode = file.metadata().map_err(self.read_error())?.ino();
                self.file = Some(file);
                self.offset = 0;
                self.partial.clear();
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(self.read_error()(source)),
        }
    }

    fn drain(&mut self, lines: &mut Vec<String>) -> Result<(), FlowsError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        let read = file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| file.read_to_end(&mut bytes));
        let read = match read {
            Ok(read) => read,
            Err(source) => {
                return Err(FlowsError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        self.offset += read as u64;
        self.partial.extend_from_slice(&bytes);
        while let Some(end) = self.partial.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).trim().to_owned();
            if !line.is_empty() {
                lines.push(line);
            }
        }
        Ok(())
    }
}

fn current_inode(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(Some(metadata.ino())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn record() -> FlowRecord {
        FlowRecord {
            time: Some("2026-11-26T07:00:08.5Z".parse().unwrap()),
            time_ns: 8_500_000_000,
            node: "node-1".into(),
            pod: Some("shop/db".into()),
            direction: "ingress".into(),
            protocol: "TCP".into(),
            src: "10.0.0.5".parse().unwrap(),
            src_port: 41234,
            src_pod: Some("shop/web".into()),
            dst: "10.0.0.7".parse().unwrap(),
            dst_port: 3306,
            dst_pod: Some("shop/db".into()),
            verdict: "dropped".into(),
            reason: "policy-denied".into(),
            decided_by: Some("default deny: isolated by shop/db-from-api-only".into()),
        }
    }

    #[test]
    fn a_drop_reads_as_one_line_with_pods_ports_reason_and_policy() {
        assert_eq!(
            record().to_string(),
            "2026-11-26T07:00:08.500Z node-1 dropped TCP shop/web:41234 -> shop/db:3306 \
             ingress of shop/db policy-denied (default deny: isolated by shop/db-from-api-only)"
        );
    }

    #[test]
    fn peers_without_a_pod_show_their_ip_and_icmp_shows_no_ports() {
        let mut flow = record();
        flow.src_pod = None;
        flow.src = "fd00::5".parse().unwrap();
        flow.decided_by = None;
        flow.time = None;
        assert_eq!(
            flow.to_string(),
            "monotonic+8500000000ns node-1 dropped TCP [fd00::5]:41234 -> shop/db:3306 \
             ingress of shop/db policy-denied"
        );
        flow.protocol = "ICMPv6".into();
        flow.verdict = "allowed".into();
        flow.reason = "reply".into();
        assert_eq!(
            flow.to_string(),
            "monotonic+8500000000ns node-1 allowed ICMPv6 fd00::5 -> shop/db ingress of \
             shop/db reply"
        );
    }

    #[test]
    fn json_lines_round_trip_and_bad_lines_are_marked() {
        let line = serde_json::to_string(&record()).unwrap();
        assert_eq!(render_line(&line, true), line);
        assert_eq!(render_line(&line, false), record().to_string());
        assert_eq!(
            render_line("{", false),
            "unreadable flow record: {".to_owned()
        );
    }

    #[test]
    fn tail_reads_whole_lines_and_follows_rotation_and_truncation() {
        let dir = std::env::temp_dir().join(format!("flows-tail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join(FLOW_LOG);
        let mut tail = Tail::new(log.clone());
        assert!(tail.read_new().unwrap().is_empty(), "no log yet");
        fs::write(&log, "one\ntw").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["one"]);
        fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["two", "three"]);
        // Rotation: the old file gets a last line, then a new file starts.
        fs::write(&log, "one\ntwo\nthree\nfour\n").unwrap();
        fs::rename(&log, rotated_path(&log)).unwrap();
        fs::write(&log, "five\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["four", "five"]);
        // Truncation in place.
        fs::write(&log, "six\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["six"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
