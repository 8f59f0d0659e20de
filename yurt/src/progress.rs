//! Drawing progress: a spinner per step on a terminal, one line per step otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use yurt_cluster::progress::{LineReporter, Reporter};

/// A spinner per step when standard error is a terminal.
pub struct SpinnerReporter {
    current: Mutex<Option<(ProgressBar, String)>>,
}

impl SpinnerReporter {
    /// The reporter that fits standard error: spinners on a terminal, lines otherwise.
    pub fn for_stderr() -> std::sync::Arc<dyn Reporter> {
        if std::io::stderr().is_terminal() {
            std::sync::Arc::new(Self {
                current: Mutex::new(None),
            })
        } else {
            std::sync::Arc::new(LineReporter)
        }
    }
}

impl Reporter for SpinnerReporter {
    fn begin(&self, step: &str) {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(step.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut cur) = self.current.lock()
            && let Some((old, _)) = cur.replace((bar, step.to_owned()))
        {
            old.finish_and_clear();
        }
    }

    fn detail(&self, detail: &str) {
        if let Ok(cur) = self.current.lock()
            && let Some((bar, step)) = cur.as_ref()
        {
            bar.set_message(format!("{step}: {detail}"));
        }
    }

    fn done(&self, step: &str, elapsed: Duration) {
        if let Ok(mut cur) = self.current.lock()
            && let Some((bar, _)) = cur.take()
        {
            bar.finish_and_clear();
        }
        eprintln!("✓ {step} ({:.1}s)", elapsed.as_secs_f64());
    }

    fn warn(&self, message: &str) {
        if let Ok(cur) = self.current.lock()
            && let Some((bar, _)) = cur.as_ref()
        {
            bar.suspend(|| eprintln!("! {message}"));
            return;
        }
        eprintln!("! {message}");
    }
}
