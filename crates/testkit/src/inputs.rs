//! The inputs tests start from, made through the libraries as the stages would make them.

use std::path::{Path, PathBuf};

use candle_core::Device;
use zerolm_data::encode::{self, EncodeConfig};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::{init_parameters, ModelConfig};
use zerolm_stages::common::{export_model_dir, Provenance};

/// The committed tokenizer of `tests/fixtures/tokenizer`.
pub fn fixture_tokenizer() -> TokenizerDir {
    TokenizerDir::load(&crate::fixtures().join("tokenizer")).unwrap()
}

/// `inputs` tokenized as `kind` with the fixture tokenizer (default settings) into `out`.
pub fn token_file(kind: Kind, inputs: &[PathBuf], out: &Path) -> PathBuf {
    token_file_with(kind, inputs, out, |_| {})
}

/// Like [`token_file`], with the settings `set` changes.
pub fn token_file_with(
    kind: Kind,
    inputs: &[PathBuf],
    out: &Path,
    set: impl FnOnce(&mut EncodeConfig),
) -> PathBuf {
    let mut cfg = EncodeConfig::new(kind);
    set(&mut cfg);
    let tok = fixture_tokenizer();
    encode::run(&tok, inputs, out, &cfg, &["test".into()], &mut ()).unwrap();
    out.to_path_buf()
}

/// An untrained `micro` model (weights drawn with `seed`) exported with the fixture tokenizer to `dir`.
pub fn micro_model(dir: &Path, seed: u64) -> PathBuf {
    untrained_model(dir, "micro", seed)
}

/// An untrained model of `preset` (weights drawn with `seed`) exported with the fixture tokenizer.
pub fn untrained_model(dir: &Path, preset: &str, seed: u64) -> PathBuf {
    untrained_model_of(dir, ModelConfig::preset(preset).unwrap(), seed)
}

/// An untrained model of shape `cfg` (its vocabulary made the fixture tokenizer's), weights drawn with
/// `seed`, exported with the fixture tokenizer to `dir`.
pub fn untrained_model_of(dir: &Path, mut cfg: ModelConfig, seed: u64) -> PathBuf {
    let tok = fixture_tokenizer();
    cfg.vocab_size = tok.vocab_size();
    let prov = Provenance {
        stage: "test",
        step: 0,
        tokenizer_fingerprint: &tok.fingerprint,
        inputs: &[],
        config: &serde_json::json!({}),
        completion_end: None,
    };
    let params = init_parameters(&cfg, seed, &Device::Cpu).unwrap();
    export_model_dir(dir, &cfg, &params, &tok, &prov).unwrap();
    dir.to_path_buf()
}
