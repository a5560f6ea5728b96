//! The `sft` stage: fine-tune a model directory on `tokenize sft` conversations. The loss is the mean
//! next-token cross-entropy over the tokens whose `loss_mask` is 1 (assistant content through
//! `<|im_end|>`); rows are right-padded per batch, so a real token never attends to padding (padding
//! only follows it) and padding carries zero weight.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};
use zerolm_data::artifact::TokenRow;
use zerolm_data::formats::Kind;
use zerolm_model::Model;
use zerolm_train::trainer::{self, BatchLoss, EvalBatch, Outcome, Task};
use zerolm_train::TrainError;

use crate::answers::{self, AnswerCheck, AnswerScores};
use crate::common::summary::show;
use crate::common::{closing_line, StageArgs, StageRun, StartModel};

/// SFT rows as next-token training examples: inputs `ids[..n-1]`, targets `ids[1..]`, weights
/// `loss_mask[1..]` (a target counts when it is a supervised token).
pub struct Examples {
    pub rows: Vec<(Vec<u32>, Vec<u8>)>,
    pub pad_id: u32,
    /// Rows cut to `seq_len + 1` tokens.
    pub truncated: usize,
    /// Rows dropped because no target token is supervised (nothing to learn).
    pub unsupervised: usize,
}

impl Examples {
    pub fn new(rows: impl IntoIterator<Item = TokenRow>, seq_len: usize, pad_id: u32) -> Examples {
        let mut out = Examples {
            rows: Vec::new(),
            pad_id,
            truncated: 0,
            unsupervised: 0,
        };
        for row in rows {
            let TokenRow::Sft {
                mut input_ids,
                mut loss_mask,
            } = row
            else {
                continue;
            };
            if input_ids.len() > seq_len + 1 {
                input_ids.truncate(seq_len + 1);
                loss_mask.truncate(seq_len + 1);
                out.truncated += 1;
            }
            if input_ids.len() < 2 || !loss_mask.iter().skip(1).any(|m| *m == 1) {
                out.unsupervised += 1;
                continue;
            }
            out.rows.push((input_ids, loss_mask));
        }
        out
    }

    /// Supervised target tokens over all rows.
    pub fn supervised_tokens(&self) -> usize {
        self.rows
            .iter()
            .map(|(_, m)| m.iter().skip(1).filter(|v| **v == 1).count())
            .sum()
    }

    /// Inputs, targets (u32) and weights (f32), each [B, L] with L the longest row in the batch minus one.
    pub fn batch(
        &self,
        rows: &[usize],
        device: &Device,
    ) -> Result<(Tensor, Tensor, Tensor), TrainError> {
        let len = rows
            .iter()
            .map(|&r| self.rows[r].0.len() - 1)
            .max()
            .unwrap_or(0);
        let (mut x, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for &r in rows {
            let (ids, mask) = &self.rows[r];
            let n = ids.len() - 1;
            x.extend_from_slice(&ids[..n]);
            y.extend_from_slice(&ids[1..]);
            w.extend(mask[1..].iter().map(|m| *m as f32));
            x.extend(std::iter::repeat_n(self.pad_id, len - n));
            y.extend(std::iter::repeat_n(self.pad_id, len - n));
            w.extend(std::iter::repeat_n(0f32, len - n));
        }
        let b = rows.len();
        Ok((
            Tensor::from_vec(x, (b, len), device)?,
            Tensor::from_vec(y, (b, len), device)?,
            Tensor::from_vec(w, (b, len), device)?,
        ))
    }
}

/// The mean loss over the supervised tokens of a padded batch, as a tensor (0 with a zero gradient
/// when no token is supervised), and that token count.
pub fn masked_loss(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    w: &Tensor,
) -> Result<(Tensor, usize), TrainError> {
    let lp = model.token_logprobs(x, y)?;
    let count = w.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let loss = (lp * w)?.sum_all()?.affine(-1.0 / count.max(1.0), 0.0)?;
    Ok((loss, count as usize))
}

struct SftTask<'a> {
    train: Examples,
    eval: Option<Examples>,
    answers: Option<answers::Probe<'a>>,
    device: Device,
}

impl Task for SftTask<'_> {
    fn num_samples(&self) -> usize {
        self.train.rows.len()
    }

    fn batch_loss(&self, model: &Model, samples: &[usize]) -> Result<BatchLoss, TrainError> {
        let (x, y, w) = self.train.batch(samples, &self.device)?;
        let (loss, tokens) = masked_loss(model, &x, &y, &w)?;
        Ok(BatchLoss {
            loss,
            tokens,
            metrics: Default::default(),
        })
    }

    fn eval_rows(&self) -> usize {
        self.eval.as_ref().map_or(0, |e| e.rows.len())
    }

    fn eval_batch(&self, model: &Model, rows: &[usize]) -> Result<EvalBatch, TrainError> {
        let eval = self.eval.as_ref().expect("eval_rows > 0");
        let (x, y, w) = eval.batch(rows, &self.device)?;
        let (loss, n) = masked_loss(model, &x, &y, &w)?;
        Ok(EvalBatch {
            loss_sum: loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64,
            weight: n as f64,
            tokens: n,
            metrics: Default::default(),
        })
    }

    fn probe(&self, model: &Model) -> Result<Option<Map<String, Value>>, TrainError> {
        self.answers.as_ref().map(|p| p.row(model)).transpose()
    }
}

/// An SFT run: the shared stage arguments, the model directory to start from, and the optional
/// held-out answer check.
pub struct SftArgs {
    pub stage: StageArgs,
    pub model: PathBuf,
    pub answers: Option<AnswerCheck>,
}

/// What a finished run reports.
pub struct SftReport {
    pub outcome: Outcome,
    pub model_dir: PathBuf,
    pub rows: usize,
    pub supervised_tokens: usize,
    pub truncated: usize,
    pub unsupervised: usize,
    /// Held-out answer accuracy of the starting model and of the result.
    pub answers: AnswerScores,
}

impl SftReport {
    /// The run's closing line.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        let details = [
            format!("eval loss {}", show(o.eval.as_ref().map(|e| e.loss), 4)),
            format!("held-out answers {}", self.answers),
        ];
        let trained = format!("{} supervised tokens", o.tokens_seen);
        closing_line("sft", o, &trained, &details, &self.model_dir)
    }
}

pub fn run(args: SftArgs) -> Result<SftReport, TrainError> {
    let cfg = &args.stage.cfg;
    let (start, files) = StartModel::with_inputs(&args.model, &args.stage, Kind::Sft)?;
    let tokenizer = &start.tokenizer;
    let examples = |files: Vec<_>| Examples::new(flat_rows(files), cfg.seq_len, tokenizer.pad_id);
    let completion_end = files.completion_end.clone();
    let train = examples(files.train);
    let eval = (!files.eval.is_empty()).then(|| examples(files.eval));
    let answer_set = args
        .answers
        .as_ref()
        .map(|a| a.load(tokenizer))
        .transpose()?;
    let total = trainer::total_steps(cfg, train.rows.len())?;
    eprintln!(
        "sft: {} conversations ({} supervised tokens; {} truncated to {} tokens, {} without a supervised token \
         skipped); eval {} conversations; {} answer-check questions; {total} steps",
        train.rows.len(),
        train.supervised_tokens(),
        train.truncated,
        cfg.seq_len + 1,
        train.unsupervised,
        eval.as_ref().map_or(0, |e| e.rows.len()),
        answer_set.as_ref().map_or(0, |s| s.items.len()),
    );
    let init = start.params(&cfg.model)?;
    let (rows, supervised_tokens, truncated, unsupervised) = (
        train.rows.len(),
        train.supervised_tokens(),
        train.truncated,
        train.unsupervised,
    );
    let task = SftTask {
        train,
        eval,
        answers: (answer_set.as_ref()).map(|set| answers::Probe { set, tokenizer }),
        device: zerolm_model::device::current(),
    };
    let mut resolved = Map::new();
    resolved.insert("model".into(), json!(args.model.display().to_string()));
    resolved.insert(
        "answer_check".into(),
        json!(args.answers.as_ref().map(|a| a.path.display().to_string())),
    );
    let run = StageRun {
        stage: "sft",
        args: &args.stage,
        tokenizer,
        inputs: files.prints,
        total_steps: total,
        resolved,
        stage_settings: None,
        completion_end,
    };
    let (outcome, model_dir) = run.train_and_export(&task, init)?;
    let answers = match answer_set {
        Some(_) => answers::scores(&outcome),
        None => AnswerScores::default(),
    };
    Ok(SftReport {
        outcome,
        model_dir,
        rows,
        supervised_tokens,
        truncated,
        unsupervised,
        answers,
    })
}

/// Every row of the files, in order.
fn flat_rows(files: Vec<zerolm_data::artifact::TokenFile>) -> impl Iterator<Item = TokenRow> {
    files.into_iter().flat_map(|f| f.rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ids: &[u32], mask: &[u8]) -> TokenRow {
        TokenRow::Sft {
            input_ids: ids.to_vec(),
            loss_mask: mask.to_vec(),
        }
    }

    #[test]
    fn batches_shift_pad_and_weight_by_the_mask() {
        let ex = Examples::new(
            vec![
                row(&[1, 5, 6, 2], &[0, 0, 1, 1]),
                row(&[1, 7, 2], &[0, 1, 1]),
            ],
            10,
            0,
        );
        let (x, y, w) = ex.batch(&[0, 1], &Device::Cpu).unwrap();
        assert_eq!(
            x.to_vec2::<u32>().unwrap(),
            vec![vec![1, 5, 6], vec![1, 7, 0]]
        );
        assert_eq!(
            y.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 2], vec![7, 2, 0]]
        );
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 1.0, 1.0], vec![1.0, 1.0, 0.0]]
        );
        assert_eq!(ex.supervised_tokens(), 4);
    }

    #[test]
    fn rows_without_supervision_are_counted_and_long_rows_truncated() {
        let ex = Examples::new(
            vec![
                row(&[1, 5, 6], &[1, 0, 0]),
                row(&[1], &[1]),
                row(&[1, 2, 3, 4, 5, 6], &[0, 1, 1, 1, 1, 1]),
            ],
            3,
            0,
        );
        assert_eq!(ex.unsupervised, 2);
        assert_eq!(ex.truncated, 1);
        assert_eq!(ex.rows, vec![(vec![1, 2, 3, 4], vec![0, 1, 1, 1])]);
    }
}
