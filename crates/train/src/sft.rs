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

use crate::answers::{self, Score};
use crate::settings::TrainConfig;
use crate::stage;
use crate::trainer::{self, BatchLoss, EvalResult, Outcome, RunSpec, Task};
use crate::TrainError;

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

    fn evaluate(
        &self,
        model: &Model,
        batch_size: usize,
        max_batches: usize,
    ) -> Result<Option<EvalResult>, TrainError> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let order: Vec<usize> = (0..eval.rows.len()).collect();
        let (mut nll, mut tokens, mut rows) = (0f64, 0usize, 0usize);
        for (i, chunk) in order.chunks(batch_size).enumerate() {
            if max_batches > 0 && i >= max_batches {
                break;
            }
            let (x, y, w) = eval.batch(chunk, &self.device)?;
            let (loss, n) = masked_loss(model, &x, &y, &w)?;
            nll += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
            tokens += n;
            rows += chunk.len();
        }
        Ok((tokens > 0).then(|| EvalResult {
            loss: nll / tokens as f64,
            tokens,
            rows,
            perplexity: true,
            metrics: Default::default(),
        }))
    }

    fn probe(&self, model: &Model) -> Result<Option<Map<String, Value>>, TrainError> {
        self.answers.as_ref().map(|p| p.row(model)).transpose()
    }
}

/// An SFT run as the CLI describes it.
pub struct SftArgs {
    pub model: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub eval_inputs: Vec<PathBuf>,
    /// Defaults to the model directory's tokenizer.
    pub tokenizer: Option<PathBuf>,
    pub out: PathBuf,
    pub cfg: TrainConfig,
    pub answers: crate::cli::AnswerCheckArgs,
    pub threads: usize,
    pub no_resume: bool,
    pub progress: bool,
    pub command: String,
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
    pub answers_before: Option<Score>,
    pub answers_after: Option<Score>,
}

/// Default SFT settings for a model loaded from a directory.
pub fn sft_defaults(model: zerolm_model::ModelConfig) -> TrainConfig {
    let mut c = TrainConfig::pretrain_defaults("tiny").expect("tiny preset exists");
    c.preset = "from --model".into();
    c.model = model;
    c.seq_len = 512;
    c.lr = 1e-3;
    c.warmup_steps = 10;
    c.epochs = 2;
    c
}

pub fn run(args: SftArgs) -> Result<SftReport, TrainError> {
    stage::check_start_shape(&args.model, &args.cfg)?;
    let cfg = args.cfg;
    let (tokenizer, tokenizer_dir) =
        stage::start_tokenizer(&args.model, args.tokenizer.as_deref())?;
    if args.inputs.is_empty() {
        return Err(TrainError::Config(
            "no --input token file given (make one with `tokenize sft`)".into(),
        ));
    }
    let (train_files, mut inputs) =
        stage::read_token_files(&args.inputs, Kind::Sft, &tokenizer, "train")?;
    let (eval_files, eval_prints) =
        stage::read_token_files(&args.eval_inputs, Kind::Sft, &tokenizer, "eval")?;
    inputs.extend(eval_prints);
    inputs.push(stage::start_weights(&args.model)?);

    let train = Examples::new(
        train_files.into_iter().flat_map(|f| f.rows),
        cfg.seq_len,
        tokenizer.pad_id,
    );
    let eval = (!eval_files.is_empty()).then(|| {
        Examples::new(
            eval_files.into_iter().flat_map(|f| f.rows),
            cfg.seq_len,
            tokenizer.pad_id,
        )
    });
    let answer_set = answers::load_for(&args.answers, &tokenizer)?;
    let total = trainer::total_steps(&cfg, train.rows.len())?;
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
    std::fs::create_dir_all(&args.out).map_err(|cause| TrainError::Write {
        path: args.out.clone(),
        cause,
    })?;
    let resolved = json!({
        "stage": "sft",
        "command": args.command,
        "threads": args.threads,
        "model": args.model.display().to_string(),
        "tokenizer": tokenizer_dir.display().to_string(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "inputs": inputs,
        "answer_check": args.answers.answer_check.as_ref().map(|p| p.display().to_string()),
        "total_steps": total,
        "config": serde_json::to_value(&cfg).expect("config serialises"),
    });
    let init = stage::start_params(&args.model, &cfg.model)?;
    let (rows, supervised_tokens, truncated, unsupervised) = (
        train.rows.len(),
        train.supervised_tokens(),
        train.truncated,
        train.unsupervised,
    );
    let task = SftTask {
        train,
        eval,
        answers: answer_set.as_ref().map(|set| answers::Probe {
            set,
            tokenizer: &tokenizer,
            max_new_tokens: args.answers.answer_max_new_tokens,
        }),
        device: crate::device::current(),
    };
    let spec = RunSpec {
        stage: "sft",
        out: &args.out,
        cfg: &cfg,
        inputs,
        tokenizer_fingerprint: tokenizer.fingerprint.clone(),
        threads: args.threads,
        no_resume: args.no_resume,
        progress: args.progress,
        resolved,
        stage_settings: None,
    };
    let (outcome, model_dir) = stage::train_and_export(&task, init, &spec, &tokenizer)?;
    let (answers_before, answers_after) = probe_scores(&outcome, answer_set.is_some());
    Ok(SftReport {
        outcome,
        model_dir,
        rows,
        supervised_tokens,
        truncated,
        unsupervised,
        answers_before,
        answers_after,
    })
}

/// The answer-check rows at step 0 and at the final step, read back from metrics.jsonl (the step-0 row
/// may come from before a resume).
pub fn probe_scores(outcome: &Outcome, enabled: bool) -> (Option<Score>, Option<Score>) {
    if !enabled {
        return (None, None);
    }
    let rows = crate::metrics::read_rows(&outcome.metrics_path);
    let at = |step: u64| {
        rows.iter()
            .rev()
            .find(|r| {
                r.get("step").and_then(Value::as_u64) == Some(step)
                    && r.contains_key("probe_answer_total")
            })
            .map(|r| Score {
                correct: r["probe_answer_correct"].as_u64().unwrap_or(0) as usize,
                total: r["probe_answer_total"].as_u64().unwrap_or(0) as usize,
            })
    };
    (at(0), at(outcome.step as u64))
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
