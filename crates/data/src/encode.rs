//! `tokenize pretrain | sft | dpo`: stream raw rows, normalise them, encode them on all threads and
//! write a token file with its provenance. Memory stays bounded by the chunk size.

use crate::artifact::{keys, TokenRow, TokenWriter};
use crate::chat::Message;
use crate::error::{DataError, Location, Result};
use crate::fingerprint;
use crate::formats::{normalize, Format, Kind, Pair, Problem, Record, Template};
use crate::input::{RawRow, RowReader};
use crate::tokenizer::TokenizerDir;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to do with a row longer than `--max-len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep the first `max_len` tokens (DPO: see [`truncate_pair`]).
    Truncate,
    /// Drop the row (counted).
    Drop,
    /// Pretraining only: cut the document into `max_len`-token pieces, losing nothing.
    Split,
}

#[derive(Debug, Clone, Serialize)]
pub struct EncodeConfig {
    pub stage: Kind,
    /// A forced format; `None` detects it per input file.
    pub format: Option<Format>,
    pub text_field: String,
    pub template: Template,
    pub max_len: Option<usize>,
    pub overlong: Overlong,
    pub skip_bad: bool,
    pub strict: bool,
    pub chunk_rows: usize,
}

impl EncodeConfig {
    pub fn new(stage: Kind) -> EncodeConfig {
        EncodeConfig {
            stage,
            format: None,
            text_field: "text".into(),
            template: Template::Chat,
            max_len: None,
            overlong: Overlong::Truncate,
            skip_bad: false,
            strict: false,
            chunk_rows: 2048,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(f) = self.format {
            if f.kind() != self.stage {
                return Err(DataError::Usage(format!(
                    "--format {} holds {} data, not {}",
                    f.name(),
                    f.kind().name(),
                    self.stage.name()
                )));
            }
        }
        if self.overlong == Overlong::Split && self.stage != Kind::Pretrain {
            return Err(DataError::Usage(
                "--overlong split is only for pretraining documents".into(),
            ));
        }
        if self.max_len == Some(0) {
            return Err(DataError::Usage("--max-len must be at least 1".into()));
        }
        if self.chunk_rows == 0 {
            return Err(DataError::Usage("chunk size must be at least 1".into()));
        }
        Ok(())
    }
}

/// Row counts of one run; all of them go into the output's metadata.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub rows_read: u64,
    pub rows_written: u64,
    pub skipped_bad: u64,
    pub skipped_empty: u64,
    pub truncated: u64,
    pub dropped_overlong: u64,
    /// Pretraining documents cut into several rows by `--overlong split` (rows, not pieces).
    pub split: u64,
    /// DPO rows whose prompt tokens were not a prefix of prompt+completion tokens; their completion was
    /// encoded on its own and appended to the prompt's tokens.
    pub prefix_mismatch: u64,
    pub tokens: u64,
    /// SFT: tokens with loss_mask = 1.
    pub supervised_tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputInfo {
    pub path: String,
    pub blake3: String,
    pub bytes: u64,
    pub container: String,
    pub format: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub counts: Counts,
    pub inputs: Vec<InputInfo>,
    /// The first few skipped rows, with where and why.
    pub skipped_examples: Vec<String>,
}

/// Progress callbacks: `bytes` of input consumed so far (uncompressed JSONL/text bytes) and rows done.
pub trait Observer {
    fn detected(&mut self, _path: &Path, _container: &str, _format: &str) {}
    fn progress(&mut self, _rows: u64, _bytes: u64) {}
}

impl Observer for () {}

/// One encoded input row, before counting.
#[derive(Default)]
struct Encoded {
    rows: Vec<TokenRow>,
    truncated: bool,
    dropped: bool,
    split: bool,
    prefix_mismatch: bool,
}

fn encode_doc(tok: &TokenizerDir, text: &str, cfg: &EncodeConfig) -> Result<Encoded> {
    let ids = tok.encode(text)?;
    let mut out = Encoded::default();
    match cfg.max_len {
        Some(max) if ids.len() > max => match cfg.overlong {
            Overlong::Truncate => {
                out.truncated = true;
                out.rows.push(TokenRow::Doc(ids[..max].to_vec()));
            }
            Overlong::Drop => out.dropped = true,
            Overlong::Split => {
                out.split = true;
                out.rows
                    .extend(ids.chunks(max).map(|c| TokenRow::Doc(c.to_vec())));
            }
        },
        _ => out.rows.push(TokenRow::Doc(ids)),
    }
    Ok(out)
}

/// Token ids of a rendered conversation and a mask that is 1 on assistant content through its
/// end-of-turn token: a token is supervised when it starts inside an assistant span.
pub fn sft_tokens(tok: &TokenizerDir, messages: &[Message]) -> Result<(Vec<u32>, Vec<u8>)> {
    let (text, spans) = tok.template.assistant_spans(messages)?;
    let (ids, offsets) = tok.encode_with_offsets(&text)?;
    let mask = offsets
        .iter()
        .map(|&(start, _)| u8::from(spans.iter().any(|&(a, b)| start >= a && start < b)))
        .collect();
    Ok((ids, mask))
}

fn encode_sft(tok: &TokenizerDir, messages: &[Message], cfg: &EncodeConfig) -> Result<Encoded> {
    let (mut ids, mut mask) = sft_tokens(tok, messages)?;
    let mut out = Encoded::default();
    if let Some(max) = cfg.max_len.filter(|&m| ids.len() > m) {
        if cfg.overlong == Overlong::Drop {
            out.dropped = true;
            return Ok(out);
        }
        ids.truncate(max);
        mask.truncate(max);
        if !mask.contains(&1) {
            // Nothing left to learn from: counted as dropped rather than written as a useless row.
            out.dropped = true;
            return Ok(out);
        }
        out.truncated = true;
    }
    out.rows.push(TokenRow::Sft {
        input_ids: ids,
        loss_mask: mask,
    });
    Ok(out)
}

/// Prompt ids and the completion's ids, split at the token level. Returns whether the tokens of
/// prompt+completion did not start with the prompt's tokens (then the completion is encoded alone).
fn split_completion(
    tok: &TokenizerDir,
    prompt_text: &str,
    prompt_ids: &[u32],
    completion_text: &str,
) -> Result<(Vec<u32>, bool)> {
    let full = tok.encode(&format!("{prompt_text}{completion_text}"))?;
    if full.starts_with(prompt_ids) {
        Ok((full[prompt_ids.len()..].to_vec(), false))
    } else {
        Ok((tok.encode(completion_text)?, true))
    }
}

/// The text a chat completion adds after the prompt's generation prompt, through its last end-of-turn
/// token (the separator after it is not part of the completion).
fn chat_completion_text(
    tok: &TokenizerDir,
    prompt: &[Message],
    completion: &[Message],
    prompt_text: &str,
) -> Result<String> {
    let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
    let full = tok.template.render(&all, false)?;
    let rest = full.strip_prefix(prompt_text).ok_or_else(|| {
        DataError::Template(
            "the rendered prompt with its generation prompt is not a prefix of prompt+completion"
                .into(),
        )
    })?;
    let eos = &tok.template.eos_token;
    Ok(match rest.rfind(eos.as_str()) {
        Some(p) => rest[..p + eos.len()].to_string(),
        None => rest.to_string(),
    })
}

/// DPO truncation to `max` tokens for prompt + the longer completion: the prompt keeps its end (at least
/// half of `max`, or all of it if shorter); completions are then cut to the room left.
pub fn truncate_pair(
    prompt: &mut Vec<u32>,
    chosen: &mut Vec<u32>,
    rejected: &mut Vec<u32>,
    max: usize,
) -> bool {
    let longest = chosen.len().max(rejected.len());
    if prompt.len() + longest <= max {
        return false;
    }
    let keep_prompt = max
        .saturating_sub(longest)
        .max(prompt.len().min(max / 2))
        .min(prompt.len());
    prompt.drain(..prompt.len() - keep_prompt);
    let room = max - keep_prompt;
    chosen.truncate(room);
    rejected.truncate(room);
    true
}

fn encode_pair(tok: &TokenizerDir, id: String, pair: &Pair, cfg: &EncodeConfig) -> Result<Encoded> {
    let mut out = Encoded::default();
    let (prompt_text, chosen_text, rejected_text) = match pair {
        Pair::Chat {
            prompt,
            chosen,
            rejected,
        } => {
            let p = tok.template.render(prompt, true)?;
            let c = chat_completion_text(tok, prompt, chosen, &p)?;
            let r = chat_completion_text(tok, prompt, rejected, &p)?;
            (p, c, r)
        }
        Pair::Raw {
            prompt,
            chosen,
            rejected,
        } => {
            let eos = &tok.template.eos_token;
            (
                prompt.clone(),
                format!("{chosen}{eos}"),
                format!("{rejected}{eos}"),
            )
        }
    };
    let mut prompt_ids = tok.encode(&prompt_text)?;
    let (mut chosen, m1) = split_completion(tok, &prompt_text, &prompt_ids, &chosen_text)?;
    let (mut rejected, m2) = split_completion(tok, &prompt_text, &prompt_ids, &rejected_text)?;
    out.prefix_mismatch = m1 || m2;
    if let Some(max) = cfg.max_len {
        if prompt_ids.len() + chosen.len().max(rejected.len()) > max {
            if cfg.overlong == Overlong::Drop {
                out.dropped = true;
                return Ok(out);
            }
            out.truncated = truncate_pair(&mut prompt_ids, &mut chosen, &mut rejected, max);
        }
    }
    out.rows.push(TokenRow::Dpo {
        id,
        prompt_ids,
        chosen_ids: chosen,
        rejected_ids: rejected,
    });
    Ok(out)
}

/// The id of a DPO row that has none: its input path as given and its line (or row), unique in a run.
fn default_id(at: &Location) -> String {
    let name = at.file.display();
    match (at.line, at.row) {
        (Some(l), _) => format!("{name}:{l}"),
        (None, Some(r)) => format!("{name}#{r}"),
        _ => name.to_string(),
    }
}

enum Outcome {
    Done(Encoded),
    Problem(Problem),
}

fn encode_row(
    tok: &TokenizerDir,
    row: &RawRow,
    format: Format,
    cfg: &EncodeConfig,
) -> Result<Outcome> {
    let value = match &row.value {
        Ok(v) => v,
        Err(msg) => return Ok(Outcome::Problem(Problem::Bad(msg.clone()))),
    };
    let record = match normalize(format, value, &cfg.text_field, cfg.template) {
        Ok(r) => r,
        Err(p) => return Ok(Outcome::Problem(p)),
    };
    let encoded = match record {
        Record::Text(t) => encode_doc(tok, &t, cfg),
        Record::Chat(m) => encode_sft(tok, &m, cfg),
        Record::Pair { id, pair } => {
            encode_pair(tok, id.unwrap_or_else(|| default_id(&row.at)), &pair, cfg)
        }
    };
    match encoded {
        Ok(e) => Ok(Outcome::Done(e)),
        // A row the chat template cannot render is that row's problem, reported at its location.
        Err(DataError::Template(msg)) => Ok(Outcome::Problem(Problem::Bad(format!(
            "chat template: {msg}"
        )))),
        Err(e) => Err(e),
    }
}

/// The format of one input file: forced, or detected from its first well-formed row.
fn detect_format(path: &Path, cfg: &EncodeConfig) -> Result<Format> {
    if let Some(f) = cfg.format {
        return Ok(f);
    }
    // The first row decides; with --skip-bad, the first row whose fields name a format decides.
    let mut reader = RowReader::open(path)?.text_key(&cfg.text_field);
    let mut first_error = None;
    while let Some(row) = reader.next_row()? {
        let found = match &row.value {
            Ok(v) => Format::detect(cfg.stage, v, &cfg.text_field),
            Err(msg) => Err(msg.clone()),
        };
        match found {
            Ok(f) => return Ok(f),
            Err(msg) if !cfg.skip_bad => return Err(DataError::BadRow { at: row.at, msg }),
            Err(msg) => {
                first_error.get_or_insert(DataError::BadRow {
                    at: row.at,
                    msg: format!("{msg} (and no later row names a format)"),
                });
            }
        }
    }
    Err(first_error.unwrap_or_else(|| DataError::BadFile {
        path: path.into(),
        msg: "no rows (empty file?)".into(),
    }))
}

/// Tokenize `inputs` into the token file `out`.
pub fn run(
    tok: &TokenizerDir,
    inputs: &[PathBuf],
    out: &Path,
    cfg: &EncodeConfig,
    command: &[String],
    obs: &mut dyn Observer,
) -> Result<Report> {
    cfg.validate()?;
    if inputs.is_empty() {
        return Err(DataError::Usage("no --input given".into()));
    }
    let mut infos = Vec::new();
    let mut formats = Vec::new();
    for path in inputs {
        let reader = RowReader::open(path)?;
        let format = detect_format(path, cfg)?;
        if format.kind() != cfg.stage {
            return Err(DataError::Usage(format!(
                "{}: format {} is not {} data",
                path.display(),
                format.name(),
                cfg.stage.name()
            )));
        }
        let (blake3, bytes) = fingerprint::file(path)?;
        obs.detected(path, &reader.container().to_string(), format.name());
        infos.push(InputInfo {
            path: path.display().to_string(),
            blake3,
            bytes,
            container: reader.container().to_string(),
            format: format.name().into(),
        });
        formats.push(format);
    }

    let mut writer = TokenWriter::create(out, cfg.stage)?;
    let mut counts = Counts::default();
    let mut skipped_examples = Vec::new();
    let mut bytes_before = 0u64;
    for ((path, &format), info) in inputs.iter().zip(&formats).zip(&infos) {
        let mut reader = RowReader::open(path)?.text_key(&cfg.text_field);
        let mut chunk = reader.next_chunk(cfg.chunk_rows)?;
        while !chunk.is_empty() {
            // Read the next chunk while this one is encoded on the other threads.
            let (next, encoded) = rayon::join(
                || reader.next_chunk(cfg.chunk_rows),
                || {
                    chunk
                        .par_iter()
                        .map(|row| encode_row(tok, row, format, cfg))
                        .collect::<Result<Vec<_>>>()
                },
            );
            let mut rows = Vec::with_capacity(chunk.len());
            for (raw, outcome) in chunk.iter().zip(encoded?) {
                counts.rows_read += 1;
                match outcome {
                    Outcome::Problem(Problem::Bad(msg)) if !cfg.skip_bad => {
                        return Err(DataError::BadRow {
                            at: raw.at.clone(),
                            msg: format!("{msg} (use --skip-bad to skip such rows)"),
                        })
                    }
                    Outcome::Problem(Problem::Empty(msg)) if cfg.strict => {
                        return Err(DataError::BadRow {
                            at: raw.at.clone(),
                            msg: format!("{msg} (--strict)"),
                        })
                    }
                    Outcome::Problem(p) => {
                        let msg = match p {
                            Problem::Bad(m) => {
                                counts.skipped_bad += 1;
                                m
                            }
                            Problem::Empty(m) => {
                                counts.skipped_empty += 1;
                                m
                            }
                        };
                        if skipped_examples.len() < 10 {
                            skipped_examples.push(format!("{}: {msg}", raw.at));
                        }
                    }
                    Outcome::Done(e) => {
                        counts.truncated += u64::from(e.truncated);
                        counts.dropped_overlong += u64::from(e.dropped);
                        counts.split += u64::from(e.split);
                        counts.prefix_mismatch += u64::from(e.prefix_mismatch);
                        rows.extend(e.rows);
                    }
                }
            }
            for r in &rows {
                match r {
                    TokenRow::Doc(d) => counts.tokens += d.len() as u64,
                    TokenRow::Sft {
                        input_ids,
                        loss_mask,
                    } => {
                        counts.tokens += input_ids.len() as u64;
                        counts.supervised_tokens +=
                            loss_mask.iter().map(|&m| u64::from(m)).sum::<u64>();
                    }
                    TokenRow::Dpo {
                        prompt_ids,
                        chosen_ids,
                        rejected_ids,
                        ..
                    } => {
                        counts.tokens +=
                            (prompt_ids.len() + chosen_ids.len() + rejected_ids.len()) as u64
                    }
                }
            }
            counts.rows_written += rows.len() as u64;
            writer.write(&rows)?;
            obs.progress(counts.rows_read, bytes_before + reader.bytes_read());
            chunk = next?;
        }
        bytes_before += info.bytes;
    }
    if counts.rows_written == 0 {
        return Err(DataError::Usage(format!(
            "no rows left to write ({} read, {} bad, {} empty, {} dropped as too long); nothing written to {}",
            counts.rows_read,
            counts.skipped_bad,
            counts.skipped_empty,
            counts.dropped_overlong,
            out.display()
        )));
    }
    let mut meta = BTreeMap::new();
    meta.insert(
        keys::TOKENIZER_FINGERPRINT.to_string(),
        tok.fingerprint.clone(),
    );
    meta.insert(keys::VOCAB_SIZE.to_string(), tok.vocab_size().to_string());
    meta.insert(keys::INPUTS.to_string(), json(&infos));
    meta.insert(keys::COUNTS.to_string(), json(&counts));
    meta.insert(keys::CONFIG.to_string(), json(cfg));
    meta.insert(keys::COMMAND.to_string(), json(&command.to_vec()));
    writer.finish(meta)?;
    Ok(Report {
        counts,
        inputs: infos,
        skipped_examples,
    })
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("metadata serialises")
}
