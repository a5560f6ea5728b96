//! Preference pairs from `tokenize dpo` files, shaped for a forward pass: each pair becomes two
//! sequences (prompt + chosen, prompt + rejected) in one right-padded batch, with weight 1 on the
//! completion's target positions, so one forward gives both summed completion log-probs.
//!
//! Length rule (the same in `ref-logprobs` and `dpo`, and part of the rows' fingerprint): a pair whose
//! prompt alone leaves no room for a completion token within `max_len` is skipped; a completion that
//! does not fit is cut (counted); a pair with an empty completion is skipped.

use candle_core::{DType, Device, Tensor};
use zerolm_data::artifact::{TokenFile, TokenRow};
use zerolm_model::Model;

use zerolm_train::TrainError;

#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub id: String,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

pub struct PairSet {
    pub pairs: Vec<Pair>,
    pub max_len: usize,
    pub pad_id: u32,
    pub skipped_empty: usize,
    pub skipped_long_prompt: usize,
    pub truncated: usize,
}

impl PairSet {
    pub fn new(files: &[TokenFile], max_len: usize, pad_id: u32) -> PairSet {
        let mut set = PairSet {
            pairs: Vec::new(),
            max_len,
            pad_id,
            skipped_empty: 0,
            skipped_long_prompt: 0,
            truncated: 0,
        };
        for row in files.iter().flat_map(|f| &f.rows) {
            let TokenRow::Dpo {
                id,
                prompt_ids,
                chosen_ids,
                rejected_ids,
            } = row
            else {
                continue;
            };
            if prompt_ids.is_empty() || chosen_ids.is_empty() || rejected_ids.is_empty() {
                set.skipped_empty += 1;
                continue;
            }
            if prompt_ids.len() >= max_len {
                set.skipped_long_prompt += 1;
                continue;
            }
            let room = max_len - prompt_ids.len();
            let (mut chosen, mut rejected) = (chosen_ids.clone(), rejected_ids.clone());
            if chosen.len() > room || rejected.len() > room {
                chosen.truncate(room);
                rejected.truncate(room);
                set.truncated += 1;
            }
            set.pairs.push(Pair {
                id: id.clone(),
                prompt: prompt_ids.clone(),
                chosen,
                rejected,
            });
        }
        set
    }

    /// blake3 over the length rule and every kept pair: what a reference cache must have been made from.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&(self.max_len as u64).to_le_bytes());
        for p in &self.pairs {
            h.update(&(p.id.len() as u64).to_le_bytes());
            h.update(p.id.as_bytes());
            for ids in [&p.prompt, &p.chosen, &p.rejected] {
                h.update(&(ids.len() as u64).to_le_bytes());
                for t in ids.iter() {
                    h.update(&t.to_le_bytes());
                }
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// Inputs, targets and completion weights [2B, L] for pairs `idx`: the chosen sequences first, then
    /// the rejected ones in the same order.
    pub fn batch(
        &self,
        idx: &[usize],
        device: &Device,
    ) -> Result<(Tensor, Tensor, Tensor), TrainError> {
        let seqs: Vec<(&[u32], &[u32])> = idx
            .iter()
            .map(|&i| {
                (
                    self.pairs[i].prompt.as_slice(),
                    self.pairs[i].chosen.as_slice(),
                )
            })
            .chain(idx.iter().map(|&i| {
                (
                    self.pairs[i].prompt.as_slice(),
                    self.pairs[i].rejected.as_slice(),
                )
            }))
            .collect();
        let len = seqs
            .iter()
            .map(|(p, c)| p.len() + c.len() - 1)
            .max()
            .unwrap_or(0);
        let (mut x, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for (p, c) in &seqs {
            let full: Vec<u32> = p.iter().chain(c.iter()).copied().collect();
            let n = full.len() - 1;
            x.extend_from_slice(&full[..n]);
            y.extend_from_slice(&full[1..]);
            // target j is token j + 1: a completion token when j + 1 ≥ |prompt|
            w.extend((0..n).map(|j| if j + 1 >= p.len() { 1f32 } else { 0.0 }));
            x.extend(std::iter::repeat_n(self.pad_id, len - n));
            y.extend(std::iter::repeat_n(self.pad_id, len - n));
            w.extend(std::iter::repeat_n(0f32, len - n));
        }
        let rows = seqs.len();
        Ok((
            Tensor::from_vec(x, (rows, len), device)?,
            Tensor::from_vec(y, (rows, len), device)?,
            Tensor::from_vec(w, (rows, len), device)?,
        ))
    }
}

/// Per-sequence summed completion log-probs [2B] (tracked when the model's weights are), the
/// completion lengths, and per sequence the sum over completion tokens of the mean raw logit over the
/// vocabulary (detached; divide a group's total by its tokens for TRL's `logits/*`).
pub struct SeqLogps {
    pub sums: Tensor,
    pub lens: Tensor,
    pub logit_sums: Vec<f64>,
}

pub fn sequence_logps(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    w: &Tensor,
    with_logits: bool,
) -> Result<SeqLogps, TrainError> {
    let (rows, len) = x.dims2()?;
    let vocab = model.config().vocab_size;
    let logits = model.forward(x)?;
    let lp = zerolm_model::ops::token_logprobs(
        &logits.reshape((rows * len, vocab))?,
        &y.flatten_all()?,
    )?
    .reshape((rows, len))?;
    let sums = (lp * w)?.sum(1)?;
    let lens = w.sum(1)?;
    let logit_sums = if with_logits {
        let per_pos = logits.detach().mean(2)?; // [rows, len]
        (per_pos * w)?.sum(1)?.to_dtype(DType::F64)?.to_vec1()?
    } else {
        Vec::new()
    };
    Ok(SeqLogps {
        sums,
        lens,
        logit_sums,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use zerolm_data::formats::Kind;

    fn file(rows: Vec<(&str, Vec<u32>, Vec<u32>, Vec<u32>)>) -> TokenFile {
        TokenFile {
            path: "x".into(),
            kind: Kind::Dpo,
            metadata: BTreeMap::new(),
            rows: rows
                .into_iter()
                .map(|(id, p, c, r)| TokenRow::Dpo {
                    id: id.into(),
                    prompt_ids: p,
                    chosen_ids: c,
                    rejected_ids: r,
                })
                .collect(),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn length_rule_skips_and_truncates_with_counts() {
        let f = file(vec![
            ("ok", vec![1, 2], vec![3, 2], vec![4, 5, 2]),
            ("empty", vec![1], vec![], vec![4]),
            ("long-prompt", vec![1, 2, 3, 4, 5], vec![5], vec![6]),
            ("cut", vec![1, 2], vec![3, 3, 3, 3], vec![4]),
        ]);
        let s = PairSet::new(&[f], 5, 0);
        assert_eq!(
            (s.skipped_empty, s.skipped_long_prompt, s.truncated),
            (1, 1, 1)
        );
        assert_eq!(s.pairs.len(), 2);
        assert_eq!(s.pairs[1].chosen, vec![3, 3, 3]);
        let t = PairSet::new(
            &[file(vec![("ok", vec![1, 2], vec![3, 2], vec![4, 5, 2])])],
            6,
            0,
        );
        assert_ne!(s.fingerprint(), t.fingerprint());
    }

    #[test]
    fn batch_puts_chosen_then_rejected_and_weights_the_completion_only() {
        let s = PairSet::new(
            &[file(vec![("a", vec![1, 7], vec![3, 2], vec![4, 5, 2])])],
            16,
            0,
        );
        let (x, y, w) = s.batch(&[0], &Device::Cpu).unwrap();
        assert_eq!(
            x.to_vec2::<u32>().unwrap(),
            vec![vec![1, 7, 3, 0], vec![1, 7, 4, 5]]
        );
        assert_eq!(
            y.to_vec2::<u32>().unwrap(),
            vec![vec![7, 3, 2, 0], vec![7, 4, 5, 2]]
        );
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 1.0, 1.0, 0.0], vec![0.0, 1.0, 1.0, 1.0]]
        );
    }
}
