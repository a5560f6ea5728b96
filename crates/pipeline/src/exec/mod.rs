//! Starting stages and learning how they ended: as child processes of the runner ([`local`]) or as Slurm
//! jobs ([`slurm`]). The runner decides what runs; an executor only runs it and reports the end.

pub mod local;
pub mod log;
pub mod slurm;

use crate::spec::Stage;
use std::path::{Path, PathBuf};

/// A stage to start.
pub struct Launch<'a> {
    pub index: usize,
    pub stage: &'a Stage,
    /// Its binary, absolute.
    pub binary: &'a Path,
    /// Its working directory (the pipeline file's), absolute.
    pub dir: &'a Path,
    /// Its log, absolute; its header is written already.
    pub log: PathBuf,
    pub echo: log::Echo,
}

/// How a started stage ended.
#[derive(Debug)]
pub struct Ended {
    pub index: usize,
    /// `None` when it succeeded, else how it failed (`exit code 1`, `Slurm job 12 ended TIMEOUT …`).
    pub failure: Option<String>,
    /// The last lines of its output.
    pub tail: Vec<String>,
    /// What to add to its `done` line (the Slurm job and its time in the queue).
    pub note: Option<String>,
    /// The Slurm job that ran it.
    pub slurm_job: Option<String>,
}

/// `exit code N` or `killed by signal N` for a raw wait status (as Slurm's `exit_code` gives it).
pub fn describe_wait_status(raw: i32) -> String {
    let (code, signal) = ((raw >> 8) & 0xff, raw & 0x7f);
    if signal != 0 {
        format!("killed by signal {signal}")
    } else {
        format!("exit code {code}")
    }
}
