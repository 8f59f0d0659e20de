//! The provisioning error type. Every variant carries the context a user needs to act:
//! which host, which process, which log file, which command.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias for provisioning operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while building, starting, changing or removing a fleet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A unit or environment file is unreadable or does not parse.
    #[error(transparent)]
    Unit(#[from] yurt_core::units::UnitError),

    /// The program must run as root (network namespaces, mounts, cgroups).
    #[error("this needs root (network namespaces, mounts and cgroups); run it as root")]
    NotRoot,

    /// A kernel or system feature the fleet needs is missing.
    #[error("missing kernel feature: {feature}; {hint}")]
    MissingFeature {
        /// What is missing.
        feature: String,
        /// What to do about it.
        hint: String,
    },

    /// A command could not be started at all.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },

    /// A command ran and failed.
    #[error("{what} failed (`{command}` exited with {status}): {stderr}")]
    CommandFailed {
        /// What the command was for.
        what: String,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its error output.
        stderr: String,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A state or configuration file could not be parsed.
    #[error("{path}: unreadable ({reason}); remove it or run `yurt down --purge`")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Debian packages could not be installed.
    #[error("installing Debian packages {packages:?} failed: {detail}")]
    Packages {
        /// The packages that were missing.
        packages: Vec<String>,
        /// The end of apt-get's output.
        detail: String,
    },

    /// A step of building the upstream Kubernetes binaries failed.
    #[error("building Kubernetes failed at step '{step}': {detail} (full output: {log})")]
    Build {
        /// The failing step.
        step: String,
        /// A short explanation.
        detail: String,
        /// Where the full output is.
        log: PathBuf,
    },

    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Pki(#[from] yurt_core::pki::Error),

    /// A call to the Kubernetes API failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// A fleet process exited while it was expected to run.
    #[error("{process} on {host} exited ({status}); see its log: {log}\n{tail}")]
    ProcessExited {
        /// The host.
        host: String,
        /// The process.
        process: String,
        /// How it ended, if known.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },

    /// Something did not become ready in time.
    #[error("{what} not ready after {waited:?}{}", log.as_ref().map(|l| format!("; see its log: {}", l.display())).unwrap_or_default())]
    NotReady {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The log to look at, if one process is to blame.
        log: Option<PathBuf>,
    },

    /// The data folder belongs to a fleet that is running.
    #[error(
        "data folder {dir} is in use by a running fleet (yurt up, pid {pid}); stop it with `yurt down --data-dir {dir}` or use another --data-dir"
    )]
    DataDirInUse {
        /// The data folder.
        dir: PathBuf,
        /// The pid of the `yurt up` that holds it.
        pid: i32,
    },

    /// No fleet exists in the data folder.
    #[error("no fleet in {dir}; start one with `yurt up --data-dir {dir}`")]
    NoFleet {
        /// The data folder.
        dir: PathBuf,
    },

    /// The fleet in the data folder is not running.
    #[error("the fleet in {dir} is not running; start it with `yurt up --data-dir {dir}`")]
    NotRunning {
        /// The data folder.
        dir: PathBuf,
    },

    /// A fleet request is invalid.
    #[error("{0}")]
    Invalid(String),

    /// The host/pool/process named on the command line does not exist.
    #[error("unknown {kind} '{name}'; known: {known}")]
    Unknown {
        /// What kind of thing (`host`, `node or pool`, `process`).
        kind: &'static str,
        /// The name given.
        name: String,
        /// The valid names.
        known: String,
    },

    /// An address range the fleet needs is already used on this machine.
    #[error(
        "address range {range} is already in use on this machine (interface {interface}); remove it or stop the fleet that owns it (`yurt down --all`)"
    )]
    AddressInUse {
        /// The range.
        range: String,
        /// The interface holding it.
        interface: String,
    },

    /// Every fleet slot on this machine is taken.
    #[error(
        "all {0} fleet slots on this machine are in use; remove old fleets with `yurt down --all --purge`"
    )]
    SlotsExhausted(usize),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A Kubernetes API error while doing `what`.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }
}
