//! Running a pipeline: select the stages, show the plan (`--dry-run`) or take the run directory's lock
//! and hand the stages to the scheduler (`schedule`), then print the summary and the results.

use crate::books::Books;
use crate::error::Result;
use crate::exec::local::launcher;
use crate::exec::log::{log_path, Echo};
use crate::exec::slurm;
use crate::exec::Launch;
use crate::graph::Graph;
use crate::judge::{locate_stage, select, status_of, Selection, Verdict};
use crate::lockfile::PidLock;
use crate::resources::ExecutorKind;
use crate::schedule::{Limits, Scheduler};
use crate::shell::{relative, shell_line};
use crate::spec::Pipeline;
use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub selection: Selection,
    /// Say what would run, run nothing.
    pub dry_run: bool,
    /// Do not echo the stages' own output (it still goes to their logs).
    pub quiet: bool,
    /// Stages running at once (local and Slurm together).
    pub jobs: usize,
    /// Cores the local stages may use together; 0 for all of this machine's.
    pub cores: usize,
    /// Where stages without their own `executor:` run; the pipeline's `executor:` when `None`.
    pub executor: Option<ExecutorKind>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            selection: Selection::default(),
            dry_run: false,
            quiet: false,
            jobs: 1,
            cores: 0,
            executor: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: Vec<String>,
    pub up_to_date: Vec<String>,
    pub seconds: f64,
}

/// Each stage's executor: its own, else `--executor`, else the pipeline's, else local.
fn executors(p: &Pipeline, opts: &RunOptions) -> Vec<ExecutorKind> {
    p.stages
        .iter()
        .map(|st| {
            st.executor
                .or(opts.executor)
                .or(p.executor)
                .unwrap_or(ExecutorKind::Local)
        })
        .collect()
}

fn limits(p: &Pipeline, opts: &RunOptions) -> Limits {
    let cores = match opts.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    Limits {
        jobs: opts.jobs.max(1),
        cores,
        quiet: opts.quiet,
        executors: executors(p, opts),
    }
}

/// Runs the pipeline.
pub fn run(p: &Pipeline, opts: &RunOptions) -> Result<RunSummary> {
    let t0 = Instant::now();
    let g = Graph::build(p)?;
    let (order, forced) = select(p, &g, &opts.selection)?;
    // Every binary must be there before anything starts.
    for &i in &order {
        locate_stage(&p.stages[i], p)?;
    }
    let limits = limits(p, opts);
    if opts.dry_run {
        print_dry_run(p, &g, order, &forced, &limits.executors)?;
        return Ok(RunSummary::default());
    }
    let _pid = PidLock::acquire(&p.run_dir)?;
    eprintln!(
        "pipeline: {} — {} stage(s){}; run dir {}",
        p.file.display(),
        order.len(),
        parallelism(&limits, &order),
        relative(&p.run_dir)
    );
    let names = g.order.iter().map(|&i| p.stages[i].name.clone()).collect();
    let books = Books::open(p, names)?;
    let mut s = Scheduler::new(p, &g, books, limits, order.len())?;
    s.run(&order, &forced)?;
    s.books.save_state()?;
    let summary = RunSummary {
        ran: s.ran,
        up_to_date: s.up_to_date,
        seconds: t0.elapsed().as_secs_f64(),
    };
    eprintln!(
        "pipeline: {} ran, {} up to date, in {:.2}s",
        summary.ran.len(),
        summary.up_to_date.len(),
        summary.seconds
    );
    for (label, path) in &p.results {
        eprintln!("  {label}: {}", relative(path));
    }
    Ok(summary)
}

/// `, up to 2 at once on 2 cores, 3 on Slurm` for the run's first line (nothing for one local stage at a
/// time).
fn parallelism(limits: &Limits, order: &[usize]) -> String {
    let on_slurm = order
        .iter()
        .filter(|&&i| limits.executors[i] == ExecutorKind::Slurm)
        .count();
    let mut s = String::new();
    if limits.jobs > 1 {
        s.push_str(&format!(
            ", up to {} at once (local ones within {} cores)",
            limits.jobs, limits.cores
        ));
    }
    if on_slurm > 0 {
        s.push_str(&format!(", {on_slurm} through Slurm"));
    }
    s
}

/// `run --dry-run`: each selected stage's verdict and, for the ones that would run, the command (the
/// `sbatch` line and the job's command under Slurm).
fn print_dry_run(
    p: &Pipeline,
    g: &Graph,
    order: Vec<usize>,
    forced: &BTreeSet<usize>,
    executors: &[ExecutorKind],
) -> Result<()> {
    for s in status_of(p, g, order, forced)? {
        let i = p.stage(&s.name).expect("known stage");
        let st = &p.stages[i];
        let why = match s.verdict {
            Verdict::UpToDate => {
                eprintln!("  {:<16} up to date", s.name);
                continue;
            }
            Verdict::Run(why) => why,
        };
        eprintln!("  {:<16} would run: {}", s.name, why.join("; "));
        if executors[i] == ExecutorKind::Local {
            eprintln!(
                "  {:<16}   $ {}{}",
                "",
                launcher(st.ranks),
                shell_line(&st.program, &st.argv)
            );
            continue;
        }
        let binary = locate_stage(st, p)?;
        let l = Launch {
            index: i,
            stage: st,
            binary: &binary,
            dir: &p.dir,
            log: log_path(&p.run_dir, &st.name),
            echo: Echo::new(&st.name, true, false),
        };
        let script = slurm::script_path(&p.run_dir, &st.name);
        eprintln!(
            "  {:<16}   $ {}",
            "",
            slurm::sbatch_line(&l, &p.name, &script)
        );
        eprintln!(
            "  {:<16}     (the job runs: {})",
            "",
            slurm::job_command(st, &binary)
        );
    }
    Ok(())
}
