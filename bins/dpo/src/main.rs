//! `dpo`: preference-optimise a model directory on DPO pairs with cached (or computed-once) reference
//! log-probs; resumes from its newest checkpoint. All logic lives in `zerolm-stages` (the stage and the
//! loss family) and `zerolm-train` (the loop).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_cli::args::{AnswerCheckArgs, TrainArgs};
use zerolm_stages::defaults;
use zerolm_stages::dpo::{self, DpoArgs, RefSources};
use zerolm_stages::preference::losses::LossOptions;

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
    /// apo_down, discopop, sigmoid_norm, aot, aot_unpaired, sft, simpo, orpo — e.g. `sigmoid:1,sft:0.2` (RPO).
    #[arg(long, default_value = "sigmoid")]
    loss: String,
    /// β (default 0.1, the article's; 2.0 when the loss is simpo alone, SimPO's scale).
    #[arg(long)]
    beta: Option<f64>,
    /// ε of robust / exo_pair / aot / aot_unpaired.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// f-DPO: reverse_kl (standard DPO), forward_kl, js_divergence or alpha_divergence; only with the
    /// losses on the reward difference (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft).
    #[arg(long, default_value = "reverse_kl")]
    f_divergence_type: String,
    /// α of alpha_divergence.
    #[arg(long, default_value_t = 0.5)]
    f_alpha_divergence_coef: f64,
    /// WPO: weight each pair's loss by how likely the policy finds its completions (not with aot).
    #[arg(long)]
    use_weighting: bool,
    /// LD-DPO: completion tokens past the pair's shorter completion count with this weight, in [0, 1].
    #[arg(long)]
    ld_alpha: Option<f64>,
    /// TR-DPO's reference syncing: refused, with the reason (the reference log-probs are computed once).
    #[arg(long)]
    sync_ref_model: bool,
    /// γ of simpo.
    #[arg(long, default_value_t = 0.5)]
    simpo_gamma: f64,
    /// λ of orpo.
    #[arg(long, default_value_t = 0.1)]
    orpo_lambda: f64,
    #[command(flatten)]
    answers: AnswerCheckArgs,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.train.apply_threads()?;
    let (model, cfg) = cli.train.finetune("dpo", defaults::dpo)?;
    let (loss, loss_params) = LossOptions {
        loss: cli.loss,
        beta: cli.beta,
        label_smoothing: cli.label_smoothing,
        simpo_gamma: cli.simpo_gamma,
        orpo_lambda: cli.orpo_lambda,
        f_divergence: cli.f_divergence_type,
        f_alpha_divergence_coef: cli.f_alpha_divergence_coef,
        use_weighting: cli.use_weighting,
        ld_alpha: cli.ld_alpha,
        sync_ref_model: cli.sync_ref_model,
    }
    .resolve()?;
    let report = dpo::run(DpoArgs {
        stage: cli.train.stage(cfg, threads),
        model,
        reference: RefSources {
            ref_cache: cli.ref_cache,
            eval_ref_cache: cli.eval_ref_cache,
            ref_model: cli.ref_model,
        },
        loss,
        loss_params,
        answers: cli.answers.check(),
    })?;
    eprintln!("{}", report.summary());
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main_ranks(run)
}
