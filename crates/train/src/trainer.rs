//! The one training loop every stage shares. A stage supplies a [`Task`] (how a micro-batch of samples
//! becomes a loss; how to evaluate) and the initial weights; the loop owns the rest: data order,
//! schedule, accumulation, clipping, AdamW, metrics, checkpoints and resume.
//!
//! Read it top to bottom: `train` resumes or starts, then runs optimizer steps until the budget is
//! spent, checkpointing at a step boundary so a resumed run replays exactly what the uninterrupted
//! one would have done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde_json::{json, Map, Value};
use zerolm_model::{Model, ModelConfig, SplitMix64};

use crate::adamw::{AdamW, AdamWConfig, Grads, Params};
use crate::checkpoint::{self, DataCursor, InputFingerprint, TrainerState, CHECKPOINT_VERSION};
use crate::metrics::{Display, MetricsLog};
use crate::schedule::lr_at;
use crate::settings::{TrainConfig, RESUMABLE_KEYS};
use crate::stage;
use crate::TrainError;

/// A micro-batch's loss (mean over its target tokens) and how many target tokens it covered, plus
/// task metrics (averaged over the micro-batches of a step and logged under their own names).
pub struct BatchLoss {
    pub loss: Tensor,
    pub tokens: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// An evaluation result: mean loss over `tokens` target tokens in `rows` rows, and task metrics
/// (logged with an `eval_` prefix). `perplexity` says whether exp(loss) means anything.
pub struct EvalResult {
    pub loss: f64,
    pub tokens: usize,
    pub rows: usize,
    pub perplexity: bool,
    pub metrics: BTreeMap<String, f64>,
}

/// What a stage trains on.
pub trait Task {
    /// Training samples per epoch (rows after packing/filtering).
    fn num_samples(&self) -> usize;
    /// The loss of the model on these samples.
    fn batch_loss(&self, model: &Model, samples: &[usize]) -> Result<BatchLoss, TrainError>;
    /// Loss on the eval split (up to `max_batches` batches of `batch_size`; 0 = all), if there is one.
    fn evaluate(
        &self,
        model: &Model,
        batch_size: usize,
        max_batches: usize,
    ) -> Result<Option<EvalResult>, TrainError>;
    /// A measurement logged as its own metrics row before a fresh run's first step (step 0) and after
    /// its last (e.g. SFT's held-out answer accuracy). The row's keys must not include `step`.
    fn probe(&self, _model: &Model) -> Result<Option<Map<String, Value>>, TrainError> {
        Ok(None)
    }
}

/// What identifies a run besides its settings.
pub struct RunSpec<'a> {
    pub stage: &'a str,
    pub out: &'a Path,
    pub cfg: &'a TrainConfig,
    pub inputs: Vec<InputFingerprint>,
    pub tokenizer_fingerprint: String,
    pub threads: usize,
    /// Start over even if checkpoints exist.
    pub no_resume: bool,
    /// Show a progress bar when on a terminal.
    pub progress: bool,
    /// Written as `resolved_config.json` once the run is known to start or resume.
    pub resolved: Value,
    /// Stage settings outside `TrainConfig` that change the result (e.g. DPO's loss and β): stored in
    /// checkpoints under `stage_settings` and checked on resume like the rest of the config.
    pub stage_settings: Option<Value>,
}

/// The end of a run.
pub struct Outcome {
    pub params: BTreeMap<String, Tensor>,
    pub step: usize,
    pub resumed_from: Option<usize>,
    pub final_loss: Option<f64>,
    pub eval: Option<EvalResult>,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
    pub metrics_path: PathBuf,
}

/// The shuffled sample order of `epoch`: a pure function of (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Optimizer steps a run takes.
pub fn total_steps(cfg: &TrainConfig, num_samples: usize) -> Result<usize, TrainError> {
    if cfg.max_steps > 0 {
        return Ok(cfg.max_steps);
    }
    let per_epoch = num_samples / cfg.batch_size / cfg.grad_accum;
    if per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "{num_samples} training rows are fewer than one optimizer step needs (batch_size {} × grad_accum {}); \
             lower them or add data",
            cfg.batch_size, cfg.grad_accum
        )));
    }
    Ok(per_epoch * cfg.epochs)
}

/// Trains `init` (ignored when resuming) on `task`.
pub fn train(
    task: &dyn Task,
    init: BTreeMap<String, Tensor>,
    spec: &RunSpec,
) -> Result<Outcome, TrainError> {
    let cfg = spec.cfg;
    cfg.validate()?;
    let n = task.num_samples();
    let batches_per_epoch = n / cfg.batch_size;
    if batches_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "{n} training rows are fewer than one batch (batch_size {})",
            cfg.batch_size
        )));
    }
    let total = total_steps(cfg, n)?;
    let device = crate::device::current();
    let root = checkpoint::checkpoint_root(spec.out);
    let mut config_json = serde_json::to_value(cfg).expect("config serialises");
    if let (Some(o), Some(extra)) = (config_json.as_object_mut(), &spec.stage_settings) {
        o.insert("stage_settings".into(), extra.clone());
    }

    if spec.no_resume && root.exists() {
        std::fs::remove_dir_all(&root).map_err(|cause| TrainError::Write {
            path: root.clone(),
            cause,
        })?;
    }
    let init = init
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&device)?)))
        .collect::<Result<BTreeMap<_, _>, candle_core::Error>>()?;
    let params = Params::select(&init, cfg.train_only.as_deref())?;
    drop(init);
    if let Some(p) = &cfg.train_only {
        eprintln!(
            "training {} of {} parameters (train_only `{p}`; {} tensors frozen)",
            params.trainable_count(),
            params.trainable_count() + params.frozen_count(),
            params.frozen.len()
        );
    }
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        },
    );
    let mut state = TrainerState {
        checkpoint_version: CHECKPOINT_VERSION,
        stage: spec.stage.to_string(),
        step: 0,
        total_steps: total,
        cursor: DataCursor {
            micro_batches: 0,
            epoch: 0,
            batch_in_epoch: 0,
            shuffle_seed: cfg.seed,
        },
        tokens_seen: 0,
        elapsed_s: 0.0,
        threads: spec.threads,
        tokenizer_fingerprint: spec.tokenizer_fingerprint.clone(),
        inputs: spec.inputs.clone(),
        config: config_json.clone(),
    };
    let mut resumed_from = None;
    if let Some((_, dir)) = checkpoint::list(&root)?.pop() {
        let ck = checkpoint::load(&dir, &device)?;
        check_resumable(&ck.state, &state, &dir)?;
        params.load(
            &ck.model,
            &dir.join("model.safetensors").display().to_string(),
        )?;
        opt.load_state(
            &params,
            &ck.optimizer,
            ck.state.step as u64,
            &dir.join("optimizer.safetensors").display().to_string(),
        )?;
        resumed_from = Some(ck.state.step);
        state.step = ck.state.step;
        state.cursor = ck.state.cursor;
        state.tokens_seen = ck.state.tokens_seen;
        state.elapsed_s = ck.state.elapsed_s;
        if ck.state.threads != spec.threads {
            eprintln!(
                "warning: the checkpoint was written with {} threads, this run uses {}; results stay valid but are \
                 no longer bit-identical to an uninterrupted run",
                ck.state.threads, spec.threads
            );
        }
        eprintln!(
            "resuming from {} (step {}/{total})",
            dir.display(),
            state.step
        );
    }

    stage::write_resolved_config(spec.out, &spec.resolved)?;
    if state.step < total {
        // This run will change the weights: a model exported by an earlier run must not outlive it
        // looking finished if this one fails.
        let model_dir = spec.out.join("model");
        if model_dir.exists() {
            std::fs::remove_dir_all(&model_dir).map_err(|cause| TrainError::Write {
                path: model_dir,
                cause,
            })?;
        }
    }
    let metrics_path = spec.out.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&metrics_path, resumed_from)?;
    let display = Display::new(spec.stage, total, state.step, spec.progress);
    if resumed_from.is_none() {
        // Where the curves start: the eval split and the probe on the initial weights (step 0).
        let start_model = snapshot(&params, cfg)?;
        if let Some(ev) = task.evaluate(&start_model, cfg.batch_size, cfg.eval_batches)? {
            log_eval(&mut metrics, &display, 0, &ev)?;
        }
        if let Some(row) = task.probe(&start_model)? {
            log_probe(&mut metrics, &display, 0, row)?;
        }
    }
    let model = Model::new(cfg.model.clone(), params.tensors())?;
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut order = epoch_order(n, cfg.seed, state.cursor.epoch);
    let mut last_loss = None;
    let mut last_eval = None;
    let mut window = (Instant::now(), 0usize);

    while state.step < total {
        let lr = lr_at(
            state.step,
            total,
            cfg.lr,
            cfg.warmup_steps,
            cfg.min_lr_ratio,
        );
        let mut grads: Option<Grads> = None;
        let mut loss_sum = 0f64;
        let mut step_tokens = 0usize;
        let mut task_metrics: BTreeMap<String, f64> = BTreeMap::new();
        for _ in 0..cfg.grad_accum {
            if state.cursor.batch_in_epoch == batches_per_epoch {
                state.cursor.epoch += 1;
                state.cursor.batch_in_epoch = 0;
                order = epoch_order(n, cfg.seed, state.cursor.epoch);
            }
            let at = state.cursor.batch_in_epoch * cfg.batch_size;
            let batch = task.batch_loss(&model, &order[at..at + cfg.batch_size])?;
            let value = batch.loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(diverged(
                    &root,
                    state.step + 1,
                    format!("the loss is {value}"),
                ));
            }
            let scaled = if cfg.grad_accum > 1 {
                batch.loss.affine(1.0 / cfg.grad_accum as f64, 0.0)?
            } else {
                batch.loss
            };
            let g = Grads::collect(&params, &scaled.backward()?)?;
            match grads.as_mut() {
                None => grads = Some(g),
                Some(acc) => acc.add(&g),
            }
            loss_sum += value;
            step_tokens += batch.tokens;
            for (k, v) in batch.metrics {
                *task_metrics.entry(k).or_default() += v / cfg.grad_accum as f64;
            }
            state.cursor.batch_in_epoch += 1;
            state.cursor.micro_batches += 1;
        }
        let mut grads = grads.expect("grad_accum ≥ 1");
        if !grads.is_finite() {
            return Err(diverged(
                &root,
                state.step + 1,
                "a gradient is NaN or infinite".into(),
            ));
        }
        let grad_norm = grads.clip(cfg.grad_clip);
        opt.update(&params, &grads, lr)?;
        state.step += 1;
        state.tokens_seen += step_tokens as u64;
        let loss = loss_sum / cfg.grad_accum as f64;
        last_loss = Some(loss);
        window.1 += step_tokens;

        let is_last = state.step == total;
        let log_now = state.step == 1
            || is_last
            || (cfg.log_every > 0 && state.step.is_multiple_of(cfg.log_every));
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        if log_now {
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let tps = window.1 as f64 / secs;
            window = (Instant::now(), 0);
            let epoch = state.cursor.micro_batches as f64 / batches_per_epoch as f64;
            let mut row = Map::new();
            row.insert("step".into(), json!(state.step));
            row.insert("epoch".into(), json!(round(epoch, 4)));
            row.insert("loss".into(), json!(loss));
            row.insert("lr".into(), json!(lr));
            row.insert("learning_rate".into(), json!(lr));
            row.insert("grad_norm".into(), json!(grad_norm));
            row.insert("tokens".into(), json!(state.tokens_seen));
            row.insert("tokens_per_s".into(), json!(round(tps, 1)));
            row.insert("elapsed_s".into(), json!(round(elapsed, 3)));
            for (k, v) in &task_metrics {
                row.insert(k.clone(), json!(v));
            }
            metrics.write(&row)?;
            display.step(
                state.step,
                format!(
                    "step {}/{total} loss {loss:.4} lr {lr:.2e} grad {grad_norm:.3} {tps:.0} tok/s",
                    state.step
                ),
                true,
            );
        } else {
            display.step(
                state.step,
                format!("step {}/{total} loss {loss:.4}", state.step),
                false,
            );
        }

        if is_last || (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) {
            let eval_model = snapshot(&params, cfg)?;
            if let Some(ev) = task.evaluate(&eval_model, cfg.batch_size, cfg.eval_batches)? {
                log_eval(&mut metrics, &display, state.step, &ev)?;
                last_eval = Some(ev);
            }
        }
        if is_last || (cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every)) {
            state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            checkpoint::save(
                &root,
                &state,
                &params.detached(),
                &opt.state_tensors(&params)?,
                cfg.keep_checkpoints,
            )?;
        }
    }
    display.finish();
    let probed_at_end = crate::metrics::read_rows(&metrics_path).iter().any(|r| {
        r.get("step").and_then(Value::as_u64) == Some(state.step as u64)
            && r.keys().any(|k| k.starts_with("probe_"))
    });
    if !probed_at_end {
        let probe_model = snapshot(&params, cfg)?;
        if let Some(row) = task.probe(&probe_model)? {
            log_probe(&mut metrics, &display, state.step, row)?;
        }
    }
    if last_eval.is_none() {
        // Resumed at the very end: report the eval of the final weights anyway.
        let eval_model = snapshot(&params, cfg)?;
        last_eval = task.evaluate(&eval_model, cfg.batch_size, cfg.eval_batches)?;
    }
    Ok(Outcome {
        params: params.detached(),
        step: state.step,
        resumed_from,
        final_loss: last_loss,
        eval: last_eval,
        tokens_seen: state.tokens_seen,
        elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
        metrics_path,
    })
}

/// Writes an eval row (`eval_`-prefixed keys) and shows it.
fn log_eval(
    metrics: &mut MetricsLog,
    display: &Display,
    step: usize,
    ev: &EvalResult,
) -> Result<(), TrainError> {
    let mut row = Map::new();
    row.insert("step".into(), json!(step));
    row.insert("eval_loss".into(), json!(ev.loss));
    if ev.perplexity {
        row.insert("eval_ppl".into(), json!(ev.loss.exp()));
    }
    for (k, v) in &ev.metrics {
        row.insert(format!("eval_{k}"), json!(v));
    }
    row.insert("eval_tokens".into(), json!(ev.tokens));
    row.insert("eval_rows".into(), json!(ev.rows));
    metrics.write(&row)?;
    let extra: Vec<String> = ev
        .metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    display.println(format!(
        "step {step}: eval loss {:.4}{} on {} tokens{}{}",
        ev.loss,
        if ev.perplexity {
            format!(" (ppl {:.2})", ev.loss.exp())
        } else {
            String::new()
        },
        ev.tokens,
        if extra.is_empty() { "" } else { "; " },
        extra.join(", ")
    ));
    Ok(())
}

/// Writes a probe row: `step` plus the task's keys, each prefixed `probe_`.
fn log_probe(
    metrics: &mut MetricsLog,
    display: &Display,
    step: usize,
    row: Map<String, Value>,
) -> Result<(), TrainError> {
    let mut out = Map::new();
    out.insert("step".into(), json!(step));
    let mut shown = Vec::new();
    for (k, v) in row {
        shown.push(format!("{k} {v}"));
        out.insert(format!("probe_{k}"), v);
    }
    metrics.write(&out)?;
    display.println(format!("step {step}: {}", shown.join(", ")));
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let s = 10f64.powi(digits);
    (x * s).round() / s
}

fn diverged(root: &Path, step: usize, what: String) -> TrainError {
    let kept = match checkpoint::list(root).ok().and_then(|mut l| l.pop()) {
        Some((s, dir)) => format!(
            "The last good checkpoint (step {s}) is kept at {}. Rerunning the same command resumes from it (and will \
             likely diverge again); to change lr or warmup_steps, rerun with --no-resume, which deletes the checkpoints \
             and starts over",
            dir.display()
        ),
        None => "No checkpoint was written yet; lower --lr or raise warmup_steps and rerun".to_string(),
    };
    TrainError::Diverged { step, what, kept }
}

fn check_resumable(saved: &TrainerState, now: &TrainerState, dir: &Path) -> Result<(), TrainError> {
    let hint = "rerun the original command, or pass --no-resume to start over";
    if saved.stage != now.stage {
        return Err(TrainError::Resume(format!(
            "{} is a `{}` checkpoint, this is `{}`; {hint}",
            dir.display(),
            saved.stage,
            now.stage
        )));
    }
    if saved.tokenizer_fingerprint != now.tokenizer_fingerprint {
        return Err(TrainError::Resume(format!(
            "{}: the tokenizer differs from the checkpoint's; {hint}",
            dir.display()
        )));
    }
    if saved.inputs != now.inputs {
        let describe = |v: &[InputFingerprint]| {
            v.iter()
                .map(|i| {
                    format!(
                        "{} {} ({})",
                        i.role,
                        i.path,
                        &i.blake3[..12.min(i.blake3.len())]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(TrainError::Resume(format!(
            "{}: the input data differ from the checkpoint's (checkpoint: {}; now: {}); {hint}",
            dir.display(),
            describe(&saved.inputs),
            describe(&now.inputs)
        )));
    }
    if let Some(d) = checkpoint::config_difference(&saved.config, &now.config, RESUMABLE_KEYS) {
        return Err(TrainError::Resume(format!(
            "{}: settings differ from the checkpoint's: {d}; {hint}",
            dir.display()
        )));
    }
    Ok(())
}

/// The model config with `vocab_size` and special ids taken from the tokenizer, unless the user set a
/// larger vocabulary explicitly (rows past the tokenizer's are then never used).
pub fn fit_vocab(
    model: &mut ModelConfig,
    tokenizer_vocab: usize,
    explicit: bool,
) -> Result<(), TrainError> {
    if explicit {
        if model.vocab_size < tokenizer_vocab {
            return Err(TrainError::Config(format!(
                "model.vocab_size {} is smaller than the tokenizer's vocabulary ({tokenizer_vocab})",
                model.vocab_size
            )));
        }
    } else {
        model.vocab_size = tokenizer_vocab;
    }
    Ok(())
}

/// The current weights as an inference model, for the eval and probe passes.
fn snapshot(params: &Params, cfg: &TrainConfig) -> Result<Model, TrainError> {
    Ok(Model::new(cfg.model.clone(), params.detached())?.for_inference()?)
}
