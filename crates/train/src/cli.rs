//! The flags every training stage shares (DESIGN §2b) and how they resolve into a [`TrainConfig`]:
//! defaults of the preset ← `--config FILE.yaml` ← dedicated flags ← `--set key=value`.

use std::path::PathBuf;

use clap::Args;

use crate::settings::{apply_sets, apply_yaml, TrainConfig};
use crate::TrainError;

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
    /// Ignore existing checkpoints and start over (they are deleted).
    #[arg(long)]
    pub no_resume: bool,
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

impl TrainArgs {
    /// The resolved settings, and whether the user set `model.vocab_size` explicitly.
    pub fn resolve(
        &self,
        defaults: impl Fn(Option<&str>) -> Result<TrainConfig, TrainError>,
    ) -> Result<(TrainConfig, bool), TrainError> {
        let yaml = match &self.config {
            None => None,
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| TrainError::Config(format!("{}: {e}", p.display())))?,
            ),
        };
        let yaml_value: serde_json::Value = match &yaml {
            None => serde_json::Value::Null,
            Some(text) => serde_yaml::from_str(text).map_err(|e| {
                TrainError::Config(format!(
                    "{}: not valid YAML: {e}",
                    self.config.as_ref().expect("set").display()
                ))
            })?,
        };
        let preset = self.preset.clone().or_else(|| {
            yaml_value
                .get("preset")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
        let mut cfg = defaults(preset.as_deref())?;
        if let (Some(text), Some(p)) = (&yaml, &self.config) {
            let label = cfg.preset.clone();
            cfg = apply_yaml(&cfg, text, &p.display().to_string())?;
            cfg.preset = label; // the preset that shaped the model, even when --preset overrode the YAML's
        }
        if let Some(p) = &self.train_only {
            // Set directly: a regex need not be a YAML scalar.
            cfg.train_only = Some(p.clone());
        }
        let flag = |v: Option<String>, key: &str| v.map(|v| format!("{key}={v}"));
        let mut sets: Vec<String> = [
            flag(self.seed.map(|v| v.to_string()), "seed"),
            flag(self.max_len.map(|v| v.to_string()), "seq_len"),
            flag(self.max_steps.map(|v| v.to_string()), "max_steps"),
            flag(self.epochs.map(|v| v.to_string()), "epochs"),
            flag(self.batch_size.map(|v| v.to_string()), "batch_size"),
            flag(self.grad_accum.map(|v| v.to_string()), "grad_accum"),
            flag(self.lr.map(|v| format!("{v:?}")), "lr"),
            flag(self.save_every.map(|v| v.to_string()), "save_every"),
            flag(self.eval_every.map(|v| v.to_string()), "eval_every"),
        ]
        .into_iter()
        .flatten()
        .collect();
        sets.extend(self.sets.iter().cloned());
        let cfg = apply_sets(&cfg, &sets)?;
        let explicit = self
            .sets
            .iter()
            .any(|s| s.trim_start().starts_with("model.vocab_size"))
            || yaml_value
                .get("model")
                .and_then(|m| m.get("vocab_size"))
                .is_some();
        Ok((cfg, explicit))
    }

    /// Sets this process's device (`--device`) and worker thread count for rayon and candle (which reads
    /// RAYON_NUM_THREADS); returns the thread count.
    pub fn apply_threads(&self) -> Result<usize, TrainError> {
        set_device_and_threads(self.device.as_deref(), self.threads)
    }
}

/// `--device` then `--threads`, as every stage that runs the model applies them; returns the thread
/// count.
pub fn set_device_and_threads(
    device: Option<&str>,
    threads: Option<usize>,
) -> Result<usize, TrainError> {
    crate::device::select(device)?;
    set_threads(threads)
}

/// Prints a stage's failure and maps it to the exit codes every stage uses: 1 for what the user can fix
/// (bad input, flag, setting or checkpoint), 2 for internal failures.
pub fn failure(err: &(dyn std::error::Error + Send + Sync + 'static)) -> std::process::ExitCode {
    eprintln!("error: {err}");
    let user = err
        .downcast_ref::<TrainError>()
        .is_some_and(TrainError::is_user_error)
        || err
            .downcast_ref::<zerolm_model::ModelError>()
            .is_some_and(|e| e.is_user_error())
        || err
            .downcast_ref::<zerolm_data::DataError>()
            .is_some_and(|e| e.is_user_error());
    std::process::ExitCode::from(if user { 1 } else { 2 })
}

/// Parses the command line; a usage error exits with code 1 (a user error), `--help`/`--version` with 0.
pub fn parse_args<P: clap::Parser>() -> P {
    P::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { 1 } else { 0 };
        let _ = e.print();
        std::process::exit(code)
    })
}

/// Applies `--threads` (or the environment's default) to rayon and candle; returns the count in use.
pub fn set_threads(threads: Option<usize>) -> Result<usize, TrainError> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(TrainError::Config("--threads must be at least 1".into()));
        }
        // candle's CPU kernels size their pools from this variable; set it before any tensor work.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| TrainError::Internal(format!("thread pool: {e}")))?;
    }
    let n = rayon::current_num_threads();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // candle runs its remaining element-wise ops on a pool of its own whose workers spin while the
    // matrix products run on rayon's threads, taking a core from them: the heavy element-wise work is
    // in zerolm's fused kernels (on rayon), so candle's pool is kept to the calling thread (measured:
    // 741 → 798 tokens/s on the MiniMind2 step). An explicit CANDLE_NUM_THREADS is respected.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn pretrain(preset: Option<&str>) -> Result<TrainConfig, TrainError> {
        TrainConfig::pretrain_defaults(preset.unwrap_or("tiny"))
    }

    fn parse(extra: &[&str]) -> TrainArgs {
        let mut argv = vec![
            "x",
            "--input",
            "a.parquet",
            "--tokenizer",
            "tok",
            "--out",
            "o",
        ];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).train
    }

    #[test]
    fn yaml_preset_then_flags_then_sets() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("c.yaml");
        std::fs::write(&yaml, "preset: micro\nlr: 0.01\nbatch_size: 3\nmodel:\n  num_hidden_layers: 1\n  vocab_size: 7000\n").unwrap();
        let y = yaml.to_str().unwrap();
        let (c, explicit) = parse(&["--config", y, "--batch-size", "5", "--set", "batch_size=6"])
            .resolve(pretrain)
            .unwrap();
        assert_eq!(c.preset, "micro");
        assert_eq!(
            c.model.hidden_size, 32,
            "the YAML's preset shapes the model"
        );
        assert_eq!(c.model.num_hidden_layers, 1);
        assert_eq!(c.lr, 0.01);
        assert_eq!(
            c.batch_size, 6,
            "--set wins over the flag, the flag over the YAML"
        );
        assert!(explicit, "vocab_size given in the YAML");
        let (c, explicit) = parse(&["--preset", "tiny", "--lr", "0.5"])
            .resolve(pretrain)
            .unwrap();
        assert_eq!((c.model.hidden_size, c.lr, explicit), (128, 0.5, false));
        let (c, _) = parse(&["--config", y, "--preset", "tiny"])
            .resolve(pretrain)
            .unwrap();
        assert_eq!(
            (c.preset.as_str(), c.model.hidden_size),
            ("tiny", 128),
            "--preset wins and is what is recorded"
        );
        let e = parse(&["--config", "/no/such.yaml"])
            .resolve(pretrain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such.yaml"), "{e}");
    }
}
