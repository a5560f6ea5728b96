//! DPO as a training-loop task: each pair's chosen and rejected completions run in one batch, and the
//! loss is the configured mix of the preference family, with TRL's metric names.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};
use zerolm_model::Model;
use zerolm_train::trainer::{BatchLoss, EvalBatch, Task};
use zerolm_train::TrainError;

use crate::answers;
use crate::preference::cache::RefLogps;
use crate::preference::losses::{self, LossParams, LossSpec, Pairs};
use crate::preference::pairs::{sequence_logps, PairSet, SeqLogps, Stats, TokenStats};

/// One split: the pairs and their reference log-probs (none for reference-free losses).
pub struct Split {
    pub pairs: PairSet,
    pub reference: Option<RefLogps>,
}

pub struct DpoTask<'a> {
    pub train: Split,
    pub eval: Option<Split>,
    pub spec: LossSpec,
    pub params: LossParams,
    pub answers: Option<answers::Probe<'a>>,
    pub device: Device,
}

/// A batch's loss, tokens (prompt + completion, both sequences of every pair) and TRL metrics.
struct Scored {
    loss: Tensor,
    tokens: usize,
    metrics: BTreeMap<String, f64>,
}

impl DpoTask<'_> {
    /// The loss and metrics of pairs `idx` of `split`.
    fn score(&self, model: &Model, split: &Split, idx: &[usize]) -> Result<Scored, TrainError> {
        let batch = split.pairs.batch(idx, &self.device)?;
        let stats = match self.params.use_weighting {
            true => Stats::MetricsAndWpo,
            false => Stats::Metrics,
        };
        let s = sequence_logps(model, &batch, stats)?;
        let lens: Vec<f64> = s.lens.to_dtype(DType::F64)?.to_vec1()?;
        let p = self.pairs(&s, split, idx, &lens)?;
        let loss = losses::batch_loss(&self.spec, &p, &self.params)?;
        let mut metrics = losses::reward_metrics(&p, self.params.beta)?;
        let token_stats = s.stats.as_ref().expect("asked for");
        metrics.extend(token_metrics(token_stats, &lens, idx.len()));
        Ok(Scored {
            loss,
            tokens: batch.tokens,
            metrics,
        })
    }

    /// The loss inputs of pairs `idx` from their forward `s` (chosen rows first): LD-weighted sums with
    /// `--ld-alpha`, the reference's (if any), and the WPO weights with `--use-weighting`.
    fn pairs(
        &self,
        s: &SeqLogps,
        split: &Split,
        idx: &[usize],
        lens: &[f64],
    ) -> Result<Pairs, TrainError> {
        let b = idx.len();
        let policy = match self.params.ld_alpha {
            Some(a) => (&s.sums - (&s.tail_sums * (1.0 - a))?)?,
            None => s.sums.clone(),
        };
        let reference = (split.reference.as_ref())
            .map(|r| self.reference(r, idx))
            .transpose()?;
        let (rc, rr) = reference.unzip();
        let wpo = s.stats.as_ref().and_then(|t| t.wpo.as_ref());
        Ok(Pairs {
            lc: policy.narrow(0, 0, b)?,
            lr: policy.narrow(0, b, b)?,
            rc,
            rr,
            len_c: s.lens.narrow(0, 0, b)?,
            len_r: s.lens.narrow(0, b, b)?,
            lc_plain: s.sums.narrow(0, 0, b)?,
            weights: wpo
                .map(|aligned| wpo_weights(aligned, lens, b, &self.device))
                .transpose()?,
        })
    }

    /// The reference log-probs (chosen, rejected) [B] of pairs `idx`, LD-weighted with `--ld-alpha`.
    fn reference(&self, r: &RefLogps, idx: &[usize]) -> Result<(Tensor, Tensor), TrainError> {
        let alpha = self.params.ld_alpha;
        let pick = |sums: &[f32], tails: &[f32]| -> Result<Tensor, TrainError> {
            let v: Vec<f32> = idx
                .iter()
                .map(|&i| match alpha {
                    Some(a) => sums[i] - (1.0 - a as f32) * tails[i],
                    None => sums[i],
                })
                .collect();
            Ok(Tensor::from_vec(v, idx.len(), &self.device)?)
        };
        Ok((
            pick(&r.chosen, &r.chosen_tail)?,
            pick(&r.rejected, &r.rejected_tail)?,
        ))
    }
}

/// WPO's per-pair weight [B]: for each sequence exp(mean over its completion of log p − log Σ p²),
/// the chosen one's times the rejected one's.
fn wpo_weights(
    aligned: &[f64],
    lens: &[f64],
    b: usize,
    device: &Device,
) -> Result<Tensor, TrainError> {
    let w = |i: usize| (aligned[i] / lens[i].max(1.0)).exp();
    let v: Vec<f32> = (0..b).map(|i| (w(i) * w(b + i)) as f32).collect();
    Ok(Tensor::from_vec(v, b, device)?)
}

/// TRL's token diagnostics: `logits/chosen`, `logits/rejected` (mean raw logit), `entropy` (over every
/// completion token) and `mean_token_accuracy` (chosen completions).
fn token_metrics(t: &TokenStats, lens: &[f64], b: usize) -> BTreeMap<String, f64> {
    let total = |v: &[f64], r: std::ops::Range<usize>| v[r].iter().sum::<f64>();
    let per_token =
        |v: &[f64], r: std::ops::Range<usize>| total(v, r.clone()) / total(lens, r).max(1.0);
    BTreeMap::from([
        ("logits/chosen".to_string(), per_token(&t.logits, 0..b)),
        (
            "logits/rejected".to_string(),
            per_token(&t.logits, b..2 * b),
        ),
        ("entropy".to_string(), per_token(&t.entropy, 0..2 * b)),
        ("mean_token_accuracy".to_string(), per_token(&t.top1, 0..b)),
    ])
}

impl Task for DpoTask<'_> {
    fn num_samples(&self) -> usize {
        self.train.pairs.len()
    }

    fn batch_loss(&self, model: &Model, samples: &[usize]) -> Result<BatchLoss, TrainError> {
        let s = self.score(model, &self.train, samples)?;
        Ok(BatchLoss {
            loss: s.loss,
            tokens: s.tokens,
            metrics: s.metrics,
        })
    }

    fn eval_rows(&self) -> usize {
        self.eval.as_ref().map_or(0, |e| e.pairs.len())
    }

    /// Pair-weighted: the eval loss and metrics are means over pairs.
    fn eval_batch(&self, model: &Model, rows: &[usize]) -> Result<EvalBatch, TrainError> {
        let eval = self.eval.as_ref().expect("eval_rows > 0");
        let s = self.score(model, eval, rows)?;
        let n = rows.len() as f64;
        Ok(EvalBatch {
            loss_sum: s.loss.to_scalar::<f32>()? as f64 * n,
            weight: n,
            tokens: s.tokens,
            metrics: s.metrics.into_iter().map(|(k, v)| (k, v * n)).collect(),
        })
    }

    fn perplexity(&self) -> bool {
        false
    }

    fn probe(&self, model: &Model) -> Result<Option<Map<String, Value>>, TrainError> {
        self.answers.as_ref().map(|p| p.row(model)).transpose()
    }
}
