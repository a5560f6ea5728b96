//! The `pretrain` stage: pack token documents into fixed-length blocks (eos between documents), train
//! a fresh model on next-token prediction, evaluate, and export a Hugging Face model directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Map;
use zerolm_data::artifact::{TokenFile, TokenRow};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::{init_parameters, Model};
use zerolm_train::trainer::{self, BatchLoss, EvalBatch, Outcome, Task};
use zerolm_train::TrainError;

use crate::common::start::{fit_vocab, special_ids};
use crate::common::{closing_line, read_inputs, StageArgs, StageRun};

/// Documents concatenated with `eos` after each one, cut into blocks of `seq_len + 1` tokens that
/// overlap by one (block i's last token is block i+1's first), so every token is a target once.
pub struct Packed {
    pub tokens: Vec<u32>,
    pub seq_len: usize,
    pub documents: usize,
    /// Tokens at the end that did not fill a block.
    pub dropped_tail: usize,
}

impl Packed {
    pub fn new(files: &[TokenFile], eos: u32, seq_len: usize) -> Packed {
        let mut tokens = Vec::new();
        let mut documents = 0;
        for file in files {
            for row in &file.rows {
                if let TokenRow::Doc(ids) = row {
                    if ids.is_empty() {
                        continue;
                    }
                    tokens.extend_from_slice(ids);
                    if ids.last() != Some(&eos) {
                        tokens.push(eos);
                    }
                    documents += 1;
                }
            }
        }
        let blocks = tokens.len().saturating_sub(1) / seq_len;
        let used = if blocks == 0 { 0 } else { blocks * seq_len + 1 };
        Packed {
            dropped_tail: tokens.len() - used,
            tokens,
            seq_len,
            documents,
        }
    }

    pub fn blocks(&self) -> usize {
        self.tokens.len().saturating_sub(1) / self.seq_len
    }

    pub fn stats(&self) -> PackStats {
        PackStats {
            documents: self.documents,
            tokens: self.tokens.len(),
            blocks: self.blocks(),
            dropped_tail: self.dropped_tail,
            unigram_entropy: self.unigram_entropy(),
        }
    }

    /// Inputs and targets [B, seq_len] for these blocks.
    pub fn batch(&self, blocks: &[usize], device: &Device) -> Result<(Tensor, Tensor), TrainError> {
        let l = self.seq_len;
        let mut x = Vec::with_capacity(blocks.len() * l);
        let mut y = Vec::with_capacity(blocks.len() * l);
        for &b in blocks {
            x.extend_from_slice(&self.tokens[b * l..b * l + l]);
            y.extend_from_slice(&self.tokens[b * l + 1..b * l + l + 1]);
        }
        Ok((
            Tensor::from_vec(x, (blocks.len(), l), device)?,
            Tensor::from_vec(y, (blocks.len(), l), device)?,
        ))
    }

    /// Entropy (nats/token) of the unigram distribution of the packed stream: the loss of a model that
    /// ignores context, the bar a trained model must get well below.
    pub fn unigram_entropy(&self) -> f64 {
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for t in &self.tokens {
            *counts.entry(*t).or_default() += 1;
        }
        let n = self.tokens.len() as f64;
        counts
            .values()
            .map(|&c| c as f64 / n)
            .map(|p| -p * p.ln())
            .sum()
    }
}

struct PretrainTask {
    train: Packed,
    eval: Option<Packed>,
    device: Device,
}

impl Task for PretrainTask {
    fn num_samples(&self) -> usize {
        self.train.blocks()
    }

    fn batch_loss(&self, model: &Model, samples: &[usize]) -> Result<BatchLoss, TrainError> {
        let (x, y) = self.train.batch(samples, &self.device)?;
        Ok(BatchLoss {
            loss: model.loss(&x, &y, None)?,
            tokens: samples.len() * self.train.seq_len,
            metrics: Default::default(),
        })
    }

    fn eval_rows(&self) -> usize {
        self.eval.as_ref().map_or(0, Packed::blocks)
    }

    fn eval_batch(&self, model: &Model, rows: &[usize]) -> Result<EvalBatch, TrainError> {
        let eval = self.eval.as_ref().expect("eval_rows > 0");
        let (x, y) = eval.batch(rows, &self.device)?;
        let lp = model.token_logprobs(&x, &y)?;
        let tokens = rows.len() * eval.seq_len;
        Ok(EvalBatch {
            loss_sum: -(lp.sum_all()?.to_scalar::<f32>()? as f64),
            weight: tokens as f64,
            tokens,
            metrics: Default::default(),
        })
    }
}

/// What the training data packed into.
pub struct PackStats {
    pub documents: usize,
    pub tokens: usize,
    pub blocks: usize,
    pub dropped_tail: usize,
    /// See [`Packed::unigram_entropy`].
    pub unigram_entropy: f64,
}

/// A pretrain run: the shared stage arguments (`tokenizer` required) and whether the user set
/// `model.vocab_size` (otherwise it follows the tokenizer).
pub struct PretrainArgs {
    pub stage: StageArgs,
    pub vocab_explicit: bool,
}

/// What a finished run reports.
pub struct PretrainReport {
    pub outcome: Outcome,
    pub model_dir: PathBuf,
    pub data: PackStats,
    pub parameters: usize,
}

impl PretrainReport {
    /// The run's closing line.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        let eval = o.eval.as_ref().map_or("-".into(), |e| {
            format!("{:.4} (ppl {:.2})", e.loss, e.loss.exp())
        });
        let details = [format!(
            "eval loss {eval} (unigram entropy {:.3})",
            self.data.unigram_entropy
        )];
        let trained = format!("{} tokens", o.tokens_seen);
        closing_line("pretrain", o, &trained, &details, &self.model_dir)
    }
}

pub fn run(mut args: PretrainArgs) -> Result<PretrainReport, TrainError> {
    let tokenizer_dir = (args.stage.tokenizer.clone())
        .ok_or_else(|| TrainError::Config("--tokenizer DIR is required".into()))?;
    let tokenizer = TokenizerDir::load(&tokenizer_dir)?;
    let cfg = &mut args.stage.cfg;
    fit_vocab(&mut cfg.model, tokenizer.vocab_size(), args.vocab_explicit)?;
    special_ids(&mut cfg.model, &tokenizer);
    cfg.validate()?;
    let files = read_inputs(&args.stage, Kind::Pretrain, &tokenizer)?;
    let cfg = &args.stage.cfg;
    let (train, eval) = pack(&files.train, &files.eval, tokenizer.eos_id, cfg.seq_len)?;
    let data = train.stats();
    let total = trainer::total_steps(cfg, data.blocks)?;
    let parameters = cfg.model.num_parameters();
    eprintln!(
        "pretrain: {} documents, {} tokens → {} blocks of {} (+{} tail tokens unused); eval {} blocks; \
         {parameters} params; {total} steps; unigram entropy {:.3} nats/token",
        data.documents,
        data.tokens,
        data.blocks,
        cfg.seq_len,
        data.dropped_tail,
        eval.as_ref().map_or(0, |e| e.blocks()),
        data.unigram_entropy,
    );
    let init = init_parameters(&cfg.model, cfg.seed, &Device::Cpu)?;
    let task = PretrainTask {
        train,
        eval,
        device: zerolm_model::device::current(),
    };
    let run = StageRun {
        stage: "pretrain",
        args: &args.stage,
        tokenizer: &tokenizer,
        inputs: files.prints,
        total_steps: total,
        resolved: Map::new(),
        stage_settings: None,
        completion_end: None,
    };
    let (outcome, model_dir) = run.train_and_export(&task, init)?;
    Ok(PretrainReport {
        outcome,
        model_dir,
        data,
        parameters,
    })
}

/// The training and eval token files packed into blocks of `seq_len` (+1) tokens; refused when either
/// holds less than one block.
fn pack(
    train: &[TokenFile],
    eval: &[TokenFile],
    eos: u32,
    seq_len: usize,
) -> Result<(Packed, Option<Packed>), TrainError> {
    let train = Packed::new(train, eos, seq_len);
    if train.blocks() == 0 {
        return Err(TrainError::Config(format!(
            "the training data ({} tokens) is shorter than one block of {seq_len} tokens; lower --max-len or add data",
            train.tokens.len()
        )));
    }
    let eval = (!eval.is_empty()).then(|| Packed::new(eval, eos, seq_len));
    if let Some(e) = &eval {
        if e.blocks() == 0 {
            return Err(TrainError::Config(format!(
                "the eval data ({} tokens) is shorter than one block of {seq_len} tokens",
                e.tokens.len()
            )));
        }
    }
    Ok((train, eval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    fn file(docs: Vec<Vec<u32>>) -> TokenFile {
        TokenFile {
            path: "x".into(),
            kind: Kind::Pretrain,
            metadata: Map::new(),
            rows: docs.into_iter().map(TokenRow::Doc).collect(),
            extra: Map::new(),
        }
    }

    #[test]
    fn packing_puts_eos_between_documents_and_targets_shift_by_one() {
        let p = Packed::new(&[file(vec![vec![5, 6, 7], vec![], vec![8, 9]])], 2, 3);
        assert_eq!(p.tokens, vec![5, 6, 7, 2, 8, 9, 2]);
        assert_eq!(p.documents, 2);
        assert_eq!(p.blocks(), 2);
        assert_eq!(p.dropped_tail, 0);
        let (x, y) = p.batch(&[1, 0], &Device::Cpu).unwrap();
        assert_eq!(
            x.to_vec2::<u32>().unwrap(),
            vec![vec![2, 8, 9], vec![5, 6, 7]]
        );
        assert_eq!(
            y.to_vec2::<u32>().unwrap(),
            vec![vec![8, 9, 2], vec![6, 7, 2]]
        );
    }

    #[test]
    fn unigram_entropy_of_a_uniform_stream_is_log_n() {
        let p = Packed::new(&[file(vec![vec![0, 1, 3]])], 2, 2);
        assert!((p.unigram_entropy() - 4f64.ln()).abs() < 1e-12);
    }
}
