//! One measurement, run in a worker process of its own (for its own peak RSS): zerolm's training step
//! (forward over all positions + loss, backward, gradient collection, global-norm clip, AdamW — the
//! training loop's own types, with the model built once over the trained weights as the loop does) or its
//! forward-only pass, timed per step after warm-up, on the CPU or a GPU (each step waits for the device
//! to finish before it is timed).

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use zerolm_model::{Model, ModelConfig, Precision};
use zerolm_train::adamw::{AdamW, AdamWConfig};
use zerolm_train::params::{Grads, Params};
use zerolm_train::TrainError;

/// What one worker measured.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Measured {
    /// Seconds per measured step (after warm-up).
    pub step_s: Vec<f64>,
    /// Mean seconds per step in each phase (train: forward, backward, grads, update).
    pub phases: Vec<(String, f64)>,
    pub peak_rss_mb: f64,
    pub tokens_per_step: usize,
}

impl Measured {
    pub fn median_s(&self) -> f64 {
        median(&self.step_s)
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.median_s()
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Peak resident set size of this process, in MB (NaN where unknown).
fn peak_rss_mb() -> f64 {
    zerolm_cli::alloc::peak_rss_mb().unwrap_or(f64::NAN)
}

/// A batch of seeded token ids [B, T+1] on `dev`, split into inputs and targets.
fn batch(
    cfg: &ModelConfig,
    (b, t): (usize, usize),
    seed: u64,
    dev: &Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let mut rng = zerolm_model::params::SplitMix64::new(seed);
    let ids: Vec<u32> = (0..b * (t + 1))
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    let all = Tensor::from_vec(ids, (b, t + 1), &Device::Cpu)?.to_device(dev)?;
    Ok((all.narrow(1, 0, t)?, all.narrow(1, 1, t)?))
}

/// Runs `warmup + steps` training steps as the training loop does (one model over the weights, which
/// AdamW updates in place) and times the last `steps`.
pub fn train_steps(
    cfg: &ModelConfig,
    (precision, dev): (Precision, &Device),
    b: usize,
    t: usize,
    warmup: usize,
    steps: usize,
) -> Result<Measured, TrainError> {
    let init = zerolm_model::params::init_parameters(cfg, 0, dev)?;
    let params = Params::new(&init)?;
    drop(init);
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
    );
    let mut model = Model::new(cfg.clone(), params.tensors())?;
    model.set_precision(precision);
    let mut step_s = Vec::new();
    let mut phase = [0f64; 4];
    for i in 0..warmup + steps {
        let (x, y) = batch(cfg, (b, t), i as u64, dev)?;
        dev.synchronize()?;
        let t0 = Instant::now();
        let loss = model.loss(&x, &y, None)?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let store = loss.backward()?;
        let t2 = Instant::now();
        let mut grads = Grads::collect(&params, &store)?;
        drop(store);
        let t3 = Instant::now();
        grads.clip(1.0);
        opt.update(&params, &grads, 1e-3)?;
        model.weights_changed();
        dev.synchronize()?;
        let t4 = Instant::now();
        if i >= warmup {
            step_s.push((t4 - t0).as_secs_f64());
            for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3].iter().enumerate() {
                phase[k] += d.as_secs_f64() / steps as f64;
            }
        }
    }
    Ok(Measured {
        step_s,
        phases: ["forward", "backward", "grads", "clip+adamw"]
            .iter()
            .zip(phase)
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
        peak_rss_mb: peak_rss_mb(),
        tokens_per_step: b * t,
    })
}

/// Forward-only passes (logits over every position and the loss, no graph), timed like `train_steps`.
pub fn forward_steps(
    cfg: &ModelConfig,
    (precision, dev): (Precision, &Device),
    b: usize,
    t: usize,
    warmup: usize,
    steps: usize,
) -> Result<Measured, TrainError> {
    let init = zerolm_model::params::init_parameters(cfg, 0, dev)?;
    let mut model = Model::new(cfg.clone(), init)?;
    model.set_precision(precision);
    let model = model.for_inference()?;
    let mut step_s = Vec::new();
    for i in 0..warmup + steps {
        let (x, y) = batch(cfg, (b, t), i as u64, dev)?;
        dev.synchronize()?;
        let t0 = Instant::now();
        let loss = model.loss(&x, &y, None)?;
        let _ = loss.to_scalar::<f32>()?;
        dev.synchronize()?;
        if i >= warmup {
            step_s.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(Measured {
        step_s,
        phases: vec![],
        peak_rss_mb: peak_rss_mb(),
        tokens_per_step: b * t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_micro_benchmark_runs_and_times_every_step() {
        let mut cfg = ModelConfig::preset("micro").unwrap();
        cfg.vocab_size = 64;
        for p in [Precision::F32, Precision::Bf16] {
            let m = train_steps(&cfg, (p, &Device::Cpu), 2, 8, 1, 3).unwrap();
            assert_eq!(m.step_s.len(), 3);
        }
        let m = train_steps(&cfg, (Precision::F32, &Device::Cpu), 2, 8, 1, 3).unwrap();
        assert_eq!(m.step_s.len(), 3);
        assert!(m.step_s.iter().all(|s| *s > 0.0));
        assert_eq!(m.phases.len(), 4);
        assert!(m.peak_rss_mb > 1.0);
        let f = forward_steps(&cfg, (Precision::Bf16, &Device::Cpu), 2, 8, 0, 2).unwrap();
        assert_eq!(f.step_s.len(), 2);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
