//! `dpo`: preference-optimise a model directory on DPO pairs with cached (or computed-once) reference
//! log-probs; resumes from its newest checkpoint. All logic lives in `zerolm-train`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_train::cli::TrainArgs;
use zerolm_train::dpo::{self, DpoArgs};
use zerolm_train::preference::{LossParams, LossSpec};
use zerolm_train::TrainError;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    about = "Align a zerolm model with DPO and the TRL preference-loss family",
    version
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
    /// Reference log-prob cache of --input (from `ref-logprobs`).
    #[arg(long)]
    ref_cache: Option<PathBuf>,
    /// Reference log-prob cache of --eval-input.
    #[arg(long)]
    eval_ref_cache: Option<PathBuf>,
    /// Reference model: checked against the caches, or used once at start to compute what is not cached.
    #[arg(long)]
    ref_model: Option<PathBuf>,
    /// Loss or weighted mix: sigmoid, hinge, ipo, robust, exo_pair, nca_pair, bco_pair, sppo_hard, apo_zero,
    /// apo_down, discopop, sigmoid_norm, sft, simpo, orpo — e.g. `sigmoid:1,sft:0.2` (RPO).
    #[arg(long, default_value = "sigmoid")]
    loss: String,
    /// β (default 0.1, the article's; 2.0 when the loss is simpo alone, SimPO's scale).
    #[arg(long)]
    beta: Option<f64>,
    /// ε of robust / exo_pair.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// γ of simpo.
    #[arg(long, default_value_t = 0.5)]
    simpo_gamma: f64,
    /// λ of orpo.
    #[arg(long, default_value_t = 0.1)]
    orpo_lambda: f64,
    #[command(flatten)]
    answers: zerolm_train::cli::AnswerCheckArgs,
    #[arg(long)]
    no_progress: bool,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.train.apply_threads()?;
    let model = cli.train.model.clone().ok_or_else(|| {
        TrainError::Config("--model DIR (the policy to start from) is required".into())
    })?;
    let model_cfg = zerolm_model::io::read_config(&model)?;
    let (cfg, _) = cli.train.resolve(|preset| match preset {
        Some(_) => Err(TrainError::Config(
            "dpo takes its model from --model; --preset is for pretrain".into(),
        )),
        None => Ok(dpo::dpo_defaults(model_cfg.clone())),
    })?;
    let loss = LossSpec::parse(&cli.loss)?;
    let e = cli.label_smoothing;
    if !(0.0..0.5).contains(&e) {
        return Err(
            TrainError::Config(format!("--label-smoothing must be in [0, 0.5), got {e}")).into(),
        );
    }
    if loss
        .0
        .iter()
        .any(|(k, _)| *k == zerolm_train::preference::LossKind::ExoPair)
        && e <= 0.0
    {
        return Err(TrainError::Config(
            "exo_pair needs --label-smoothing > 0 (1e-3 is typical)".into(),
        )
        .into());
    }
    let simpo_only = loss
        .0
        .iter()
        .all(|(k, _)| *k == zerolm_train::preference::LossKind::Simpo);
    let beta = cli.beta.unwrap_or(if simpo_only { 2.0 } else { 0.1 });
    if !(beta > 0.0 && beta.is_finite()) {
        return Err(
            TrainError::Config(format!("--beta must be a positive number, got {beta}")).into(),
        );
    }
    let ignores_smoothing = loss.0.iter().all(|(k, _)| {
        !matches!(
            k,
            zerolm_train::preference::LossKind::Robust
                | zerolm_train::preference::LossKind::ExoPair
        )
    });
    if e > 0.0 && ignores_smoothing {
        return Err(TrainError::Config(
            "--label-smoothing applies to robust and exo_pair only; this --loss would ignore it"
                .into(),
        )
        .into());
    }
    let loss_params = LossParams {
        beta,
        label_smoothing: e,
        simpo_gamma: cli.simpo_gamma,
        orpo_lambda: cli.orpo_lambda,
        ..Default::default()
    };
    let a = cli.train;
    let report = dpo::run(DpoArgs {
        model,
        inputs: a.input,
        eval_inputs: a.eval_input,
        tokenizer: a.tokenizer,
        ref_cache: cli.ref_cache,
        eval_ref_cache: cli.eval_ref_cache,
        ref_model: cli.ref_model,
        out: a.out,
        cfg,
        loss,
        loss_params,
        answers: cli.answers,
        threads,
        no_resume: a.no_resume,
        progress: !cli.no_progress,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })?;
    let o = &report.outcome;
    let acc = o
        .eval
        .as_ref()
        .and_then(|e| e.metrics.get("rewards/accuracies").copied());
    eprintln!(
        "dpo: {} steps on {} pairs in {:.1}s{}; train loss {}; eval loss {}, eval rewards/accuracies {}; held-out answers {}; model → {}",
        o.step,
        report.pairs,
        o.elapsed_s,
        o.resumed_from.map_or(String::new(), |s| format!(", resumed from step {s}")),
        o.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
        o.eval.as_ref().map_or("-".into(), |e| format!("{:.4}", e.loss)),
        acc.map_or("-".into(), |a| format!("{a:.3}")),
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
