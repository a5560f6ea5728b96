//! `pretrain`: train a fresh model on packed token documents; resumes from its newest checkpoint.
//! All logic lives in `zerolm-stages` (the stage) and `zerolm-train` (the loop).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_cli::args::TrainArgs;
use zerolm_cli::UsageError;
use zerolm_stages::pretrain::{self, PretrainArgs};
use zerolm_train::TrainConfig;

#[derive(Parser)]
#[command(
    about = "Pretrain a zerolm model from zero on token files from `tokenize pretrain`",
    version
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.train.apply_threads()?;
    if cli.train.model.is_some() {
        return Err(UsageError(
            "pretrain starts from zero: --model is for the stages that fine-tune (sft, dpo)".into(),
        )
        .into());
    }
    let (cfg, vocab_explicit) =
        (cli.train.layers()).resolve(|p| TrainConfig::pretrain_defaults(p.unwrap_or("tiny")))?;
    let report = pretrain::run(PretrainArgs {
        stage: cli.train.stage(cfg, threads),
        vocab_explicit,
    })?;
    eprintln!("{}", report.summary());
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main_ranks(run)
}
