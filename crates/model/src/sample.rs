//! Decoding: greedy, temperature, top-k and top-p sampling from our own seeded generator, and the
//! token loop over a KV cache.
//!
//! The generator is SplitMix64 (not candle-transformers' `LogitsProcessor`, which draws from `rand`):
//! its stream never changes with a dependency upgrade, so a seed reproduces a sample forever.

use candle_core::Tensor;

use crate::{KvCache, Model, ModelError, SplitMix64};

/// How the next token is chosen.
#[derive(Clone, Debug)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches top_p (1.0 = all).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
        }
    }
}

pub struct Sampler {
    cfg: SamplingConfig,
    rng: SplitMix64,
}

impl Sampler {
    // `!(x > 0.0)` is meant: unlike `x <= 0.0` it also rejects NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn new(cfg: SamplingConfig) -> Result<Sampler, ModelError> {
        if !(cfg.temperature >= 0.0) || !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return Err(ModelError::Input(format!(
                "temperature must be ≥ 0 (got {}) and top_p in (0, 1] (got {})",
                cfg.temperature, cfg.top_p
            )));
        }
        let rng = SplitMix64::new(cfg.seed);
        Ok(Sampler { cfg, rng })
    }

    /// Picks a token from one row of logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let greedy = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0 as u32
        };
        if self.cfg.temperature == 0.0 {
            return greedy();
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.cfg.top_k > 0 {
            order.truncate(self.cfg.top_k);
        }
        let max = logits[order[0]] as f64;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / self.cfg.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return order[i] as u32;
            }
            r -= p;
        }
        order[probs.len() - 1] as u32
    }
}

/// Continues `prompt` by up to `max_new_tokens`, stopping after any id in `stop`. Returns the new ids
/// (including the stop token, if one was produced).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_new_tokens: usize,
    stop: &[u32],
    sampler: &mut Sampler,
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Input(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    let max_pos = model.config().max_position_embeddings;
    if prompt.len() >= max_pos {
        return Err(ModelError::Input(format!(
            "the prompt has {} tokens; the model takes at most {max_pos} positions, leaving no room to generate",
            prompt.len()
        )));
    }
    let room = max_pos - prompt.len();
    let mut cache = KvCache::new();
    let mut out = Vec::new();
    let mut next_input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    for _ in 0..max_new_tokens.min(room) {
        let logits: Vec<f32> = model
            .forward_cached(&next_input, &mut cache)?
            .squeeze(0)?
            .to_vec1()?;
        let id = sampler.pick(&logits);
        out.push(id);
        if stop.contains(&id) {
            break;
        }
        next_input = Tensor::new(&[id], model.device())?.unsqueeze(0)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_max_and_top_k_one_is_greedy() {
        let logits = [0.1f32, 3.0, -1.0, 2.9];
        let mut g = Sampler::new(SamplingConfig::default()).unwrap();
        assert_eq!(g.pick(&logits), 1);
        let mut k1 = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(k1.pick(&logits), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus_and_seed_repeats() {
        let logits = [5f32, 4.9, -10.0, -10.0];
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_p: 0.9,
            seed: 3,
            ..Default::default()
        };
        let mut a = Sampler::new(cfg.clone()).unwrap();
        let mut b = Sampler::new(cfg).unwrap();
        let xs: Vec<u32> = (0..200).map(|_| a.pick(&logits)).collect();
        let ys: Vec<u32> = (0..200).map(|_| b.pick(&logits)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 2));
        assert!(xs.contains(&0) && xs.contains(&1));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Sampler::new(SamplingConfig {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingConfig {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
    }
}
