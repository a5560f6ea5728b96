//! What every training stage does around the loop: check inputs against the tokenizer, fingerprint
//! them, write `resolved_config.json`, and export the final Hugging Face model directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::json;
use zerolm_data::artifact::{self, TokenFile};
use zerolm_data::fingerprint;
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::ModelConfig;

use crate::checkpoint::InputFingerprint;
use crate::trainer::{self, Outcome, RunSpec, Task};
use crate::TrainError;

/// Reads token files of `kind`, refusing any made with another tokenizer; returns them with their
/// content fingerprints under `role`.
pub fn read_token_files(
    paths: &[PathBuf],
    kind: Kind,
    tokenizer: &TokenizerDir,
    role: &str,
) -> Result<(Vec<TokenFile>, Vec<InputFingerprint>), TrainError> {
    let mut files = Vec::new();
    let mut prints = Vec::new();
    for path in paths {
        let file = artifact::read(path, kind)?;
        file.check_tokenizer(&tokenizer.fingerprint)?;
        let (hash, _) = fingerprint::file(path)?;
        prints.push(InputFingerprint {
            role: role.to_string(),
            path: path.display().to_string(),
            blake3: hash,
        });
        files.push(file);
    }
    Ok((files, prints))
}

/// Sets the model's special ids from the tokenizer (eos = the chat end token).
pub fn special_ids(model: &mut ModelConfig, tokenizer: &TokenizerDir) {
    model.eos_token_id = Some(tokenizer.eos_id);
    model.pad_token_id = Some(tokenizer.pad_id);
    model.bos_token_id = tokenizer
        .tokenizer
        .token_to_id(&tokenizer.template.bos_token)
        .or(model.bos_token_id);
}

/// Writes `value` as `<out>/resolved_config.json` (atomically).
pub fn write_resolved_config(out: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let bytes = serde_json::to_vec_pretty(value).expect("json");
    fingerprint::write_atomically(&out.join("resolved_config.json"), &bytes)?;
    Ok(())
}

/// Provenance stored in `model.safetensors`'s header and `zerolm.json` of an exported model.
pub struct Provenance<'a> {
    pub stage: &'a str,
    pub step: usize,
    pub tokenizer_fingerprint: &'a str,
    pub inputs: &'a [InputFingerprint],
    pub config: &'a serde_json::Value,
}

/// Exports an HF model directory at `dir` atomically: config.json, generation_config.json,
/// model.safetensors, the tokenizer files, and zerolm.json (what produced it).
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
    let mut files = zerolm_model::io::model_dir_files(cfg, params, &meta)?;
    let weights = files
        .iter()
        .find(|(n, _)| *n == "model.safetensors")
        .map(|(_, b)| fingerprint::bytes(b));
    let zerolm = json!({
        "stage": prov.stage,
        "step": prov.step,
        "weights_blake3": weights,
        "tokenizer_fingerprint": prov.tokenizer_fingerprint,
        "inputs": prov.inputs,
        "config": prov.config,
    });
    files.push((
        "zerolm.json",
        serde_json::to_vec_pretty(&zerolm).expect("json"),
    ));
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let src = tokenizer.dir.join(name);
        let bytes = std::fs::read(&src).map_err(|cause| zerolm_data::DataError::Read {
            path: src.clone(),
            cause,
        })?;
        files.push((name, bytes));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    fingerprint::write_files_atomically(dir, &refs)?;
    Ok(())
}

/// Runs the training loop for `task`, then exports the result as `<out>/model`.
pub fn train_and_export(
    task: &dyn Task,
    init: BTreeMap<String, Tensor>,
    spec: &RunSpec,
    tokenizer: &TokenizerDir,
) -> Result<(Outcome, PathBuf), TrainError> {
    let outcome = trainer::train(task, init, spec)?;
    let dir = spec.out.join("model");
    let config = serde_json::to_value(spec.cfg).expect("config serialises");
    let prov = Provenance {
        stage: spec.stage,
        step: outcome.step,
        tokenizer_fingerprint: &spec.tokenizer_fingerprint,
        inputs: &spec.inputs,
        config: &config,
    };
    export_model_dir(&dir, &spec.cfg.model, &outcome.params, tokenizer, &prov)?;
    Ok((outcome, dir))
}

/// The tokenizer of a stage that starts from a model directory: `--tokenizer` or, by default, the
/// model's own; refused unless it is the model's (and its vocabulary fits the model's).
pub fn start_tokenizer(
    model: &Path,
    tokenizer: Option<&Path>,
) -> Result<(TokenizerDir, PathBuf), TrainError> {
    let dir = tokenizer.unwrap_or(model).to_path_buf();
    let tok = TokenizerDir::load(&dir)?;
    if TokenizerDir::load(model)?.fingerprint != tok.fingerprint {
        return Err(TrainError::Config(format!(
            "{} was trained with another tokenizer than {}; use the tokenizer the model was trained with",
            model.display(),
            dir.display()
        )));
    }
    let vocab = zerolm_model::io::read_config(model)?.vocab_size;
    if tok.vocab_size() > vocab {
        return Err(TrainError::Config(format!(
            "the tokenizer has {} tokens but {}'s vocab_size is {vocab}",
            tok.vocab_size(),
            model.display()
        )));
    }
    Ok((tok, dir))
}

/// Checks that the settings keep the starting model's shape (it comes from `model/config.json`).
pub fn check_start_shape(model: &Path, cfg: &crate::TrainConfig) -> Result<(), TrainError> {
    if cfg.model != zerolm_model::io::read_config(model)? {
        return Err(TrainError::Config(format!(
            "the model's shape comes from {}/config.json; `model.*` settings cannot change it",
            model.display()
        )));
    }
    cfg.validate()
}

/// The starting model's weights as a run input (its blake3 joins the resume identity).
pub fn start_weights(model: &Path) -> Result<InputFingerprint, TrainError> {
    let path = model.join("model.safetensors");
    Ok(InputFingerprint {
        role: "model".into(),
        blake3: fingerprint::file(&path)?.0,
        path: path.display().to_string(),
    })
}

/// The starting model's weights as training parameters (a tied model's exported `lm_head.weight`, if
/// any, is dropped: the head is the embedding).
pub fn start_params(
    model: &Path,
    cfg: &zerolm_model::ModelConfig,
) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let (mut params, _) = zerolm_model::io::load_safetensors(
        &model.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    if cfg.tie_word_embeddings {
        params.remove("lm_head.weight");
    }
    Ok(params)
}
