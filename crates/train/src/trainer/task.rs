//! What a stage gives the training loop: how a micro-batch of samples becomes a loss, how a batch of
//! the eval split is scored, and an optional probe measured at the start and the end of a run.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde_json::{Map, Value};
use zerolm_model::Model;

use crate::collective::gather_values;
use crate::TrainError;

/// A micro-batch's loss (mean over its target tokens) and how many target tokens it covered, plus
/// task metrics (averaged over the micro-batches of a step and logged under their own names).
pub struct BatchLoss {
    pub loss: Tensor,
    pub tokens: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// One eval batch as sums: the eval loss is Σ`loss_sum` / Σ`weight` over the batches, and each metric
/// Σ`metrics[k]` / Σ`weight` (the task chooses what a unit of weight is: a target token, a pair).
pub struct EvalBatch {
    pub loss_sum: f64,
    pub weight: f64,
    /// Target tokens scored.
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
    /// Rows of the eval split (0: no eval split).
    fn eval_rows(&self) -> usize {
        0
    }
    /// The sums of eval rows `rows` (called only when [`Task::eval_rows`] is non-zero).
    fn eval_batch(&self, _model: &Model, _rows: &[usize]) -> Result<EvalBatch, TrainError> {
        Err(TrainError::Internal("this task has no eval split".into()))
    }
    /// Whether exp(eval loss) is a perplexity (a mean token cross-entropy) for this task.
    fn perplexity(&self) -> bool {
        true
    }
    /// A measurement logged as its own metrics row before a fresh run's first step (step 0) and after
    /// its last (e.g. SFT's held-out answer accuracy). The row's keys must not include `step`.
    fn probe(&self, _model: &Model) -> Result<Option<Map<String, Value>>, TrainError> {
        Ok(None)
    }
}

/// Scores the eval split in batches of `batch_size` (at most `max_batches` of them; 0 = all); `None`
/// when there is nothing to score. On several ranks, batch i is scored by rank i mod ranks and the sums
/// are combined in rank order, so every rank gets the same result.
pub fn evaluate(
    task: &dyn Task,
    model: &Model,
    batch_size: usize,
    max_batches: usize,
) -> Result<Option<EvalResult>, TrainError> {
    let world = crate::collective::world();
    let order: Vec<usize> = (0..task.eval_rows()).collect();
    let mut mine = EvalSums::default();
    for (i, chunk) in order.chunks(batch_size).enumerate() {
        if max_batches > 0 && i >= max_batches {
            break;
        }
        if i % world.size() == world.rank() {
            mine.add(task.eval_batch(model, chunk)?, chunk.len());
        }
    }
    let sums = if world.size() == 1 {
        mine
    } else {
        let mut total = EvalSums::default();
        for part in gather_values(world, &mine)? {
            total.merge(part);
        }
        total
    };
    Ok((sums.weight > 0.0).then(|| EvalResult {
        loss: sums.loss / sums.weight,
        tokens: sums.tokens,
        rows: sums.rows,
        perplexity: task.perplexity(),
        metrics: (sums.metrics.into_iter())
            .map(|(k, v)| (k, v / sums.weight))
            .collect(),
    }))
}

/// Eval batches' sums.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct EvalSums {
    loss: f64,
    weight: f64,
    tokens: usize,
    rows: usize,
    metrics: BTreeMap<String, f64>,
}

impl EvalSums {
    fn add(&mut self, b: EvalBatch, rows: usize) {
        self.merge(EvalSums {
            loss: b.loss_sum,
            weight: b.weight,
            tokens: b.tokens,
            rows,
            metrics: b.metrics,
        });
    }

    fn merge(&mut self, o: EvalSums) {
        self.loss += o.loss;
        self.weight += o.weight;
        self.tokens += o.tokens;
        self.rows += o.rows;
        add_metrics(&mut self.metrics, o.metrics);
    }
}

/// Adds `more` into `sums`, metric by metric.
pub(super) fn add_metrics(sums: &mut BTreeMap<String, f64>, more: BTreeMap<String, f64>) {
    for (k, v) in more {
        *sums.entry(k).or_default() += v;
    }
}
