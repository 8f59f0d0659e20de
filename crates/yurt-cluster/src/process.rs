//! Launching fleet processes inside a host: its cgroup, its network namespace and
//! (edge hosts) its mount namespace; recording them in pid files; stopping them.
//!
//! A process joins its cgroup before it execs (a tiny `sh` prologue writes `$$` to every
//! hierarchy's `cgroup.procs`), so nothing it forks can escape the host's subtree.
//! Pid files hold the pid and its start time, so a recycled pid is never mistaken
//! for the process.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// The environment every fleet process gets (nothing inherited from the caller, so a
/// proxy or kubeconfig setting in the user's shell cannot leak into the fleet).
pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Joins the cgroups listed in `$YURT_CGROUP_PROCS` (colon-separated) and execs "$@".
const PROLOGUE: &str = r#"IFS=:; for f in $YURT_CGROUP_PROCS; do echo $$ > "$f" || exit 111; done; unset IFS YURT_CGROUP_PROCS; exec "$@""#;

/// How to start one process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Network namespace handle to enter.
    pub netns: Option<PathBuf>,
    /// Mount namespace handle to enter.
    pub mountns: Option<PathBuf>,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
}

impl Launch {
    /// Builds the command: prologue, then `nsenter` if namespaces are set, then the program.
    pub fn command(&self) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(PROLOGUE).arg("yurt-launch");
        if self.netns.is_some() || self.mountns.is_some() {
            c.arg("nsenter");
            if let Some(net) = &self.netns {
                c.arg(format!("--net={}", net.display()));
            }
            if let Some(mnt) = &self.mountns {
                c.arg(format!("--mount={}", mnt.display()));
            }
            c.arg("--");
        }
        c.arg(&self.program).args(&self.args);
        c.env_clear().env("PATH", PATH).env("HOME", "/root").env(
            "YURT_CGROUP_PROCS",
            self.cgroup_procs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        );
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// A running (or once running) process: pid plus kernel start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
    pub start_time: u64,
}

/// State and start time of `pid`, from /proc.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl PidRecord {
    /// The record of the running process `pid`, if there is one.
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self { pid, start_time })
    }

    /// Whether the recorded process is still running (zombies count as dead).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Reads a pid file; `None` if absent or unreadable.
    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut words = text.split_whitespace();
        Some(Self {
            pid: words.next()?.parse().ok()?,
            start_time: words.next()?.parse().ok()?,
        })
    }

    /// Writes a pid file.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::state::write_atomic(
            path,
            format!("{} {}\n", self.pid, self.start_time).as_bytes(),
        )
    }
}

/// Starts a process described by `launch`, appending its output to `log` and recording
/// it in `pid_file`. The process runs in its own process group, so a Ctrl-C on the
/// terminal reaches only `yurt`, which then stops the fleet in order.
///
/// The returned [`Child`] may be dropped (the process keeps running) or kept to reap it.
///
/// # Errors
/// If the log cannot be opened or the process cannot be started.
pub fn spawn(launch: &Launch, log: &Path, pid_file: &Path) -> Result<(PidRecord, Child)> {
    for dir in [log.parent(), pid_file.parent()].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut logf = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let _ = writeln!(
        logf,
        "==== yurt: starting {} at {} ====",
        launch.program.display(),
        humantime_now()
    );
    let err = logf.try_clone().map_err(|e| Error::io(log, e))?;
    let mut command = launch.command();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(logf))
        .stderr(Stdio::from(err))
        .process_group(0);
    let child = command.spawn().map_err(|source| Error::Spawn {
        program: launch.program.display().to_string(),
        source,
    })?;
    let pid = i32::try_from(child.id()).map_err(|_| Error::Invalid("pid out of range".into()))?;
    let start_time = stat(pid).map(|(_, t)| t).unwrap_or(0);
    let record = PidRecord { pid, start_time };
    record.write(pid_file)?;
    Ok((record, child))
}

/// Asks the process to stop (SIGTERM), then kills it (SIGKILL) after `grace`.
/// Returns once it is gone.
pub fn stop(record: PidRecord, grace: Duration) {
    if !record.is_alive() {
        return;
    }
    let pid = Pid::from_raw(record.pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while record.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_now(record);
}

/// Kills the process at once (SIGKILL, no chance to clean up). Returns once it is gone.
pub fn kill_now(record: PidRecord) {
    if !record.is_alive() {
        return;
    }
    let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while record.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The current UTC time as RFC 3339, for log headers.
pub fn humantime_now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_process_is_recorded_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo started $GREETING; exec sleep 30".into()],
            env: vec![("GREETING".into(), "hello".into())],
            netns: None,
            mountns: None,
            cgroup_procs: Vec::new(),
        };
        let log = dir.path().join("logs/p.log");
        let pid_file = dir.path().join("run/p.pid");
        let (record, mut child) = spawn(&launch, &log, &pid_file).unwrap();
        assert_eq!(PidRecord::read(&pid_file), Some(record));
        assert!(record.is_alive());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log)
            .unwrap()
            .contains("started hello")
        {
            assert!(Instant::now() < deadline, "log never showed the greeting");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reap in the background so the stopped child does not linger as a zombie.
        let reaper = std::thread::spawn(move || child.wait());
        stop(record, Duration::from_secs(5));
        assert!(!record.is_alive());
        assert!(reaper.join().unwrap().is_ok());
    }

    #[test]
    fn a_recycled_pid_is_not_our_process() {
        let me = std::process::id() as i32;
        let (_, start) = stat(me).unwrap();
        assert!(
            PidRecord {
                pid: me,
                start_time: start
            }
            .is_alive()
        );
        assert!(
            !PidRecord {
                pid: me,
                start_time: start + 1
            }
            .is_alive()
        );
    }

    #[test]
    fn failing_cgroup_join_exits_before_exec() {
        let launch = Launch {
            program: "/bin/true".into(),
            args: vec![],
            env: vec![],
            netns: None,
            mountns: None,
            cgroup_procs: vec!["/nonexistent/cgroup.procs".into()],
        };
        let status = launch.command().status().unwrap();
        assert_eq!(status.code(), Some(111));
    }

    #[test]
    fn log_timestamps_are_rfc3339() {
        let t = humantime_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
