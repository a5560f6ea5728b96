//! `sft`: supervised fine-tuning of a model directory on `tokenize sft` conversations; resumes from its
//! newest checkpoint. All logic lives in `zerolm-stages` (the stage) and `zerolm-train` (the loop).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_cli::args::{AnswerCheckArgs, TrainArgs};
use zerolm_cli::UsageError;
use zerolm_stages::defaults;
use zerolm_stages::sft::{self, SftArgs};
use zerolm_train::TrainError;

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
    let model = (cli.train.model.clone())
        .ok_or_else(|| UsageError("--model DIR (the model to fine-tune) is required".into()))?;
    let model_cfg = zerolm_model::io::read_config(&model)?;
    let (cfg, _) = cli.train.layers().resolve(|preset| match preset {
        Some(_) => Err(TrainError::Config(
            "sft takes its model from --model; --preset is for pretrain".into(),
        )),
        None => Ok(defaults::sft(model_cfg.clone())),
    })?;
    let report = sft::run(SftArgs {
        stage: cli.train.stage(cfg, threads),
        model,
        answers: cli.answers.check(),
    })?;
    eprintln!("{}", report.summary());
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
