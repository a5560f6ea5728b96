//! The `pretrain` stage: pack token documents into fixed-length blocks (eos between documents), train
//! a fresh model on next-token prediction, evaluate, and export a Hugging Face model directory.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Map;
use zerolm_data::formats::Kind;
use zerolm_data::stream::TokenStream;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::{init_parameters, Model};
use zerolm_train::trainer::{self, BatchLoss, EvalBatch, Outcome, Task};
use zerolm_train::TrainError;

use crate::common::setup::stream_inputs;
use crate::common::start::{fit_vocab, special_ids};
use crate::common::{closing_line, StageArgs, StageRun};

/// Documents concatenated with `eos` after each one, cut into blocks of `seq_len + 1` tokens that
/// overlap by one (block i's last token is block i+1's first), so every token is a target once. The
/// tokens stay on disk in the token files' streams (one after the other); a batch reads its blocks.
pub struct Packed {
    streams: Vec<TokenStream>,
    /// Where each stream starts in the concatenation.
    starts: Vec<u64>,
    pub tokens: u64,
    pub seq_len: usize,
    pub documents: u64,
    /// Tokens at the end that did not fill a block.
    pub dropped_tail: u64,
    /// How often each id occurs, over all streams.
    counts: Vec<u64>,
}

impl Packed {
    pub fn new(streams: Vec<TokenStream>, seq_len: usize) -> Packed {
        let mut starts = Vec::with_capacity(streams.len());
        let (mut tokens, mut documents) = (0u64, 0u64);
        let mut counts: Vec<u64> = Vec::new();
        for s in &streams {
            starts.push(tokens);
            tokens += s.tokens();
            documents += s.documents();
            if counts.len() < s.counts().len() {
                counts.resize(s.counts().len(), 0);
            }
            for (total, c) in counts.iter_mut().zip(s.counts()) {
                *total += c;
            }
        }
        let blocks = tokens.saturating_sub(1) / seq_len as u64;
        let used = if blocks == 0 {
            0
        } else {
            blocks * seq_len as u64 + 1
        };
        Packed {
            streams,
            starts,
            dropped_tail: tokens - used,
            tokens,
            seq_len,
            documents,
            counts,
        }
    }

    pub fn blocks(&self) -> usize {
        (self.tokens.saturating_sub(1) / self.seq_len as u64) as usize
    }

    pub fn stats(&self) -> PackStats {
        PackStats {
            documents: self.documents as usize,
            tokens: self.tokens as usize,
            blocks: self.blocks(),
            dropped_tail: self.dropped_tail as usize,
            unigram_entropy: self.unigram_entropy(),
        }
    }

    /// Appends tokens `start .. start + len` of the concatenated streams to `out`.
    fn read(&self, start: u64, len: usize, out: &mut Vec<u32>) -> Result<(), TrainError> {
        let (mut at, end) = (start, start + len as u64);
        // the last stream that starts at or before `at`
        let mut k = self.starts.partition_point(|&s| s <= at) - 1;
        while at < end {
            let stream_end = self.starts[k] + self.streams[k].tokens();
            let take = end.min(stream_end) - at;
            self.streams[k].read(at - self.starts[k], take as usize, out)?;
            at += take;
            k += 1;
        }
        Ok(())
    }

    /// Inputs and targets [B, seq_len] for these blocks.
    pub fn batch(&self, blocks: &[usize], device: &Device) -> Result<(Tensor, Tensor), TrainError> {
        let l = self.seq_len;
        let mut x = Vec::with_capacity(blocks.len() * l);
        let mut y = Vec::with_capacity(blocks.len() * l);
        let mut block = Vec::with_capacity(l + 1);
        for &b in blocks {
            block.clear();
            self.read((b * l) as u64, l + 1, &mut block)?;
            x.extend_from_slice(&block[..l]);
            y.extend_from_slice(&block[1..]);
        }
        Ok((
            Tensor::from_vec(x, (blocks.len(), l), device)?,
            Tensor::from_vec(y, (blocks.len(), l), device)?,
        ))
    }

    /// Entropy (nats/token) of the unigram distribution of the packed stream: the loss of a model that
    /// ignores context, the bar a trained model must get well below.
    pub fn unigram_entropy(&self) -> f64 {
        let n = self.tokens as f64;
        (self.counts.iter().filter(|&&c| c > 0))
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
    let files = stream_inputs(&args.stage, Kind::Pretrain, &tokenizer)?;
    let cfg = &args.stage.cfg;
    let (train, eval) = pack(files.train, files.eval, cfg.seq_len)?;
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

/// The training and eval streams packed into blocks of `seq_len` (+1) tokens; refused when either
/// holds less than one block.
fn pack(
    train: Vec<TokenStream>,
    eval: Vec<TokenStream>,
    seq_len: usize,
) -> Result<(Packed, Option<Packed>), TrainError> {
    let train = Packed::new(train, seq_len);
    if train.blocks() == 0 {
        return Err(TrainError::Config(format!(
            "the training data ({} tokens) is shorter than one block of {seq_len} tokens; lower --max-len or add data",
            train.tokens
        )));
    }
    let eval = (!eval.is_empty()).then(|| Packed::new(eval, seq_len));
    if let Some(e) = &eval {
        if e.blocks() == 0 {
            return Err(TrainError::Config(format!(
                "the eval data ({} tokens) is shorter than one block of {seq_len} tokens",
                e.tokens
            )));
        }
    }
    Ok((train, eval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;
    use zerolm_data::artifact::{TokenRow, TokenWriter};
    use zerolm_data::stream::Layout;

    /// Token files of these documents (in `dir`), opened as streams with eos 2 and 10 ids.
    fn streams(dir: &str, files: Vec<Vec<Vec<u32>>>) -> Vec<TokenStream> {
        let dir = std::env::temp_dir().join(format!("zerolm-pack-{}-{dir}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        for (i, docs) in files.into_iter().enumerate() {
            let path = dir.join(format!("{i}.parquet"));
            let mut w = TokenWriter::create(&path, Kind::Pretrain).unwrap();
            w.write(&docs.into_iter().map(TokenRow::Doc).collect::<Vec<_>>())
                .unwrap();
            w.finish(Map::new()).unwrap();
            out.push(
                TokenStream::open_or_build(&path, Layout::Docs, 2, 10)
                    .unwrap()
                    .0,
            );
        }
        out
    }

    #[test]
    fn packing_puts_eos_between_documents_and_targets_shift_by_one() {
        let p = Packed::new(
            streams("one", vec![vec![vec![5, 6, 7], vec![], vec![8, 9]]]),
            3,
        );
        assert_eq!(
            (p.tokens, p.documents, p.blocks(), p.dropped_tail),
            (7, 2, 2, 0)
        );
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
    fn blocks_run_across_files_as_one_stream() {
        let p = Packed::new(
            streams("two", vec![vec![vec![5, 6]], vec![vec![7, 8, 9]]]),
            4,
        );
        // 5 6 2 | 7 8 9 2: one block of 4 (+1) spans both files
        assert_eq!((p.tokens, p.blocks(), p.dropped_tail), (7, 1, 2));
        let (x, y) = p.batch(&[0], &Device::Cpu).unwrap();
        assert_eq!(x.to_vec2::<u32>().unwrap(), vec![vec![5, 6, 2, 7]]);
        assert_eq!(y.to_vec2::<u32>().unwrap(), vec![vec![6, 2, 7, 8]]);
    }

    #[test]
    fn unigram_entropy_of_a_uniform_stream_is_log_n() {
        let p = Packed::new(streams("uniform", vec![vec![vec![0, 1, 3]]]), 2);
        assert!((p.unigram_entropy() - 4f64.ln()).abs() < 1e-12);
    }
}
