//! What the edge-only binaries (`yurt-hub`, `yurt-tunnel-agent`) do around their command:
//! logging to stderr from `RUST_LOG`, read as `target=level` directives
//! (`warn,yurt_hub::health=debug`) by tracing-subscriber's `Targets` filter rather than
//! `EnvFilter` (whose span and field directives need a regex engine: a few hundred KB of
//! code mapped on a small node for a feature these binaries are not debugged with), and
//! a multi-thread runtime that runs the command and turns its error into `error: ...`
//! and exit status 1.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter `RUST_LOG` (or, unset, `default`) asks for.
///
/// # Errors
/// `RUST_LOG` (or `default`) that does not parse, as a message for the user.
pub fn log_filter(rust_log: Option<&str>, default: &str) -> Result<Targets, String> {
    match rust_log {
        Some(directives) => directives
            .parse()
            .map_err(|e| format!("RUST_LOG={directives:?}: {e}")),
        None => default
            .parse()
            .map_err(|e| format!("default log filter {default:?}: {e}")),
    }
}

/// Sets up logging from `RUST_LOG` (or `default`), then runs `command` on a runtime
/// with `workers` worker threads. Exit status 2 for a bad `RUST_LOG`, 1 when the
/// runtime cannot start or `command` fails.
pub fn run<F, E>(default_log: &str, workers: usize, command: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = match log_filter(rust_log.as_deref(), default_log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    match crate::runtime::block_on(workers, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_the_default_and_bad_directives_are_refused() {
        let filter = log_filter(None, "warn").unwrap();
        assert!(filter.would_enable("yurt_hub", &tracing::Level::WARN));
        assert!(!filter.would_enable("yurt_hub", &tracing::Level::INFO));
        let filter = log_filter(Some("info,yurt_hub::health=debug"), "warn").unwrap();
        assert!(filter.would_enable("yurt_tunnel", &tracing::Level::INFO));
        assert!(filter.would_enable("yurt_hub::health", &tracing::Level::DEBUG));
        let err = log_filter(Some("yurt_hub=loud"), "warn").unwrap_err();
        assert!(err.starts_with("RUST_LOG=\"yurt_hub=loud\""), "{err}");
    }
}
