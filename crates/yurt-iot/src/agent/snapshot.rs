//! The agent's local copy of its pool's Devices and DeviceProfiles, so it starts and
//! drives its devices while the cloud (and the hub's cache) cannot answer: one JSON file,
//! replaced atomically (written beside, synced, renamed, the folder synced). A file that
//! cannot be read is set aside (`.corrupt`) and the agent starts from nothing rather
//! than not at all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use yurt_api::iot::v1alpha1::{Device, DeviceProfile};

/// The file's name in the agent's state folder.
pub const FILE_NAME: &str = "devices.json";

/// Why the snapshot could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The disk refused.
    #[error("saving {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding failed.
    #[error("encoding the snapshot: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What the agent last knew of its pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The pool the snapshot is of (a snapshot of another pool is not used).
    pub pool: String,
    /// The pool's devices.
    pub devices: Vec<Device>,
    /// The pool's profiles.
    pub profiles: Vec<DeviceProfile>,
}

impl Snapshot {
    /// A fingerprint of the snapshot as it would be written: equal for equal snapshots
    /// (JSON maps are written in key order), so the agent keeps this, not a copy of
    /// what is on disk.
    pub fn fingerprint(&self) -> u64 {
        super::status::fingerprint(self)
    }
}

/// How loading went.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// The snapshot.
    Found(Snapshot),
    /// No file (a first start).
    Missing,
    /// The file could not be read; it was moved aside, with this reason.
    Corrupt(String),
}

/// Reads the snapshot in `dir` (blocking: call from `spawn_blocking`).
pub fn load(dir: &Path, pool: &str) -> Loaded {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Corrupt(format!("{}: {e}", path.display())),
    };
    let why = match serde_json::from_slice::<Snapshot>(&bytes) {
        Ok(s) if s.pool == pool => return Loaded::Found(s),
        Ok(s) => format!("the snapshot is of pool {:?}, not {pool:?}", s.pool),
        Err(e) => format!("{}: {e}", path.display()),
    };
    let aside = dir.join(format!("{FILE_NAME}.corrupt"));
    if let Err(e) = fs::rename(&path, &aside) {
        tracing::warn!(error = %e, "could not move the unreadable snapshot aside");
    }
    Loaded::Corrupt(why)
}

/// Replaces the snapshot in `dir` (blocking: call from `spawn_blocking`).
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let bytes = serde_json::to_vec(snapshot)?;
    let path = dir.join(FILE_NAME);
    let temp = dir.join(format!("{FILE_NAME}.tmp"));
    let io = |source| SnapshotError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let mut file = fs::File::create(&temp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&temp, &path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yurt_api::iot::v1alpha1::DeviceSpec;

    fn snapshot() -> Snapshot {
        Snapshot {
            pool: "hangzhou".into(),
            devices: vec![Device::new("plc-1", DeviceSpec::default())],
            profiles: Vec::new(),
        }
    }

    #[test]
    fn saved_snapshots_load_and_bad_files_are_set_aside() {
        let dir = tempfile::tempdir().expect("a folder");
        assert_eq!(load(dir.path(), "hangzhou"), Loaded::Missing);
        save(dir.path(), &snapshot()).expect("saves");
        assert_eq!(load(dir.path(), "hangzhou"), Loaded::Found(snapshot()));
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());

        // Another pool's snapshot is not used.
        assert!(matches!(load(dir.path(), "beijing"), Loaded::Corrupt(m) if m.contains("beijing")));
        assert_eq!(load(dir.path(), "hangzhou"), Loaded::Missing);

        // A torn or garbled file.
        fs::write(dir.path().join(FILE_NAME), b"{\"pool\": \"hangz").expect("writes");
        assert!(matches!(load(dir.path(), "hangzhou"), Loaded::Corrupt(_)));
        assert!(dir.path().join(format!("{FILE_NAME}.corrupt")).exists());
        assert_eq!(load(dir.path(), "hangzhou"), Loaded::Missing);
    }

    #[test]
    fn equal_snapshots_have_equal_fingerprints_and_a_change_changes_it() {
        assert_eq!(snapshot().fingerprint(), snapshot().fingerprint());
        let mut other = snapshot();
        other.pool = "beijing".into();
        assert_ne!(snapshot().fingerprint(), other.fingerprint());
        assert_ne!(snapshot().fingerprint(), Snapshot::default().fingerprint());
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("a folder");
        let file = dir.path().join("not-a-folder");
        fs::write(&file, b"x").expect("writes");
        assert!(matches!(
            save(&file, &snapshot()),
            Err(SnapshotError::Io { .. })
        ));
    }
}
