//! One optimizer step: `grad_accum` micro-batches in the epoch's order (their gradients summed, each
//! loss scaled by 1/grad_accum), a finiteness check, global-norm clipping, and the AdamW update at the
//! schedule's learning rate.

use std::collections::BTreeMap;

use super::plan::epoch_order;
use super::resume::diverged;
use super::run::Run;
use super::task::Task;
use crate::params::Grads;
use crate::schedule::lr_at;
use crate::TrainError;

/// What one optimizer step did.
pub struct StepReport {
    pub lr: f64,
    /// Mean of the micro-batches' losses.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Task metrics, averaged over the micro-batches.
    pub metrics: BTreeMap<String, f64>,
}

impl Run<'_> {
    /// Takes the next optimizer step.
    pub fn step(&mut self, task: &dyn Task) -> Result<StepReport, TrainError> {
        let cfg = self.spec.cfg;
        let lr = lr_at(
            self.state.step,
            self.total,
            cfg.lr,
            cfg.warmup_steps,
            cfg.min_lr_ratio,
        );
        let mut grads: Option<Grads> = None;
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
        for _ in 0..cfg.grad_accum {
            let (value, batch_tokens, batch_metrics, g) = self.micro_batch(task)?;
            match grads.as_mut() {
                None => grads = Some(g),
                Some(acc) => acc.add(&g),
            }
            loss_sum += value;
            tokens += batch_tokens;
            for (k, v) in batch_metrics {
                *metrics.entry(k).or_default() += v / cfg.grad_accum as f64;
            }
        }
        let mut grads = grads.expect("grad_accum ≥ 1");
        if !grads.is_finite() {
            return Err(diverged(
                &self.root,
                self.state.step + 1,
                "a gradient is NaN or infinite".into(),
            ));
        }
        let grad_norm = grads.clip(cfg.grad_clip);
        self.opt.update(&self.params, &grads, lr)?;
        self.state.step += 1;
        self.state.tokens_seen += tokens as u64;
        let loss = loss_sum / cfg.grad_accum as f64;
        self.last_loss = Some(loss);
        self.window.1 += tokens;
        Ok(StepReport {
            lr,
            loss,
            grad_norm,
            metrics,
        })
    }

    /// The next micro-batch's loss value, target tokens, metrics and gradients (of the loss scaled by
    /// 1/grad_accum); advances the data cursor, into the next epoch's order when this one is done.
    fn micro_batch(
        &mut self,
        task: &dyn Task,
    ) -> Result<(f64, usize, BTreeMap<String, f64>, Grads), TrainError> {
        let cfg = self.spec.cfg;
        let cursor = &mut self.state.cursor;
        if cursor.batch_in_epoch == self.batches_per_epoch {
            cursor.epoch += 1;
            cursor.batch_in_epoch = 0;
            self.order = epoch_order(self.samples, cfg.seed, cursor.epoch);
        }
        let at = cursor.batch_in_epoch * self.batch;
        let samples: Vec<usize> = (self.order[at..at + self.batch].iter())
            .map(|&i| i as usize)
            .collect();
        let batch = task.batch_loss(&self.model, &samples)?;
        let value = batch.loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(diverged(
                &self.root,
                self.state.step + 1,
                format!("the loss is {value}"),
            ));
        }
        let scaled = if cfg.grad_accum > 1 {
            batch.loss.affine(1.0 / cfg.grad_accum as f64, 0.0)?
        } else {
            batch.loss
        };
        let grads = Grads::collect(&self.params, &scaled.backward()?)?;
        self.state.cursor.batch_in_epoch += 1;
        self.state.cursor.micro_batches += 1;
        Ok((value, batch.tokens, batch.metrics, grads))
    }
}
