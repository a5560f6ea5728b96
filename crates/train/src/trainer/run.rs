//! A run in progress and how it starts: the trainable weights and their optimizer, where the data
//! stands, and the logs — fresh, or resumed from the newest checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Tensor;
use zerolm_model::Model;

use super::agree::agree_at_start;
use super::plan::{batch_rows, epoch_order, partial_batch_note, total_steps};
use super::resume::resume;
use super::spec::RunSpec;
use super::task::{EvalResult, Task};
use crate::adamw::{AdamW, AdamWConfig};
use crate::checkpoint::{self, DataCursor, TrainerState, CHECKPOINT_VERSION};
use crate::collective::{self, Collective};
use crate::metrics::{Display, MetricsLog};
use crate::params::Params;
use crate::TrainError;

/// Everything a run carries from one step to the next.
pub struct Run<'a> {
    pub spec: &'a RunSpec<'a>,
    /// The run's ranks (one, unless a launcher started several).
    pub world: &'static dyn Collective,
    /// Training samples per epoch, and how many of them a micro-batch holds.
    pub samples: usize,
    pub batch: usize,
    pub batches_per_epoch: usize,
    pub total: usize,
    /// `<out>/checkpoints`.
    pub root: PathBuf,
    pub params: Params,
    pub opt: AdamW,
    pub state: TrainerState,
    pub resumed_from: Option<usize>,
    pub metrics: MetricsLog,
    pub metrics_path: PathBuf,
    pub display: Display,
    /// The training model over `params` (its weights change in place with every update).
    pub model: Model,
    /// This epoch's sample order.
    pub order: Vec<u32>,
    /// When this process started stepping, and the time earlier processes spent on the run.
    pub started: Instant,
    pub elapsed_before: f64,
    /// Tokens since the last logged step, and since when.
    pub window: (Instant, usize),
    pub last_loss: Option<f64>,
    pub last_eval: Option<EvalResult>,
}

impl<'a> Run<'a> {
    /// Sets up a run of `task` from `init` — or from the newest checkpoint of the same run — and writes
    /// `resolved_config.json`. Nothing is written to the output directory before every check passed.
    /// On several ranks only rank 0 writes, and every rank must start from the same state (checked).
    pub fn start(
        task: &dyn Task,
        init: BTreeMap<String, Tensor>,
        spec: &'a RunSpec<'a>,
    ) -> Result<Run<'a>, TrainError> {
        let cfg = spec.cfg;
        cfg.validate()?;
        let world = collective::world();
        let writer = world.rank() == 0;
        let samples = task.num_samples();
        let batch = batch_rows(cfg, samples)?;
        let total = total_steps(cfg, samples)?;
        if let Some(note) = partial_batch_note(cfg, samples) {
            eprintln!("{note}");
        }
        let root = checkpoint::checkpoint_root(spec.out);
        if spec.no_resume && writer && root.exists() {
            std::fs::remove_dir_all(&root).map_err(|cause| TrainError::Write {
                path: root.clone(),
                cause,
            })?;
        }
        let device = zerolm_model::device::current();
        let params = trainable(init, &device, cfg.train_only.as_deref())?;
        let mut opt = AdamW::new(&params, AdamWConfig::of(cfg));
        let mut state = fresh_state(spec, total, world.size());
        let resumed_from = match spec.no_resume {
            true => None,
            false => resume(&root, &device, &params, &mut opt, &mut state)?,
        };
        agree_at_start(world, &state, &params, &opt)?;
        announce_ranks(world, batch, cfg.grad_accum);
        let metrics_path = spec.out.join("metrics.jsonl");
        let metrics = match writer {
            true => start_outputs(spec, &state, total, &metrics_path, resumed_from)?,
            false => MetricsLog::disabled(&metrics_path),
        };
        let display = Display::new(spec.stage, total, state.step, spec.progress && writer);
        let mut model = Model::new(cfg.model.clone(), params.tensors())?;
        model.set_precision(cfg.precision);
        announce_precision(cfg.precision, &device, writer);
        let order = epoch_order(samples, cfg.seed, state.cursor.epoch);
        Ok(Run {
            spec,
            world,
            samples,
            batch,
            batches_per_epoch: samples / batch,
            total,
            root,
            params,
            opt,
            elapsed_before: state.elapsed_s,
            state,
            resumed_from,
            metrics,
            metrics_path,
            display,
            model,
            order,
            started: Instant::now(),
            window: (Instant::now(), 0),
            last_loss: None,
            last_eval: None,
        })
    }

    /// Starts timing the steps (the start's eval and probe are not part of the run's time).
    pub fn start_clock(&mut self) {
        self.started = Instant::now();
        self.window = (Instant::now(), 0);
    }

    /// Seconds spent on this run, in this process and the ones it resumed.
    pub fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    /// The current weights as an inference model, for the eval and probe passes.
    pub fn snapshot(&self) -> Result<Model, TrainError> {
        let mut model = Model::new(self.spec.cfg.model.clone(), self.params.detached())?;
        model.set_precision(self.spec.cfg.precision);
        Ok(model.for_inference()?)
    }
}

/// `init` on the run's device, split into trainable weights (those `train_only` matches; all by
/// default) and frozen ones.
fn trainable(
    init: BTreeMap<String, Tensor>,
    device: &candle_core::Device,
    train_only: Option<&str>,
) -> Result<Params, TrainError> {
    let init = init
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(device)?)))
        .collect::<Result<BTreeMap<_, _>, candle_core::Error>>()?;
    let params = Params::select(&init, train_only)?;
    if let Some(p) = train_only {
        eprintln!(
            "training {} of {} parameters (train_only `{p}`; {} tensors frozen)",
            params.trainable_count(),
            params.trainable_count() + params.frozen_count(),
            params.frozen.len()
        );
    }
    Ok(params)
}

/// Says which bf16 kernel a bf16 run's products use (f32 runs say nothing).
fn announce_precision(p: zerolm_model::Precision, device: &candle_core::Device, writer: bool) {
    if p.is_bf16() && writer {
        let how = match device.is_cpu() {
            true => format!("kernel: {}", zerolm_model::fused::gemm16::kernel_name()),
            false => "the device's bf16 matrix products".into(),
        };
        eprintln!("precision bf16: matrix products take bf16 operands and sum in f32 ({how})");
    }
}

/// Says how a run on several ranks splits its global batch.
fn announce_ranks(world: &dyn Collective, batch: usize, grad_accum: usize) {
    let n = world.size();
    if n > 1 {
        eprintln!(
            "data parallel: {n} ranks over {}; global batch {} rows ({batch} a micro-batch × grad_accum \
             {grad_accum} × {n} ranks)",
            world.engine(),
            batch * grad_accum * n,
        );
    }
}

/// The writer's outputs of a run that starts: `resolved_config.json`, no stale model, the metrics log.
fn start_outputs(
    spec: &RunSpec,
    state: &TrainerState,
    total: usize,
    metrics_path: &std::path::Path,
    resumed_from: Option<usize>,
) -> Result<MetricsLog, TrainError> {
    write_resolved_config(spec)?;
    if state.step < total {
        remove_stale_model(spec)?;
    }
    MetricsLog::open(metrics_path, resumed_from)
}

/// The state of a run that has not taken a step: what it is, on what, with which settings.
fn fresh_state(spec: &RunSpec, total: usize, ranks: usize) -> TrainerState {
    let mut config = serde_json::to_value(spec.cfg).expect("config serialises");
    if let (Some(o), Some(extra)) = (config.as_object_mut(), &spec.stage_settings) {
        o.insert("stage_settings".into(), extra.clone());
    }
    TrainerState {
        checkpoint_version: CHECKPOINT_VERSION,
        stage: spec.stage.to_string(),
        step: 0,
        total_steps: total,
        cursor: DataCursor {
            micro_batches: 0,
            epoch: 0,
            batch_in_epoch: 0,
            shuffle_seed: spec.cfg.seed,
        },
        tokens_seen: 0,
        elapsed_s: 0.0,
        threads: spec.threads,
        ranks,
        tokenizer_fingerprint: spec.tokenizer_fingerprint.clone(),
        inputs: spec.inputs.clone(),
        config,
    }
}

/// Writes the run's `resolved_config.json` (atomically; the output directory is created here).
fn write_resolved_config(spec: &RunSpec) -> Result<(), TrainError> {
    let bytes = serde_json::to_vec_pretty(&spec.resolved).expect("json");
    zerolm_io::write_atomically(&spec.out.join("resolved_config.json"), &bytes)?;
    Ok(())
}

/// This run will change the weights: a model exported by an earlier run must not outlive it looking
/// finished if this one fails.
fn remove_stale_model(spec: &RunSpec) -> Result<(), TrainError> {
    let model_dir = spec.out.join("model");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(|cause| TrainError::Write {
            path: model_dir,
            cause,
        })?;
    }
    Ok(())
}
