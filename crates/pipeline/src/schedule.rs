//! The scheduler: starts every selected stage whose upstream stages are done, up to `--jobs` at once and
//! within the core budget for local stages, each on its executor (a child process or a Slurm job); records
//! each as it ends. A failure stops new starts and lets the running stages finish; SIGINT/SIGTERM cancels
//! them. A Slurm job that an earlier, killed runner submitted is re-attached to, not submitted again.

use crate::books::{Books, Finished};
use crate::error::{PipelineError, Result};
use crate::exec::local::{launcher, Local};
use crate::exec::log::{log_path, open_log, Echo};
use crate::exec::slurm::{self, Slurm};
use crate::exec::{Ended, Launch};
use crate::graph::Graph;
use crate::judge::{fingerprint, judge, Fingerprint, Verdict};
use crate::resources::ExecutorKind;
use crate::shell::{relative, shell_line};
use crate::signals::Signals;
use crate::spec::{Pipeline, Stage};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How often the loop looks for a signal while waiting.
const TICK: Duration = Duration::from_millis(200);

/// How stages are run: at most `jobs` at once, local ones within `cores`, each on its executor.
pub struct Limits {
    pub jobs: usize,
    pub cores: usize,
    pub quiet: bool,
    /// The executor of each stage (by index).
    pub executors: Vec<ExecutorKind>,
}

/// A stage started and not yet ended.
struct Running {
    tag: String,
    fp: Fingerprint,
    started: Instant,
    /// Cores it holds of the local budget (0 under Slurm).
    cores: usize,
}

pub struct Scheduler<'a> {
    p: &'a Pipeline,
    g: &'a Graph,
    limits: Limits,
    pub books: Books<'a>,
    signals: Signals,
    local: Local,
    slurm: Slurm,
    slurm_checked: bool,
    running: BTreeMap<usize, Running>,
    decided: usize,
    total: usize,
    failure: Option<PipelineError>,
    pub ran: Vec<String>,
    pub up_to_date: Vec<String>,
}

impl<'a> Scheduler<'a> {
    pub fn new(
        p: &'a Pipeline,
        g: &'a Graph,
        books: Books<'a>,
        limits: Limits,
        total: usize,
    ) -> Result<Scheduler<'a>> {
        let signals = Signals::install()
            .map_err(|e| PipelineError::Internal(format!("catching signals: {e}")))?;
        Ok(Scheduler {
            p,
            g,
            limits,
            books,
            signals,
            local: Local::default(),
            slurm: Slurm::default(),
            slurm_checked: false,
            running: BTreeMap::new(),
            decided: 0,
            total,
            failure: None,
            ran: Vec::new(),
            up_to_date: Vec::new(),
        })
    }

    /// Runs the stages of `order` (forced ones regardless of their fingerprint) until all are done, one
    /// fails, or a signal arrives.
    pub fn run(&mut self, order: &[usize], forced: &BTreeSet<usize>) -> Result<()> {
        let mut pending: Vec<usize> = order.to_vec();
        loop {
            if let Some(signal) = self.signals.received() {
                return Err(self.interrupt(signal));
            }
            if self.failure.is_none() {
                if let Err(e) = self.start_ready(&mut pending, forced) {
                    self.fail(e);
                }
            }
            if self.running.is_empty() {
                break;
            }
            for ended in self.wait() {
                self.end(ended);
            }
        }
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts the pending stages that are ready and fit, in order.
    fn start_ready(&mut self, pending: &mut Vec<usize>, forced: &BTreeSet<usize>) -> Result<()> {
        let mut k = 0;
        while k < pending.len() && self.running.len() < self.limits.jobs {
            let i = pending[k];
            let waits = |u: &usize| pending.contains(u) || self.running.contains_key(u);
            if self.g.upstream[i].iter().any(waits) || !self.fits(i) {
                k += 1;
                continue;
            }
            pending.remove(k);
            self.decide(i, forced.contains(&i))?;
        }
        Ok(())
    }

    /// Cores stage `i` takes from the local budget: its ranks × cores per rank (0 under Slurm), at most
    /// the whole budget.
    fn cores_of(&self, i: usize) -> usize {
        let st = &self.p.stages[i];
        match self.limits.executors[i] {
            ExecutorKind::Slurm => 0,
            ExecutorKind::Local => (st.ranks * st.cpus_per_rank()).min(self.limits.cores),
        }
    }

    fn fits(&self, i: usize) -> bool {
        let used: usize = self.running.values().map(|r| r.cores).sum();
        used + self.cores_of(i) <= self.limits.cores
    }

    /// Stage `i`: up to date (done), or started.
    fn decide(&mut self, i: usize, forced: bool) -> Result<()> {
        let (p, st) = (self.p, &self.p.stages[i]);
        self.decided += 1;
        let tag = format!("[{}/{}] {}", self.decided, self.total, st.name);
        let fp = fingerprint(st, p, &mut self.books.state)?;
        if let Some(d) = fp.missing.first() {
            return Err(missing_dep(p, self.g, i, d));
        }
        let entry = self.books.lock.stages.get(&st.name);
        let why = match judge(st, &fp, entry, &mut self.books.state, forced)? {
            Verdict::UpToDate => {
                eprintln!("{tag}: up to date");
                self.up_to_date.push(st.name.clone());
                return Ok(());
            }
            Verdict::Run(why) => why,
        };
        eprintln!("{tag}: running — {}", why.join("; "));
        let earlier_job = self.reconcile(st, &fp)?;
        self.books.prepare(st, &fp)?;
        let launch = Launch {
            index: i,
            stage: st,
            binary: &fp.binary,
            dir: &p.dir,
            log: log_path(&p.run_dir, &st.name),
            echo: Echo::new(&st.name, self.limits.quiet, self.limits.jobs > 1),
        };
        match (earlier_job, self.limits.executors[i]) {
            (Some(id), _) => self.slurm.attach(&launch, &id),
            (None, ExecutorKind::Local) => self.start_local(&launch)?,
            (None, ExecutorKind::Slurm) => self.submit(&launch, &fp)?,
        }
        let cores = self.cores_of(i);
        self.running.insert(
            i,
            Running {
                tag,
                fp,
                started: Instant::now(),
                cores,
            },
        );
        Ok(())
    }

    fn start_local(&mut self, l: &Launch) -> Result<()> {
        let line =
            launcher(l.stage.ranks) + &shell_line(&l.binary.display().to_string(), &l.stage.argv);
        let log = open_log(&l.log, l.dir, &line)?;
        eprintln!(
            "    $ {}{}",
            launcher(l.stage.ranks),
            shell_line(&l.stage.program, &l.stage.argv)
        );
        self.local.start(l, log)
    }

    fn submit(&mut self, l: &Launch, fp: &Fingerprint) -> Result<()> {
        if !self.slurm_checked {
            slurm::check_available()?;
            self.slurm_checked = true;
        }
        let script = slurm::script_path(&self.p.run_dir, &l.stage.name);
        let line = slurm::sbatch_line(l, &self.p.name, &script);
        drop(open_log(&l.log, l.dir, &line)?);
        eprintln!("    $ {line}");
        let id = self.slurm.submit(l, &self.p.name, &self.p.run_dir)?;
        self.books.submitted(&l.stage.name, &id, fp)?;
        eprintln!("    submitted as Slurm job {id}");
        Ok(())
    }

    /// A Slurm job an earlier runner submitted for this stage: its id when it is still running (or
    /// finished well) under the same fingerprint, to follow instead of submitting another; otherwise it
    /// is cancelled (other settings) or forgotten (it failed), and the stage starts afresh.
    fn reconcile(&mut self, st: &Stage, fp: &Fingerprint) -> Result<Option<String>> {
        let Some(rec) = self.books.state.jobs.get(&st.name).cloned() else {
            return Ok(None);
        };
        let info = slurm::query(std::slice::from_ref(&rec.id))?.remove(&rec.id);
        let state = info.as_ref().map(|i| i.state.clone());
        let alive = info.as_ref().is_some_and(|i| !i.ended());
        let same = rec.fingerprint == fp.value;
        if same && (alive || state.as_deref() == Some("COMPLETED")) {
            eprintln!(
                "    re-attaching to Slurm job {} ({}), which an earlier run submitted",
                rec.id,
                state.unwrap_or_default()
            );
            return Ok(Some(rec.id));
        }
        if alive {
            eprintln!(
                "    cancelling Slurm job {}: an earlier run submitted it under other settings",
                rec.id
            );
            slurm::cancel_and_wait(std::slice::from_ref(&rec.id))?;
        } else {
            eprintln!(
                "    Slurm job {} of an earlier run ended {}; the stage runs again",
                rec.id,
                state.unwrap_or_else(|| "(no longer known to Slurm)".into())
            );
        }
        self.books.job_gone(&st.name)?;
        Ok(None)
    }

    /// The stages that ended in the next moment (local ones as they end, Slurm jobs when polled).
    fn wait(&mut self) -> Vec<Ended> {
        let timeout = self.slurm.due_in().map_or(TICK, |d| d.min(TICK));
        let mut ended = self.local.wait(timeout);
        match self.slurm.poll() {
            Ok(mut e) => ended.append(&mut e),
            Err(e) => self.lose_slurm(e),
        }
        ended
    }

    /// Slurm has not answered for a while: its jobs are no longer followed (they keep running, and the
    /// run state keeps their ids, so the next run re-attaches to them).
    fn lose_slurm(&mut self, e: PipelineError) {
        for (i, id) in self.slurm.forget_all() {
            let r = self
                .running
                .remove(&i)
                .expect("a followed job's stage runs");
            eprintln!(
                "{}: left running as Slurm job {id}; the next run re-attaches to it",
                r.tag
            );
        }
        self.fail(e);
    }

    /// Records a stage that ended well; notes a failure otherwise.
    fn end(&mut self, e: Ended) {
        let i = e.index;
        let r = self.running.remove(&i).expect("a running stage ended");
        let st = &self.p.stages[i];
        if e.slurm_job.is_some() {
            if let Err(err) = self.books.job_gone(&st.name) {
                self.fail(err);
            }
        }
        let wall_s = r.started.elapsed().as_secs_f64();
        if let Some(how) = &e.failure {
            eprintln!("{}: failed ({how})", r.tag);
            let err = stage_failed(self.p, i, how, &e.tail);
            self.fail(err);
            return;
        }
        let recorded = self.books.output_hashes(i).and_then(|outs| {
            let finished = Finished {
                outs,
                wall_s,
                slurm_job: e.slurm_job.clone(),
            };
            self.books.record(st, &r.fp, finished)
        });
        if let Err(err) = recorded {
            eprintln!("{}: failed", r.tag);
            self.fail(err);
            return;
        }
        let note = e.note.map(|n| format!(" ({n})")).unwrap_or_default();
        eprintln!("{}: done in {wall_s:.1}s{note}", r.tag);
        self.ran.push(st.name.clone());
    }

    /// Notes a failure: the first one ends the run once the running stages have finished; later ones
    /// are printed as they come.
    fn fail(&mut self, e: PipelineError) {
        if self.failure.is_some() {
            eprintln!("error: {e}");
            return;
        }
        if !self.running.is_empty() {
            let names: Vec<String> = self
                .running
                .keys()
                .map(|&i| format!("`{}`", self.p.stages[i].name))
                .collect();
            eprintln!(
                "pipeline: a stage failed; no new stage starts; waiting for the running one(s) to finish: {}",
                names.join(", ")
            );
        }
        self.failure = Some(e);
    }

    /// After SIGINT/SIGTERM: cancels the Slurm jobs and stops the local stages this run started.
    fn interrupt(&mut self, signal: &str) -> PipelineError {
        let mut what = Vec::new();
        for (i, id) in self.slurm.cancel_all() {
            let name = &self.p.stages[i].name;
            let _ = self.books.job_gone(name);
            what.push(format!("cancelled Slurm job {id} (stage `{name}`)"));
        }
        for i in self.local.terminate(Duration::from_secs(10)) {
            what.push(format!("stopped stage `{}`", self.p.stages[i].name));
        }
        let _ = self.books.save_state();
        let did = if what.is_empty() {
            "no stage was running".to_string()
        } else {
            what.join("; ")
        };
        PipelineError::Interrupted(format!(
            "interrupted by {signal}: {did}. Run the same command again to resume"
        ))
    }
}

/// The error for stage `i`'s dep `d` that does not exist, naming the stages that make it.
fn missing_dep(p: &Pipeline, g: &Graph, i: usize, d: &str) -> PipelineError {
    let producer = g.upstream[i]
        .iter()
        .map(|&u| format!("`{}`", p.stages[u].name))
        .collect::<Vec<_>>();
    let hint = if producer.is_empty() {
        String::new()
    } else {
        format!(
            "; it comes from stage {}, which this run did not include",
            producer.join("/")
        )
    };
    PipelineError::StageFailed(format!("{}: dep `{d}` does not exist{hint}", p.at(i)))
}

/// The error for stage `i` that ended badly (`how`): the last lines of its log.
fn stage_failed(p: &Pipeline, i: usize, how: &str, tail: &[String]) -> PipelineError {
    let log = log_path(&p.run_dir, &p.stages[i].name);
    PipelineError::StageFailed(format!(
        "{} failed ({how}); downstream stages were not run. Last lines of its log ({}):\n{}",
        p.at(i),
        relative(&log),
        tail.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    ))
}
