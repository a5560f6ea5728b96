//! `tokenize pretrain | sft | dpo`: stream raw rows, normalise them, encode them on all threads and
//! write a token file with its provenance. Memory stays bounded by the chunk size.

use crate::artifact::{keys, TokenRow};
use crate::chat::{CompletionEnd, Message};
use crate::error::{unknown_choice, DataError, Location, Result};
use crate::formats::{normalize, Format, Kind, Pair, Problem, Record, Template};
use crate::input::{RawRow, RowReader};
use crate::output::{Output, ShardSize};
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

impl Overlong {
    /// The names `--overlong` accepts (also how the config records it).
    pub const NAMES: &'static [&'static str] = &["truncate", "drop", "split"];
}

impl std::str::FromStr for Overlong {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Overlong> {
        match s {
            "truncate" => Ok(Overlong::Truncate),
            "drop" => Ok(Overlong::Drop),
            "split" => Ok(Overlong::Split),
            _ => Err(unknown_choice("--overlong", s, Overlong::NAMES)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EncodeConfig {
    pub stage: Kind,
    /// A forced format; `None` detects it per input file.
    pub format: Option<Format>,
    pub text_field: String,
    pub template: Template,
    /// Where a chat completion or assistant turn ends (SFT and DPO).
    pub completion_end: CompletionEnd,
    pub max_len: Option<usize>,
    pub overlong: Overlong,
    /// Write `--out` as a directory of shards of this size (see [`crate::output`]).
    pub shard: ShardSize,
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
            completion_end: CompletionEnd::Template,
            max_len: None,
            overlong: Overlong::Truncate,
            shard: ShardSize::default(),
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
        if self.shard.rows == Some(0) || self.shard.bytes == Some(0) {
            return Err(DataError::Usage(
                "--shard-rows and --shard-mb must be at least 1".into(),
            ));
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
    /// DPO rows whose prompt tokens were not a prefix of prompt+completion tokens (the template renders
    /// the prompt alone differently, or tokens merge across the boundary): as TRL does, the prompt keeps
    /// the tokens it shares with both, and each completion is the rest of its prompt+completion tokens.
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
    /// The token files written: `--out`, or its shards.
    pub files: Vec<PathBuf>,
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

/// Token ids of a rendered conversation and a mask that is 1 on each assistant turn (content through the
/// turn's end as `end` says): a token is supervised when it starts inside an assistant span.
pub fn sft_tokens(
    tok: &TokenizerDir,
    messages: &[Message],
    end: CompletionEnd,
) -> Result<(Vec<u32>, Vec<u8>)> {
    let (text, spans) = tok.template.assistant_spans(messages, end)?;
    let (ids, offsets) = tok.encode_with_offsets(&text)?;
    let mask = offsets
        .iter()
        .map(|&(start, _)| u8::from(spans.iter().any(|&(a, b)| start >= a && start < b)))
        .collect();
    Ok((ids, mask))
}

fn encode_sft(tok: &TokenizerDir, messages: &[Message], cfg: &EncodeConfig) -> Result<Encoded> {
    let (mut ids, mut mask) = sft_tokens(tok, messages, cfg.completion_end)?;
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

/// The length of the longest common prefix of `a` and `b`.
fn common_prefix_length(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A pair's token ids as TRL's `DPOTrainer` makes them: the prompt and each prompt+completion are
/// tokenized whole, the prompt keeps the tokens it shares with both (all of them unless the template
/// renders the prompt alone differently or tokens merge across the boundary: `mismatch`), and each
/// completion is the rest of its sequence.
struct SplitPair {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
    mismatch: bool,
}

fn split_pair(prompt: Vec<u32>, full_chosen: &[u32], full_rejected: &[u32]) -> SplitPair {
    let shared = common_prefix_length(&prompt, full_chosen)
        .min(common_prefix_length(&prompt, full_rejected));
    let mismatch = shared < prompt.len();
    let mut prompt = prompt;
    prompt.truncate(shared);
    SplitPair {
        prompt,
        chosen: full_chosen[shared..].to_vec(),
        rejected: full_rejected[shared..].to_vec(),
        mismatch,
    }
}

/// The rendered prompt (with its generation prompt) and each rendered prompt+completion of a chat pair.
fn render_chat_pair(
    tok: &TokenizerDir,
    prompt: &[Message],
    chosen: &[Message],
    rejected: &[Message],
) -> Result<(String, String, String)> {
    let whole = |completion: &[Message]| -> Result<String> {
        let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
        tok.template.render(&all, false)
    };
    Ok((
        tok.template.render(prompt, true)?,
        whole(chosen)?,
        whole(rejected)?,
    ))
}

/// A raw pair as TRL's standard format makes it: the completions end with eos (appended unless
/// already there), and the prompt and each prompt+completion are tokenized as they are.
fn raw_pair_texts(tok: &TokenizerDir, prompt: &str, chosen: &str, rejected: &str) -> [String; 3] {
    let eos = &tok.template.eos_token;
    let with_eos = |c: &str| {
        if c.ends_with(eos.as_str()) {
            format!("{prompt}{c}")
        } else {
            format!("{prompt}{c}{eos}")
        }
    };
    [prompt.to_string(), with_eos(chosen), with_eos(rejected)]
}

/// A chat completion cut after its last end-of-turn token (`--completion-end eos`): the template's
/// separator after it is dropped.
fn cut_after_eos(ids: &mut Vec<u32>, eos_id: u32) {
    if let Some(p) = ids.iter().rposition(|&t| t == eos_id) {
        ids.truncate(p + 1);
    }
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
    let (texts, chat) = match pair {
        Pair::Chat {
            prompt,
            chosen,
            rejected,
        } => {
            let (p, c, r) = render_chat_pair(tok, prompt, chosen, rejected)?;
            ([p, c, r], true)
        }
        Pair::Raw {
            prompt,
            chosen,
            rejected,
        } => (raw_pair_texts(tok, prompt, chosen, rejected), false),
    };
    let [prompt, full_chosen, full_rejected] = texts;
    let split = split_pair(
        tok.encode(&prompt)?,
        &tok.encode(&full_chosen)?,
        &tok.encode(&full_rejected)?,
    );
    out.prefix_mismatch = split.mismatch;
    let SplitPair {
        prompt: mut prompt_ids,
        mut chosen,
        mut rejected,
        ..
    } = split;
    if chat && cfg.completion_end == CompletionEnd::Eos {
        cut_after_eos(&mut chosen, tok.eos_id);
        cut_after_eos(&mut rejected, tok.eos_id);
    }
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

/// Tokenize `inputs` into the token file `out`, and record the run beside it in
/// `<out>.resolved_config.json` (see [`resolved_config_path`]).
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
    let (infos, formats) = inspect_inputs(inputs, cfg, obs)?;
    let base = MetaBase::new(tok, &infos, cfg, command);
    let mut sink = Sink {
        output: Output::create(out, cfg.stage, cfg.shard, tok.eos_id, tok.vocab_size())?,
        base: &base,
        counts: Counts::default(),
        skipped_examples: Vec::new(),
        bytes_before: 0,
        obs,
    };
    for ((path, &format), info) in inputs.iter().zip(&formats).zip(&infos) {
        encode_file(tok, path, format, cfg, &mut sink)?;
        sink.bytes_before += info.bytes;
    }
    let Sink {
        output,
        counts,
        skipped_examples,
        ..
    } = sink;
    if counts.rows_written == 0 {
        return Err(nothing_written(&counts, out));
    }
    let files = output.finish(base.with_counts(&counts))?;
    let report = Report {
        counts,
        inputs: infos,
        skipped_examples,
        files,
    };
    write_resolved_config(tok, out, cfg, &report)?;
    Ok(report)
}

/// Open every input, decide its format and fingerprint it, before anything is written.
fn inspect_inputs(
    inputs: &[PathBuf],
    cfg: &EncodeConfig,
    obs: &mut dyn Observer,
) -> Result<(Vec<InputInfo>, Vec<Format>)> {
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
        let (blake3, bytes) = zerolm_io::hash_file(path)?;
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
    Ok((infos, formats))
}

/// Where encoded rows go: the token file being written, the run's counts and its progress.
struct Sink<'a> {
    /// The token file or shards being written.
    output: Output,
    /// Their metadata but the counts.
    base: &'a MetaBase,
    counts: Counts,
    skipped_examples: Vec<String>,
    /// Input bytes of the files already done.
    bytes_before: u64,
    obs: &'a mut dyn Observer,
}

/// Encode one input file chunk by chunk, reading the next chunk while this one is encoded.
fn encode_file(
    tok: &TokenizerDir,
    path: &Path,
    format: Format,
    cfg: &EncodeConfig,
    sink: &mut Sink,
) -> Result<()> {
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
        let rows = sink.take(&chunk, encoded?, cfg)?;
        sink.write(&rows, reader.bytes_read())?;
        chunk = next?;
    }
    Ok(())
}

impl Sink<'_> {
    /// Count each row's outcome and collect the rows to write; a problem row is an error unless
    /// `--skip-bad` (bad rows) or not `--strict` (empty rows) lets it be skipped.
    fn take(
        &mut self,
        chunk: &[RawRow],
        outcomes: Vec<Outcome>,
        cfg: &EncodeConfig,
    ) -> Result<Vec<TokenRow>> {
        let mut rows = Vec::with_capacity(chunk.len());
        for (raw, outcome) in chunk.iter().zip(outcomes) {
            self.counts.rows_read += 1;
            match outcome {
                Outcome::Problem(p) => self.skip(raw, p, cfg)?,
                Outcome::Done(e) => {
                    self.counts.truncated += u64::from(e.truncated);
                    self.counts.dropped_overlong += u64::from(e.dropped);
                    self.counts.split += u64::from(e.split);
                    self.counts.prefix_mismatch += u64::from(e.prefix_mismatch);
                    rows.extend(e.rows);
                }
            }
        }
        Ok(rows)
    }

    /// Skip a problem row (counted, the first ten kept as examples), or fail on it.
    fn skip(&mut self, raw: &RawRow, problem: Problem, cfg: &EncodeConfig) -> Result<()> {
        let msg = match problem {
            Problem::Bad(msg) if !cfg.skip_bad => {
                return Err(DataError::BadRow {
                    at: raw.at.clone(),
                    msg: format!("{msg} (use --skip-bad to skip such rows)"),
                })
            }
            Problem::Empty(msg) if cfg.strict => {
                return Err(DataError::BadRow {
                    at: raw.at.clone(),
                    msg: format!("{msg} (--strict)"),
                })
            }
            Problem::Bad(msg) => {
                self.counts.skipped_bad += 1;
                msg
            }
            Problem::Empty(msg) => {
                self.counts.skipped_empty += 1;
                msg
            }
        };
        if self.skipped_examples.len() < 10 {
            self.skipped_examples.push(format!("{}: {msg}", raw.at));
        }
        Ok(())
    }

    /// Write a chunk's rows, count them and their tokens, and report progress (`bytes`: of this file).
    fn write(&mut self, rows: &[TokenRow], bytes: u64) -> Result<()> {
        for r in rows {
            count_tokens(&mut self.counts, r);
        }
        self.counts.rows_written += rows.len() as u64;
        let (base, counts) = (self.base, &self.counts);
        self.output.write(rows, &|| base.with_counts(counts))?;
        self.obs
            .progress(self.counts.rows_read, self.bytes_before + bytes);
        Ok(())
    }
}

fn count_tokens(counts: &mut Counts, row: &TokenRow) {
    match row {
        TokenRow::Doc(d) => counts.tokens += d.len() as u64,
        TokenRow::Sft {
            input_ids,
            loss_mask,
        } => {
            counts.tokens += input_ids.len() as u64;
            counts.supervised_tokens += loss_mask.iter().map(|&m| u64::from(m)).sum::<u64>();
        }
        TokenRow::Dpo {
            prompt_ids,
            chosen_ids,
            rejected_ids,
            ..
        } => counts.tokens += (prompt_ids.len() + chosen_ids.len() + rejected_ids.len()) as u64,
    }
}

fn nothing_written(counts: &Counts, out: &Path) -> DataError {
    DataError::Usage(format!(
        "no rows left to write ({} read, {} bad, {} empty, {} dropped as too long); nothing written to {}",
        counts.rows_read,
        counts.skipped_bad,
        counts.skipped_empty,
        counts.dropped_overlong,
        out.display()
    ))
}

/// The provenance a token file records in its key-value metadata.
/// The metadata every file of a run carries, but the counts (added when a file is closed).
struct MetaBase(BTreeMap<String, String>);

impl MetaBase {
    fn new(
        tok: &TokenizerDir,
        infos: &[InputInfo],
        cfg: &EncodeConfig,
        command: &[String],
    ) -> MetaBase {
        let mut meta = BTreeMap::new();
        meta.insert(
            keys::TOKENIZER_FINGERPRINT.to_string(),
            tok.fingerprint.clone(),
        );
        meta.insert(keys::VOCAB_SIZE.to_string(), tok.vocab_size().to_string());
        meta.insert(keys::INPUTS.to_string(), json(&infos));
        meta.insert(keys::CONFIG.to_string(), json(cfg));
        if cfg.stage != Kind::Pretrain {
            meta.insert(
                keys::COMPLETION_END.to_string(),
                cfg.completion_end.name().to_string(),
            );
        }
        meta.insert(keys::COMMAND.to_string(), json(&command.to_vec()));
        MetaBase(meta)
    }

    /// With the run's counts so far (a shard closed early records the counts at that point).
    fn with_counts(&self, counts: &Counts) -> BTreeMap<String, String> {
        let mut meta = self.0.clone();
        meta.insert(keys::COUNTS.to_string(), json(counts));
        meta
    }
}

/// Where [`run`] records a token file's run: `<out>` with its extension replaced by
/// `resolved_config.json` (`pre.parquet` → `pre.resolved_config.json`).
pub fn resolved_config_path(out: &Path) -> PathBuf {
    out.with_extension("resolved_config.json")
}

/// Write the run's stage, tokenizer, inputs, output, config, thread count and counts as pretty JSON.
fn write_resolved_config(
    tok: &TokenizerDir,
    out: &Path,
    cfg: &EncodeConfig,
    report: &Report,
) -> Result<()> {
    let resolved = serde_json::json!({
        "stage": format!("tokenize {}", cfg.stage.name()),
        "tokenizer": tok.dir,
        "tokenizer_fingerprint": tok.fingerprint,
        "inputs": report.inputs.iter().map(|i| serde_json::json!({"path": i.path, "blake3": i.blake3, "format": i.format})).collect::<Vec<_>>(),
        "out": out,
        "config": cfg,
        "threads": rayon::current_num_threads(),
        "counts": report.counts,
    });
    let text = serde_json::to_string_pretty(&resolved).expect("JSON values serialise");
    Ok(zerolm_io::write_atomically(
        &resolved_config_path(out),
        text.as_bytes(),
    )?)
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("metadata serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_keeps_the_tokens_it_shares_with_both_completions_as_trl_does() {
        let whole = split_pair(vec![1, 2, 3], &[1, 2, 3, 7, 8], &[1, 2, 3, 9]);
        assert_eq!(
            (whole.prompt, whole.chosen, whole.rejected, whole.mismatch),
            (vec![1, 2, 3], vec![7, 8], vec![9], false)
        );
        // the rejected sequence merged the prompt's last token: both completions start after [1, 2]
        let merged = split_pair(vec![1, 2, 3], &[1, 2, 3, 7], &[1, 2, 5, 9]);
        assert_eq!(
            (
                merged.prompt,
                merged.chosen,
                merged.rejected,
                merged.mismatch
            ),
            (vec![1, 2], vec![3, 7], vec![5, 9], true)
        );
        let mut ids = vec![4, 2, 5, 2, 6];
        cut_after_eos(&mut ids, 2);
        assert_eq!(ids, vec![4, 2, 5, 2]);
    }

    #[test]
    fn overlong_parses_its_names_and_rejects_others_naming_the_choices() {
        for name in Overlong::NAMES {
            let o: Overlong = name.parse().unwrap();
            assert_eq!(serde_json::to_value(o).unwrap(), serde_json::json!(name));
        }
        assert_eq!("split".parse::<Overlong>().unwrap(), Overlong::Split);
        let err = "chop".parse::<Overlong>().unwrap_err().to_string();
        assert!(
            err.contains("`chop`") && err.contains("truncate, drop, split"),
            "{err}"
        );
    }
}
