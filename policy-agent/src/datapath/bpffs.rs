//! The bpf filesystem: mounting it when the node has not, and the layout of the pin directory.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use nix::mount::{MsFlags, mount};
use policy_common::names::ALL_MAPS;
use tracing::{info, warn};

use super::DatapathError;

/// Where bpffs is mounted by convention; mounted here when missing, as Cilium and Calico do.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const MOUNTS: &str = "/proc/self/mounts";

/// Serializes the check-then-mount, so two datapaths opened at once mount bpffs only once.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// The filesystem type of the mount that holds `path`, from a mount table in `/proc/mounts`
/// format (the longest mount point that is a prefix of `path` wins; later mounts shadow earlier).
pub fn fs_type_of(mounts: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(mount_point), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path.starts_with(mount_point) {
            let depth = Path::new(mount_point).components().count();
            if best.is_none_or(|(best_depth, _)| depth >= best_depth) {
                best = Some((depth, fs_type));
            }
        }
    }
    best.map(|(_, fs_type)| fs_type.to_owned())
}

/// Makes sure `pin_dir` is on bpffs, mounting bpffs at [`BPFFS_ROOT`] when `pin_dir` is under it
/// and nothing is mounted there yet.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
    let _guard = MOUNT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let read_mounts = || {
        fs::read_to_string(MOUNTS).map_err(|source| DatapathError::ReadMounts {
            path: MOUNTS.into(),
            source,
        })
    };
    let fs_type = fs_type_of(&read_mounts()?, pin_dir).unwrap_or_default();
    if fs_type == "bpf" {
        return Ok(());
    }
    if !pin_dir.starts_with(BPFFS_ROOT) {
        return Err(DatapathError::NotBpffs {
            path: pin_dir.to_owned(),
            fs_type,
        });
    }
    mount(
        Some("bpf"),
        BPFFS_ROOT,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| DatapathError::MountBpffs {
        path: BPFFS_ROOT.into(),
        source,
    })?;
    info!(path = BPFFS_ROOT, "mounted bpffs");
    Ok(())
}

/// The directories under the pin directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
    /// One pin per map, named by its map name (which carries its layout version).
    pub maps: PathBuf,
    /// One pin per program, named by its program name.
    pub programs: PathBuf,
    /// One pin per attachment, named `<ifindex>-<program>`.
    pub links: PathBuf,
}

impl PinLayout {
    pub fn new(root: &Path) -> Self {
        PinLayout {
            root: root.to_owned(),
            maps: root.join("maps"),
            programs: root.join("programs"),
            links: root.join("links"),
        }
    }

    pub fn create(&self) -> Result<(), DatapathError> {
        for dir in [&self.root, &self.maps, &self.programs, &self.links] {
            fs::create_dir_all(dir).map_err(|source| DatapathError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The names of the entries of a pin directory.
pub fn pin_names(dir: &Path) -> Result<Vec<String>, DatapathError> {
    let list_error = |source| DatapathError::ListPins {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

pub fn remove_pin(path: &Path) -> Result<(), DatapathError> {
    fs::remove_file(path).map_err(|source| DatapathError::RemovePin {
        path: path.to_owned(),
        source,
    })
}

/// Removes the pinned maps whose names this build does not define: maps of an older layout
/// version, which the programs of this build must never read.
pub fn remove_unknown_map_pins(maps_dir: &Path) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    for name in pin_names(maps_dir)? {
        if !ALL_MAPS.contains(&name.as_str()) {
            remove_pin(&maps_dir.join(&name))?;
            warn!(map = %name, "removed a pinned map of a layout this build does not use");
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
sysfs /sys sysfs rw,nosuid 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
tmpfs /sys/fs/bpf/other tmpfs rw 0 0
/dev/root / ext4 rw 0 0
";

    #[test]
    fn longest_mount_point_decides_the_type() {
        assert_eq!(
            fs_type_of(TABLE, Path::new("/sys/fs/bpf/netpol")).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            fs_type_of(TABLE, Path::new("/sys/fs/bpf/other/x")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type_of(TABLE, Path::new("/sys/kernel")).as_deref(),
            Some("sysfs")
        );
        assert_eq!(
            fs_type_of(TABLE, Path::new("/var/run")).as_deref(),
            Some("ext4")
        );
    }

    #[test]
    fn path_prefix_is_by_component_not_by_string() {
        assert_eq!(
            fs_type_of(TABLE, Path::new("/sys/fs/bpfx")).as_deref(),
            Some("sysfs")
        );
    }

    #[test]
    fn unmounted_bpffs_is_not_reported() {
        let table = "sysfs /sys sysfs rw 0 0\n/dev/root / ext4 rw 0 0\n";
        assert_eq!(
            fs_type_of(table, Path::new("/sys/fs/bpf/netpol")).as_deref(),
            Some("sysfs")
        );
    }
}
