//! Metrics: one JSON object per line in `metrics.jsonl` (train rows and `eval_`-prefixed eval rows;
//! read back with `zerolm_io::read_rows`), and the live display (a progress bar on a terminal, log
//! lines otherwise).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};

use crate::TrainError;

/// Appends rows to a metrics JSONL file (or, on ranks other than 0, nowhere).
pub struct MetricsLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl MetricsLog {
    /// Opens `path` for a run that continues after `resume_step` (0 = a fresh run): rows of later steps,
    /// written by the interrupted run after its last checkpoint, are dropped so no step appears twice.
    pub fn open(path: &Path, resume_step: Option<usize>) -> Result<MetricsLog, TrainError> {
        let werr = |cause| TrainError::Write {
            path: path.to_path_buf(),
            cause,
        };
        let kept: Vec<String> = match resume_step {
            None => Vec::new(),
            Some(step) => std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s as usize <= step)
                })
                .map(str::to_string)
                .collect(),
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        zerolm_io::write_atomically(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(werr)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    /// A log that writes nothing (a rank that is not the run's writer).
    pub fn disabled(path: &Path) -> MetricsLog {
        MetricsLog {
            path: path.to_path_buf(),
            file: None,
        }
    }

    pub fn write(&mut self, row: &Map<String, Value>) -> Result<(), TrainError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut line = serde_json::to_string(row).expect("row serialises");
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|_| file.flush())
            .map_err(|cause| TrainError::Write {
                path: self.path.clone(),
                cause,
            })
    }
}

/// The live view of a run.
pub struct Display {
    bar: Option<ProgressBar>,
}

impl Display {
    /// A bar when stderr is a terminal and `enabled`; plain log lines otherwise.
    pub fn new(label: &str, total: usize, done: usize, enabled: bool) -> Display {
        let bar = (enabled && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{label} {{bar:30}} {{pos}}/{{len}} steps · {{msg}} · {{elapsed_precise}} < {{eta_precise}}"
                ))
                .expect("valid template"),
            );
            bar.set_position(done as u64);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Display { bar }
    }

    pub fn step(&self, step: usize, message: String, log_line: bool) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(message);
            }
            None if log_line => eprintln!("{message}"),
            None => {}
        }
    }

    pub fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
