//! How every binary runs its command: on a multi-thread runtime, with an error turned
//! into one `error: ...` line and exit status 1.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs `command` on a runtime with `workers` worker threads. A runtime that cannot
/// start, or a command that fails, is reported on stderr and becomes `Err(1)`.
///
/// # Errors
/// The exit status to leave with.
pub fn block_on<F, T, E>(workers: usize, command: F) -> Result<T, ExitCode>
where
    F: Future<Output = Result<T, E>>,
    E: Display,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        })?;
    runtime.block_on(command).map_err(|e| {
        eprintln!("{}", error_line(&e));
        ExitCode::from(1)
    })
}

/// The line a failed command leaves on stderr: the error with its causes, `outer:
/// inner` (an `anyhow::Error`'s alternate form; the plain one would say only what was
/// being done, as `error: --node-name`, and not what was wrong).
fn error_line(e: &impl Display) -> String {
    format!("error: {e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_runs_and_its_failure_is_exit_status_one() {
        assert_eq!(block_on(1, async { Ok::<_, String>(7) }), Ok(7));
        assert_eq!(
            block_on(1, async { Err::<(), _>("no".to_owned()) }),
            Err(ExitCode::from(1))
        );
    }

    #[test]
    fn a_failure_is_reported_with_its_causes_on_one_line() {
        let e = anyhow::anyhow!("invalid node name \"Edge_X\": must be a DNS label")
            .context("--node-name");
        assert_eq!(
            error_line(&e),
            "error: --node-name: invalid node name \"Edge_X\": must be a DNS label"
        );
        assert_eq!(error_line(&"plain"), "error: plain");
    }
}
