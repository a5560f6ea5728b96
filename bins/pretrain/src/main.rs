//! `pretrain`: train a fresh model on packed token documents; resumes from its newest checkpoint.
//! All logic lives in `zerolm-train`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_train::cli::TrainArgs;
use zerolm_train::pretrain::{self, PretrainArgs};
use zerolm_train::{TrainConfig, TrainError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    about = "Pretrain a zerolm model from zero on token files from `tokenize pretrain`",
    version
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.train.apply_threads()?;
    let (cfg, vocab_explicit) = cli
        .train
        .resolve(|p| TrainConfig::pretrain_defaults(p.unwrap_or("tiny")))?;
    let a = cli.train;
    if a.model.is_some() {
        return Err(TrainError::Config(
            "pretrain starts from zero: --model is for the stages that fine-tune (sft, dpo)".into(),
        )
        .into());
    }
    let tokenizer = a
        .tokenizer
        .ok_or_else(|| TrainError::Config("--tokenizer DIR is required".into()))?;
    let report = pretrain::run(PretrainArgs {
        inputs: a.input,
        eval_inputs: a.eval_input,
        tokenizer,
        out: a.out,
        cfg,
        vocab_explicit,
        threads,
        no_resume: a.no_resume,
        progress: !cli.no_progress,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })?;
    let o = &report.outcome;
    eprintln!(
        "pretrain: {} steps ({} tokens) in {:.1}s{}; train loss {}; eval loss {} (unigram entropy {:.3}); model → {}",
        o.step,
        o.tokens_seen,
        o.elapsed_s,
        o.resumed_from.map_or(String::new(), |s| format!(", resumed from step {s}")),
        o.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
        o.eval.as_ref().map_or("-".into(), |e| format!("{:.4} (ppl {:.2})", e.loss, e.loss.exp())),
        report.unigram_entropy,
        report.model_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    zerolm_train::alloc::keep_freed_memory();
    match run(zerolm_train::cli::parse_args()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => zerolm_train::cli::failure(e.as_ref()),
    }
}
