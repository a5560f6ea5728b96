//! A zerolm model as llama.cpp reads it: the hyper-parameter keys of its `llama` (or `qwen3`)
//! architecture, the tensors under ggml's names, and the byte-level BPE tokenizer as `gpt2`.
//!
//! Hugging Face's Llama keeps each head's rotary pairs as (i, i + d/2) ("rotate half"); llama.cpp's
//! `llama` architecture rotates adjacent pairs (2i, 2i + 1), so the query and key rows of every head are
//! reordered on the way out, as llama.cpp's own converter does. Its `qwen3` architecture rotates halves
//! like Hugging Face, so Qwen3 weights go out as they are.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde_json::Value as Json;
use zerolm_model::{ModelConfig, ModelType};

use super::file::{GgmlType, TensorData, Value};
use super::quant;
use crate::ExportError;

/// How the exported tensors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufDtype {
    F32,
    F16,
    Q8_0,
}

impl GgufDtype {
    pub fn name(self) -> &'static str {
        match self {
            GgufDtype::F32 => "f32",
            GgufDtype::F16 => "f16",
            GgufDtype::Q8_0 => "q8_0",
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0).
    fn file_type(self) -> u32 {
        match self {
            GgufDtype::F32 => 0,
            GgufDtype::F16 => 1,
            GgufDtype::Q8_0 => 7,
        }
    }
}

/// The metadata of the file: general keys, the architecture's hyper-parameters and the tokenizer.
pub fn metadata(
    cfg: &ModelConfig,
    name: &str,
    dtype: GgufDtype,
    tokenizer: &TokenizerParts,
    source: &[(String, String)],
) -> Vec<(String, Value)> {
    let arch = architecture(cfg);
    let u = |v: usize| Value::U32(v as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str(arch.into())),
        ("general.name".into(), Value::Str(name.into())),
        ("general.file_type".into(), Value::U32(dtype.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.alignment".into(), u(super::file::ALIGNMENT)),
    ];
    let hp = [
        ("vocab_size", u(cfg.vocab_size)),
        ("context_length", u(cfg.max_position_embeddings)),
        ("embedding_length", u(cfg.hidden_size)),
        ("block_count", u(cfg.num_hidden_layers)),
        ("feed_forward_length", u(cfg.intermediate_size)),
        ("rope.dimension_count", u(cfg.head_dim())),
        ("rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("attention.head_count", u(cfg.num_attention_heads)),
        ("attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("attention.key_length", u(cfg.head_dim())),
        ("attention.value_length", u(cfg.head_dim())),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    m.extend(hp.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    m.extend(tokenizer.metadata());
    m.extend((source.iter()).map(|(k, v)| (format!("zerolm.{k}"), Value::Str(v.clone()))));
    m
}

fn architecture(cfg: &ModelConfig) -> &'static str {
    match cfg.model_type {
        ModelType::Llama => "llama",
        ModelType::Qwen3 => "qwen3",
    }
}

/// Every weight under its ggml name, encoded in `dtype` (vectors stay f32, as llama.cpp expects).
pub fn tensors(
    cfg: &ModelConfig,
    params: &BTreeMap<String, Tensor>,
    dtype: GgufDtype,
) -> Result<Vec<TensorData>, ExportError> {
    let mut out = Vec::new();
    for (hf, ggml) in names(cfg) {
        let t = params
            .get(&hf)
            .ok_or_else(|| ExportError::Invalid(format!("the weights lack `{hf}`")))?;
        let shape = t.dims().to_vec();
        let mut values: Vec<f32> = t.flatten_all()?.to_vec1()?;
        if cfg.model_type == ModelType::Llama {
            if hf.ends_with("q_proj.weight") {
                values = rotary_pairs_adjacent(&values, cfg.num_attention_heads, &shape);
            } else if hf.ends_with("k_proj.weight") {
                values = rotary_pairs_adjacent(&values, cfg.num_key_value_heads, &shape);
            }
        }
        out.push(encode(ggml, shape, &values, dtype));
    }
    Ok(out)
}

fn encode(name: String, shape: Vec<usize>, values: &[f32], dtype: GgufDtype) -> TensorData {
    let matrix = shape.len() == 2;
    let (kind, bytes) = match dtype {
        _ if !matrix => (GgmlType::F32, quant::f32_bytes(values)),
        GgufDtype::F32 => (GgmlType::F32, quant::f32_bytes(values)),
        GgufDtype::F16 => (GgmlType::F16, quant::f16_bytes(values)),
        GgufDtype::Q8_0 if shape[1].is_multiple_of(quant::Q8_0_BLOCK) => {
            (GgmlType::Q8_0, quant::q8_0_bytes(values))
        }
        // Rows that are not whole blocks cannot be q8_0; llama.cpp's converter keeps them in f16.
        GgufDtype::Q8_0 => (GgmlType::F16, quant::f16_bytes(values)),
    };
    TensorData {
        name,
        shape,
        kind,
        bytes,
    }
}

/// (Hugging Face name, ggml name) of every weight, in the order llama.cpp's converter writes them.
fn names(cfg: &ModelConfig) -> Vec<(String, String)> {
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        "token_embd.weight".to_string(),
    )];
    for i in 0..cfg.num_hidden_layers {
        let (hf, gg) = (format!("model.layers.{i}"), format!("blk.{i}"));
        let mut layer = vec![
            ("input_layernorm", "attn_norm"),
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ];
        if cfg.qk_norm() {
            layer.push(("self_attn.q_norm", "attn_q_norm"));
            layer.push(("self_attn.k_norm", "attn_k_norm"));
        }
        out.extend(
            (layer.into_iter())
                .map(|(h, g)| (format!("{hf}.{h}.weight"), format!("{gg}.{g}.weight"))),
        );
    }
    out.push(("model.norm.weight".into(), "output_norm.weight".into()));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), "output.weight".into()));
    }
    out
}

/// Reorders the rows of a [heads·d, in] projection so each head's rotary pairs (i, i + d/2) become
/// adjacent rows (2i, 2i + 1).
fn rotary_pairs_adjacent(values: &[f32], heads: usize, shape: &[usize]) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape[1]);
    let d = rows / heads;
    let mut out = Vec::with_capacity(values.len());
    for h in 0..heads {
        for i in 0..d / 2 {
            for r in [i, i + d / 2] {
                let row = h * d + r;
                out.extend_from_slice(&values[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

/// The tokenizer as llama.cpp's byte-level BPE (`gpt2`) reads it.
pub struct TokenizerParts {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: u32,
    pub chat_template: String,
}

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

impl TokenizerParts {
    /// Reads `tokenizer.json` (a byte-level BPE) for a model of `vocab_size` rows; rows beyond the
    /// tokenizer's tokens become unused placeholders.
    pub fn from_json(
        tokenizer: &Json,
        vocab_size: usize,
        special: (Option<u32>, u32, u32),
        chat_template: String,
    ) -> Result<TokenizerParts, ExportError> {
        let bad = |m: &str| ExportError::Tokenizer(m.to_string());
        let model = &tokenizer["model"];
        if model["type"] != "BPE" {
            return Err(bad("only byte-level BPE tokenizers export to GGUF"));
        }
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![NORMAL; vocab_size];
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("no model.vocab"))?;
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| bad("a vocab id is not a number"))? as usize;
            *tokens
                .get_mut(id)
                .ok_or_else(|| bad("a token id is beyond vocab_size"))? = Some(text.clone());
        }
        for added in tokenizer["added_tokens"].as_array().into_iter().flatten() {
            let id = added["id"]
                .as_u64()
                .ok_or_else(|| bad("an added token lacks its id"))? as usize;
            let text = added["content"]
                .as_str()
                .ok_or_else(|| bad("an added token lacks content"))?;
            *tokens
                .get_mut(id)
                .ok_or_else(|| bad("a token id is beyond vocab_size"))? = Some(text.to_string());
            if added["special"] == true {
                types[id] = CONTROL;
            }
        }
        let tokens = (tokens.into_iter().enumerate())
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    types[i] = UNUSED;
                    format!("[PAD{i}]")
                })
            })
            .collect();
        let merges = (model["merges"]
            .as_array()
            .ok_or_else(|| bad("no model.merges"))?)
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => Ok(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            )),
            _ => Err(bad("a merge is neither \"a b\" nor [a, b]")),
        })
        .collect::<Result<_, _>>()?;
        let (bos, eos, pad) = special;
        Ok(TokenizerParts {
            tokens,
            types,
            merges,
            bos,
            eos,
            pad,
            chat_template,
        })
    }

    fn metadata(&self) -> Vec<(String, Value)> {
        let mut m: Vec<(String, Value)> = vec![
            ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
            // GPT-2's split; zerolm's extra split of each Han character changes no token (no merge
            // crosses a Han character's edge), checked against llama.cpp's own tokenizer in the tests.
            ("tokenizer.ggml.pre".into(), Value::Str("gpt-2".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Strings(self.tokens.clone()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::I32s(self.types.clone()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                Value::Strings(self.merges.clone()),
            ),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(self.eos)),
            (
                "tokenizer.ggml.padding_token_id".into(),
                Value::U32(self.pad),
            ),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
            (
                "tokenizer.chat_template".into(),
                Value::Str(self.chat_template.clone()),
            ),
        ];
        if let Some(bos) = self.bos {
            m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_heads_rotary_halves_are_interleaved() {
        // 2 heads of d = 4, 1 column: rows h0: 0 1 2 3, h1: 4 5 6 7.
        let v: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let out = rotary_pairs_adjacent(&v, 2, &[8, 1]);
        assert_eq!(out, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }

    #[test]
    fn ggml_names_cover_a_qwen3_layer_and_an_untied_head() {
        let mut cfg = ModelConfig::preset("micro").unwrap();
        cfg.model_type = ModelType::Qwen3;
        cfg.tie_word_embeddings = false;
        let n: Vec<String> = names(&cfg).into_iter().map(|(_, g)| g).collect();
        assert!(n.contains(&"blk.1.attn_k_norm.weight".to_string()));
        assert_eq!(n.last().unwrap(), "output.weight");
        assert_eq!(n.len(), 1 + 2 * 11 + 2);
    }
}
