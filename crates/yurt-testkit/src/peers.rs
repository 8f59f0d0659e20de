//! Real protocol peers for device tests: Python programs (pymodbus from PyPI) in a
//! virtual environment cached on this machine, run inside a fleet's hosts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{TestFleet, machine, run_checked};

/// The pymodbus release the device tests use (its client and server API is 3.x's:
/// `slave=` keyword, `StartAsyncTcpServer`).
pub const PYMODBUS: &str = "pymodbus==3.8.6";

/// The Python of a virtual environment under the machine's cache with `requirements`
/// installed (created and completed once, under a lock; later calls only check).
///
/// # Errors
/// No `python3 -m venv` (Debian's python3-venv), or pip cannot install.
pub fn python_with(requirements: &[&str]) -> anyhow::Result<PathBuf> {
    let cache = machine().cache_dir;
    let dir = cache.join("test-venv");
    std::fs::create_dir_all(&cache)?;
    let _lock = yurt_cluster::lock::exclusive(&cache.join("test-venv.lock"))?;
    let python = dir.join("bin/python");
    if !python.exists() {
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&dir))
            .context("creating the test venv (Debian's python3-venv)")?;
    }
    let installed = dir.join("installed");
    std::fs::create_dir_all(&installed)?;
    for requirement in requirements {
        let marker = installed.join(requirement.replace(['/', ' '], "_"));
        if marker.exists() {
            continue;
        }
        run_checked(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(requirement),
        )
        .with_context(|| format!("pip install {requirement}"))?;
        std::fs::write(&marker, b"")?;
    }
    Ok(python)
}

/// A process running in a fleet's host, killed when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    log: PathBuf,
}

impl Peer {
    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `line` (it said it is ready).
    ///
    /// # Errors
    /// It ended, or did not say so within `timeout`.
    pub fn wait_for_output(&mut self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.log().contains(line) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the peer ended ({status}) before {line:?}:\n{}", self.log());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the peer did not say {line:?} within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestFleet {
    /// Starts `argv` inside `host`, its output going to `log`.
    ///
    /// # Errors
    /// Unknown host, or the program cannot start.
    pub fn spawn_in(&self, host: &str, argv: &[&str], log: &Path) -> anyhow::Result<Peer> {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let mut cmd = self.fleet().exec_command(host, &argv)?;
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {argv:?} in {host}"))?;
        Ok(Peer {
            child,
            log: log.to_owned(),
        })
    }
}
