//! The Slurm the executor tests run against: the one-node cluster of `tools/slurm-local.sh` (which
//! `.ci/run` starts), and wrappers around Slurm's commands that log every call, so a test can tell
//! what the runner asked Slurm and when it asked nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

const COMMANDS: &[&str] = &["sbatch", "squeue", "scancel", "sacct", "scontrol"];

/// Panics with what to do unless a Slurm controller answers and has a usable node.
pub fn require() {
    let out = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let states = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => String::new(),
    };
    let usable = states
        .lines()
        .any(|s| ["idle", "mixed", "allocated"].contains(&s.trim()));
    assert!(
        usable,
        "these tests need a running Slurm with a usable node (sinfo says: {:?}); start the one-node \
         cluster with `tools/slurm-local.sh` (as root; .ci/run does)",
        states.trim()
    );
}

/// A directory of logging wrappers around Slurm's commands; put it first on the runner's PATH.
pub struct Wrappers {
    pub dir: PathBuf,
}

impl Wrappers {
    pub fn new(dir: &Path) -> Wrappers {
        std::fs::create_dir_all(dir).unwrap();
        for cmd in COMMANDS {
            let real = which(cmd);
            let script = format!(
                "#!/bin/sh\necho \"{cmd} $*\" >> '{}'\nexec '{}' \"$@\"\n",
                dir.join("calls.log").display(),
                real.display()
            );
            let path = dir.join(cmd);
            std::fs::write(&path, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Wrappers {
            dir: dir.to_path_buf(),
        }
    }

    /// PATH with the wrappers first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Every call so far, one line each (`sbatch --parsable …`).
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn which(cmd: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{cmd}` is not on PATH; start Slurm with tools/slurm-local.sh"))
}

/// Slurm's state of job `id` (`RUNNING`, `CANCELLED`, …; empty when Slurm no longer knows it).
pub fn job_state(id: &str) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-j", id, "-o", "%T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The Slurm job the run state in `run_dir` records for `stage`, if any.
pub fn recorded_job(run_dir: &Path, stage: &str) -> Option<String> {
    let text = std::fs::read_to_string(run_dir.join("state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["jobs"][stage]["id"].as_str().map(str::to_string)
}
