//! The run's books: the lock (finished stages) and the run state (started stages, submitted Slurm jobs,
//! the hash memo), updated as stages start and finish, each change saved at once so that a runner
//! killed at any moment leaves them true.

use crate::error::{PipelineError, Result};
use crate::judge::Fingerprint;
use crate::lockfile::{unix_now, JobRecord, LockEntry, LockFile, RunState};
use crate::spec::{Pipeline, Stage};
use std::collections::BTreeMap;
use std::path::Path;

pub struct Books<'a> {
    p: &'a Pipeline,
    pub lock: LockFile,
    pub state: RunState,
}

impl<'a> Books<'a> {
    /// The lock and state of `p`'s run directory, the lock stamped with the pipeline's directory and
    /// stage order (`order`, names).
    pub fn open(p: &'a Pipeline, order: Vec<String>) -> Result<Books<'a>> {
        let mut lock = LockFile::load(&p.run_dir, &p.name)?;
        lock.dir = p.dir.display().to_string();
        lock.order = order;
        Ok(Books {
            p,
            lock,
            state: RunState::load(&p.run_dir),
        })
    }

    /// Before a stage runs: clears what another command wrote, forgets its lock entry, marks it started
    /// under `fp`, and makes its outputs' parent directories.
    pub fn prepare(&mut self, st: &Stage, fp: &Fingerprint) -> Result<()> {
        let run_dir = &self.p.run_dir;
        // Outputs that another command wrote are removed first: the finished ones of an earlier
        // successful run, or the partial ones of a run started with another fingerprint. Partial
        // outputs of this very command stay, so a training stage resumes from its checkpoint.
        let resume = !self.lock.stages.contains_key(&st.name)
            && self.state.started.get(&st.name) == Some(&fp.value);
        if !resume {
            for o in &st.outs {
                remove_output(&o.abs, &o.written)?;
            }
        }
        if self.lock.stages.remove(&st.name).is_some() {
            self.lock.save(run_dir)?;
        }
        self.state.started.insert(st.name.clone(), fp.value.clone());
        self.state.save(run_dir)?;
        for o in &st.outs {
            if let Some(parent) = o.abs.parent() {
                std::fs::create_dir_all(parent).map_err(|e| PipelineError::write(parent, e))?;
            }
        }
        Ok(())
    }

    /// Notes the Slurm job submitted for stage `name`.
    pub fn submitted(&mut self, name: &str, id: &str, fp: &Fingerprint) -> Result<()> {
        self.state.jobs.insert(
            name.to_string(),
            JobRecord {
                id: id.to_string(),
                fingerprint: fp.value.clone(),
            },
        );
        self.state.save(&self.p.run_dir)
    }

    /// Forgets the Slurm job of stage `name` (it ended or was cancelled).
    pub fn job_gone(&mut self, name: &str) -> Result<()> {
        if self.state.jobs.remove(name).is_some() {
            self.state.save(&self.p.run_dir)?;
        }
        Ok(())
    }

    /// The hashes of stage `i`'s outputs after it ran; each must exist.
    pub fn output_hashes(&mut self, i: usize) -> Result<BTreeMap<String, String>> {
        let mut outs = BTreeMap::new();
        for o in &self.p.stages[i].outs {
            let h = self.state.hashes.hash(&o.abs)?.ok_or_else(|| {
                PipelineError::StageFailed(format!(
                    "{}: the stage ended successfully but did not write its output `{}`; fix `outs:` or \
                     the command",
                    self.p.at(i),
                    o.written
                ))
            })?;
            outs.insert(o.written.clone(), h);
        }
        Ok(outs)
    }

    /// Records a finished stage in the lock and clears its started mark.
    pub fn record(&mut self, st: &Stage, fp: &Fingerprint, finished: Finished) -> Result<()> {
        let run_dir = &self.p.run_dir;
        self.lock
            .stages
            .insert(st.name.clone(), lock_entry(st, fp, finished));
        self.lock.save(run_dir)?;
        self.state.started.remove(&st.name);
        self.state.save(run_dir)
    }

    pub fn save_state(&mut self) -> Result<()> {
        self.state.save(&self.p.run_dir)
    }
}

/// What a finished stage left: its outputs' hashes, its wall time, the Slurm job that ran it.
pub struct Finished {
    pub outs: BTreeMap<String, String>,
    pub wall_s: f64,
    pub slurm_job: Option<String>,
}

fn lock_entry(st: &Stage, fp: &Fingerprint, f: Finished) -> LockEntry {
    LockEntry {
        program: st.program.clone(),
        binary: fp.binary.display().to_string(),
        binary_hash: fp.binary_hash.clone(),
        argv: st.argv.clone(),
        deps: fp.deps.clone(),
        outs: f.outs,
        fingerprint: fp.value.clone(),
        wall_s: f.wall_s,
        finished_unix: unix_now(),
        slurm_job: f.slurm_job,
    }
}

fn remove_output(abs: &Path, written: &str) -> Result<()> {
    let meta = match std::fs::symlink_metadata(abs) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    eprintln!("    removing the earlier output `{written}`");
    let res = if meta.is_dir() {
        std::fs::remove_dir_all(abs)
    } else {
        std::fs::remove_file(abs)
    };
    res.map_err(|e| PipelineError::write(abs, e))
}
