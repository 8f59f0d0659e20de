//! Restarting every container of the node's pods once, so kubelet starts each again
//! with the environment it computes now (after a convert, the hub's
//! `KUBERNETES_SERVICE_HOST`): the containers' tasks are stopped in containerd, SIGTERM
//! then SIGKILL after a grace period, and kubelet restarts them (the pod keeps its
//! sandbox, so its address and volumes). Pod sandboxes (`pause`) are left alone.
//!
//! Through containerd's own `ctr` tool: there is no maintained Rust CRI client, and
//! generating one from the CRI's protobufs for two calls would add a gRPC stack to a
//! command that runs once per conversion; `ctr` ships with every containerd.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The namespace the CRI plugin keeps Kubernetes' containers in.
const K8S_NAMESPACE: &str = "k8s.io";
/// How often stopped containers are looked for.
const POLL: Duration = Duration::from_millis(200);

/// A container of a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The container's name in the pod.
    pub container: String,
    /// containerd's ID.
    pub id: String,
}

impl std::fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.pod, self.container)
    }
}

/// The host's container runtime, reached with `ctr`.
#[derive(Debug, Clone)]
pub struct Runtime {
    socket: PathBuf,
}

impl Runtime {
    /// The runtime at CRI endpoint `endpoint` (`unix:///path` or a path).
    pub fn new(endpoint: &str) -> Self {
        Self {
            socket: PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint)),
        }
    }

    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", K8S_NAMESPACE])
            .args(args)
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The running containers of the node's pods (sandboxes aside).
    ///
    /// # Errors
    /// `ctr` failed or answered what does not parse.
    pub fn running_containers(&self) -> Result<Vec<ContainerRef>, String> {
        let running = running_tasks(&self.ctr(&["tasks", "ls"])?);
        let mut found = Vec::new();
        for id in self
            .ctr(&[
                "containers",
                "ls",
                "-q",
                "labels.\"io.cri-containerd.kind\"==container",
            ])?
            .lines()
            .map(str::trim)
            .filter(|id| !id.is_empty() && running.iter().any(|r| r == id))
        {
            let info = match self.ctr(&["containers", "info", id]) {
                Ok(info) => info,
                // Removed since it was listed: nothing to restart.
                Err(e) if e.contains("not found") => continue,
                Err(e) => return Err(e),
            };
            found.push(container_of(id, &info)?);
        }
        found.sort();
        Ok(found)
    }

    /// Stops each running container of the node's pods that `grace` gives a grace
    /// period (`None`: left alone): SIGTERM, SIGKILL once its grace has passed; returns
    /// them once all are stopped. kubelet starts them again.
    ///
    /// # Errors
    /// `ctr` failed, or a container was still running when `within` ended.
    pub async fn restart_containers(
        &self,
        grace: impl Fn(&ContainerRef) -> Option<Duration>,
        within: Duration,
    ) -> Result<Vec<ContainerRef>, String> {
        let started = Instant::now();
        let deadline = started + within;
        let targets: Vec<(ContainerRef, Duration)> = self
            .running_containers()?
            .into_iter()
            .filter_map(|c| grace(&c).map(|g| (c, g)))
            .collect();
        for (c, _) in &targets {
            self.kill(&c.id, "SIGTERM")?;
        }
        let mut killed: Vec<&str> = Vec::new();
        loop {
            let running = running_tasks(&self.ctr(&["tasks", "ls"])?);
            let left: Vec<&(ContainerRef, Duration)> = targets
                .iter()
                .filter(|(c, _)| running.contains(&c.id))
                .collect();
            if left.is_empty() {
                return Ok(targets.into_iter().map(|(c, _)| c).collect());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "still running: {}",
                    left.iter()
                        .map(|(c, _)| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            for (c, g) in &left {
                if started.elapsed() >= *g && !killed.contains(&c.id.as_str()) {
                    self.kill(&c.id, "SIGKILL")?;
                    killed.push(&c.id);
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn kill(&self, id: &str, signal: &str) -> Result<(), String> {
        match self.ctr(&["tasks", "kill", "--signal", signal, id]) {
            // Ended meanwhile (it may have been stopping already).
            Err(e) if e.contains("not found") || e.contains("finished") => Ok(()),
            other => other.map(drop),
        }
    }
}

/// The IDs of `ctr tasks ls`'s running tasks (columns TASK, PID, STATUS).
pub fn running_tasks(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let (id, _pid, status) = (cols.next()?, cols.next()?, cols.next()?);
            (status == "RUNNING").then(|| id.to_owned())
        })
        .collect()
}

/// A container from `ctr containers info`'s JSON: the CRI plugin's pod labels.
pub fn container_of(id: &str, info: &str) -> Result<ContainerRef, String> {
    let json: serde_json::Value = serde_json::from_str(info)
        .map_err(|e| format!("ctr containers info {id}: not JSON: {e}"))?;
    let label = |key: &str| {
        json["Labels"][key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("container {id} has no label {key}: not a pod's container"))
    };
    Ok(ContainerRef {
        namespace: label("io.kubernetes.pod.namespace")?,
        pod: label("io.kubernetes.pod.name")?,
        container: label("io.kubernetes.container.name")?,
        id: id.to_owned(),
    })
}
