//! The flags every training stage shares and how they become library types: [`TrainArgs`] resolves
//! into a [`TrainConfig`] through [`Layers`] (defaults of the preset ← `--config FILE.yaml` ← dedicated
//! flags ← `--set key=value`) and into the stages' [`StageArgs`]; [`AnswerCheckArgs`] into an
//! [`AnswerCheck`].

use std::path::PathBuf;

use clap::Args;
use zerolm_model::ModelConfig;
use zerolm_stages::answers::AnswerCheck;
use zerolm_stages::common::StageArgs;
use zerolm_train::settings::{Layers, Overrides};
use zerolm_train::{TrainConfig, TrainError};

use crate::UsageError;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Token file(s) from `tokenize` (Parquet). Repeatable.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// Held-out token file(s) for eval loss. Repeatable.
    #[arg(long)]
    pub eval_input: Vec<PathBuf>,
    /// Tokenizer directory the token files were made with (copied into the exported model). Stages that
    /// start from `--model` default to the model directory's tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Model directory to start from (Hugging Face layout, e.g. the `pretrain` output's `model/`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output directory: model/ (Hugging Face layout), checkpoints/, metrics.jsonl, resolved_config.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Model preset for stages that start from zero: micro, tiny, minimind2, minimind3 (default tiny,
    /// or `preset:` in --config).
    #[arg(long)]
    pub preset: Option<String>,
    /// YAML file of settings (same keys as resolved_config.json's `config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one setting, type-checked (e.g. `--set lr=3e-4 --set model.num_hidden_layers=2`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: RAYON_NUM_THREADS, else all cores). Results are bit-identical for a
    /// given thread count.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tokens per training row.
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub save_every: Option<usize>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Device to train on: cpu (default), cuda or cuda:N (needs a build with `--features
    /// zerolm-train/cuda`).
    #[arg(long)]
    pub device: Option<String>,
    /// Train only the parameters whose name matches this regex (e.g. `norm` for every RMSNorm weight);
    /// the rest stay frozen. Default: all.
    #[arg(long, value_name = "REGEX")]
    pub train_only: Option<String>,
    /// Precision of the matrix products: f32 (default), or bf16 mixed precision (bf16 operands, f32
    /// sums; weights, gradients, optimizer state, softmax, norms and the loss stay f32).
    #[arg(long)]
    pub precision: Option<zerolm_model::Precision>,
    /// Ignore existing checkpoints and start over (they are deleted).
    #[arg(long)]
    pub no_resume: bool,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The held-out answer check's flags (`sft`, `dpo`).
#[derive(Args, Debug, Clone, Default)]
pub struct AnswerCheckArgs {
    /// File with an `answer` per row — conversations (e.g. data/sft_eval.jsonl) or preference rows whose
    /// `prompt` is the question (e.g. data/dpo_eval.jsonl): greedy-decode each question before and after
    /// training and count the replies that contain the answer.
    #[arg(long)]
    pub answer_check: Option<PathBuf>,
    /// Questions used by the answer check (0 = all).
    #[arg(long, default_value_t = 0)]
    pub answer_max: usize,
    /// Reply length limit for the answer check.
    #[arg(long, default_value_t = 48)]
    pub answer_max_new_tokens: usize,
}

impl AnswerCheckArgs {
    /// The check, when `--answer-check` names a file.
    pub fn check(&self) -> Option<AnswerCheck> {
        self.answer_check.as_ref().map(|path| AnswerCheck {
            path: path.clone(),
            max: self.answer_max,
            max_new_tokens: self.answer_max_new_tokens,
        })
    }
}

impl TrainArgs {
    /// Applies `--device` and `--threads` to this process; returns the thread count.
    pub fn apply_threads(&self) -> Result<usize, TrainError> {
        crate::threads::set_device_and_threads(self.device.as_deref(), self.threads)
    }

    /// Where the settings come from, for [`Layers::resolve`].
    pub fn layers(&self) -> Layers {
        Layers {
            preset: self.preset.clone(),
            config_file: self.config.clone(),
            flags: Overrides {
                seed: self.seed,
                seq_len: self.max_len,
                max_steps: self.max_steps,
                epochs: self.epochs,
                batch_size: self.batch_size,
                grad_accum: self.grad_accum,
                lr: self.lr,
                save_every: self.save_every,
                eval_every: self.eval_every,
                train_only: self.train_only.clone(),
                precision: self.precision,
            },
            sets: self.sets.clone(),
        }
    }

    /// For a stage that fine-tunes `--model` (required): the model directory and the settings, layered
    /// over `defaults` of the model's own config (`--preset` is refused: the model has its shape).
    pub fn finetune(
        &self,
        stage: &str,
        defaults: fn(ModelConfig) -> TrainConfig,
    ) -> anyhow::Result<(PathBuf, TrainConfig)> {
        let model = self.model.clone().ok_or_else(|| {
            UsageError(format!(
                "--model DIR (the model {stage} starts from) is required"
            ))
        })?;
        let model_cfg = zerolm_model::io::read_config(&model)?;
        let (cfg, _) = self.layers().resolve(|preset| match preset {
            Some(_) => Err(TrainError::Config(format!(
                "{stage} takes its model from --model; --preset is for pretrain"
            ))),
            None => Ok(defaults(model_cfg.clone())),
        })?;
        Ok((model, cfg))
    }

    /// The stages' shared arguments with the resolved settings `cfg` and `threads` in use.
    pub fn stage(self, cfg: TrainConfig, threads: usize) -> StageArgs {
        StageArgs {
            inputs: self.input,
            eval_inputs: self.eval_input,
            tokenizer: self.tokenizer,
            out: self.out,
            cfg,
            threads,
            no_resume: self.no_resume,
            progress: !self.no_progress,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}
