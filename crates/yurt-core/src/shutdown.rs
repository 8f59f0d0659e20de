//! Process-wide shutdown: SIGINT/SIGTERM cancel a root [`CancellationToken`].

use tokio_util::sync::CancellationToken;

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// Waits for SIGINT or SIGTERM, then cancels `token` and returns which one arrived.
///
/// If `token` is cancelled first (the program decided to stop on its own), returns `None`.
///
/// # Panics
/// Panics if the signal handlers cannot be installed, which only happens when the
/// runtime has no signal driver: a startup bug, not a runtime condition.
pub async fn cancel_on_signal(token: CancellationToken) -> Option<StopSignal> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => Some(StopSignal::Terminate),
        _ = int.recv() => Some(StopSignal::Interrupt),
        () = token.cancelled() => None,
    };
    if which.is_some() {
        tracing::info!(signal = ?which, "stop requested");
        token.cancel();
    }
    which
}
