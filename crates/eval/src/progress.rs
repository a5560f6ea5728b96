//! Progress of one task: a bar on a terminal, a line every ten seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Ticker {
    label: String,
    total: usize,
    done: AtomicUsize,
    bar: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Ticker {
    /// `total` units of work (requests or questions) under `label`; `quiet` shows nothing.
    pub fn new(label: &str, total: usize, quiet: bool) -> Ticker {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
                )
                .expect("valid progress template"),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Ticker {
            label: if quiet {
                String::new()
            } else {
                label.to_string()
            },
            total,
            done: AtomicUsize::new(0),
            bar,
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// `n` more units done (callable from any thread).
    pub fn tick(&self, n: usize) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            return;
        }
        if self.label.is_empty() {
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_secs(10) {
            eprintln!("{}: {done}/{}", self.label, self.total);
            *last = Instant::now();
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
