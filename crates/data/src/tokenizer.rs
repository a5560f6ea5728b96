//! Byte-level BPE tokenizer: training (MiniMind recipe), the Hugging Face directory it is saved as, and
//! loading it back with its chat template and fingerprint.

use crate::chat::{ChatTemplate, CHATML_TEMPLATE};
use crate::error::{DataError, Result};
use crate::input::RowReader;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};
use zerolm_io::IoError;

/// Special tokens, in id order (0, 1, 2).
pub const PAD_TOKEN: &str = "<|endoftext|>";
pub const BOS_TOKEN: &str = "<|im_start|>";
pub const EOS_TOKEN: &str = "<|im_end|>";
pub const SPECIAL_TOKENS: [&str; 3] = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN];

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub model_max_length: usize,
    /// Pre-tokenize every Han (CJK ideograph) character on its own, so that no token spans two of them.
    /// Byte-level BPE otherwise merges whole Chinese clauses of a small, repetitive corpus into single
    /// tokens (`张秀英住在内罗毕`), which lets a token's very existence say which statement is true.
    pub split_han: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            vocab_size: 6400,
            min_frequency: 2,
            model_max_length: 32768,
            split_han: false,
        }
    }
}

/// Collect every string value of a JSON row (texts, message contents, prompts, completions).
fn strings_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings_of(x, out)),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "id")
            .for_each(|(_, x)| strings_of(x, out)),
        _ => {}
    }
}

/// Stream the texts of all inputs; the first read error is kept in `failure` and ends the stream.
fn texts(
    inputs: &[PathBuf],
    failure: Arc<Mutex<Option<DataError>>>,
) -> impl Iterator<Item = String> + Send {
    let inputs = inputs.to_vec();
    let mut file = 0usize;
    let mut reader: Option<RowReader> = None;
    let mut buffered: Vec<String> = Vec::new();
    std::iter::from_fn(move || loop {
        if let Some(s) = buffered.pop() {
            return Some(s);
        }
        if reader.is_none() {
            let path = inputs.get(file)?;
            file += 1;
            match RowReader::open(path) {
                Ok(r) => reader = Some(r),
                Err(e) => {
                    *failure.lock().unwrap() = Some(e);
                    return None;
                }
            }
        }
        let r = reader.as_mut()?;
        match r.next_row() {
            Ok(None) => reader = None,
            Ok(Some(row)) => match row.value {
                Ok(v) => {
                    strings_of(&v, &mut buffered);
                    buffered.reverse();
                }
                Err(msg) => {
                    *failure.lock().unwrap() = Some(DataError::BadRow { at: row.at, msg });
                    return None;
                }
            },
            Err(e) => {
                *failure.lock().unwrap() = Some(e);
                return None;
            }
        }
    })
}

fn tok_err(path: &Path) -> impl Fn(tokenizers::Error) -> DataError + '_ {
    move |e| DataError::Tokenizer {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// MiniMind's byte-level pre-tokenizer, optionally after isolating each Han character.
fn pre_tokenizer(split_han: bool) -> PreTokenizerWrapper {
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    if !split_han {
        return byte_level;
    }
    let han = Split::new(
        SplitPattern::Regex(r"\p{Han}".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .expect("the Han pattern is a valid regex");
    PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(han),
        byte_level,
    ]))
}

/// What [`train`] made: the vocabulary size reached and the new tokenizer's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trained {
    pub vocab_size: usize,
    pub fingerprint: String,
}

/// Train a byte-level BPE tokenizer on `inputs` and write the HF directory `out`
/// (`tokenizer.json`, `tokenizer_config.json`), then record the run in `out/resolved_config.json`.
pub fn train(inputs: &[PathBuf], cfg: &TrainConfig, out: &Path) -> Result<Trained> {
    let min_vocab = SPECIAL_TOKENS.len() + 256;
    if cfg.vocab_size < min_vocab {
        return Err(DataError::Usage(format!(
            "--vocab-size {} is too small: byte-level BPE needs at least {min_vocab} (3 specials + 256 bytes)",
            cfg.vocab_size
        )));
    }
    let tokenizer = train_bpe(inputs, cfg, out)?;
    check_special_ids(&tokenizer, out)?;
    let vocab_size = tokenizer.get_vocab_size(true);
    let json = tokenizer.to_string(true).map_err(tok_err(out))?;
    let config =
        serde_json::to_string_pretty(&tokenizer_config(cfg)).expect("static JSON serialises");
    zerolm_io::write_files_atomically(
        out,
        &[
            ("tokenizer.json", json.as_bytes()),
            ("tokenizer_config.json", config.as_bytes()),
        ],
    )?;
    let trained = Trained {
        vocab_size,
        fingerprint: fingerprint_of(json.as_bytes(), config.as_bytes()),
    };
    write_resolved_config(inputs, cfg, out, &trained)?;
    Ok(trained)
}

/// Run the BPE trainer over every string of `inputs`.
fn train_bpe(inputs: &[PathBuf], cfg: &TrainConfig, out: &Path) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(pre_tokenizer(cfg.split_han)))
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(
            ByteLevel::default(),
        )))
        .build()
        .map_err(tok_err(out))?;
    let failure = Arc::new(Mutex::new(None));
    tokenizer
        .train(&mut trainer, texts(inputs, failure.clone()))
        .map_err(tok_err(out))?;
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(e);
    }
    Ok(tokenizer.into())
}

/// The special tokens must have ids 0, 1, 2 in order.
fn check_special_ids(tokenizer: &Tokenizer, out: &Path) -> Result<()> {
    for (id, tok) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(tok) != Some(id as u32) {
            return Err(DataError::Tokenizer {
                path: out.into(),
                msg: format!("special token {tok} did not get id {id}"),
            });
        }
    }
    Ok(())
}

/// `out/resolved_config.json`: the inputs, output, settings, vocabulary reached and fingerprint.
fn write_resolved_config(
    inputs: &[PathBuf],
    cfg: &TrainConfig,
    out: &Path,
    trained: &Trained,
) -> Result<()> {
    let resolved = json!({
        "stage": "tokenize train-tokenizer", "inputs": inputs, "out": out, "vocab_size": cfg.vocab_size,
        "min_frequency": cfg.min_frequency, "model_max_length": cfg.model_max_length, "split_han": cfg.split_han, "vocab_size_reached": trained.vocab_size,
        "tokenizer_fingerprint": trained.fingerprint,
    });
    let text = serde_json::to_string_pretty(&resolved).expect("JSON values serialise");
    Ok(zerolm_io::write_atomically(
        &out.join("resolved_config.json"),
        text.as_bytes(),
    )?)
}

/// `tokenizer_config.json` as `transformers.AutoTokenizer` expects it.
fn tokenizer_config(cfg: &TrainConfig) -> Value {
    let added: serde_json::Map<String, Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            (
                id.to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}),
            )
        })
        .collect();
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": added,
        "additional_special_tokens": [],
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.model_max_length,
        "spaces_between_special_tokens": false,
        "split_special_tokens": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
}

/// The tokenizer fingerprint artifacts record: blake3 over `tokenizer.json` and `tokenizer_config.json`
/// (the chat template and special tokens there change SFT masks and DPO splits too).
pub fn fingerprint_of(tokenizer_json: &[u8], tokenizer_config_json: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    for part in [tokenizer_json, tokenizer_config_json] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().to_hex().to_string()
}

/// A tokenizer directory loaded for encoding: the tokenizer, its chat template, special ids and the
/// fingerprint that artifacts record.
pub struct TokenizerDir {
    pub dir: PathBuf,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub fingerprint: String,
    pub eos_id: u32,
    pub pad_id: u32,
}

/// Byte ranges (start, end) in a text.
pub type Spans = Vec<(usize, usize)>;

impl TokenizerDir {
    pub fn load(dir: &Path) -> Result<TokenizerDir> {
        let tok_path = dir.join("tokenizer.json");
        let cfg_path = dir.join("tokenizer_config.json");
        let bytes = std::fs::read(&tok_path).map_err(|cause| IoError::read(&tok_path, cause))?;
        let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| DataError::Tokenizer {
            path: tok_path.clone(),
            msg: e.to_string(),
        })?;
        let cfg_text =
            std::fs::read_to_string(&cfg_path).map_err(|cause| IoError::read(&cfg_path, cause))?;
        let cfg: Value = serde_json::from_str(&cfg_text).map_err(|e| DataError::BadFile {
            path: cfg_path.clone(),
            msg: format!("malformed JSON: {e}"),
        })?;
        let field = |name: &str| -> Result<String> {
            match &cfg[name] {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| DataError::BadFile {
                        path: cfg_path.clone(),
                        msg: format!("field `{name}` has no `content`"),
                    }),
                _ => Err(DataError::BadFile {
                    path: cfg_path.clone(),
                    msg: format!("missing string field `{name}`"),
                }),
            }
        };
        let (eos, bos, pad) = (
            field("eos_token")?,
            field("bos_token").unwrap_or_default(),
            field("pad_token")?,
        );
        let template = ChatTemplate::new(&field("chat_template")?, &bos, &eos)?;
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| DataError::Tokenizer {
                    path: tok_path.clone(),
                    msg: format!(
                        "special token {t} from tokenizer_config.json is not in the vocabulary"
                    ),
                })
        };
        Ok(TokenizerDir {
            dir: dir.to_path_buf(),
            eos_id: id(&eos)?,
            pad_id: id(&pad)?,
            fingerprint: fingerprint_of(&bytes, cfg_text.as_bytes()),
            tokenizer,
            template,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    fn error(&self, e: tokenizers::Error) -> DataError {
        DataError::Tokenizer {
            path: self.dir.clone(),
            msg: e.to_string(),
        }
    }

    /// Encode text (special-token strings become their ids; nothing is added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // `encode_fast` skips offset tracking, which only the SFT loss mask needs.
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| self.error(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids and byte offsets (start, end) of each token in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Spans)> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.error(e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(|e| self.error(e))
    }
}
