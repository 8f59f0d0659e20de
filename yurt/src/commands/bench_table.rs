//! The table a `yurt bench` prints at its end: each measure, our figure, and the
//! anchor measured beside it, in Markdown.

pub(crate) struct Table {
    title: &'static str,
    columns: [&'static str; 2],
    /// Also print each row as it is measured (a long benchmark's progress).
    progress: bool,
    rows: Vec<(String, String, String)>,
}

impl Table {
    /// A table headed `title`, with `ours` and `anchor` as the two figure columns.
    pub(crate) fn new(title: &'static str, ours: &'static str, anchor: &'static str) -> Self {
        Self {
            title,
            columns: [ours, anchor],
            progress: false,
            rows: Vec::new(),
        }
    }

    /// Prints each row when it is added, too.
    pub(crate) fn with_progress(mut self) -> Self {
        self.progress = true;
        self
    }

    pub(crate) fn row(&mut self, what: &str, ours: String, anchor: String) {
        if self.progress {
            println!("  {what}: {ours} ({anchor})");
        }
        self.rows.push((what.to_owned(), ours, anchor));
    }

    pub(crate) fn print(&self) {
        println!("\n{}", self.title);
        println!("| measure | {} | {} |", self.columns[0], self.columns[1]);
        println!("|---|---:|---|");
        for (w, o, a) in &self.rows {
            println!("| {w} | {o} | {a} |");
        }
    }
}
