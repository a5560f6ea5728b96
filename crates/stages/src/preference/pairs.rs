//! Preference pairs from `tokenize dpo` files, shaped for a forward pass: each pair becomes two
//! sequences (prompt + chosen, prompt + rejected) in one right-padded batch, with weight 1 on the
//! completion's target positions, so one forward gives both summed completion log-probs.
//!
//! Length rule (the same in `ref-logprobs` and `dpo`, and part of the rows' fingerprint): a pair whose
//! prompt alone leaves no room for a completion token within `max_len` is skipped; a completion that
//! does not fit is cut (counted); a pair with an empty completion is skipped.
//!
//! The pairs stay on disk in the token files' pair streams (see `zerolm_data::stream`); a set holds the
//! numbers of the pairs it keeps (8 bytes a pair) and reads each batch's pairs when it is built.

use candle_core::{Device, Tensor};
/// A pair as a batch uses it: [`PairRow`], its completions cut by the length rule.
pub use zerolm_data::stream::PairRow as Pair;
use zerolm_data::stream::{PairRow, TokenStream};
use zerolm_model::Model;

use zerolm_train::TrainError;

/// The pairs of some token files under a length rule.
pub struct PairSet {
    streams: Vec<TokenStream>,
    /// Where each stream's pairs start in the concatenation.
    starts: Vec<u64>,
    /// The kept pairs, by number in the concatenation.
    kept: Vec<u64>,
    pub max_len: usize,
    pub pad_id: u32,
    pub skipped_empty: usize,
    pub skipped_long_prompt: usize,
    pub truncated: usize,
}

impl PairSet {
    /// The pairs of `streams` (DPO pair streams) that the length rule for `max_len` keeps, reading only
    /// the streams' indexes.
    pub fn new(
        streams: Vec<TokenStream>,
        max_len: usize,
        pad_id: u32,
    ) -> Result<PairSet, TrainError> {
        let mut set = PairSet {
            starts: Vec::with_capacity(streams.len()),
            streams: Vec::new(),
            kept: Vec::new(),
            max_len,
            pad_id,
            skipped_empty: 0,
            skipped_long_prompt: 0,
            truncated: 0,
        };
        let mut at = 0u64;
        for stream in &streams {
            set.starts.push(at);
            stream.for_each_pair(|i, e| {
                let (p, c, r) = (e.prompt as usize, e.chosen as usize, e.rejected as usize);
                if p == 0 || c == 0 || r == 0 {
                    set.skipped_empty += 1;
                } else if p >= max_len {
                    set.skipped_long_prompt += 1;
                } else {
                    set.truncated += usize::from(c.max(r) > max_len - p);
                    set.kept.push(at + i);
                }
                Ok(())
            })?;
            at += stream.rows();
        }
        set.streams = streams;
        Ok(set)
    }

    /// Kept pairs.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Kept pair `i`, its completions cut to the room the prompt leaves within `max_len`.
    pub fn get(&self, i: usize) -> Result<Pair, TrainError> {
        let n = self.kept[i];
        let k = self.starts.partition_point(|&s| s <= n) - 1;
        Ok(self.cut(self.streams[k].pair(n - self.starts[k])?))
    }

    /// blake3 over the length rule and every kept pair: what a reference cache must have been made from
    /// (one sequential pass over the pairs).
    pub fn fingerprint(&self) -> Result<String, TrainError> {
        let mut h = blake3::Hasher::new();
        h.update(&(self.max_len as u64).to_le_bytes());
        let mut next = 0;
        for (k, stream) in self.streams.iter().enumerate() {
            stream.for_each_pair_row(|i, row| {
                if self.kept.get(next) != Some(&(self.starts[k] + i)) {
                    return Ok(());
                }
                next += 1;
                hash_pair(&mut h, &self.cut(row));
                Ok(())
            })?;
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// A kept pair with its completions cut to the room the prompt leaves within `max_len`.
    fn cut(&self, mut pair: PairRow) -> Pair {
        let room = self.max_len - pair.prompt.len();
        if pair.chosen.len() > room || pair.rejected.len() > room {
            pair.chosen.truncate(room);
            pair.rejected.truncate(room);
        }
        pair
    }

    /// The batch of pairs `idx`: the chosen sequences first, then the rejected ones in the same order.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<PairBatch, TrainError> {
        let pairs: Vec<Pair> = idx.iter().map(|&i| self.get(i)).collect::<Result<_, _>>()?;
        let pick = |i: usize, chosen: bool| {
            let p = &pairs[i];
            let shared = p.chosen.len().min(p.rejected.len());
            let c = if chosen { &p.chosen } else { &p.rejected };
            (p.prompt.as_slice(), c.as_slice(), shared)
        };
        let seqs: Vec<(&[u32], &[u32], usize)> = (0..pairs.len())
            .map(|i| pick(i, true))
            .chain((0..pairs.len()).map(|i| pick(i, false)))
            .collect();
        let len = seqs
            .iter()
            .map(|(p, c, _)| p.len() + c.len() - 1)
            .max()
            .unwrap_or(0);
        let (mut x, mut y, mut mask, mut tail) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (p, c, shared) in &seqs {
            let full: Vec<u32> = p.iter().chain(c.iter()).copied().collect();
            let n = full.len() - 1;
            x.extend_from_slice(&full[..n]);
            y.extend_from_slice(&full[1..]);
            // target j is token j + 1: completion token number j + 1 − |prompt| when j + 1 ≥ |prompt|
            let position = |j: usize| (j + 1).checked_sub(p.len());
            mask.extend((0..n).map(|j| f32::from(u8::from(position(j).is_some()))));
            tail.extend(
                (0..n).map(|j| f32::from(u8::from(position(j).is_some_and(|k| k >= *shared)))),
            );
            let pad = len - n;
            x.extend(std::iter::repeat_n(self.pad_id, pad));
            y.extend(std::iter::repeat_n(self.pad_id, pad));
            mask.extend(std::iter::repeat_n(0f32, pad));
            tail.extend(std::iter::repeat_n(0f32, pad));
        }
        let rows = seqs.len();
        Ok(PairBatch {
            x: Tensor::from_vec(x, (rows, len), device)?,
            y: Tensor::from_vec(y, (rows, len), device)?,
            mask: Tensor::from_vec(mask, (rows, len), device)?,
            tail: Tensor::from_vec(tail, (rows, len), device)?,
            tokens: seqs.iter().map(|(p, c, _)| p.len() + c.len()).sum(),
        })
    }
}

/// Adds a pair (id, prompt, chosen, rejected, each with its length) to a rows fingerprint.
fn hash_pair(h: &mut blake3::Hasher, p: &Pair) {
    h.update(&(p.id.len() as u64).to_le_bytes());
    h.update(p.id.as_bytes());
    for ids in [&p.prompt, &p.chosen, &p.rejected] {
        h.update(&(ids.len() as u64).to_le_bytes());
        for t in ids.iter() {
            h.update(&t.to_le_bytes());
        }
    }
}

/// A forward batch of pairs [2B, L]: inputs, next-token targets, the completion targets (`mask`) and,
/// among them, those past the pair's shorter completion (`tail`, LD-DPO's down-weighted tokens).
pub struct PairBatch {
    pub x: Tensor,
    pub y: Tensor,
    pub mask: Tensor,
    pub tail: Tensor,
    /// Tokens in the batch's sequences (prompt + completion, both of every pair): TRL's `num_tokens`.
    pub tokens: usize,
}

/// What a forward over a [`PairBatch`] gives per sequence [2B]: the summed completion log-probs
/// (tracked when the model's weights are) and those of the tail tokens, and the completion lengths.
pub struct SeqLogps {
    pub sums: Tensor,
    pub tail_sums: Tensor,
    pub lens: Tensor,
    /// TRL's diagnostics, when asked for.
    pub stats: Option<TokenStats>,
}

/// Per sequence, sums over its completion tokens (detached): the mean raw logit over the vocabulary,
/// the entropy of the next-token distribution, whether the target is the top-1 token, and — for WPO —
/// log p(target) − log Σ_v p_v².
pub struct TokenStats {
    pub logits: Vec<f64>,
    pub entropy: Vec<f64>,
    pub top1: Vec<f64>,
    pub wpo: Option<Vec<f64>>,
}

/// Which [`TokenStats`] a forward computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stats {
    None,
    Metrics,
    MetricsAndWpo,
}

pub fn sequence_logps(model: &Model, b: &PairBatch, stats: Stats) -> Result<SeqLogps, TrainError> {
    let (rows, len) = b.x.dims2()?;
    let vocab = model.config().vocab_size;
    let logits = model.forward(&b.x)?;
    let lp = zerolm_model::ops::token_logprobs(
        &logits.reshape((rows * len, vocab))?,
        &b.y.flatten_all()?,
    )?
    .reshape((rows, len))?;
    let stats = match stats {
        Stats::None => None,
        _ => Some(token_stats(&logits, &lp, b, stats == Stats::MetricsAndWpo)?),
    };
    Ok(SeqLogps {
        sums: (&lp * &b.mask)?.sum(1)?,
        tail_sums: (&lp * &b.tail)?.sum(1)?,
        lens: b.mask.sum(1)?,
        stats,
    })
}

/// [`TokenStats`] of `logits` [2B, L, V] with the target log-probs `lp` [2B, L], computed on the host in
/// one pass per completion position (prompt and padding positions are skipped).
fn token_stats(
    logits: &Tensor,
    lp: &Tensor,
    b: &PairBatch,
    wpo: bool,
) -> Result<TokenStats, TrainError> {
    use rayon::prelude::*;
    let (rows, len, vocab) = logits.dims3()?;
    let z: Vec<f32> = logits.detach().flatten_all()?.to_vec1()?;
    let mask: Vec<f32> = b.mask.flatten_all()?.to_vec1()?;
    let y: Vec<u32> = b.y.flatten_all()?.to_vec1()?;
    let lp: Vec<f32> = match wpo {
        true => lp.detach().flatten_all()?.to_vec1()?,
        false => Vec::new(),
    };
    let per_row: Vec<[f64; 4]> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let mut acc = [0f64; 4];
            for i in (r * len..(r + 1) * len).filter(|&i| mask[i] != 0.0) {
                let s = position_stats(&z[i * vocab..(i + 1) * vocab], y[i], wpo);
                acc[0] += s.mean_logit;
                acc[1] += s.entropy;
                acc[2] += f64::from(u8::from(s.top1));
                if wpo {
                    acc[3] += lp[i] as f64 - s.log_sum_sq;
                }
            }
            acc
        })
        .collect();
    let column = |k: usize| per_row.iter().map(|a| a[k]).collect::<Vec<f64>>();
    Ok(TokenStats {
        logits: column(0),
        entropy: column(1),
        top1: column(2),
        wpo: wpo.then(|| column(3)),
    })
}

/// One position's next-token distribution, from its logits.
struct PositionStats {
    mean_logit: f64,
    /// −Σ p·log p.
    entropy: f64,
    /// Whether the target is the most likely token (the first one on a tie, as torch's argmax).
    top1: bool,
    /// log Σ_v p_v² (WPO; 0 unless asked for).
    log_sum_sq: f64,
}

fn position_stats(row: &[f32], target: u32, wpo: bool) -> PositionStats {
    let (mut max, mut arg, mut sum) = (f32::NEG_INFINITY, 0, 0f64);
    for (j, &v) in row.iter().enumerate() {
        if v > max {
            (max, arg) = (v, j);
        }
        sum += v as f64;
    }
    // with s = z − max: H = log Σ e^s − Σ e^s·s / Σ e^s, and log Σ p² = log Σ e^(2s) − 2·log Σ e^s
    let (mut total, mut weighted, mut squares) = (0f64, 0f64, 0f64);
    for &v in row {
        let s = v - max;
        let e = s.exp();
        total += e as f64;
        weighted += (e * s) as f64;
        if wpo {
            squares += (e * e) as f64;
        }
    }
    let log_total = total.ln();
    PositionStats {
        mean_logit: sum / row.len() as f64,
        entropy: log_total - weighted / total,
        top1: arg as u32 == target,
        log_sum_sq: if wpo {
            squares.ln() - 2.0 * log_total
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerolm_data::stream::{Layout, Source, StreamWriter};

    /// (id, prompt, chosen, rejected)
    type Row<'a> = (&'a str, Vec<u32>, Vec<u32>, Vec<u32>);

    /// A pair stream of `rows` (named `name` in the temp directory).
    fn stream(name: &str, rows: Vec<Row>) -> TokenStream {
        let dir = std::env::temp_dir().join(format!("zerolm-pairs-{}", std::process::id()));
        let parquet = dir.join(format!("{name}.parquet"));
        let mut w = StreamWriter::create(&parquet, Layout::Pairs, 2, 16).unwrap();
        for (id, p, c, r) in rows {
            w.push_pair(id, &p, &c, &r).unwrap();
        }
        w.finish(Source::default()).unwrap();
        TokenStream::open(&zerolm_data::stream::path_for(&parquet))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn length_rule_skips_and_truncates_with_counts() {
        let f = stream(
            "rule",
            vec![
                ("ok", vec![1, 2], vec![3, 2], vec![4, 5, 2]),
                ("empty", vec![1], vec![], vec![4]),
                ("long-prompt", vec![1, 2, 3, 4, 5], vec![5], vec![6]),
                ("cut", vec![1, 2], vec![3, 3, 3, 3], vec![4]),
            ],
        );
        let s = PairSet::new(vec![f], 5, 0).unwrap();
        assert_eq!(
            (s.skipped_empty, s.skipped_long_prompt, s.truncated),
            (1, 1, 1)
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(1).unwrap().chosen, vec![3, 3, 3]);
        assert_eq!(s.get(1).unwrap().id, "cut");
        let one = || stream("one", vec![("ok", vec![1, 2], vec![3, 2], vec![4, 5, 2])]);
        let t = PairSet::new(vec![one()], 6, 0).unwrap();
        assert_ne!(s.fingerprint().unwrap(), t.fingerprint().unwrap());
        // two streams are one concatenation
        let two = PairSet::new(vec![one(), one()], 6, 0).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two.get(1).unwrap(), t.get(0).unwrap());
        // the sequential pass hashes exactly the kept pairs as `get` reads them
        let mut h = blake3::Hasher::new();
        h.update(&5u64.to_le_bytes());
        for i in 0..s.len() {
            hash_pair(&mut h, &s.get(i).unwrap());
        }
        assert_eq!(s.fingerprint().unwrap(), h.finalize().to_hex().to_string());
    }

    #[test]
    fn batch_puts_chosen_then_rejected_and_weights_the_completion_only() {
        let f = stream("batch", vec![("a", vec![1, 7], vec![3, 2], vec![4, 5, 2])]);
        let s = PairSet::new(vec![f], 16, 0).unwrap();
        let b = s.batch(&[0], &Device::Cpu).unwrap();
        assert_eq!(
            b.x.to_vec2::<u32>().unwrap(),
            vec![vec![1, 7, 3, 0], vec![1, 7, 4, 5]]
        );
        assert_eq!(
            b.y.to_vec2::<u32>().unwrap(),
            vec![vec![7, 3, 2, 0], vec![7, 4, 5, 2]]
        );
        assert_eq!(
            b.mask.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 1.0, 1.0, 0.0], vec![0.0, 1.0, 1.0, 1.0]]
        );
        // the shorter completion has 2 tokens: only the rejected one's third token is in the tail
        assert_eq!(
            b.tail.to_vec2::<f32>().unwrap(),
            vec![vec![0.0; 4], vec![0.0, 0.0, 0.0, 1.0]]
        );
        assert_eq!(b.tokens, 4 + 5);
    }
}
