//! Parameter names (Hugging Face's), their shapes, and the seeded initialisation.
//!
//! candle's CPU random generator cannot be seeded, so init values come from our own SplitMix64 stream
//! and a Box–Muller transform: the same seed gives the same weights on every machine and thread count.
//! Matrices are drawn from N(0, initializer_range²) in name order; RMSNorm weights start at 1 — the
//! same rule transformers' `_init_weights` applies to Llama and Qwen3.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::{ModelConfig, ModelError};

/// Every parameter's HF name and shape, in a fixed order.
pub fn parameter_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let hd = cfg.head_dim();
    let q = cfg.num_attention_heads * hd;
    let kv = cfg.num_key_value_heads * hd;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        if cfg.qk_norm() {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((
            format!("{p}.mlp.gate_proj.weight"),
            vec![cfg.intermediate_size, h],
        ));
        out.push((
            format!("{p}.mlp.up_proj.weight"),
            vec![cfg.intermediate_size, h],
        ));
        out.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![h, cfg.intermediate_size],
        ));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

/// SplitMix64: tiny, fast, and its stream is fixed forever (unlike `rand`'s generators across versions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n) (n > 0), without modulo bias worth caring about at our sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A standard normal sample (Box–Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Fresh weights for `cfg`, deterministic in `seed`. Each parameter draws from its own stream (seed
/// mixed with the parameter's index), so adding a layer does not shift the others' values.
pub fn init_parameters(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, ModelError> {
    cfg.validate()?;
    let mut out = BTreeMap::new();
    for (index, (name, shape)) in parameter_shapes(cfg).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if shape.len() == 1 {
            vec![1.0; n]
        } else {
            let mut rng =
                SplitMix64::new(seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
            (0..n)
                .map(|_| (rng.normal() * cfg.initializer_range) as f32)
                .collect()
        };
        out.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_samples_have_unit_variance() {
        let mut r = SplitMix64::new(7);
        let xs: Vec<f64> = (0..200_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
    }

    #[test]
    fn init_is_seeded_and_matches_the_documented_std() {
        let cfg = ModelConfig::preset("micro").unwrap();
        let a = init_parameters(&cfg, 1, &Device::Cpu).unwrap();
        let b = init_parameters(&cfg, 1, &Device::Cpu).unwrap();
        let c = init_parameters(&cfg, 2, &Device::Cpu).unwrap();
        let name = "model.layers.0.mlp.up_proj.weight";
        let va: Vec<f32> = a[name].flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        let vc: Vec<f32> = c[name].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let std = (va.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / va.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.003, "{std}");
        let norm: Vec<f32> = a["model.norm.weight"].to_vec1().unwrap();
        assert!(norm.iter().all(|x| *x == 1.0));
        assert_eq!(a.len(), parameter_shapes(&cfg).len());
    }
}
