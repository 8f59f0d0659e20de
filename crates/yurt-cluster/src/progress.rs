//! Progress reporting for long operations. The library says what it is doing; the
//! binary decides how to draw it (spinners on a terminal, plain lines in tests).

use std::time::Duration;

/// Receives progress from long operations (building, provisioning, waiting).
pub trait Reporter: Send + Sync {
    /// A step starts.
    fn begin(&self, step: &str);
    /// The current step has news (the package being compiled, the node being awaited).
    fn detail(&self, detail: &str);
    /// The current step finished after `elapsed`.
    fn done(&self, step: &str, elapsed: Duration);
    /// A warning the user should see.
    fn warn(&self, message: &str);
}

/// Prints each step as one line on standard error, and the step's news at most every
/// ten seconds; used by tests and when standard error is not a terminal.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineReporter;

/// When [`LineReporter`] last printed a detail line.
static LAST_DETAIL: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

impl Reporter for LineReporter {
    fn begin(&self, step: &str) {
        if let Ok(mut last) = LAST_DETAIL.lock() {
            *last = Some(std::time::Instant::now());
        }
        eprintln!("… {step}");
    }
    fn detail(&self, detail: &str) {
        if let Ok(mut last) = LAST_DETAIL.lock()
            && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            *last = Some(std::time::Instant::now());
            eprintln!("  … {detail}");
        }
    }
    fn done(&self, step: &str, elapsed: Duration) {
        eprintln!("✓ {step} ({:.1}s)", elapsed.as_secs_f64());
    }
    fn warn(&self, message: &str) {
        eprintln!("! {message}");
    }
}

/// Times one step on a reporter: `begin` now, `done` when finished.
pub struct Step<'a> {
    reporter: &'a dyn Reporter,
    name: String,
    started: std::time::Instant,
}

impl<'a> Step<'a> {
    /// Starts a step.
    pub fn start(reporter: &'a dyn Reporter, name: impl Into<String>) -> Self {
        let name = name.into();
        reporter.begin(&name);
        Self {
            reporter,
            name,
            started: std::time::Instant::now(),
        }
    }

    /// Reports news about the step.
    pub fn detail(&self, detail: &str) {
        self.reporter.detail(detail);
    }

    /// Marks the step finished.
    pub fn finish(self) {
        self.reporter.done(&self.name, self.started.elapsed());
    }
}
