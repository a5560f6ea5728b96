//! Progress reporting: a bar with rate and ETA on a terminal, a plain line every few seconds otherwise.

use crate::encode::Observer;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    start: Instant,
    last_log: Instant,
    total_bytes: u64,
}

impl Progress {
    /// `total_bytes`: the size of the inputs, for the ETA (0 if unknown).
    pub fn new(label: &str, total_bytes: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total_bytes.max(1));
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
                    .expect("valid progress template"),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            label: label.to_string(),
            bar,
            start: Instant::now(),
            last_log: Instant::now(),
            total_bytes,
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn detected(&mut self, path: &Path, container: &str, format: &str) {
        let line = format!(
            "{}: {}: {container} container, format `{format}`",
            self.label,
            path.display()
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn progress(&mut self, rows: u64, bytes: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(bytes.min(self.total_bytes));
            bar.set_message(format!("{rows} rows ({:.0} rows/s)", rows as f64 / secs));
        } else if self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            eprintln!(
                "{}: {rows} rows, {:.1} MB ({:.0} rows/s, {:.1} MB/s)",
                self.label,
                bytes as f64 / 1e6,
                rows as f64 / secs,
                bytes as f64 / 1e6 / secs
            );
        }
    }
}
