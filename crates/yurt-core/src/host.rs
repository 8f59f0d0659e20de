//! The contract between a host and the tools that run on it (`yurt adm join`, `yurt adm
//! reset`): where the host keeps its files and what it has (its facts), and how such a
//! tool asks the host's service manager to start, stop or restart a process.
//!
//! On a real machine these would be standard paths and systemd. A fleet's hosts are
//! network and mount namespaces whose processes the fleet runs from per-host unit files,
//! so `yurt fleet exec <host> -- <tool>` tells the tool:
//! - `YURT_HOST_DIR`: the host's folder, holding `host.json` ([`HostFacts`]) and
//!   `units/<process>.toml`, and where the tool keeps what it writes;
//! - `YURT_SERVICE_MANAGER`: a Unix socket on which the fleet carries out
//!   [`ServiceRequest`]s for that host while the tool runs (one request per connection:
//!   a line `start|stop|restart <process>`, where start and restart may say `--no-block`
//!   to not wait for readiness, answered `ok` or `error <why>`). The socket is
//!   the root user's only (mode 0600, in the host's folder, which a pod sees only if it
//!   may mount the host's `/`).
//!
//! A tool started some other way on the host, as the conversion Job's servant is (a
//! privileged pod that mounts the host's `/` and enters it with `chroot`), finds both
//! from the host itself: inside each host's mount namespace the fleet keeps
//! [`HOST_LINKS`], where `dir` links to the host's folder and `yurt` to the fleet's
//! binary, and while the fleet is supervised its service manager also answers on
//! [`PERSISTENT_SOCKET`] in the host's folder (what systemd's socket is on a machine: a
//! pod that may mount the host's `/` may use it). In a fleet such a pod sees the whole
//! machine, every host's folder and socket included (the hosts share one filesystem):
//! mounting the host's `/` is a cluster-admin's right, as on any Kubernetes node.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable naming the host's folder.
pub const HOST_DIR_ENV: &str = "YURT_HOST_DIR";
/// The environment variable naming the service manager's socket.
pub const SERVICE_MANAGER_ENV: &str = "YURT_SERVICE_MANAGER";
/// The facts file in the host's folder.
pub const FACTS_FILE: &str = "host.json";
/// Where, inside a fleet host's mount namespace, `dir` links to the host's folder and
/// `yurt` to the fleet's binary.
pub const HOST_LINKS: &str = "/run/yurt-host";
/// The service manager's socket served while the fleet is supervised, in the host's
/// folder (not in its volatile `run/`, which a reboot clears).
pub const PERSISTENT_SOCKET: &str = "service-manager.sock";

/// The host's folder and its service manager's socket: `YURT_HOST_DIR` and
/// `YURT_SERVICE_MANAGER` if set (`yurt fleet exec`), else what [`HOST_LINKS`] and
/// [`PERSISTENT_SOCKET`] give on the host itself; `None` off a fleet host.
pub fn locate() -> Option<(PathBuf, PathBuf)> {
    if let (Some(dir), Some(socket)) = (
        std::env::var_os(HOST_DIR_ENV),
        std::env::var_os(SERVICE_MANAGER_ENV),
    ) {
        return Some((dir.into(), socket.into()));
    }
    let dir = std::fs::canonicalize(Path::new(HOST_LINKS).join("dir")).ok()?;
    let socket = dir.join(PERSISTENT_SOCKET);
    Some((dir, socket))
}

/// Host contract failures.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The facts file does not parse.
    #[error("{path}: not the host's facts: {reason}")]
    Facts {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The service manager could not be reached or answered badly.
    #[error("the host's service manager ({socket}): {reason}")]
    ServiceManager {
        /// Its socket.
        socket: String,
        /// Why.
        reason: String,
    },
    /// The service manager refused or failed a request.
    #[error("{request}: {reason}")]
    Refused {
        /// The request.
        request: String,
        /// Its answer.
        reason: String,
    },
}

/// What a host has, for the tools that run on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostFacts {
    /// The host's name (the node name it joins as unless told otherwise).
    pub name: String,
    /// Its address (kubelet's `--node-ip`).
    pub address: IpAddr,
    /// The kubelet binary.
    pub kubelet: PathBuf,
    /// The kube-proxy binary.
    pub kube_proxy: PathBuf,
    /// The `yurt` binary (the hub).
    pub yurt: PathBuf,
    /// The container runtime's CRI endpoint (`unix://...`).
    pub container_runtime_endpoint: String,
    /// The cgroup kubelet puts pods under (its `cgroupRoot`).
    pub cgroup_root: String,
    /// The sandbox image the runtime has.
    pub pause_image: String,
    /// Where the runtime reads (and renders) the pod network's CNI configuration.
    pub cni_config_dir: PathBuf,
    /// The pod network's state: address allocations and the CNI cache.
    pub cni_state_dirs: Vec<PathBuf>,
}

impl HostFacts {
    /// Reads `dir/host.json`.
    ///
    /// # Errors
    /// [`HostError::Io`] or [`HostError::Facts`], naming the file.
    pub fn load(dir: &Path) -> Result<Self, HostError> {
        let path = dir.join(FACTS_FILE);
        let text = std::fs::read(&path).map_err(|source| HostError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| HostError::Facts {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes `dir/host.json`.
    ///
    /// # Errors
    /// [`HostError::Io`].
    pub fn save(&self, dir: &Path) -> Result<(), HostError> {
        let path = dir.join(FACTS_FILE);
        let io = |source| HostError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| HostError::Facts {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(io)
    }
}

/// What a tool asks of the host's service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRequest {
    /// Start the process from its unit (if it is not running) and wait until it is ready.
    Start(String),
    /// Stop it (it stays stopped).
    Stop(String),
    /// Stop it if it runs, then start it from its unit (which may have changed).
    Restart(String),
    /// As [`Self::Start`], without waiting for it to be ready (`systemctl --no-block`):
    /// for a caller that waits itself and can say better why it is not.
    StartNoBlock(String),
    /// As [`Self::Restart`], without waiting for it to be ready.
    RestartNoBlock(String),
}

impl std::fmt::Display for ServiceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start(p) => write!(f, "start {p}"),
            Self::Stop(p) => write!(f, "stop {p}"),
            Self::Restart(p) => write!(f, "restart {p}"),
            Self::StartNoBlock(p) => write!(f, "start --no-block {p}"),
            Self::RestartNoBlock(p) => write!(f, "restart --no-block {p}"),
        }
    }
}

impl std::str::FromStr for ServiceRequest {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (verb, no_block, process) = match words[..] {
            [verb, process] => (verb, false, process),
            [verb, "--no-block", process] if verb != "stop" => (verb, true, process),
            _ => {
                return Err(format!(
                    "{line:?} is not `start|stop|restart <process>` (start and restart may take --no-block)"
                ));
            }
        };
        if !process.starts_with(|c: char| c.is_ascii_lowercase())
            || !process
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("{process:?} is not a process name"));
        }
        let process = process.to_owned();
        match (verb, no_block) {
            ("start", false) => Ok(Self::Start(process)),
            ("start", true) => Ok(Self::StartNoBlock(process)),
            ("stop", _) => Ok(Self::Stop(process)),
            ("restart", false) => Ok(Self::Restart(process)),
            ("restart", true) => Ok(Self::RestartNoBlock(process)),
            _ => Err(format!("{verb:?} is not start, stop or restart")),
        }
    }
}

/// The longest request or answer line.
pub const MAX_LINE: usize = 4096;

/// Sends `request` to the service manager at `socket` and waits for its answer.
///
/// # Errors
/// [`HostError::ServiceManager`] if it cannot be reached or answers garbage,
/// [`HostError::Refused`] with its reason if the request failed.
pub async fn ask(socket: &Path, request: &ServiceRequest) -> Result<(), HostError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fail = |reason: String| HostError::ServiceManager {
        socket: socket.display().to_string(),
        reason,
    };
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| fail(e.to_string()))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    stream.shutdown().await.map_err(|e| fail(e.to_string()))?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_LINE as u64)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let answer = String::from_utf8_lossy(&answer);
    let answer = answer.trim_end();
    if answer == "ok" {
        return Ok(());
    }
    match answer.strip_prefix("error ") {
        Some(reason) => Err(HostError::Refused {
            request: request.to_string(),
            reason: reason.to_owned(),
        }),
        None => Err(fail(format!("answered {answer:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_as_one_line() {
        for line in [
            "start kubelet",
            "stop yurt-hub",
            "restart kube-proxy",
            "start --no-block yurt-hub",
            "restart --no-block yurt-hub",
        ] {
            let r: ServiceRequest = line.parse().unwrap();
            assert_eq!(r.to_string(), line);
        }
        for bad in [
            "",
            "start",
            "start a b",
            "reboot kubelet",
            "start ../x",
            "start Kubelet",
            "stop --no-block kubelet",
            "start --later kubelet",
            "start kubelet --no-block",
            "start --no-block",
            "stop -kubelet",
        ] {
            assert!(bad.parse::<ServiceRequest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn facts_round_trip_and_garbage_names_the_file() {
        let dir = std::env::temp_dir().join(format!("yurt-host-facts-{}", std::process::id()));
        let facts = HostFacts {
            name: "edge-x".into(),
            address: "10.20.0.100".parse().unwrap(),
            kubelet: "/k/kubelet".into(),
            kube_proxy: "/k/kube-proxy".into(),
            yurt: "/y/yurt".into(),
            container_runtime_endpoint: "unix:///run/c.sock".into(),
            cgroup_root: "/yurt-0/edge-x".into(),
            pause_image: "yurt.local/pause:1".into(),
            cni_config_dir: "/h/cni".into(),
            cni_state_dirs: vec!["/h/cni-ipam".into()],
        };
        facts.save(&dir).unwrap();
        assert_eq!(HostFacts::load(&dir).unwrap(), facts);
        std::fs::write(dir.join(FACTS_FILE), "{").unwrap();
        let err = HostFacts::load(&dir).unwrap_err().to_string();
        assert!(err.contains("host.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_request_gets_the_managers_answer() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = std::env::temp_dir().join(format!("yurt-host-sm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("sm.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            for answer in ["ok\n", "error kubelet is not ready: timed out\n", "what\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut line = String::new();
                s.read_to_string(&mut line).await.unwrap();
                assert_eq!(line, "restart kubelet\n");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let r = ServiceRequest::Restart("kubelet".into());
        ask(&socket, &r).await.unwrap();
        let err = ask(&socket, &r).await.unwrap_err().to_string();
        assert_eq!(err, "restart kubelet: kubelet is not ready: timed out");
        assert!(ask(&socket, &r).await.is_err());
        server.await.unwrap();
        let missing = ask(&dir.join("none.sock"), &r)
            .await
            .unwrap_err()
            .to_string();
        assert!(missing.contains("none.sock"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
