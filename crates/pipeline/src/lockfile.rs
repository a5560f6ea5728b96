//! What a pipeline remembers between runs, all in its run directory:
//! - `lock.json`: for each stage that last finished successfully, the fingerprint it finished under
//!   (binary hash, argument vector, dep hashes) and the hashes of the outputs it wrote;
//! - `state.json`: the hash memo, the fingerprint each unfinished stage was started under (so a
//!   killed stage's partial outputs are resumed only by the same command), and the Slurm jobs in flight;
//! - `pid.lock`: held while a run is in progress; a lock left by a dead process is taken over.

use crate::error::{PipelineError, Result};
use crate::hashing::HashCache;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LOCK_VERSION: u32 = 1;

/// A finished stage as recorded in `lock.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LockEntry {
    /// The binary as the pipeline names it, and where it was found.
    pub program: String,
    pub binary: String,
    pub binary_hash: String,
    pub argv: Vec<String>,
    /// Dep path as written → content hash.
    pub deps: BTreeMap<String, String>,
    /// Out path as written → content hash after the stage finished.
    pub outs: BTreeMap<String, String>,
    pub fingerprint: String,
    pub wall_s: f64,
    pub finished_unix: u64,
    /// The Slurm job that ran it, when it ran under Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct LockFile {
    pub version: u32,
    pub pipeline: String,
    /// The pipeline file's directory: relative paths in the entries are relative to it.
    #[serde(default)]
    pub dir: String,
    /// Stage names in run order.
    #[serde(default)]
    pub order: Vec<String>,
    pub stages: BTreeMap<String, LockEntry>,
}

impl LockFile {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("lock.json")
    }

    /// The lock of `run_dir`, empty if none was written yet.
    pub fn load(run_dir: &Path, pipeline: &str) -> Result<LockFile> {
        let path = LockFile::path(run_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lock: LockFile = serde_json::from_str(&text).map_err(|e| {
                    PipelineError::Invalid(format!(
                        "{}: not a pipeline lock file ({e}); delete it to rerun every stage",
                        path.display()
                    ))
                })?;
                if lock.version != LOCK_VERSION {
                    return Err(PipelineError::Invalid(format!(
                        "{}: lock version {} (this pipeline writes {LOCK_VERSION}); delete it to rerun every stage",
                        path.display(),
                        lock.version
                    )));
                }
                Ok(lock)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockFile {
                version: LOCK_VERSION,
                pipeline: pipeline.to_string(),
                dir: String::new(),
                order: Vec::new(),
                stages: BTreeMap::new(),
            }),
            Err(e) => Err(PipelineError::read(path, e)),
        }
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        write_json(&LockFile::path(run_dir), self)
    }
}

/// The run state: hash memo and started-but-unfinished stages.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct RunState {
    pub hashes: HashCache,
    /// Stage → the fingerprint it was started under and has not finished.
    pub started: BTreeMap<String, String>,
    /// Stage → the Slurm job submitted for it and not yet seen to end: a runner started again
    /// re-attaches to it instead of submitting another.
    #[serde(default)]
    pub jobs: BTreeMap<String, JobRecord>,
}

/// A submitted Slurm job, as the run state remembers it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: String,
    /// The stage's fingerprint when it was submitted.
    pub fingerprint: String,
}

impl RunState {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("state.json")
    }

    /// The state of `run_dir`; a missing or unreadable one starts empty (it is only a cache).
    pub fn load(run_dir: &Path) -> RunState {
        std::fs::read_to_string(RunState::path(run_dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn save(&mut self, run_dir: &Path) -> Result<()> {
        self.hashes.prune();
        write_json(&RunState::path(run_dir), self)
    }
}

/// Seconds since 1970 (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `value` as pretty JSON to `path` via a temporary file and a rename.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| PipelineError::Internal(format!("serialising {}: {e}", path.display())))?;
    Ok(zerolm_io::write_atomically(path, text.as_bytes())?)
}

/// The start time of process `pid` (clock ticks since boot), or `None` if it is not running.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    // starttime is field 22 of the line, the 20th after the command name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Holds `pid.lock` in a run directory for the life of a run.
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
    content: String,
}

impl PidLock {
    /// Takes the lock, or refuses if a live process holds it; a lock whose process is gone is taken
    /// over with a message.
    pub fn acquire(run_dir: &Path) -> Result<PidLock> {
        std::fs::create_dir_all(run_dir).map_err(|e| PipelineError::write(run_dir, e))?;
        let path = run_dir.join("pid.lock");
        let me = std::process::id();
        let content = format!("{me} {}\n", process_start(me).unwrap_or(0));
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(content.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| PipelineError::write(&path, e))?;
                    return Ok(PidLock { path, content });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut it = held.split_whitespace();
                    let pid: Option<u32> = it.next().and_then(|p| p.parse().ok());
                    let start: Option<u64> = it.next().and_then(|s| s.parse().ok());
                    if let Some(pid) = pid {
                        let alive = process_start(pid)
                            .is_some_and(|s| start.is_none_or(|want| want == 0 || want == s));
                        if alive {
                            return Err(PipelineError::Locked(format!(
                                "another `pipeline run` (pid {pid}) is running this pipeline: {} is held; wait for it to finish or stop it",
                                path.display()
                            )));
                        }
                        eprintln!(
                            "pipeline: taking over the stale lock {} (pid {pid} is no longer running)",
                            path.display()
                        );
                    } else {
                        eprintln!(
                            "pipeline: taking over the unreadable lock {}",
                            path.display()
                        );
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(PipelineError::write(&path, e)),
            }
        }
        Err(PipelineError::Locked(format!(
            "could not take {}: another run took it first",
            path.display()
        )))
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c == self.content) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_refuses_and_a_dead_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PidLock::acquire(dir.path()).unwrap();
        let e = PidLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(lock);
        assert!(!dir.path().join("pid.lock").exists());
        // A process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(dir.path().join("pid.lock"), format!("{pid} 12345\n")).unwrap();
        let lock = PidLock::acquire(dir.path()).unwrap();
        drop(lock);
        // Our own pid with another start time: a reused pid, so stale.
        std::fs::write(
            dir.path().join("pid.lock"),
            format!("{} 1\n", std::process::id()),
        )
        .unwrap();
        PidLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn lock_round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = LockFile::load(dir.path(), "p").unwrap();
        assert!(lock.stages.is_empty());
        lock.stages.insert(
            "a".into(),
            LockEntry {
                program: "x".into(),
                binary: "/bin/x".into(),
                binary_hash: "h".into(),
                argv: vec!["--a".into()],
                deps: BTreeMap::new(),
                outs: BTreeMap::new(),
                fingerprint: "f".into(),
                wall_s: 1.5,
                finished_unix: 7,
                slurm_job: None,
            },
        );
        lock.save(dir.path()).unwrap();
        let back = LockFile::load(dir.path(), "p").unwrap();
        assert_eq!(back.stages["a"], lock.stages["a"]);
        let text = std::fs::read_to_string(LockFile::path(dir.path()))
            .unwrap()
            .replace("\"version\": 1", "\"version\": 9");
        std::fs::write(LockFile::path(dir.path()), text).unwrap();
        let e = LockFile::load(dir.path(), "p").unwrap_err().to_string();
        assert!(e.contains("lock version 9"), "{e}");
    }
}
