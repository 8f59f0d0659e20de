//! Keeping a fleet's processes running, like a service manager with `Restart=always`:
//! the supervise loop (crashed processes start again; crash loops back off and are
//! reported once), and the detached supervisor that `yurt up --detach` leaves behind.
//!
//! One owner: whoever supervises a fleet holds its `up.lock` — the foreground `yurt up`,
//! or the detached supervisor process (`yurt fleet supervise`), which `yurt up --detach`
//! hands the lock to. A second `yurt up` is refused while the lock is held, and
//! `yurt down` stops the holder (SIGTERM) before it stops anything else, so nothing
//! restarts what down stops. Reboots, stops and starts hold the operations lock, and
//! the loop skips a round while they do (see [`Fleet::supervise`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Fleet, MachineConfig};
use crate::cmd;
use crate::components::Component;
use crate::error::{Error, Result};
use crate::lock;
use crate::paths::FleetPaths;
use crate::process::PidRecord;
use crate::spec::HostId;

/// Restarts within this window count towards a crash loop.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Restarts within the window that make a crash loop.
const CRASH_LOOP: usize = 3;
/// The first wait between restarts of a crash-looping process; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_secs(4);
/// The longest wait between restarts of a crash-looping process.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Lines of a process's log quoted in a crash-loop report.
const REPORT_TAIL_LINES: usize = 10;

// === Files of the detached supervisor ===

/// Where the detached supervisor records itself (its pid and start time).
pub fn supervisor_pid_file(paths: &FleetPaths) -> PathBuf {
    paths.root().join("supervisor.pid")
}

/// The detached supervisor's log (its stdout and stderr).
pub fn supervisor_log(paths: &FleetPaths) -> PathBuf {
    paths.root().join("supervisor.log")
}

/// The last crash-loop report of the fleet's supervisor (foreground or detached).
pub fn last_report_file(paths: &FleetPaths) -> PathBuf {
    paths.root().join("supervisor-report.txt")
}

/// The last crash-loop report, if there is one.
pub fn last_report(paths: &FleetPaths) -> Option<String> {
    std::fs::read_to_string(last_report_file(paths))
        .ok()
        .filter(|t| !t.trim().is_empty())
}

/// Who keeps a fleet's processes running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervision {
    /// A `yurt up` in the foreground.
    Foreground {
        /// Its pid.
        pid: i32,
    },
    /// The detached supervisor of `yurt up --detach`.
    Detached {
        /// Its pid.
        pid: i32,
        /// Its log.
        log: PathBuf,
    },
    /// Nobody: crashed processes stay down.
    None,
}

/// Who supervises the fleet in `paths` right now.
///
/// # Errors
/// The lock file cannot be read.
pub fn supervision(paths: &FleetPaths) -> Result<Supervision> {
    let Some(pid) = lock::holder(&paths.up_lock())? else {
        return Ok(Supervision::None);
    };
    let detached =
        PidRecord::read(&supervisor_pid_file(paths)).is_some_and(|r| r.pid == pid && r.is_alive());
    Ok(if detached {
        Supervision::Detached {
            pid,
            log: supervisor_log(paths),
        }
    } else {
        Supervision::Foreground { pid }
    })
}

/// Starts the detached supervisor of the fleet in `data_dir`: `yurt fleet supervise`,
/// its output appended to [`supervisor_log`]. It takes the fleet's `up.lock` once the
/// caller lets go of it (see [`wait_for_supervisor`]) and starts its own session, so it
/// outlives the terminal of the `yurt up --detach` that started it.
///
/// # Errors
/// The log cannot be opened or the binary cannot be started.
pub fn spawn_supervisor(machine: &MachineConfig, data_dir: &Path) -> Result<Child> {
    let paths = FleetPaths::new(data_dir);
    let log = supervisor_log(&paths);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| Error::io(&log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
    Command::new(&machine.yurt_binary)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cache-dir")
        .arg(&machine.cache_dir)
        .arg("--registry-dir")
        .arg(&machine.registry_dir)
        .args(["fleet", "supervise"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|source| Error::Spawn {
            program: machine.yurt_binary.display().to_string(),
            source,
        })
}

/// Waits (blocking, at most `timeout`) until the supervisor `child` holds the fleet's
/// `up.lock`; the caller must have let go of it.
///
/// # Errors
/// [`Error::ProcessExited`] with its log if it exits first, [`Error::NotReady`] on timeout.
pub fn wait_for_supervisor(paths: &FleetPaths, child: &mut Child, timeout: Duration) -> Result<()> {
    let pid = i32::try_from(child.id()).map_err(|_| Error::Invalid("pid out of range".into()))?;
    let log = supervisor_log(paths);
    let deadline = Instant::now() + timeout;
    loop {
        if lock::holder(&paths.up_lock())? == Some(pid) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::ProcessExited {
                host: "this machine".into(),
                process: "the fleet's supervisor".into(),
                status: status.to_string(),
                tail: cmd::tail_file(&log, 8),
                log,
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                what: "the fleet's supervisor to take over".into(),
                waited: timeout,
                log: Some(log),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === The supervise loop ===

/// Per process: recent restarts, when it may be restarted next, and whether its crash
/// loop was reported (once per loop).
#[derive(Debug, Default)]
pub struct RestartBackoff {
    processes: HashMap<(String, &'static str), ProcessRestarts>,
}

#[derive(Debug, Default)]
struct ProcessRestarts {
    recent: Vec<Instant>,
    not_before: Option<Instant>,
    reported: bool,
}

impl RestartBackoff {
    /// Whether `process` on `host` may be restarted at `now`.
    pub fn allows(&self, host: &HostId, process: Component, now: Instant) -> bool {
        self.processes
            .get(&(host.to_string(), process.name()))
            .and_then(|p| p.not_before)
            .is_none_or(|t| now >= t)
    }

    /// Records a restart; when it makes (or continues) a crash loop, the next restart
    /// waits twice as long as the last, and the loop is described the first time only.
    pub fn restarted(&mut self, host: &HostId, process: Component, now: Instant) -> Option<String> {
        let p = self
            .processes
            .entry((host.to_string(), process.name()))
            .or_default();
        p.recent.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        p.recent.push(now);
        let n = p.recent.len();
        if n < CRASH_LOOP {
            p.not_before = None;
            p.reported = false;
            return None;
        }
        let doublings = u32::try_from(n - CRASH_LOOP).unwrap_or(u32::MAX).min(8);
        let wait = (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF);
        p.not_before = Some(now + wait);
        if p.reported {
            return None;
        }
        p.reported = true;
        Some(format!(
            "{n} restarts within {}s; next in {}s",
            CRASH_WINDOW.as_secs(),
            wait.as_secs()
        ))
    }
}

/// What a supervisor did in one round, for its owner to print or log.
#[derive(Debug)]
pub enum SupervisorEvent {
    /// A process had exited and runs again.
    Restarted {
        /// The host.
        host: HostId,
        /// The process.
        process: Component,
        /// Its log.
        log: PathBuf,
    },
    /// A process keeps crashing: it runs again, and its next restarts back off.
    CrashLoop {
        /// The host.
        host: HostId,
        /// The process.
        process: Component,
        /// How often it restarted and when the next restart comes.
        summary: String,
        /// Its log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A process is down and could not be started again.
    RestartFailed {
        /// The host.
        host: HostId,
        /// The process.
        process: Component,
        /// Why.
        error: String,
    },
    /// A round could not run (the lock or the state could not be read).
    RoundFailed {
        /// Why.
        error: String,
    },
}

impl fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Restarted { host, process, log } => write!(
                f,
                "{process} on {host} had exited and was restarted; see {}",
                log.display()
            ),
            Self::CrashLoop {
                host,
                process,
                summary,
                log,
                tail,
            } => write!(
                f,
                "{process} on {host} keeps crashing ({summary}); restarts now back off; see {}:\n{tail}",
                log.display()
            ),
            Self::RestartFailed {
                host,
                process,
                error,
            } => write!(
                f,
                "{process} on {host} is down and could not be restarted: {error}"
            ),
            Self::RoundFailed { error } => write!(f, "supervising the fleet: {error}"),
        }
    }
}

impl Fleet {
    /// Supervises the fleet until `stop` completes: every `interval`, one round of
    /// [`Fleet::supervise`] with restarts backing off per process, each outcome given to
    /// `report`. A crash-loop report is also written to [`last_report_file`] (prefixed
    /// with the time), so `yurt fleet status` can show it.
    pub async fn supervise_until(
        &mut self,
        interval: Duration,
        stop: impl Future<Output = ()>,
        mut report: impl FnMut(&SupervisorEvent),
    ) {
        let mut backoff = RestartBackoff::default();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.reap();
            let now = Instant::now();
            let round = tokio::select! {
                r = self.supervise(|host, process| backoff.allows(host, process, now)) => r,
                () = &mut stop => return,
            };
            let restarted = match round {
                Ok(r) => r,
                Err(e) => {
                    report(&SupervisorEvent::RoundFailed {
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            for (host, process, result) in restarted {
                let log = self.paths().host(&host).log(process.name());
                let event = match result {
                    Ok(()) => match backoff.restarted(&host, process, Instant::now()) {
                        Some(summary) => SupervisorEvent::CrashLoop {
                            tail: cmd::tail_file(&log, REPORT_TAIL_LINES),
                            host,
                            process,
                            summary,
                            log,
                        },
                        None => SupervisorEvent::Restarted { host, process, log },
                    },
                    Err(e) => SupervisorEvent::RestartFailed {
                        host,
                        process,
                        error: e.to_string(),
                    },
                };
                if matches!(event, SupervisorEvent::CrashLoop { .. }) {
                    let text = format!("{}: {event}\n", crate::process::humantime_now());
                    if let Err(e) =
                        crate::state::write_atomic(&last_report_file(self.paths()), text.as_bytes())
                    {
                        report(&SupervisorEvent::RoundFailed {
                            error: e.to_string(),
                        });
                    }
                }
                report(&event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_is_reported_once_and_its_restarts_back_off() {
        let mut b = RestartBackoff::default();
        let host = HostId::Cloud;
        let hub = Component::YurtHub;
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(b.restarted(&host, hub, t0).is_none());
        assert!(b.restarted(&host, hub, t0 + s(2)).is_none());
        assert!(b.allows(&host, hub, t0 + s(3)), "two restarts are no loop");
        let report = b.restarted(&host, hub, t0 + s(4)).expect("the third is");
        assert!(
            report.contains("3 restarts within 60s; next in 4s"),
            "{report}"
        );
        assert!(!b.allows(&host, hub, t0 + s(7)));
        assert!(b.allows(&host, hub, t0 + s(8)));
        assert!(
            b.restarted(&host, hub, t0 + s(8)).is_none(),
            "reported once"
        );
        assert!(!b.allows(&host, hub, t0 + s(15)), "the wait doubles");
        assert!(b.allows(&host, hub, t0 + s(16)));
        assert!(
            b.allows(&host, Component::Kubelet, t0 + s(9)),
            "other processes are not held back"
        );
        // A quiet minute ends the loop.
        assert!(b.restarted(&host, hub, t0 + s(200)).is_none());
        assert!(b.allows(&host, hub, t0 + s(200)));
    }

    #[test]
    fn the_wait_is_capped_at_five_minutes() {
        let mut b = RestartBackoff::default();
        let host = HostId::Cloud;
        let t0 = Instant::now();
        for i in 0..20 {
            b.restarted(&host, Component::Etcd, t0 + Duration::from_millis(i));
        }
        let now = t0 + Duration::from_millis(20);
        assert!(!b.allows(&host, Component::Etcd, now + Duration::from_secs(299)));
        assert!(b.allows(&host, Component::Etcd, now + MAX_BACKOFF));
    }

    #[test]
    fn nobody_supervises_a_folder_whose_lock_is_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = FleetPaths::new(dir.path());
        assert_eq!(supervision(&paths).expect("read"), Supervision::None);
        let _held = lock::try_exclusive(&paths.up_lock())
            .expect("lock file")
            .expect("free");
        // Held by this process, which did not record itself as the detached supervisor.
        assert_eq!(
            supervision(&paths).expect("read"),
            Supervision::Foreground {
                pid: std::process::id() as i32
            }
        );
        PidRecord::of(std::process::id() as i32)
            .expect("own record")
            .write(&supervisor_pid_file(&paths))
            .expect("write");
        assert_eq!(
            supervision(&paths).expect("read"),
            Supervision::Detached {
                pid: std::process::id() as i32,
                log: supervisor_log(&paths)
            }
        );
    }

    #[test]
    fn the_last_report_is_read_back_and_empty_means_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = FleetPaths::new(dir.path());
        assert_eq!(last_report(&paths), None);
        std::fs::write(last_report_file(&paths), "\n").expect("write");
        assert_eq!(last_report(&paths), None);
        std::fs::write(last_report_file(&paths), "etcd keeps crashing\n").expect("write");
        assert_eq!(
            last_report(&paths).as_deref(),
            Some("etcd keeps crashing\n")
        );
    }
}
