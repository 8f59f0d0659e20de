//! Cgroups of a fleet: one subtree per host (`/yurt-<slot>/<host>`), so that every
//! process of a host (daemons, shims, containers, `fleet exec` commands) can be found,
//! frozen and killed at once, and each kubelet has its own cgroup root and never
//! garbage-collects another node's pods.
//!
//! Works on cgroup v1 (one hierarchy per controller, as on these machines) and on v2.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::mounts;

/// The cgroup hierarchies mounted on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v1: every mounted hierarchy (`/sys/fs/cgroup/<controller>`).
    V1 {
        /// Mount points of all v1 hierarchies.
        hierarchies: Vec<PathBuf>,
    },
    /// cgroup v2: the unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

impl Cgroups {
    /// Finds the mounted hierarchies.
    ///
    /// # Errors
    /// [`Error::MissingFeature`] if no cgroup hierarchy is mounted.
    pub fn detect() -> Result<Self> {
        let all = mounts::mounts();
        let v1: Vec<PathBuf> = all
            .iter()
            .filter(|m| m.fstype == "cgroup")
            .map(|m| m.target.clone())
            .collect();
        if !v1.is_empty() {
            return Ok(Self::V1 { hierarchies: v1 });
        }
        if let Some(m) = all.iter().find(|m| m.fstype == "cgroup2") {
            return Ok(Self::V2 {
                root: m.target.clone(),
            });
        }
        Err(Error::MissingFeature {
            feature: "cgroups".into(),
            hint: "mount the cgroup hierarchies under /sys/fs/cgroup".into(),
        })
    }

    fn roots(&self) -> Vec<&Path> {
        match self {
            Self::V1 { hierarchies } => hierarchies.iter().map(PathBuf::as_path).collect(),
            Self::V2 { root } => vec![root.as_path()],
        }
    }

    /// The hierarchy used to list processes (v1: `pids`, else `memory`, else the first).
    fn primary(&self) -> &Path {
        match self {
            Self::V1 { hierarchies } => ["pids", "memory", "cpu"]
                .iter()
                .find_map(|c| hierarchies.iter().find(|h| h.ends_with(c)))
                .unwrap_or(&hierarchies[0]),
            Self::V2 { root } => root,
        }
    }

    fn freezer(&self) -> Option<&Path> {
        match self {
            Self::V1 { hierarchies } => hierarchies
                .iter()
                .find(|h| h.ends_with("freezer"))
                .map(PathBuf::as_path),
            Self::V2 { .. } => None,
        }
    }

    /// Creates cgroup `rel` (for example `yurt-3/edge-a1/system`) in every hierarchy.
    ///
    /// # Errors
    /// If a folder cannot be made or a cpuset cannot be initialised.
    pub fn create(&self, rel: &str) -> Result<()> {
        for root in self.roots() {
            let mut dir = root.to_path_buf();
            for part in rel.split('/').filter(|p| !p.is_empty()) {
                let parent = dir.clone();
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
                    // v1 cpusets start empty; a cgroup with no cpus/mems cannot hold tasks.
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let from = parent.join(file);
                        if let Ok(value) = std::fs::read_to_string(&from)
                            && root.ends_with("cpuset")
                        {
                            std::fs::write(dir.join(file), value.trim())
                                .map_err(|e| Error::io(dir.join(file), e))?;
                        }
                    }
                    if let Self::V2 { .. } = self {
                        enable_v2_controllers(&parent);
                    }
                }
            }
            if let Self::V2 { .. } = self {
                enable_v2_controllers(&dir);
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join `rel`.
    pub fn procs_files(&self, rel: &str) -> Vec<PathBuf> {
        self.roots()
            .into_iter()
            .map(|r| r.join(rel).join("cgroup.procs"))
            .collect()
    }

    /// Whether `rel` exists in any hierarchy.
    pub fn exists(&self, rel: &str) -> bool {
        self.roots().iter().any(|r| r.join(rel).is_dir())
    }

    /// Every process in `rel` and below.
    pub fn pids(&self, rel: &str) -> Vec<i32> {
        let mut out = Vec::new();
        collect_pids(&self.primary().join(rel), &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process in `rel` and below and waits until they are gone.
    /// Returns how many were killed.
    ///
    /// On v1 the subtree is frozen first, so nothing can fork while it is being killed.
    ///
    /// # Errors
    /// [`Error::NotReady`] if processes remain after `timeout`.
    pub fn kill_all(&self, rel: &str, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        let freezer = self.freezer().map(|f| f.join(rel)).filter(|f| f.is_dir());
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                match std::fs::read_to_string(f.join("freezer.state")) {
                    Ok(s) if s.trim() == "FROZEN" => break,
                    Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        }
        if let Self::V2 { root } = self {
            let _ = std::fs::write(root.join(rel).join("cgroup.kill"), "1");
        }
        let mut killed = 0;
        for pid in self.pids(rel) {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "THAWED");
        }
        loop {
            let left = self.pids(rel);
            if left.is_empty() {
                return Ok(killed);
            }
            if start.elapsed() > timeout {
                return Err(Error::NotReady {
                    what: format!("removal of processes {left:?} in cgroup {rel}"),
                    waited: timeout,
                    log: None,
                });
            }
            for pid in left {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes `rel` and everything below it from every hierarchy (deepest first).
    /// The cgroups must be empty of processes.
    ///
    /// # Errors
    /// If a cgroup stays busy.
    pub fn remove(&self, rel: &str) -> Result<()> {
        for root in self.roots() {
            let top = root.join(rel);
            if !top.is_dir() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                let mut tries = 0;
                loop {
                    match std::fs::remove_dir(&dir) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(e) if tries < 40 => {
                            tries += 1;
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => return Err(Error::io(&dir, e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Top-level cgroups whose name starts with `prefix`, in any hierarchy.
    pub fn top_level(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .roots()
            .iter()
            .filter_map(|r| std::fs::read_dir(r).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn enable_v2_controllers(dir: &Path) {
    if let Ok(available) = std::fs::read_to_string(dir.join("cgroup.controllers")) {
        let wanted: Vec<String> = available
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), wanted.join(" "));
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}
