//! `pipeline`: run a YAML pipeline of zerolm stages (skipping the ones that are up to date), show its
//! status and graph, write it as a Makefile, and report on a run. All logic lives in `zerolm-pipeline`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use zerolm_pipeline::{
    makefile, report, ExecutorKind, Graph, Pipeline, RunOptions, Selection, Verdict,
};

#[derive(Parser)]
#[command(
    about = "Run zerolm pipelines: cached stages, resume after a kill, status, graph, report",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct Target {
    /// The pipeline file (YAML).
    file: PathBuf,
    /// Override a stage argument (`sft.lr=1e-3`) or a variable (`vars.out=/tmp/runs`); repeatable.
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(clap::Args)]
struct Select {
    /// Rerun this stage even if it is up to date (repeatable).
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Rerun every selected stage.
    #[arg(long)]
    force_all: bool,
    /// Rerun this stage, then whatever downstream of it is out of date.
    #[arg(long, value_name = "STAGE")]
    from: Option<String>,
    /// Stop after this stage (run only it and what it depends on).
    #[arg(long, value_name = "STAGE")]
    until: Option<String>,
    /// Run only this stage (its inputs must exist).
    #[arg(long, value_name = "STAGE")]
    only: Option<String>,
}

impl Select {
    fn selection(self) -> Selection {
        Selection {
            force: self.force,
            force_all: self.force_all,
            from: self.from,
            until: self.until,
            only: self.only,
        }
    }
}

/// Where and how many stages run at once.
#[derive(clap::Args)]
struct How {
    /// Run up to N independent stages at once (local and Slurm stages together).
    #[arg(long, short = 'j', default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// Cores the local stages may use together (a stage needs ranks × its `resources.cpus` or
    /// `--threads`); default: all of this machine's.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Where stages without their own `executor:` run (default: the pipeline's `executor:`, else local).
    #[arg(long, value_enum)]
    executor: Option<Executor>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Executor {
    /// Child processes of `pipeline run`.
    Local,
    /// One `sbatch` job per stage.
    Slurm,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Mermaid,
    Dot,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the stages that are not up to date, in dependency order.
    Run {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        select: Select,
        /// Say what would run and why; run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not echo the stages' output (it is still in RUN_DIR/logs/).
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        how: How,
    },
    /// For every stage: up to date, or will run and why.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// The stage graph as text, Mermaid or DOT.
    Dag {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print a Makefile with one target per stage (the same command lines).
    Makefile {
        #[command(flatten)]
        target: Target,
        /// Default of $(BIN), the directory of the stage binaries
        /// (default: this binary's directory, relative to the current one when under it).
        #[arg(long)]
        bin: Option<String>,
    },
    /// Write an HTML report (plots, summary table, wall times) of a pipeline's last run.
    Report {
        /// The pipeline file, or its run directory (the one holding lock.json).
        target: PathBuf,
        /// Where to write it (default: RUN_DIR/report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Run {
            target,
            select,
            dry_run,
            quiet,
            how,
        } => run_pipeline(target, select, dry_run, quiet, how),
        Cmd::Status { target } => status(target),
        Cmd::Dag { target, format } => dag(target, format),
        Cmd::Makefile { target, bin } => makefile(target, bin),
        Cmd::Report { target, out } => report(target, out),
    }
}

impl Target {
    fn load(&self) -> Result<Pipeline> {
        Ok(Pipeline::load(&self.file, &self.sets)?)
    }
}

fn run_pipeline(
    target: Target,
    select: Select,
    dry_run: bool,
    quiet: bool,
    how: How,
) -> Result<()> {
    if how.jobs == 0 || how.cores == Some(0) {
        anyhow::bail!(zerolm_cli::UsageError(
            "--jobs and --cores take a whole number ≥ 1".into()
        ));
    }
    let p = target.load()?;
    let opts = RunOptions {
        selection: select.selection(),
        dry_run,
        quiet,
        jobs: how.jobs,
        cores: how.cores.unwrap_or(0),
        executor: how.executor.map(|e| match e {
            Executor::Local => ExecutorKind::Local,
            Executor::Slurm => ExecutorKind::Slurm,
        }),
    };
    zerolm_pipeline::run(&p, &opts)?;
    Ok(())
}

fn status(target: Target) -> Result<()> {
    let p = target.load()?;
    let list = zerolm_pipeline::status(&p, &Selection::default())?;
    let stale = list
        .iter()
        .filter(|s| s.verdict != Verdict::UpToDate)
        .count();
    for s in &list {
        match &s.verdict {
            Verdict::UpToDate => println!("  {:<16} up to date", s.name),
            Verdict::Run(why) => println!("  {:<16} will run: {}", s.name, why.join("; ")),
        }
    }
    println!(
        "{}: {} of {} stage(s) up to date",
        target.file.display(),
        list.len() - stale,
        list.len()
    );
    Ok(())
}

fn dag(target: Target, format: Format) -> Result<()> {
    let p = target.load()?;
    let g = Graph::build(&p)?;
    print!(
        "{}",
        match format {
            Format::Text => g.text(&p),
            Format::Mermaid => g.mermaid(&p),
            Format::Dot => g.dot(&p),
        }
    );
    Ok(())
}

fn makefile(target: Target, bin: Option<String>) -> Result<()> {
    let p = target.load()?;
    let g = Graph::build(&p)?;
    let cwd = std::env::current_dir()?;
    let bin = bin.unwrap_or_else(|| makefile::default_bin(&cwd));
    let invoked = format!("pipeline makefile {}", target.file.display());
    print!("{}", makefile::makefile(&p, &g, &cwd, &bin, &invoked));
    Ok(())
}

fn report(target: PathBuf, out: Option<PathBuf>) -> Result<()> {
    let r = report::generate(&target, out)?;
    println!("{}", r.markdown);
    println!("report: {}", r.dir.join("index.html").display());
    if let Some(m) = r.final_model {
        println!("final model: {}", m.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
