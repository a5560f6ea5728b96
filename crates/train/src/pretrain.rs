//! The `pretrain` stage: pack token documents into fixed-length blocks (eos between documents), train
//! a fresh model on next-token prediction, evaluate, and export a Hugging Face model directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::json;
use zerolm_data::artifact::{TokenFile, TokenRow};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::{init_parameters, Model};

use crate::settings::TrainConfig;
use crate::stage;
use crate::trainer::{self, BatchLoss, EvalResult, Outcome, RunSpec, Task};
use crate::TrainError;

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

    fn evaluate(
        &self,
        model: &Model,
        batch_size: usize,
        max_batches: usize,
    ) -> Result<Option<EvalResult>, TrainError> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let n = eval.blocks();
        let blocks: Vec<usize> = (0..n).collect();
        let mut total = 0f64;
        let mut tokens = 0usize;
        for (i, chunk) in blocks.chunks(batch_size).enumerate() {
            if max_batches > 0 && i >= max_batches {
                break;
            }
            let (x, y) = eval.batch(chunk, &self.device)?;
            let lp = model.token_logprobs(&x, &y)?;
            total -= lp.sum_all()?.to_scalar::<f32>()? as f64;
            tokens += chunk.len() * eval.seq_len;
        }
        Ok((tokens > 0).then(|| EvalResult {
            loss: total / tokens as f64,
            tokens,
            rows: tokens / eval.seq_len,
            perplexity: true,
            metrics: Default::default(),
        }))
    }
}

/// A pretrain run as the CLI describes it.
pub struct PretrainArgs {
    pub inputs: Vec<PathBuf>,
    pub eval_inputs: Vec<PathBuf>,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    pub cfg: TrainConfig,
    /// The user set `model.vocab_size` (otherwise it follows the tokenizer).
    pub vocab_explicit: bool,
    pub threads: usize,
    pub no_resume: bool,
    pub progress: bool,
    pub command: String,
}

/// What a finished run reports.
pub struct PretrainReport {
    pub outcome: Outcome,
    pub model_dir: PathBuf,
    pub documents: usize,
    pub train_tokens: usize,
    pub blocks: usize,
    pub dropped_tail: usize,
    pub unigram_entropy: f64,
    pub parameters: usize,
}

pub fn run(mut args: PretrainArgs) -> Result<PretrainReport, TrainError> {
    if args.inputs.is_empty() {
        return Err(TrainError::Config(
            "no --input token file given (make one with `tokenize pretrain`)".into(),
        ));
    }
    let tokenizer = TokenizerDir::load(&args.tokenizer)?;
    trainer::fit_vocab(
        &mut args.cfg.model,
        tokenizer.vocab_size(),
        args.vocab_explicit,
    )?;
    stage::special_ids(&mut args.cfg.model, &tokenizer);
    args.cfg.validate()?;
    let (train_files, mut inputs) =
        stage::read_token_files(&args.inputs, Kind::Pretrain, &tokenizer, "train")?;
    let (eval_files, eval_prints) =
        stage::read_token_files(&args.eval_inputs, Kind::Pretrain, &tokenizer, "eval")?;
    inputs.extend(eval_prints);

    let train = Packed::new(&train_files, tokenizer.eos_id, args.cfg.seq_len);
    if train.blocks() < args.cfg.batch_size {
        return Err(TrainError::Config(format!(
            "the training data packs into {} blocks of {} tokens, fewer than one batch ({}); lower --max-len or \
             --batch-size, or add data",
            train.blocks(),
            args.cfg.seq_len,
            args.cfg.batch_size
        )));
    }
    let eval = (!eval_files.is_empty())
        .then(|| Packed::new(&eval_files, tokenizer.eos_id, args.cfg.seq_len));
    if let Some(e) = &eval {
        if e.blocks() == 0 {
            return Err(TrainError::Config(format!(
                "the eval data ({} tokens) is shorter than one block of {} tokens",
                e.tokens.len(),
                args.cfg.seq_len
            )));
        }
    }
    let unigram_entropy = train.unigram_entropy();
    let total = trainer::total_steps(&args.cfg, train.blocks())?;
    eprintln!(
        "pretrain: {} documents, {} tokens → {} blocks of {} (+{} tail tokens unused); eval {} blocks; \
         {} params; {total} steps; unigram entropy {unigram_entropy:.3} nats/token",
        train.documents,
        train.tokens.len(),
        train.blocks(),
        args.cfg.seq_len,
        train.dropped_tail,
        eval.as_ref().map_or(0, |e| e.blocks()),
        args.cfg.model.num_parameters(),
    );
    std::fs::create_dir_all(&args.out).map_err(|cause| TrainError::Write {
        path: args.out.clone(),
        cause,
    })?;
    let resolved = json!({
        "stage": "pretrain",
        "command": args.command,
        "threads": args.threads,
        "tokenizer": args.tokenizer.display().to_string(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "inputs": inputs,
        "total_steps": total,
        "config": serde_json::to_value(&args.cfg).expect("config serialises"),
    });

    let init = init_parameters(&args.cfg.model, args.cfg.seed, &Device::Cpu)?;
    let parameters = args.cfg.model.num_parameters();
    let (documents, train_tokens, blocks, dropped_tail) = (
        train.documents,
        train.tokens.len(),
        train.blocks(),
        train.dropped_tail,
    );
    let task = PretrainTask {
        train,
        eval,
        device: crate::device::current(),
    };
    let spec = RunSpec {
        stage: "pretrain",
        out: &args.out,
        cfg: &args.cfg,
        inputs,
        tokenizer_fingerprint: tokenizer.fingerprint.clone(),
        threads: args.threads,
        no_resume: args.no_resume,
        progress: args.progress,
        resolved,
        stage_settings: None,
    };
    let (outcome, model_dir) = stage::train_and_export(&task, init, &spec, &tokenizer)?;
    Ok(PretrainReport {
        outcome,
        model_dir,
        documents,
        train_tokens,
        blocks,
        dropped_tail,
        unigram_entropy,
        parameters,
    })
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
