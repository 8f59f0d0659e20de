//! Running short helper commands (`ip`, `iptables`, `mount`, `ctr`, `apt-get`) with
//! errors that say what the command was for and what it printed.
//!
//! These calls are blocking and short; async callers run them on `spawn_blocking`.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// Runs `cmd`, capturing its output, and fails unless it exits with status 0.
///
/// # Errors
/// [`Error::Spawn`] if it cannot start, [`Error::CommandFailed`] if it fails.
pub fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let output = output(cmd)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(failed(what, cmd, &output))
}

/// Runs `cmd` and returns its output whatever the exit status.
///
/// # Errors
/// [`Error::Spawn`] if it cannot start.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })
}

/// Runs `cmd` and reports whether it exited with status 0 (errors are "no").
pub fn succeeds(cmd: &mut Command) -> bool {
    output(cmd).map(|o| o.status.success()).unwrap_or(false)
}

/// Builds the [`Error::CommandFailed`] for a finished command.
pub fn failed(what: &str, cmd: &Command, output: &Output) -> Error {
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    Error::CommandFailed {
        what: what.to_owned(),
        command: render(cmd),
        status: output.status.to_string(),
        stderr: tail(&text, 6),
    }
}

/// The command line, for messages.
pub fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` non-empty lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a log file, or an empty string if it cannot be read.
pub fn tail_file(path: &std::path::Path, n: usize) -> String {
    std::fs::read(path)
        .map(|bytes| {
            let start = bytes.len().saturating_sub(64 * 1024);
            tail(&String::from_utf8_lossy(&bytes[start..]), n)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_purpose_command_and_output() {
        let err = run(
            "probing",
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("probing failed (`sh -c echo boom >&2; exit 3`"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("boom"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run("x", &mut Command::new("/nonexistent/prog")).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn tail_keeps_last_nonempty_lines() {
        assert_eq!(tail("a\n\nb\nc\n\n", 2), "b\nc");
        assert_eq!(tail("", 3), "");
    }
}
