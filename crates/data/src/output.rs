//! Where `tokenize` writes: one token file, or — with a shard size — a directory of token files
//! (`part-00000.parquet`, …), each a complete token file with its provenance; pretraining and SFT files
//! get their token stream beside them ([`crate::stream`]). A directory appears whole: shards are written under a
//! temporary name that is renamed when the last one is done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::artifact::{keys, TokenRow, TokenWriter};
use crate::error::{DataError, Result};
use crate::formats::Kind;
use crate::stream::{Layout, Source, StreamWriter};

/// When a shard is full: at `rows` rows, or at `bytes` bytes of token ids (4 a token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShardSize {
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
}

impl ShardSize {
    pub fn is_set(&self) -> bool {
        self.rows.is_some() || self.bytes.is_some()
    }

    fn full(&self, rows: u64, bytes: u64) -> bool {
        self.rows.is_some_and(|r| rows >= r) || self.bytes.is_some_and(|b| bytes >= b)
    }
}

/// The name of shard `index` in a sharded output directory.
pub fn shard_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// One token file being written.
struct Part {
    path: PathBuf,
    writer: TokenWriter,
    stream: Option<StreamWriter>,
    rows: u64,
    bytes: u64,
}

pub struct Output {
    kind: Kind,
    /// The token file, or the shards' directory.
    target: PathBuf,
    shard: ShardSize,
    /// Where the shards are written until they are all done.
    staging: Option<PathBuf>,
    part: Option<Part>,
    parts: usize,
    /// The eos id and vocabulary size of pretraining streams.
    eos: u32,
    vocab: usize,
}

impl Output {
    /// An output at `out` for rows of `kind`: one file, or a directory of shards of size `shard`.
    pub fn create(
        out: &Path,
        kind: Kind,
        shard: ShardSize,
        eos: u32,
        vocab: usize,
    ) -> Result<Output> {
        let staging = shard.is_set().then(|| zerolm_io::temp_path(out));
        if let Some(dir) = &staging {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).map_err(|cause| zerolm_io::IoError::write(dir, cause))?;
        }
        Ok(Output {
            kind,
            target: out.to_path_buf(),
            shard,
            staging,
            part: None,
            parts: 0,
            eos,
            vocab,
        })
    }

    /// Writes `rows`, closing a full shard (with metadata `meta`) and opening the next.
    pub fn write(
        &mut self,
        rows: &[TokenRow],
        meta: &dyn Fn() -> BTreeMap<String, String>,
    ) -> Result<()> {
        let mut rest = rows;
        while !rest.is_empty() {
            if self.part.is_none() {
                self.part = Some(self.open()?);
            }
            let part = self.part.as_mut().expect("opened");
            let (mut taken, mut full) = (0, false);
            while taken < rest.len() && !full {
                part.rows += 1;
                part.bytes += 4 * row_tokens(&rest[taken]);
                taken += 1;
                full = self.shard.full(part.rows, part.bytes);
            }
            let (now, later) = rest.split_at(taken);
            part.writer.write(now)?;
            if let Some(stream) = &mut part.stream {
                for row in now {
                    stream.push_token_row(row)?;
                }
            }
            if full {
                self.close(meta())?;
            }
            rest = later;
        }
        Ok(())
    }

    /// Closes the last file with `meta` and puts the output in place; returns the token files written.
    pub fn finish(mut self, meta: BTreeMap<String, String>) -> Result<Vec<PathBuf>> {
        if self.part.is_none() && self.parts == 0 {
            self.part = Some(self.open()?);
        }
        self.close(meta)?;
        let Some(staging) = self.staging.take() else {
            return Ok(vec![self.target.clone()]);
        };
        if self.target.is_dir() {
            std::fs::remove_dir_all(&self.target)
                .map_err(|cause| zerolm_io::IoError::write(&self.target, cause))?;
        }
        zerolm_io::commit(&staging, &self.target)?;
        Ok((0..self.parts)
            .map(|i| self.target.join(shard_name(i)))
            .collect())
    }

    fn open(&mut self) -> Result<Part> {
        let path = match &self.staging {
            Some(dir) => dir.join(shard_name(self.parts)),
            None => self.target.clone(),
        };
        let stream = Layout::of(self.kind)
            .map(|l| StreamWriter::create(&path, l, self.eos, self.vocab))
            .transpose()?;
        Ok(Part {
            writer: TokenWriter::create(&path, self.kind)?,
            path,
            stream,
            rows: 0,
            bytes: 0,
        })
    }

    fn close(&mut self, mut meta: BTreeMap<String, String>) -> Result<()> {
        let Some(part) = self.part.take() else {
            return Ok(());
        };
        if self.staging.is_some() {
            meta.insert(keys::SHARD.to_string(), self.parts.to_string());
        }
        part.writer.finish(meta)?;
        if let Some(stream) = part.stream {
            let blake3 = zerolm_io::hash_file(&part.path)?.0;
            stream.finish(Source::of(&part.path, blake3)?)?;
        }
        self.parts += 1;
        Ok(())
    }
}

impl Drop for Output {
    /// An unfinished sharded output leaves nothing behind.
    fn drop(&mut self) {
        if let Some(dir) = &self.staging {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn row_tokens(row: &TokenRow) -> u64 {
    match row {
        TokenRow::Doc(ids) => ids.len() as u64,
        TokenRow::Sft { input_ids, .. } => input_ids.len() as u64,
        TokenRow::Dpo {
            prompt_ids,
            chosen_ids,
            rejected_ids,
            ..
        } => (prompt_ids.len() + chosen_ids.len() + rejected_ids.len()) as u64,
    }
}

/// The token files an `--input` names: a token file as it is, every `*.parquet` in a directory, or what a
/// glob pattern (`*`, `?`, `[…]`) matches, in name order; an input that names none is refused.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        let found: Vec<PathBuf> = if input.is_dir() {
            parquet_files(input)?
        } else if text.contains(['*', '?', '[']) {
            glob_files(&text)?
        } else {
            vec![input.clone()]
        };
        if found.is_empty() {
            return Err(DataError::Usage(format!(
                "--input {}: no token file (*.parquet) there",
                input.display()
            )));
        }
        out.extend(found);
    }
    Ok(out)
}

fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|cause| zerolm_io::IoError::read(dir, cause))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    Ok(files)
}

fn glob_files(pattern: &str) -> Result<Vec<PathBuf>> {
    let paths = glob::glob(pattern)
        .map_err(|e| DataError::Usage(format!("--input {pattern}: not a valid pattern: {e}")))?;
    let mut files: Vec<PathBuf> = paths.flatten().filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}
