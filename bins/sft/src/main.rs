//! `sft`: supervised fine-tuning of a model directory on `tokenize sft` conversations; resumes from its
//! newest checkpoint. All logic lives in `zerolm-train`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_train::cli::TrainArgs;
use zerolm_train::sft::{self, SftArgs};
use zerolm_train::TrainError;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    about = "Fine-tune a zerolm model on chat conversations (loss on assistant tokens only)",
    version
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    answers: zerolm_train::cli::AnswerCheckArgs,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.train.apply_threads()?;
    let model = cli.train.model.clone().ok_or_else(|| {
        TrainError::Config("--model DIR (the model to fine-tune) is required".into())
    })?;
    let model_cfg = zerolm_model::io::read_config(&model)?;
    let (cfg, _) = cli.train.resolve(|preset| match preset {
        Some(_) => Err(TrainError::Config(
            "sft takes its model from --model; --preset is for pretrain".into(),
        )),
        None => Ok(sft::sft_defaults(model_cfg.clone())),
    })?;
    let a = cli.train;
    let report = sft::run(SftArgs {
        model,
        inputs: a.input,
        eval_inputs: a.eval_input,
        tokenizer: a.tokenizer,
        out: a.out,
        cfg,
        answers: cli.answers,
        threads,
        no_resume: a.no_resume,
        progress: !cli.no_progress,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })?;
    let o = &report.outcome;
    eprintln!(
        "sft: {} steps ({} supervised tokens) in {:.1}s{}; train loss {}; eval loss {}; held-out answers {}; model → {}",
        o.step,
        o.tokens_seen,
        o.elapsed_s,
        o.resumed_from.map_or(String::new(), |s| format!(", resumed from step {s}")),
        o.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
        o.eval.as_ref().map_or("-".into(), |e| format!("{:.4}", e.loss)),
        zerolm_train::answers::before_after(&report.answers_before, &report.answers_after),
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
