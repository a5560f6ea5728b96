//! A run's result as a Hugging Face model directory: config.json, generation_config.json,
//! model.safetensors (with provenance in its header), the tokenizer files, and zerolm.json saying what
//! produced it.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::json;
use zerolm_data::artifact::keys;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::ModelConfig;
use zerolm_train::checkpoint::InputFingerprint;
use zerolm_train::TrainError;

/// Provenance stored in `model.safetensors`'s header and `zerolm.json` of an exported model.
pub struct Provenance<'a> {
    pub stage: &'a str,
    pub step: usize,
    pub tokenizer_fingerprint: &'a str,
    pub inputs: &'a [InputFingerprint],
    pub config: &'a serde_json::Value,
    /// Where the training data's chat completions ended (`template`/`eos`), for SFT and DPO.
    pub completion_end: Option<&'a str>,
}

/// Exports an HF model directory at `dir` atomically.
pub fn export_model_dir(
    dir: &Path,
    cfg: &ModelConfig,
    params: &BTreeMap<String, Tensor>,
    tokenizer: &TokenizerDir,
    prov: &Provenance,
) -> Result<(), TrainError> {
    let mut meta = BTreeMap::new();
    meta.insert("zerolm.stage".to_string(), prov.stage.to_string());
    meta.insert("zerolm.step".to_string(), prov.step.to_string());
    meta.insert(
        "zerolm.tokenizer_fingerprint".to_string(),
        prov.tokenizer_fingerprint.to_string(),
    );
    if let Some(end) = prov.completion_end {
        meta.insert(keys::COMPLETION_END.to_string(), end.to_string());
    }
    let mut files = zerolm_model::io::model_dir_files(cfg, params, &meta)?;
    let weights = files
        .iter()
        .find(|(n, _)| *n == "model.safetensors")
        .map(|(_, b)| zerolm_io::hash_bytes(b));
    let zerolm = json!({
        "stage": prov.stage,
        "step": prov.step,
        "weights_blake3": weights,
        "tokenizer_fingerprint": prov.tokenizer_fingerprint,
        "inputs": prov.inputs,
        "config": prov.config,
        "completion_end": prov.completion_end,
    });
    files.push((
        "zerolm.json",
        serde_json::to_vec_pretty(&zerolm).expect("json"),
    ));
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let src = tokenizer.dir.join(name);
        let bytes = std::fs::read(&src).map_err(|cause| zerolm_io::IoError::read(&src, cause))?;
        files.push((name, bytes));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    zerolm_io::write_files_atomically(dir, &refs)?;
    Ok(())
}
