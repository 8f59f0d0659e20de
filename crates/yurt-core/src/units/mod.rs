//! Per-host units: how each process of a host is started, as files under the host's
//! folder (`hosts/<host>/units/<process>.toml` in a fleet) that the fleet's supervisor
//! reads, and that tools running on the host (`yurt adm join`) write.
//!
//! They play the part systemd units play on a real machine: `yurt up` installs the units
//! of the hosts it plans, `yurt fleet add-host` installs a bare host's containerd, and
//! whoever joins a host (the analogue of `kubeadm join` writing `kubelet.service` and
//! `kubeadm-flags.env`) writes its kubelet's. Every start, restart and reboot reads
//! them, so an edit takes effect at the next start of that process.
//!
//! A unit names its argv (`exec`), environment (`environment`, and `environment_files`
//! of `KEY=VALUE` lines, as systemd's `EnvironmentFile=`) and restart policy. As in
//! systemd, an argument that is exactly `$NAME` becomes the words of that variable's
//! value (so `$KUBELET_KUBEADM_ARGS` expands to several flags), and `${NAME}` inside an
//! argument is replaced by the value as it is; an unset variable is empty. The program
//! (the first word) is never split.
//!
//! Hand-written on purpose: the format is ours (no crate parses "a systemd unit for
//! processes in a namespace"), the files are TOML read by `toml`, and the expansion is
//! the few lines of systemd's rule that kubeadm's env file needs.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Unit failures.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A unit or environment file does not parse.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The unit names no program.
    #[error("the unit's exec names no program")]
    NoProgram,
}

type Result<T> = std::result::Result<T, UnitError>;

fn io(path: &Path) -> impl Fn(std::io::Error) -> UnitError + '_ {
    move |source| UnitError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A program, its arguments and its environment, as a unit starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment variables beyond a minimal set.
    pub env: Vec<(String, String)>,
}

/// Whether the supervisor starts a process again after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Always (systemd's `Restart=always`).
    #[default]
    Always,
    /// Never: once it exits it stays down (`Restart=no`).
    No,
}

/// How one process of a host is started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// What the process is, for people reading the file.
    #[serde(default)]
    pub description: String,
    /// The program and its arguments (`$NAME` and `${NAME}` are expanded).
    pub exec: Vec<String>,
    /// Variables set for the process (and for the expansion).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Files of `KEY=VALUE` lines read at each start; a later file wins over an earlier
    /// one and over `environment`. A missing file is an error, as in systemd without `-`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment_files: Vec<PathBuf>,
    /// Whether the supervisor restarts the process.
    #[serde(default)]
    pub restart: Restart,
}

/// The folder of a host's units.
pub fn dir(host_root: &Path) -> PathBuf {
    host_root.join("units")
}

/// The file of the unit `process` in `units`.
pub fn file(units: &Path, process: &str) -> PathBuf {
    units.join(format!("{process}.toml"))
}

impl Unit {
    /// The unit of a command line.
    pub fn of(description: impl Into<String>, line: &CommandLine) -> Self {
        let mut exec = vec![line.program.display().to_string()];
        exec.extend(line.args.iter().map(|a| a.to_string_lossy().into_owned()));
        Self {
            description: description.into(),
            exec,
            environment: line.env.iter().cloned().collect(),
            environment_files: Vec::new(),
            restart: Restart::Always,
        }
    }

    /// Reads a unit file.
    ///
    /// # Errors
    /// [`UnitError::Io`] if it cannot be read, [`UnitError::Corrupt`] if it does not parse
    /// or has no program.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let unit: Self = toml::from_str(&text).map_err(|e| UnitError::Corrupt {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
        if unit.exec.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(UnitError::Corrupt {
                path: path.to_owned(),
                reason: "exec names no program".into(),
            });
        }
        Ok(unit)
    }

    /// Writes the unit atomically (temporary file, fsync, rename: a crash leaves the old
    /// file or the new one). Returns whether the file changed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<bool> {
        let text = toml::to_string_pretty(self).map_err(|e| UnitError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(false);
        }
        write_atomic(path, text.as_bytes())?;
        Ok(true)
    }

    /// The command line to start: environment files read, variables expanded.
    ///
    /// # Errors
    /// An environment file that cannot be read or has a line that is not `KEY=VALUE`.
    pub fn command_line(&self) -> Result<CommandLine> {
        let mut env = self.environment.clone();
        for path in &self.environment_files {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            env.extend(
                parse_environment_file(&text).map_err(|reason| UnitError::Corrupt {
                    path: path.clone(),
                    reason,
                })?,
            );
        }
        // The program is one word: `${NAME}` is replaced, never split.
        let program = self
            .exec
            .first()
            .map(|p| substitute(p, &env))
            .filter(|p| !p.trim().is_empty())
            .ok_or(UnitError::NoProgram)?;
        Ok(CommandLine {
            program: PathBuf::from(program),
            args: self.exec[1..]
                .iter()
                .flat_map(|arg| expand(arg, &env))
                .map(OsString::from)
                .collect(),
            env: env.into_iter().collect(),
        })
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One argument of `exec`, expanded: `$NAME` alone becomes the value's words (none if
/// it is empty or unset); `${NAME}` anywhere is replaced by the value as it is.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    if let Some(name) = arg.strip_prefix('$')
        && is_name(name)
    {
        return env
            .get(name)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
    }
    vec![substitute(arg, env)]
}

/// `${NAME}` anywhere in `arg` replaced by the value as it is.
fn substitute(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        if !is_name(name) {
            out.push_str(&rest[..start + 2]);
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        out.push_str(env.get(name).map_or("", String::as_str));
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync
/// of the folder (created if missing).
///
/// # Errors
/// I/O errors, naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o644)
}

/// Like [`write_atomic`], readable and writable by its owner only from the moment the
/// temporary file exists (keys, tokens).
///
/// # Errors
/// I/O errors, naming the file.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    // A leftover of an interrupted write would keep its mode when opened: start afresh.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Parses `KEY=VALUE` lines: blank lines and `#` or `;` comments are skipped, a value
/// wholly in double or single quotes loses them.
///
/// # Errors
/// The first line that is not an assignment to a valid name, with its number.
pub fn parse_environment_file(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not KEY=VALUE", number + 1));
        };
        let key = key.trim();
        if !is_name(key) {
            return Err(format!(
                "line {}: {key:?} is not a variable name",
                number + 1
            ));
        }
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| {
                value
                    .strip_prefix(*open)
                    .and_then(|v| v.strip_suffix(*close))
            })
            .unwrap_or(value);
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}
