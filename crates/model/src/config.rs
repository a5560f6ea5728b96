//! The model's shape: Hugging Face `config.json` fields, the named presets, and validation.
//!
//! One struct serves both directions: it deserialises a `config.json` written by transformers for
//! `LlamaForCausalLM` / `Qwen3ForCausalLM` (unknown fields are ignored there) and serialises back to a
//! file that `AutoConfig.from_pretrained` reads.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The architecture family, as Hugging Face spells it in `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// `LlamaForCausalLM`: no q/k norm.
    Llama,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on queries and keys before RoPE.
    Qwen3,
}

impl ModelType {
    /// The `architectures` entry transformers expects.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// A decoder's shape and constants, named as in Hugging Face `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Standard deviation of the normal init of every matrix (HF `initializer_range`).
    #[serde(default = "default_init_std")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_init_std() -> f64 {
    0.02
}

/// The presets `--preset` accepts, with one line each for `--help` and errors.
pub const PRESETS: &[(&str, &str)] = &[
    ("micro", "hidden 32, 2 layers, 4 heads (2 KV), FFN 64: tests and smoke runs, seconds"),
    ("tiny", "hidden 128, 4 layers, 4 heads (2 KV), FFN 384: the shipped data in minutes on 2 cores"),
    ("minimind2", "MiniMind2: hidden 512, 8 layers, 8 heads (2 KV), FFN 1408, θ 1e6, tied, ≈25.8M params"),
    ("minimind3", "MiniMind-3 (Qwen3-style): hidden 768, 8 layers, 8 heads (4 KV), head_dim 96, FFN 2432, q/k norm"),
];

impl ModelConfig {
    /// A named preset (see [`PRESETS`]). `vocab_size` is MiniMind's 6400; training stages replace it with
    /// the tokenizer's size unless the user sets it.
    pub fn preset(name: &str) -> Result<ModelConfig, ModelError> {
        let base =
            |model_type, hidden, ffn, layers, heads, kv, head_dim: Option<usize>| ModelConfig {
                model_type,
                hidden_size: hidden,
                intermediate_size: ffn,
                num_hidden_layers: layers,
                num_attention_heads: heads,
                num_key_value_heads: kv,
                head_dim,
                vocab_size: 6400,
                rms_norm_eps: 1e-5,
                rope_theta: 1e6,
                max_position_embeddings: 32768,
                tie_word_embeddings: true,
                initializer_range: 0.02,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                pad_token_id: Some(0),
            };
        Ok(match name {
            "micro" => base(ModelType::Llama, 32, 64, 2, 4, 2, None),
            "tiny" => base(ModelType::Llama, 128, 384, 4, 4, 2, None),
            "minimind2" => base(ModelType::Llama, 512, 1408, 8, 8, 2, None),
            "minimind3" => ModelConfig {
                rms_norm_eps: 1e-6,
                ..base(ModelType::Qwen3, 768, 2432, 8, 8, 4, Some(96))
            },
            other => {
                let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                return Err(ModelError::Config(format!(
                    "unknown preset `{other}`; known presets: {}",
                    known.join(", ")
                )));
            }
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether queries and keys get a per-head RMSNorm (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.model_type == ModelType::Qwen3
    }

    /// Checks the shape is buildable; the message names the field.
    // `!(x > 0.0)` is meant: unlike `x <= 0.0` it also rejects NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({hd}) must be even and positive (RoPE rotates pairs)"
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size ({}) is not divisible by num_attention_heads ({}); set head_dim",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.rms_norm_eps > 0.0)
            || !(self.rope_theta > 0.0)
            || !(self.initializer_range >= 0.0)
        {
            return bad(
                "rms_norm_eps and rope_theta must be positive, initializer_range non-negative"
                    .into(),
            );
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        crate::params::parameter_shapes(self)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// The `config.json` transformers loads: this struct plus the fields transformers needs to pick the
    /// class and the activation.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().expect("object");
        o.insert(
            "architectures".into(),
            serde_json::json!([self.model_type.architecture()]),
        );
        o.insert("head_dim".into(), serde_json::json!(self.head_dim()));
        o.insert("hidden_act".into(), "silu".into());
        o.insert("attention_bias".into(), false.into());
        o.insert("attention_dropout".into(), 0.0.into());
        o.insert("mlp_bias".into(), false.into());
        o.insert("use_cache".into(), true.into());
        o.insert("torch_dtype".into(), "float32".into());
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": self.rope_theta}),
        );
        if self.model_type == ModelType::Qwen3 {
            o.insert("use_sliding_window".into(), false.into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimind2_has_the_articles_parameter_count() {
        let c = ModelConfig::preset("minimind2").unwrap();
        // MiniMind2 reports ≈25.83M parameters with a 6400 vocabulary and tied embeddings.
        let n = c.num_parameters();
        assert!((25_700_000..25_900_000).contains(&n), "{n}");
    }

    #[test]
    fn presets_validate_and_unknown_is_named() {
        for (name, _) in PRESETS {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
        let e = ModelConfig::preset("huge").unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("minimind2"), "{e}");
    }

    #[test]
    fn bad_head_split_is_refused() {
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.num_key_value_heads = 3;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_key_value_heads"));
    }
}
