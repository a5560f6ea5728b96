//! DPO as a training-loop task: each pair's chosen and rejected completions run in one batch, and the
//! loss is the configured mix of the preference family, with TRL's metric names.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use serde_json::{Map, Value};
use zerolm_model::Model;
use zerolm_train::trainer::{BatchLoss, EvalBatch, Task};
use zerolm_train::TrainError;

use crate::answers;
use crate::preference::losses::{self, LossParams, LossSpec, Pairs};
use crate::preference::pairs::{sequence_logps, PairSet};

/// One split: the pairs and their reference log-probs (empty for reference-free losses).
pub struct Split {
    pub pairs: PairSet,
    pub ref_chosen: Vec<f32>,
    pub ref_rejected: Vec<f32>,
}

pub struct DpoTask<'a> {
    pub train: Split,
    pub eval: Option<Split>,
    pub spec: LossSpec,
    pub params: LossParams,
    pub answers: Option<answers::Probe<'a>>,
    pub device: Device,
}

/// A batch's loss, completion tokens and TRL metrics.
struct Scored {
    loss: Tensor,
    tokens: usize,
    metrics: BTreeMap<String, f64>,
}

impl DpoTask<'_> {
    /// The loss and metrics of pairs `idx` of `split`.
    fn score(&self, model: &Model, split: &Split, idx: &[usize]) -> Result<Scored, TrainError> {
        let (x, y, w) = split.pairs.batch(idx, &self.device)?;
        let s = sequence_logps(model, &x, &y, &w, true)?;
        let b = idx.len();
        let reference = |v: &[f32]| -> Result<Option<Tensor>, TrainError> {
            if v.is_empty() {
                return Ok(None);
            }
            let picked: Vec<f32> = idx.iter().map(|&i| v[i]).collect();
            Ok(Some(Tensor::from_vec(picked, b, &self.device)?))
        };
        let p = Pairs {
            lc: s.sums.narrow(0, 0, b)?,
            lr: s.sums.narrow(0, b, b)?,
            rc: reference(&split.ref_chosen)?,
            rr: reference(&split.ref_rejected)?,
            len_c: s.lens.narrow(0, 0, b)?,
            len_r: s.lens.narrow(0, b, b)?,
        };
        let loss = losses::batch_loss(&self.spec, &p, &self.params)?;
        let mut metrics = losses::reward_metrics(&p, self.params.beta)?;
        let lens: Vec<f64> = s.lens.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let group = |r: std::ops::Range<usize>| {
            s.logit_sums[r.clone()].iter().sum::<f64>() / lens[r].iter().sum::<f64>().max(1.0)
        };
        metrics.insert("logits/chosen".into(), group(0..b));
        metrics.insert("logits/rejected".into(), group(b..2 * b));
        let tokens = lens.iter().sum::<f64>() as usize;
        Ok(Scored {
            loss,
            tokens,
            metrics,
        })
    }
}

impl Task for DpoTask<'_> {
    fn num_samples(&self) -> usize {
        self.train.pairs.pairs.len()
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
        self.eval.as_ref().map_or(0, |e| e.pairs.pairs.len())
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
