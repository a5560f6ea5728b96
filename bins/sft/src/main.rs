//! `sft`: supervised fine-tuning of a model directory on `tokenize sft` conversations; resumes from its
//! newest checkpoint. All logic lives in `zerolm-stages` (the stage) and `zerolm-train` (the loop).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_cli::args::{AnswerCheckArgs, TrainArgs};
use zerolm_stages::defaults;
use zerolm_stages::sft::{self, SftArgs};

#[derive(Parser)]
#[command(
    about = "Fine-tune a zerolm model on chat conversations (loss on assistant tokens only)",
    version
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    answers: AnswerCheckArgs,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.train.apply_threads()?;
    let (model, cfg) = cli.train.finetune("sft", defaults::sft)?;
    let report = sft::run(SftArgs {
        stage: cli.train.stage(cfg, threads),
        model,
        answers: cli.answers.check(),
    })?;
    eprintln!("{}", report.summary());
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main_ranks(run)
}
