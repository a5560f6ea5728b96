//! Where a training stage starts: for `pretrain`, a tokenizer that shapes a fresh model's vocabulary
//! and special ids; for `sft` and `dpo`, a model directory whose shape, tokenizer and weights the run
//! keeps (and records by content).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::ModelConfig;
use zerolm_train::checkpoint::InputFingerprint;
use zerolm_train::{TrainConfig, TrainError};

use super::args::StageArgs;
use super::setup::{check_model_completion_end, stream_inputs, StreamInputs};

/// The model config with `vocab_size` taken from the tokenizer, unless the user set a larger
/// vocabulary explicitly (rows past the tokenizer's are then never used).
pub fn fit_vocab(
    model: &mut ModelConfig,
    tokenizer_vocab: usize,
    explicit: bool,
) -> Result<(), TrainError> {
    if explicit {
        if model.vocab_size < tokenizer_vocab {
            return Err(TrainError::Config(format!(
                "model.vocab_size {} is smaller than the tokenizer's vocabulary ({tokenizer_vocab})",
                model.vocab_size
            )));
        }
    } else {
        model.vocab_size = tokenizer_vocab;
    }
    Ok(())
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

/// A model directory a stage fine-tunes, checked against the run's settings and tokenizer.
pub struct StartModel {
    pub dir: PathBuf,
    pub tokenizer: TokenizerDir,
    /// Its weights file by content (a run input: it joins the resume identity).
    pub weights: InputFingerprint,
}

impl StartModel {
    /// Opens `dir` for a run with `cfg`: the settings must keep its shape, and the tokenizer (`--tokenizer`,
    /// by default the model's own) must be the one it was trained with.
    pub fn open(
        dir: &Path,
        tokenizer: Option<&Path>,
        cfg: &TrainConfig,
    ) -> Result<StartModel, TrainError> {
        check_start_shape(dir, cfg)?;
        let (tokenizer, _) = start_tokenizer(dir, tokenizer)?;
        let path = dir.join("model.safetensors");
        let weights = InputFingerprint {
            role: "model".into(),
            blake3: zerolm_io::hash_file(&path)?.0,
            path: path.display().to_string(),
        };
        Ok(StartModel {
            dir: dir.to_path_buf(),
            tokenizer,
            weights,
        })
    }

    /// Opens `dir` for a stage run with `args` and opens the run's token files of `kind` as streams; the
    /// model's weights join the files' fingerprints as a run input.
    pub fn with_streams(
        dir: &Path,
        args: &StageArgs,
        kind: Kind,
    ) -> Result<(StartModel, StreamInputs), TrainError> {
        let start = StartModel::open(dir, args.tokenizer.as_deref(), &args.cfg)?;
        let mut files = stream_inputs(args, kind, &start.tokenizer)?;
        check_model_completion_end(dir, files.completion_end.as_deref())?;
        files.prints.push(start.weights.clone());
        Ok((start, files))
    }

    /// Its weights as training parameters (a tied model's exported `lm_head.weight`, if any, is
    /// dropped: the head is the embedding).
    pub fn params(&self, cfg: &ModelConfig) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let (mut params, _) = zerolm_model::io::load_safetensors(
            &self.dir.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )?;
        if cfg.tie_word_embeddings {
            params.remove("lm_head.weight");
        }
        Ok(params)
    }
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
fn check_start_shape(model: &Path, cfg: &TrainConfig) -> Result<(), TrainError> {
    if cfg.model != zerolm_model::io::read_config(model)? {
        return Err(TrainError::Config(format!(
            "the model's shape comes from {}/config.json; `model.*` settings cannot change it",
            model.display()
        )));
    }
    cfg.validate()
}
