//! The fleet's persisted state (`fleet.json`): what was asked for, which slot it has,
//! which links are cut and which processes were stopped on purpose.
//!
//! Writes are atomic (temporary file, fsync, rename, fsync of the folder), so a crash
//! leaves either the old or the new state, never a torn file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::{AddedHost, EdgeApi, FleetSpec, Slot};

/// Current format of `fleet.json`.
pub const FORMAT: u32 = 1;

/// What `fleet.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetState {
    /// Format version.
    pub format: u32,
    /// The fleet's slot on this machine.
    pub slot: Slot,
    /// The fleet's shape.
    pub spec: FleetSpec,
    /// Nodes and pools whose link to the cloud is cut.
    #[serde(default)]
    pub cut: BTreeSet<String>,
    /// Processes stopped on purpose, per host: not restarted, not reported as crashed.
    #[serde(default)]
    pub stopped: BTreeMap<String, BTreeSet<String>>,
    /// How the edge hosts' kubelets and kube-proxies reach the API server.
    #[serde(default, skip_serializing_if = "is_default")]
    pub edge_api: EdgeApi,
    /// Whether the API server writes an audit log (level Metadata, every request).
    #[serde(default, skip_serializing_if = "is_default")]
    pub api_audit_log: bool,
    /// Whether the cloud host runs Prometheus (`yurt up --prometheus`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub prometheus: bool,
    /// Whether the cloud host runs a second kube-apiserver with its own tunnel server
    /// (`yurt up --second-api-server`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub second_api_server: bool,
    /// How long the certificates kube-controller-manager signs are valid, seconds
    /// (`yurt up --cluster-signing-duration`); `None`: its default, a year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_signing_duration: Option<u64>,
    /// Whether the fleet runs upstream Kubernetes only (`yurt up --bare`): no hub,
    /// manager, tunnel or NodePools; plain edge workers; a kubelet on the cloud host.
    #[serde(default, skip_serializing_if = "is_default")]
    pub bare: bool,
    /// Hosts added to the running fleet (`yurt fleet add-host`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_hosts: BTreeMap<String, AddedHost>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl FleetState {
    /// A new state for `spec` in `slot`.
    pub fn new(spec: FleetSpec, slot: Slot) -> Self {
        Self {
            format: FORMAT,
            slot,
            spec,
            cut: BTreeSet::new(),
            stopped: BTreeMap::new(),
            edge_api: EdgeApi::default(),
            api_audit_log: false,
            prometheus: false,
            second_api_server: false,
            cluster_signing_duration: None,
            bare: false,
            added_hosts: BTreeMap::new(),
        }
    }

    /// Whether `process` on `host` was stopped on purpose.
    pub fn is_stopped(&self, host: &str, process: &str) -> bool {
        self.stopped.get(host).is_some_and(|s| s.contains(process))
    }

    /// Records that `process` on `host` was stopped (or started again).
    pub fn set_stopped(&mut self, host: &str, process: &str, stopped: bool) {
        if stopped {
            self.stopped
                .entry(host.to_owned())
                .or_default()
                .insert(process.to_owned());
        } else if let Some(set) = self.stopped.get_mut(host) {
            set.remove(process);
            if set.is_empty() {
                self.stopped.remove(host);
            }
        }
    }
}

/// Reads the state file; `None` if there is none.
///
/// # Errors
/// [`Error::Corrupt`] if it cannot be parsed, I/O errors otherwise.
pub fn load(path: &Path) -> Result<Option<FleetState>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let state: FleetState = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if state.format != FORMAT {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            reason: format!("format {} is not the supported {FORMAT}", state.format),
        });
    }
    Ok(Some(state))
}

/// Writes `bytes` to `path` atomically and durably.
///
/// # Errors
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // A bare file name's parent is "": the current folder.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes the state file atomically.
///
/// # Errors
/// I/O errors.
pub fn save(path: &Path, state: &FleetState) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_file_name_is_written_in_the_current_folder() {
        let dir = tempfile::tempdir().expect("tmp");
        let before = std::env::current_dir().expect("cwd");
        std::env::set_current_dir(dir.path()).expect("cd");
        let written = super::write_atomic(std::path::Path::new("bare.txt"), b"x");
        std::env::set_current_dir(before).expect("cd back");
        written.expect("written");
        assert_eq!(
            std::fs::read(dir.path().join("bare.txt")).expect("read"),
            b"x"
        );
    }

    use super::*;

    #[test]
    fn state_round_trips_and_tracks_stopped_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.json");
        assert_eq!(load(&path).unwrap(), None);
        let mut state = FleetState::new(FleetSpec::default(), Slot(7));
        state.set_stopped("edge-a1", "kubelet", true);
        state.cut.insert("pool-a".into());
        save(&path, &state).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back, state);
        assert!(back.is_stopped("edge-a1", "kubelet"));
        let mut back = back;
        back.set_stopped("edge-a1", "kubelet", false);
        assert!(back.stopped.is_empty());
    }

    #[test]
    fn the_default_edge_path_leaves_the_file_as_before_and_direct_round_trips() {
        let state = FleetState::new(FleetSpec::default(), Slot(2));
        let text = serde_json::to_string(&state).unwrap();
        assert!(!text.contains("edge_api"), "{text}");
        assert!(!text.contains("api_audit_log"), "{text}");
        let mut direct = state.clone();
        direct.edge_api = EdgeApi::Direct;
        direct.api_audit_log = true;
        let text = serde_json::to_string(&direct).unwrap();
        assert!(text.contains(r#""edge_api":"direct""#), "{text}");
        let back: FleetState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, direct);
    }

    #[test]
    fn corrupt_state_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.json");
        std::fs::write(&path, b"{\"format\": 1, \"slot\"").unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"format\": 1, \"slot\"");
    }
}
