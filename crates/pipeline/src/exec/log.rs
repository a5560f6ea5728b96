//! Stage logs: `RUN_DIR/logs/STAGE.log`, appended to, one header per attempt. Lines of a stage's output
//! are echoed (with the stage's prefix when several stages run at once) and the last ones kept for the
//! failure message.

use crate::error::{PipelineError, Result};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Lines of a failed stage's log shown in its error.
pub const TAIL_LINES: usize = 20;

/// The first bytes of an attempt's header line.
const HEADER: &str = "=== ";

/// How a stage's output lines reach our stderr.
#[derive(Clone, Debug)]
pub struct Echo {
    pub quiet: bool,
    /// `    │ ` alone, or `    NAME │ ` when stages run side by side.
    pub prefix: String,
}

impl Echo {
    pub fn new(stage: &str, quiet: bool, side_by_side: bool) -> Echo {
        let prefix = if side_by_side {
            format!("    {stage} │ ")
        } else {
            "    │ ".to_string()
        };
        Echo { quiet, prefix }
    }

    pub fn line(&self, line: &str) {
        if !self.quiet {
            eprintln!("{}{line}", self.prefix);
        }
    }
}

/// The last [`TAIL_LINES`] lines.
#[derive(Default, Debug)]
pub struct Tail(VecDeque<String>);

impl Tail {
    pub fn push(&mut self, line: String) {
        self.0.push_back(line);
        if self.0.len() > TAIL_LINES {
            self.0.pop_front();
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

/// A line as a terminal would last show it: a progress bar redraws with `\r`.
pub fn last_state(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.rsplit('\r').next().unwrap_or("").to_string()
}

/// The path of stage `stage`'s log in `run_dir`.
pub fn log_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("logs").join(format!("{stage}.log"))
}

/// Opens the log for appending and writes this attempt's header (`command` run in `dir`).
pub fn open_log(path: &Path, dir: &Path, command: &str) -> Result<std::fs::File> {
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .map_err(|e| PipelineError::write(path, e))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| PipelineError::write(path, e))?;
    writeln!(
        log,
        "{HEADER}{} (unix time) · in {}\n$ {command}",
        crate::lockfile::unix_now(),
        dir.display()
    )
    .map_err(|e| PipelineError::write(path, e))?;
    Ok(log)
}

/// Follows a log that another process (a Slurm job) appends to: reads what is new, line by line.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    tail: Tail,
}

impl Follower {
    /// Follows `path` from its current end.
    pub fn from_end(path: &Path) -> Follower {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Follower::at(path, offset)
    }

    /// Follows `path` from the start of its last attempt's output (for a job an earlier runner submitted).
    pub fn from_last_header(path: &Path) -> Follower {
        let text = std::fs::read(path).unwrap_or_default();
        let needle = format!("\n{HEADER}");
        let start = text
            .windows(needle.len())
            .rposition(|w| w == needle.as_bytes())
            .map(|k| k + 1)
            .unwrap_or(0);
        // The header and the command line are ours, not the stage's.
        let body = text[start..]
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(1)
            .map(|(k, _)| start + k + 1)
            .unwrap_or(text.len());
        Follower::at(path, body as u64)
    }

    fn at(path: &Path, offset: u64) -> Follower {
        Follower {
            path: path.to_path_buf(),
            offset,
            partial: Vec::new(),
            tail: Tail::default(),
        }
    }

    fn new_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Echoes and keeps the complete lines written since the last call; with `all`, the unfinished
    /// last line too (the job has ended).
    pub fn read(&mut self, echo: &Echo, all: bool) {
        let Ok(bytes) = self.new_bytes() else { return };
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        while let Some(k) = self.partial.iter().position(|&b| b == b'\n') {
            lines.push(self.partial.drain(..=k).take(k).collect());
        }
        if all && !self.partial.is_empty() {
            lines.push(std::mem::take(&mut self.partial));
        }
        for bytes in lines {
            let line = last_state(&bytes);
            echo.line(&line);
            self.tail.push(line);
        }
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_reads_whole_lines_and_skips_earlier_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        std::fs::write(&path, "=== 1\n$ old\nold line\n=== 2\n$ x --a\nfirst\nhal").unwrap();
        let quiet = Echo::new("s", true, false);
        let mut f = Follower::from_last_header(&path);
        f.read(&quiet, false);
        assert_eq!(f.tail(), ["first"]);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"f\r100%\nend")
            .unwrap();
        f.read(&quiet, true);
        assert_eq!(f.tail(), ["first", "100%", "end"]);
        let mut g = Follower::from_end(&path);
        g.read(&quiet, true);
        assert!(g.tail().is_empty());
    }
}
