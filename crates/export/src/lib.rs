//! Exports of a zerolm model directory for other tools:
//!
//! - [`gguf`]: one GGUF v3 file for llama.cpp, Ollama and LM Studio (`f32`, `f16` or `q8_0`), with the
//!   tokenizer and chat template inside;
//! - [`hf`]: a Hugging Face directory with the weights in `bf16` or `f16` (half the size; transformers
//!   and zerolm load it).
//!
//! Both record where they came from (the source directory's weights hash and stage) and are written to a
//! temporary path first, then renamed.

pub mod gguf;
pub mod hf;

use std::path::{Path, PathBuf};

use candle_core::Device;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::ModelConfig;

pub use gguf::llama::GgufDtype;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Io(#[from] zerolm_io::IoError),
    #[error(transparent)]
    Model(#[from] zerolm_model::ModelError),
    #[error(transparent)]
    Data(#[from] zerolm_data::DataError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Tokenizer(String),
    #[error("{0}")]
    Invalid(String),
}

impl ExportError {
    /// Whether the user can fix it (a bad or missing input), as opposed to an internal failure.
    pub fn is_user_error(&self) -> bool {
        match self {
            ExportError::Io(e) => e.is_user_error(),
            ExportError::Model(e) => e.is_user_error(),
            ExportError::Data(e) => e.is_user_error(),
            ExportError::Candle(_) => false,
            ExportError::Tokenizer(_) | ExportError::Invalid(_) => true,
        }
    }
}

/// A model directory read for export: its config, f32 weights, tokenizer and provenance.
pub struct Source {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    pub params: std::collections::BTreeMap<String, candle_core::Tensor>,
    pub tokenizer: TokenizerDir,
    /// What produced it, from `zerolm.json` (stage, weights hash, tokenizer fingerprint).
    pub provenance: Vec<(String, String)>,
}

impl Source {
    pub fn load(dir: &Path) -> Result<Source, ExportError> {
        let cfg = zerolm_model::io::read_config(dir)?;
        let weights = dir.join("model.safetensors");
        let (params, _) = zerolm_model::io::load_safetensors(&weights, &Device::Cpu)?;
        // Building the model checks every tensor's name and shape against the config.
        zerolm_model::Model::new(cfg.clone(), params.clone())?;
        let tokenizer = TokenizerDir::load(dir)?;
        let (weights_hash, _) = zerolm_io::hash_file(&weights)?;
        let mut provenance = vec![
            ("source_weights_blake3".to_string(), weights_hash),
            (
                "tokenizer_fingerprint".to_string(),
                tokenizer.fingerprint.clone(),
            ),
        ];
        if let Some(stage) = read_stage(dir) {
            provenance.push(("source_stage".to_string(), stage));
        }
        Ok(Source {
            dir: dir.to_path_buf(),
            cfg,
            params,
            tokenizer,
            provenance,
        })
    }

    /// The model's name (see [`zerolm_model::io::model_name`]).
    pub fn name(&self) -> String {
        zerolm_model::io::model_name(&self.dir)
    }
}

fn read_stage(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("zerolm.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(format!("{} step {}", v["stage"].as_str()?, v["step"]))
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub tensors: usize,
}

/// Writes `src` as one GGUF file at `out` with matrices in `dtype`.
pub fn to_gguf(src: &Source, out: &Path, dtype: GgufDtype) -> Result<Written, ExportError> {
    let tokenizer_json = read_json(&src.tokenizer.dir.join("tokenizer.json"))?;
    let tokenizer_config = read_json(&src.tokenizer.dir.join("tokenizer_config.json"))?;
    let template = tokenizer_config["chat_template"]
        .as_str()
        .unwrap_or_default();
    let special = (
        src.cfg.bos_token_id,
        src.tokenizer.eos_id,
        src.tokenizer.pad_id,
    );
    let parts = gguf::llama::TokenizerParts::from_json(
        &tokenizer_json,
        src.cfg.vocab_size,
        special,
        template.to_string(),
    )?;
    let meta = gguf::llama::metadata(&src.cfg, &src.name(), dtype, &parts, &src.provenance);
    let tensors = gguf::llama::tensors(&src.cfg, &src.params, dtype)?;
    let mut bytes = Vec::new();
    gguf::file::write(&mut bytes, &meta, &tensors).expect("writing to memory");
    zerolm_io::write_atomically(out, &bytes)?;
    Ok(Written {
        path: out.to_path_buf(),
        bytes: bytes.len() as u64,
        tensors: tensors.len(),
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value, ExportError> {
    let bytes = std::fs::read(path).map_err(|e| zerolm_io::IoError::read(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ExportError::Tokenizer(format!("{}: {e}", path.display())))
}
