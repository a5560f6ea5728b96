//! The `sft` stage: fine-tune a model directory on `tokenize sft` conversations. The loss is the mean
//! next-token cross-entropy over the tokens whose `loss_mask` is 1 (assistant content through
//! `<|im_end|>`); rows are right-padded per batch, so a real token never attends to padding (padding
//! only follows it) and padding carries zero weight.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};
use zerolm_data::formats::Kind;
use zerolm_data::stream::{RowIndex, TokenStream};
use zerolm_model::Model;
use zerolm_train::trainer::{self, BatchLoss, EvalBatch, Outcome, Task};
use zerolm_train::TrainError;

use crate::answers::{self, AnswerCheck, AnswerScores};
use crate::common::summary::show;
use crate::common::{closing_line, StageArgs, StageRun, StartModel};

/// SFT rows as next-token training examples: inputs `ids[..n-1]`, targets `ids[1..]`, weights
/// `loss_mask[1..]` (a target counts when it is a supervised token). The rows stay on disk in the token
/// files' streams, one after the other; a batch reads its rows. Memory holds only the rows left out.
pub struct Examples {
    streams: Vec<TokenStream>,
    /// Where each stream's rows start among all rows.
    starts: Vec<u64>,
    /// The rows left out (no supervised target within `seq_len + 1` tokens), ascending.
    dropped: Vec<u64>,
    seq_len: usize,
    pub pad_id: u32,
    /// Rows cut to `seq_len + 1` tokens.
    pub truncated: usize,
    /// Rows dropped because no target token is supervised (nothing to learn).
    pub unsupervised: usize,
    supervised: usize,
}

impl Examples {
    /// Reads the streams' row indexes once to find the rows left out and count what is trained on.
    pub fn new(
        streams: Vec<TokenStream>,
        seq_len: usize,
        pad_id: u32,
    ) -> Result<Examples, TrainError> {
        let mut out = Examples {
            starts: Vec::new(),
            streams: Vec::new(),
            dropped: Vec::new(),
            seq_len,
            pad_id,
            truncated: 0,
            unsupervised: 0,
            supervised: 0,
        };
        let mut start = 0;
        for stream in &streams {
            out.starts.push(start);
            stream.for_each_row(|r, row| out.count(stream, start + r, r, row))?;
            start += stream.rows();
        }
        out.starts.push(start);
        out.streams = streams;
        Ok(out)
    }

    /// Counts row `r` of `stream` (row `global` of all), or leaves it out.
    fn count(
        &mut self,
        stream: &TokenStream,
        global: u64,
        r: u64,
        row: RowIndex,
    ) -> zerolm_data::Result<()> {
        let kept = (row.len as usize).min(self.seq_len + 1);
        let cut = kept < row.len as usize;
        self.truncated += usize::from(cut);
        if kept < 2 || row.first_target as usize >= kept {
            self.unsupervised += 1;
            self.dropped.push(global);
            return Ok(());
        }
        self.supervised += match cut {
            // a cut row: count what is left of its mask
            true => stream
                .row(r, kept)?
                .1
                .iter()
                .skip(1)
                .filter(|&&m| m == 1)
                .count(),
            false => row.supervised as usize,
        };
        Ok(())
    }

    /// The rows trained on.
    pub fn len(&self) -> usize {
        (self.starts.last().copied().unwrap_or(0) - self.dropped.len() as u64) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Supervised target tokens over all rows.
    pub fn supervised_tokens(&self) -> usize {
        self.supervised
    }

    /// Row `k` of the rows trained on: its ids and loss mask, cut to `seq_len + 1`.
    pub fn row(&self, k: usize) -> Result<(Vec<u32>, Vec<u8>), TrainError> {
        // the k-th row not left out: the least p with p = k + (rows left out at or before p)
        let mut p = k as u64;
        loop {
            let next = k as u64 + self.dropped.partition_point(|&d| d <= p) as u64;
            if next == p {
                break;
            }
            p = next;
        }
        let s = self.starts.partition_point(|&start| start <= p) - 1;
        let stream = &self.streams[s];
        Ok(stream.row(p - self.starts[s], self.seq_len + 1)?)
    }

    /// Inputs, targets (u32) and weights (f32), each [B, L] with L the longest row in the batch minus one.
    pub fn batch(
        &self,
        rows: &[usize],
        device: &Device,
    ) -> Result<(Tensor, Tensor, Tensor), TrainError> {
        let picked: Vec<(Vec<u32>, Vec<u8>)> = (rows.iter())
            .map(|&k| self.row(k))
            .collect::<Result<_, _>>()?;
        let len = picked
            .iter()
            .map(|(ids, _)| ids.len() - 1)
            .max()
            .unwrap_or(0);
        let (mut x, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for (ids, mask) in &picked {
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
        self.train.len()
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
        self.eval.as_ref().map_or(0, Examples::len)
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
    let (start, files) = StartModel::with_streams(&args.model, &args.stage, Kind::Sft)?;
    let tokenizer = &start.tokenizer;
    let examples = |streams| Examples::new(streams, cfg.seq_len, tokenizer.pad_id);
    let completion_end = files.completion_end.clone();
    let train = examples(files.train)?;
    let eval = match files.eval.is_empty() {
        true => None,
        false => Some(examples(files.eval)?),
    };
    let answer_set = args
        .answers
        .as_ref()
        .map(|a| answers::load(a, tokenizer))
        .transpose()?;
    let total = trainer::total_steps(cfg, train.len())?;
    eprintln!(
        "sft: {} conversations ({} supervised tokens; {} truncated to {} tokens, {} without a supervised token \
         skipped); eval {} conversations; {} answer-check questions; {total} steps",
        train.len(),
        train.supervised_tokens(),
        train.truncated,
        cfg.seq_len + 1,
        train.unsupervised,
        eval.as_ref().map_or(0, Examples::len),
        answer_set.as_ref().map_or(0, |s| s.items.len()),
    );
    let init = start.params(&cfg.model)?;
    let (rows, supervised_tokens, truncated, unsupervised) = (
        train.len(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use zerolm_data::artifact::{TokenRow, TokenWriter};
    use zerolm_data::stream::Layout;

    /// `rows` (ids, mask) as a token file in a temp directory, opened as a stream (10 ids).
    fn examples(name: &str, rows: &[(&[u32], &[u8])], seq_len: usize) -> Examples {
        let dir = std::env::temp_dir().join(format!("zerolm-sft-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sft.parquet");
        let mut w = TokenWriter::create(&path, Kind::Sft).unwrap();
        let rows: Vec<TokenRow> = rows
            .iter()
            .map(|(ids, mask)| TokenRow::Sft {
                input_ids: ids.to_vec(),
                loss_mask: mask.to_vec(),
            })
            .collect();
        w.write(&rows).unwrap();
        w.finish(BTreeMap::new()).unwrap();
        let (stream, _) = TokenStream::open_or_build(&path, Layout::Rows, 2, 10).unwrap();
        Examples::new(vec![stream], seq_len, 0).unwrap()
    }

    #[test]
    fn batches_shift_pad_and_weight_by_the_mask() {
        let ex = examples(
            "batch",
            &[(&[1, 5, 6, 2], &[0, 0, 1, 1]), (&[1, 7, 2], &[0, 1, 1])],
            10,
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
        let ex = examples(
            "cut",
            &[
                (&[1, 5, 6], &[1, 0, 0]),
                (&[1], &[1]),
                (&[1, 2, 3, 4, 5, 6], &[0, 1, 1, 1, 1, 1]),
                (&[1, 2, 3, 4, 5], &[0, 0, 0, 0, 1]),
            ],
            3,
        );
        // the last row's only supervised token is past the cut
        assert_eq!(ex.unsupervised, 3);
        assert_eq!(ex.truncated, 2);
        assert_eq!(ex.len(), 1);
        assert_eq!(ex.row(0).unwrap(), (vec![1, 2, 3, 4], vec![0, 1, 1, 1]));
        assert_eq!(ex.supervised_tokens(), 3);
    }
}
