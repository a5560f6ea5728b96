//! One optimizer step: the step's `grad_accum × ranks` micro-batches in the epoch's order — this rank
//! computes its `grad_accum` consecutive ones and skips the others' — their gradients summed (each loss
//! scaled by 1/(grad_accum × ranks)) and then summed over ranks (all-reduce), a finiteness check,
//! global-norm clipping, and the AdamW update at the schedule's learning rate. On one rank this is plain
//! gradient accumulation; on N ranks every rank ends the step with the same gradients and weights.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::plan::epoch_order;
use super::resume::diverged;
use super::run::Run;
use super::task::{add_metrics, Task};
use crate::collective::{gather_values, Collective};
use crate::params::Grads;
use crate::schedule::lr_at;
use crate::TrainError;

/// What one optimizer step did.
pub struct StepReport {
    pub lr: f64,
    /// Mean of the micro-batches' losses (over all ranks).
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Task metrics, averaged over the micro-batches.
    pub metrics: BTreeMap<String, f64>,
    /// Seconds this rank spent summing gradients and values over ranks (0 on one rank).
    pub comm_s: f64,
}

/// A rank's part of a step's values, summed over ranks in rank order.
#[derive(Default, Serialize, Deserialize)]
struct Partial {
    loss_sum: f64,
    tokens: usize,
    metrics: BTreeMap<String, f64>,
}

impl Partial {
    fn add(&mut self, other: Partial) {
        self.loss_sum += other.loss_sum;
        self.tokens += other.tokens;
        add_metrics(&mut self.metrics, other.metrics);
    }
}

/// Parameters' gradients are all-reduced in buckets of at least this many values (small tensors such
/// as norm weights ride along with their neighbours instead of paying a call each).
const BUCKET_VALUES: usize = 1 << 22;

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
        let (mine, grads) = self.local_micro_batches(task)?;
        let started = Instant::now();
        let mut grads = grads.expect("grad_accum ≥ 1");
        let step = sum_over_ranks(self.world, mine, &mut grads)?;
        let comm_s = started.elapsed().as_secs_f64();
        let micro = self.micro_per_step() as f64;
        let loss = step.loss_sum / micro;
        if !loss.is_finite() {
            return Err(diverged(
                &self.root,
                self.state.step + 1,
                format!("the loss is {loss}"),
            ));
        }
        let grad_norm = grads.clip(cfg.grad_clip);
        if !grad_norm.is_finite() {
            return Err(diverged(
                &self.root,
                self.state.step + 1,
                "a gradient is NaN or infinite".into(),
            ));
        }
        self.opt.update(&self.params, &grads, lr)?;
        self.model.weights_changed();
        self.state.step += 1;
        self.state.tokens_seen += step.tokens as u64;
        self.last_loss = Some(loss);
        self.window.1 += step.tokens;
        Ok(StepReport {
            lr,
            loss,
            grad_norm,
            metrics: step.metrics,
            comm_s,
        })
    }

    /// Micro-batches per optimizer step over all ranks.
    fn micro_per_step(&self) -> usize {
        self.spec.cfg.grad_accum * self.world.size()
    }

    /// Walks the step's micro-batches, computing this rank's: their summed values and gradients.
    fn local_micro_batches(
        &mut self,
        task: &dyn Task,
    ) -> Result<(Partial, Option<Grads>), TrainError> {
        let accum = self.spec.cfg.grad_accum;
        let rank = self.world.rank();
        let mut grads: Option<Grads> = None;
        let mut mine = Partial::default();
        for k in 0..self.micro_per_step() {
            let at = self.advance_cursor();
            if k / accum != rank {
                continue;
            }
            let samples: Vec<usize> = (self.order[at..at + self.batch].iter())
                .map(|&i| i as usize)
                .collect();
            let (part, g) = self.micro_batch(task, &samples)?;
            match grads.as_mut() {
                None => grads = Some(g),
                Some(acc) => acc.add(&g),
            }
            mine.add(part);
        }
        Ok((mine, grads))
    }

    /// Moves the data cursor past the next micro-batch, into the next epoch's order when this one is
    /// done; returns where in `order` that micro-batch's samples start.
    fn advance_cursor(&mut self) -> usize {
        let cursor = &mut self.state.cursor;
        if cursor.batch_in_epoch == self.batches_per_epoch {
            cursor.epoch += 1;
            cursor.batch_in_epoch = 0;
            self.order = epoch_order(self.samples, self.spec.cfg.seed, cursor.epoch);
        }
        let at = cursor.batch_in_epoch * self.batch;
        cursor.batch_in_epoch += 1;
        cursor.micro_batches += 1;
        at
    }

    /// A micro-batch's loss value, target tokens and metrics (each metric already divided by the
    /// micro-batches of a step), and the gradients of its loss scaled by 1/(micro-batches of a step).
    fn micro_batch(
        &mut self,
        task: &dyn Task,
        samples: &[usize],
    ) -> Result<(Partial, Grads), TrainError> {
        let micro = self.micro_per_step();
        let batch = task.batch_loss(&self.model, samples)?;
        let value = batch.loss.to_scalar::<f32>()? as f64;
        let scaled = if micro > 1 {
            batch.loss.affine(1.0 / micro as f64, 0.0)?
        } else {
            batch.loss
        };
        let grads = Grads::collect(&self.params, &scaled.backward()?)?;
        let metrics = (batch.metrics.into_iter())
            .map(|(k, v)| (k, v / micro as f64))
            .collect();
        let part = Partial {
            loss_sum: value,
            tokens: batch.tokens,
            metrics,
        };
        Ok((part, grads))
    }
}

/// Sums the step's gradients (in place) and values over ranks; the values in rank order, so every rank
/// gets the same sums.
fn sum_over_ranks(
    world: &dyn Collective,
    mine: Partial,
    grads: &mut Grads,
) -> Result<Partial, TrainError> {
    if world.size() == 1 {
        return Ok(mine);
    }
    all_reduce_buckets(world, grads)?;
    let mut total = Partial::default();
    for part in gather_values(world, &mine)? {
        total.add(part);
    }
    Ok(total)
}

/// All-reduces the gradients parameter by parameter, small ones gathered into shared buckets.
fn all_reduce_buckets(world: &dyn Collective, grads: &mut Grads) -> Result<(), TrainError> {
    let values = grads.values_mut();
    let mut start = 0;
    while start < values.len() {
        let mut end = start + 1;
        let mut n = values[start].len();
        while end < values.len() && n < BUCKET_VALUES {
            n += values[end].len();
            end += 1;
        }
        if end == start + 1 {
            world.all_reduce_f32(&mut values[start])?;
        } else {
            let mut bucket: Vec<f32> = Vec::with_capacity(n);
            for g in &values[start..end] {
                bucket.extend_from_slice(g);
            }
            world.all_reduce_f32(&mut bucket)?;
            let mut at = 0;
            for g in &mut values[start..end] {
                let len = g.len();
                g.copy_from_slice(&bucket[at..at + len]);
                at += len;
            }
        }
        start = end;
    }
    Ok(())
}
