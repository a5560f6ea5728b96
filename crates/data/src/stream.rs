//! The token stream of a token file, kept beside it as `<file>.bin` (as nanoGPT and llm.c keep theirs),
//! ids as `u16` when the vocabulary fits, else `u32`, in one of two layouts: a pretraining file's
//! documents packed one after the other, each followed by eos (unless it already ends with one)
//! ([`Layout::Docs`]); an SFT file's rows, each its ids then its loss mask, with an index of the rows at
//! the end ([`Layout::Rows`]); a DPO file's pairs, each its prompt, chosen and rejected ids, with an index
//! and the pairs' ids at the end ([`Layout::Pairs`]). A header ties it to its Parquet file (the file's blake3, the eos
//! id, the vocabulary) and holds the unigram counts, so a stage learns the stream's size and statistics
//! without reading it, and reads its blocks with positional reads: memory does not grow with the corpus.
//!
//! `tokenize pretrain|sft` writes it beside its output; a stage given a token file without a current one
//! builds it once, streaming the Parquet file (into the temp directory, named by the file's blake3, when
//! the file's own directory is not writable). The header also records the Parquet file's size and
//! modification time: while they are unchanged, the recorded blake3 stands for the file's content (as git's
//! index trusts a file's stat), so a stage learns its input's fingerprint without reading it.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerolm_io::IoError;

use crate::artifact::{self, TokenRow};
use crate::error::{DataError, Result};
use crate::formats::Kind;

const MAGIC: &[u8; 8] = b"ZLMSTRM1";
/// magic, width, eos, vocabulary, layout (4 × u32), documents (rows), tokens, the source's size and mtime in
/// nanoseconds (4 × u64), the source's blake3 (64 hex bytes).
const HEADER: u64 = 8 + 16 + 32 + 64;

/// Where the stream of the token file `parquet` lives.
pub fn path_for(parquet: &Path) -> PathBuf {
    parquet.with_extension("bin")
}

/// Where the stream of a token file with content `blake3` is kept when the file's own directory is not
/// writable.
fn spare_path(blake3: &str) -> PathBuf {
    std::env::temp_dir()
        .join("zerolm-streams")
        .join(format!("{blake3}.bin"))
}

/// How a stream lays out its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Documents packed into one stream, eos after each: pretraining.
    Docs = 0,
    /// Rows of ids and loss mask, indexed: SFT.
    Rows = 1,
    /// Preference pairs (prompt, chosen, rejected ids), indexed, with their ids: DPO.
    Pairs = 2,
}

impl Layout {
    /// The layout of a token file of `kind`'s stream.
    pub fn of(kind: Kind) -> Option<Layout> {
        match kind {
            Kind::Pretrain => Some(Layout::Docs),
            Kind::Sft => Some(Layout::Rows),
            Kind::Dpo => Some(Layout::Pairs),
        }
    }

    fn kind(self) -> Kind {
        match self {
            Layout::Docs => Kind::Pretrain,
            Layout::Rows => Kind::Sft,
            Layout::Pairs => Kind::Dpo,
        }
    }
}

/// Where a row of a [`Layout::Rows`] stream is: its byte offset in the data, its length in tokens, the
/// position of its first supervised target (a token j ≥ 1 with mask 1; `u32::MAX` when none) and how many
/// supervised targets it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowIndex {
    pub offset: u64,
    pub len: u32,
    pub first_target: u32,
    pub supervised: u32,
}

/// Bytes of one [`RowIndex`] in the file.
const INDEX_ENTRY: u64 = 20;

/// Where a pair of a [`Layout::Pairs`] stream is: its first token (prompt, then chosen, then rejected,
/// one after the other), the three lengths, and its id's place among the ids after the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairIndex {
    pub token: u64,
    pub id_offset: u64,
    pub prompt: u32,
    pub chosen: u32,
    pub rejected: u32,
    pub id_len: u32,
}

/// Bytes of one [`PairIndex`] in the file.
const PAIR_ENTRY: u64 = 32;

/// One pair read back: its id and its prompt, chosen and rejected ids.
#[derive(Clone, Debug, PartialEq)]
pub struct PairRow {
    pub id: String,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// What a stream's header says.
#[derive(Clone, Debug, PartialEq)]
struct Header {
    layout: Layout,
    /// Bytes per token: 2 or 4.
    width: u32,
    eos: u32,
    vocab: u32,
    documents: u64,
    tokens: u64,
    /// The Parquet file it was made from: its size, modification time and blake3.
    source: Source,
}

/// A token file's identity: its content hash, and the stat that vouches for it while unchanged.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Source {
    pub size: u64,
    pub mtime_ns: u64,
    pub blake3: String,
}

impl Source {
    /// The file's size and modification time, with `blake3` as its content hash.
    pub fn of(path: &Path, blake3: String) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|cause| IoError::read(path, cause))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Source {
            size: meta.len(),
            mtime_ns,
            blake3,
        })
    }

    /// Whether `path` still has this size and modification time.
    fn vouches_for(&self, path: &Path) -> bool {
        Source::of(path, String::new()).is_ok_and(|now| {
            now.size == self.size && now.mtime_ns == self.mtime_ns && self.mtime_ns != 0
        })
    }
}

impl Header {
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER as usize);
        b.extend_from_slice(MAGIC);
        for v in [self.width, self.eos, self.vocab, self.layout as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.documents,
            self.tokens,
            self.source.size,
            self.source.mtime_ns,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut source = self.source.blake3.as_bytes().to_vec();
        source.resize(64, b' ');
        b.extend_from_slice(&source);
        b
    }

    fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER as usize || &b[..8] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let layout = match u32_at(20) {
            0 => Layout::Docs,
            1 => Layout::Rows,
            2 => Layout::Pairs,
            _ => return None,
        };
        Some(Header {
            layout,
            width: u32_at(8),
            eos: u32_at(12),
            vocab: u32_at(16),
            documents: u64_at(24),
            tokens: u64_at(32),
            source: Source {
                size: u64_at(40),
                mtime_ns: u64_at(48),
                blake3: String::from_utf8_lossy(&b[56..120]).trim_end().to_string(),
            },
        })
    }

    /// Where the tokens start: after the header and the unigram counts.
    fn data_offset(&self) -> u64 {
        HEADER + 8 * self.vocab as u64
    }

    /// The bytes of the token data (for rows: ids and masks).
    fn data_bytes(&self) -> u64 {
        match self.layout {
            Layout::Docs | Layout::Pairs => self.tokens * self.width as u64,
            Layout::Rows => self.tokens * (self.width as u64 + 1),
        }
    }

    /// Where the row index starts (rows only), and the file's size.
    fn index_offset(&self) -> u64 {
        self.data_offset() + self.data_bytes()
    }

    /// Pairs: where the ids start.
    fn ids_offset(&self) -> u64 {
        self.index_offset() + PAIR_ENTRY * self.documents
    }

    /// The file's size; for pairs, `id_bytes` is the ids' total length (the file's last 8 bytes).
    fn file_size(&self, id_bytes: u64) -> u64 {
        match self.layout {
            Layout::Docs => self.index_offset(),
            Layout::Rows => self.index_offset() + INDEX_ENTRY * self.documents,
            Layout::Pairs => self.ids_offset() + id_bytes + 8,
        }
    }
}

/// Writes a stream document by document or row by row (to a temporary name; [`StreamWriter::finish`]
/// renames it).
pub struct StreamWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    header: Header,
    counts: Vec<u64>,
    /// Rows and pairs: where each row is, kept in a side file and appended after the data at the end.
    index: Option<(PathBuf, BufWriter<File>)>,
    /// Pairs: their ids, kept in a second side file and appended after the index, and their length.
    ids: Option<(PathBuf, BufWriter<File>)>,
    id_bytes: u64,
}

impl StreamWriter {
    /// A stream of `layout` beside `parquet`, for a tokenizer with `vocab` ids and end-of-document id
    /// `eos`.
    pub fn create(parquet: &Path, layout: Layout, eos: u32, vocab: usize) -> Result<StreamWriter> {
        StreamWriter::create_at(&path_for(parquet), layout, eos, vocab)
    }

    /// A stream at `path`.
    fn create_at(path: &Path, layout: Layout, eos: u32, vocab: usize) -> Result<StreamWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| IoError::write(dir, cause))?;
        }
        let path = path.to_path_buf();
        let tmp = zerolm_io::temp_path(&path);
        let file = File::create(&tmp).map_err(|cause| IoError::write(&tmp, cause))?;
        let header = Header {
            layout,
            width: if vocab <= 1 << 16 { 2 } else { 4 },
            eos,
            vocab: vocab as u32,
            documents: 0,
            tokens: 0,
            source: Source::default(),
        };
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // the header and counts are written again at the end, with their values
        let placeholder = vec![0u8; header.data_offset() as usize];
        out.write_all(&placeholder)
            .map_err(|cause| IoError::write(&tmp, cause))?;
        let index = match layout {
            Layout::Rows | Layout::Pairs => Some(side_file(&tmp, "index.tmp")?),
            Layout::Docs => None,
        };
        let ids = match layout {
            Layout::Pairs => Some(side_file(&tmp, "ids.tmp")?),
            Layout::Docs | Layout::Rows => None,
        };
        Ok(StreamWriter {
            path,
            tmp,
            out,
            counts: vec![0; vocab],
            index,
            ids,
            id_bytes: 0,
            header,
        })
    }

    /// Appends one SFT row: its ids, then its loss mask (one byte a token).
    pub fn push_row(&mut self, ids: &[u32], mask: &[u8]) -> Result<()> {
        let first_target = (1..mask.len())
            .find(|&j| mask[j] == 1)
            .map_or(u32::MAX, |j| j as u32);
        let entry = RowIndex {
            offset: self.header.tokens * (self.header.width as u64 + 1),
            len: ids.len() as u32,
            first_target,
            supervised: mask.iter().skip(1).filter(|&&m| m == 1).count() as u32,
        };
        if let Some((path, index)) = &mut self.index {
            index
                .write_all(&entry_bytes(&entry))
                .map_err(|cause| IoError::write(&*path, cause))?;
        }
        for &t in ids {
            self.token(t)?;
        }
        self.out
            .write_all(mask)
            .map_err(|cause| IoError::write(&self.tmp, cause))?;
        self.header.documents += 1;
        Ok(())
    }

    /// Appends one DPO pair: its prompt, chosen and rejected ids, and its id.
    pub fn push_pair(
        &mut self,
        id: &str,
        prompt: &[u32],
        chosen: &[u32],
        rejected: &[u32],
    ) -> Result<()> {
        let entry = PairIndex {
            token: self.header.tokens,
            id_offset: self.id_bytes,
            prompt: prompt.len() as u32,
            chosen: chosen.len() as u32,
            rejected: rejected.len() as u32,
            id_len: id.len() as u32,
        };
        let (Some((index_path, index)), Some((ids_path, ids))) = (&mut self.index, &mut self.ids)
        else {
            return Err(DataError::Usage(
                "a pair pushed into a stream of documents or rows".into(),
            ));
        };
        index
            .write_all(&pair_entry_bytes(&entry))
            .map_err(|cause| IoError::write(&*index_path, cause))?;
        ids.write_all(id.as_bytes())
            .map_err(|cause| IoError::write(&*ids_path, cause))?;
        self.id_bytes += id.len() as u64;
        for &t in prompt.iter().chain(chosen).chain(rejected) {
            self.token(t)?;
        }
        self.header.documents += 1;
        Ok(())
    }

    /// Appends a token file's row: a document, an SFT row or a DPO pair.
    pub fn push_token_row(&mut self, row: &TokenRow) -> Result<()> {
        match row {
            TokenRow::Doc(ids) => self.push(ids),
            TokenRow::Sft {
                input_ids,
                loss_mask,
            } => self.push_row(input_ids, loss_mask),
            TokenRow::Dpo {
                id,
                prompt_ids,
                chosen_ids,
                rejected_ids,
            } => self.push_pair(id, prompt_ids, chosen_ids, rejected_ids),
        }
    }

    /// Appends one document (and eos unless it ends with it); an empty document adds nothing.
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let eos = self.header.eos;
        let tail = (ids.last() != Some(&eos)).then_some(eos);
        for &t in ids.iter().chain(tail.iter()) {
            self.token(t)?;
        }
        self.header.documents += 1;
        Ok(())
    }

    fn token(&mut self, t: u32) -> Result<()> {
        let slot = self.counts.get_mut(t as usize).ok_or_else(|| {
            DataError::Usage(format!(
                "token id {t} is outside the vocabulary of {} ids",
                self.header.vocab
            ))
        })?;
        *slot += 1;
        let written = match self.header.width {
            2 => self.out.write_all(&(t as u16).to_le_bytes()),
            _ => self.out.write_all(&t.to_le_bytes()),
        };
        written.map_err(|cause| IoError::write(&self.tmp, cause))?;
        self.header.tokens += 1;
        Ok(())
    }

    /// Records the Parquet file it was made from (`source`), writes the header and counts, and renames
    /// the stream into place.
    pub fn finish(mut self, source: Source) -> Result<()> {
        self.header.source = source;
        for side in [self.index.take(), self.ids.take()].into_iter().flatten() {
            self.append(side)?;
        }
        if self.header.layout == Layout::Pairs {
            self.out
                .write_all(&self.id_bytes.to_le_bytes())
                .map_err(|cause| IoError::write(&self.tmp, cause))?;
        }
        let write =
            |w: &mut BufWriter<File>, header: &Header, counts: &[u64]| -> std::io::Result<()> {
                w.flush()?;
                let file = w.get_mut();
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&header.bytes())?;
                let counts: Vec<u8> = counts.iter().flat_map(|c| c.to_le_bytes()).collect();
                file.write_all(&counts)?;
                file.sync_all()
            };
        write(&mut self.out, &self.header, &self.counts)
            .map_err(|cause| IoError::write(&self.tmp, cause))?;
        zerolm_io::commit(&self.tmp, &self.path)?;
        Ok(())
    }
}

impl StreamWriter {
    /// Appends a side file's content to the stream and removes the side file.
    fn append(&mut self, (path, side): (PathBuf, BufWriter<File>)) -> Result<()> {
        let appended = side
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(0))?;
                std::io::copy(&mut f, &mut self.out)
            });
        appended.map_err(|cause| IoError::write(&self.tmp, cause))?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}

impl Drop for StreamWriter {
    /// An unfinished stream leaves nothing behind (after `finish` the temporary name is gone already).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
        for (path, _) in self.index.iter().chain(&self.ids) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A side file beside `tmp` (with extension `ext`) for the index or ids while rows are written.
fn side_file(tmp: &Path, ext: &str) -> Result<(PathBuf, BufWriter<File>)> {
    let path = tmp.with_extension(ext);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|cause| IoError::write(&path, cause))?;
    Ok((path, BufWriter::with_capacity(1 << 16, file)))
}

/// A row index entry's 20 bytes.
fn entry_bytes(r: &RowIndex) -> Vec<u8> {
    let mut b = r.offset.to_le_bytes().to_vec();
    for v in [r.len, r.first_target, r.supervised] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// A pair index entry's 32 bytes.
fn pair_entry_bytes(r: &PairIndex) -> Vec<u8> {
    let mut b = r.token.to_le_bytes().to_vec();
    b.extend_from_slice(&r.id_offset.to_le_bytes());
    for v in [r.prompt, r.chosen, r.rejected, r.id_len] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// A pair index entry from its 32 bytes.
fn parse_pair_entry(c: &[u8]) -> PairIndex {
    let u32_at = |i: usize| u32::from_le_bytes(c[i..i + 4].try_into().unwrap());
    PairIndex {
        token: u64::from_le_bytes(c[..8].try_into().unwrap()),
        id_offset: u64::from_le_bytes(c[8..16].try_into().unwrap()),
        prompt: u32_at(16),
        chosen: u32_at(20),
        rejected: u32_at(24),
        id_len: u32_at(28),
    }
}

/// A stream open for reading.
pub struct TokenStream {
    path: PathBuf,
    file: File,
    header: Header,
    counts: Vec<u64>,
}

impl TokenStream {
    /// The stream of `layout` of the token file `parquet` and the file's blake3: a current stream (made
    /// from the file with its present size and modification time, with this eos and vocabulary) is opened
    /// without reading the file; otherwise the file is hashed and the stream built again.
    pub fn open_or_build(
        parquet: &Path,
        layout: Layout,
        eos: u32,
        vocab: usize,
    ) -> Result<(TokenStream, String)> {
        let fits = |s: &TokenStream| {
            s.header.layout == layout && s.header.eos == eos && s.header.vocab as usize == vocab
        };
        if let Some(s) = TokenStream::open(&path_for(parquet))?.filter(fits) {
            if s.header.source.vouches_for(parquet) {
                let blake3 = s.header.source.blake3.clone();
                return Ok((s, blake3));
            }
        }
        let blake3 = zerolm_io::hash_file(parquet)?.0;
        let spare = spare_path(&blake3);
        if let Some(s) = TokenStream::open(&spare)?.filter(fits) {
            return Ok((s, blake3));
        }
        let build = |path: &Path| TokenStream::build(parquet, path, layout, eos, vocab, &blake3);
        match build(&path_for(parquet)) {
            Err(DataError::Io(e @ IoError::Write { .. })) if e.is_user_error() => {
                // the token file's directory is not writable: keep the stream in the temp directory
                let s = build(&spare)?;
                Ok((s, blake3))
            }
            built => Ok((built?, blake3)),
        }
    }

    /// Builds the stream of `parquet` (content `blake3`) at `path`, streaming the file's rows.
    fn build(
        parquet: &Path,
        path: &Path,
        layout: Layout,
        eos: u32,
        vocab: usize,
        blake3: &str,
    ) -> Result<TokenStream> {
        let mut w = StreamWriter::create_at(path, layout, eos, vocab)?;
        artifact::stream_rows(parquet, layout.kind(), |row| w.push_token_row(&row))?;
        w.finish(Source::of(parquet, blake3.to_string())?)?;
        TokenStream::open(path)?.ok_or_else(|| DataError::BadFile {
            path: path.to_path_buf(),
            msg: "the stream just written cannot be read back".into(),
        })
    }

    /// The stream at `path`, if there is a readable one.
    pub fn open(path: &Path) -> Result<Option<TokenStream>> {
        let path = path.to_path_buf();
        let Ok(file) = File::open(&path) else {
            return Ok(None);
        };
        let mut head = vec![0u8; HEADER as usize];
        if file.read_exact_at(&mut head, 0).is_err() {
            return Ok(None);
        }
        let Some(header) = Header::parse(&head) else {
            return Ok(None);
        };
        let size = file.metadata().map_err(|c| IoError::read(&path, c))?.len();
        let mut tail = [0u8; 8];
        let id_bytes = match header.layout {
            Layout::Pairs if size >= 8 && file.read_exact_at(&mut tail, size - 8).is_ok() => {
                u64::from_le_bytes(tail)
            }
            _ => 0,
        };
        let mut raw = vec![0u8; 8 * header.vocab as usize];
        if size != header.file_size(id_bytes) || file.read_exact_at(&mut raw, HEADER).is_err() {
            return Ok(None);
        }
        let counts = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Some(TokenStream {
            path,
            file,
            header,
            counts,
        }))
    }

    /// Rows (or pairs): how many.
    pub fn rows(&self) -> u64 {
        match self.header.layout {
            Layout::Rows | Layout::Pairs => self.header.documents,
            Layout::Docs => 0,
        }
    }

    /// Pairs: calls `f` with each pair's number and index entry, in order, reading the index in chunks.
    pub fn for_each_pair(&self, mut f: impl FnMut(u64, PairIndex) -> Result<()>) -> Result<()> {
        self.index_chunks(PAIR_ENTRY, 1 << 15, |at, raw| {
            for (k, c) in raw.chunks_exact(PAIR_ENTRY as usize).enumerate() {
                f(at + k as u64, parse_pair_entry(c))?;
            }
            Ok(())
        })
    }

    /// Rows and pairs: calls `f` with the number of a chunk's first entry and the chunk's raw index
    /// entries (`entry` bytes each, at most `chunk` of them), in order.
    fn index_chunks(
        &self,
        entry: u64,
        chunk: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut at = 0;
        while at < self.rows() {
            let n = chunk.min(self.rows() - at);
            let start = self.header.index_offset() + at * entry;
            f(at, &self.read_bytes(start, (n * entry) as usize)?)?;
            at += n;
        }
        Ok(())
    }

    /// Pairs: calls `f` with every pair, in order, reading the index, the tokens and the ids in large
    /// sequential chunks (a pass over the whole stream).
    pub fn for_each_pair_row(&self, mut f: impl FnMut(u64, PairRow) -> Result<()>) -> Result<()> {
        self.index_chunks(PAIR_ENTRY, 1 << 12, |at, raw| {
            let entries: Vec<PairIndex> = raw
                .chunks_exact(PAIR_ENTRY as usize)
                .map(parse_pair_entry)
                .collect();
            let (first, last) = (entries[0], entries[entries.len() - 1]);
            let tokens = (last.token - first.token) as usize
                + (last.prompt + last.chosen + last.rejected) as usize;
            let mut ids = Vec::with_capacity(tokens);
            self.read(first.token, tokens, &mut ids)?;
            let id_bytes = (last.id_offset - first.id_offset + last.id_len as u64) as usize;
            let names = self.read_bytes(self.header.ids_offset() + first.id_offset, id_bytes)?;
            for (k, e) in entries.iter().enumerate() {
                let t = (e.token - first.token) as usize;
                let (p, c, r) = (e.prompt as usize, e.chosen as usize, e.rejected as usize);
                let o = (e.id_offset - first.id_offset) as usize;
                let row = PairRow {
                    id: self.id_text(at + k as u64, &names[o..o + e.id_len as usize])?,
                    prompt: ids[t..t + p].to_vec(),
                    chosen: ids[t + p..t + p + c].to_vec(),
                    rejected: ids[t + p + c..t + p + c + r].to_vec(),
                };
                f(at + k as u64, row)?;
            }
            Ok(())
        })
    }

    fn id_text(&self, i: u64, raw: &[u8]) -> Result<String> {
        String::from_utf8(raw.to_vec()).map_err(|_| DataError::BadFile {
            path: self.path.clone(),
            msg: format!("pair {i}'s id is not UTF-8; delete the stream to rebuild it"),
        })
    }

    /// Pairs: pair `i`, read back whole.
    pub fn pair(&self, i: u64) -> Result<PairRow> {
        let start = self.header.index_offset() + i * PAIR_ENTRY;
        let e = parse_pair_entry(&self.read_bytes(start, PAIR_ENTRY as usize)?);
        let id_raw = self.read_bytes(self.header.ids_offset() + e.id_offset, e.id_len as usize)?;
        let id = self.id_text(i, &id_raw)?;
        let (p, c) = (e.prompt as usize, e.chosen as usize);
        let mut ids = Vec::with_capacity(p + c + e.rejected as usize);
        self.read(e.token, p + c + e.rejected as usize, &mut ids)?;
        Ok(PairRow {
            id,
            rejected: ids.split_off(p + c),
            chosen: ids.split_off(p),
            prompt: ids,
        })
    }

    /// Rows: calls `f` with each row's number and index entry, in order, reading the index in chunks.
    pub fn for_each_row(&self, mut f: impl FnMut(u64, RowIndex) -> Result<()>) -> Result<()> {
        self.index_chunks(INDEX_ENTRY, 1 << 16, |at, raw| {
            for (k, c) in raw.chunks_exact(INDEX_ENTRY as usize).enumerate() {
                f(at + k as u64, parse_entry(c))?;
            }
            Ok(())
        })
    }

    /// Rows: row `i`'s index entry.
    pub fn entry(&self, i: u64) -> Result<RowIndex> {
        let start = self.header.index_offset() + i * INDEX_ENTRY;
        Ok(parse_entry(&self.read_bytes(start, INDEX_ENTRY as usize)?))
    }

    fn read_bytes(&self, at: u64, len: usize) -> Result<Vec<u8>> {
        let mut raw = vec![0u8; len];
        self.file
            .read_exact_at(&mut raw, at)
            .map_err(|cause| IoError::read(&self.path, cause))?;
        Ok(raw)
    }

    /// Rows: the first `len` ids and mask bytes of row `i`.
    pub fn row(&self, i: u64, len: usize) -> Result<(Vec<u32>, Vec<u8>)> {
        let r = self.entry(i)?;
        let (w, n) = (self.header.width as usize, r.len as usize);
        let len = len.min(n);
        let raw = self.read_bytes(self.header.data_offset() + r.offset, n * (w + 1))?;
        let mut ids = Vec::with_capacity(len);
        decode(&raw[..len * w], w, &mut ids);
        Ok((ids, raw[n * w..n * w + len].to_vec()))
    }

    pub fn tokens(&self) -> u64 {
        self.header.tokens
    }

    pub fn documents(&self) -> u64 {
        self.header.documents
    }

    /// How often each id occurs in the stream.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Docs and pairs: appends tokens `start .. start + len` of the stream to `out`.
    pub fn read(&self, start: u64, len: usize, out: &mut Vec<u32>) -> Result<()> {
        let w = self.header.width as usize;
        let raw = self.read_bytes(self.header.data_offset() + start * w as u64, len * w)?;
        decode(&raw, w, out);
        Ok(())
    }
}

/// A row index entry from its 20 bytes.
fn parse_entry(c: &[u8]) -> RowIndex {
    let u32_at = |i: usize| u32::from_le_bytes(c[i..i + 4].try_into().unwrap());
    RowIndex {
        offset: u64::from_le_bytes(c[..8].try_into().unwrap()),
        len: u32_at(8),
        first_target: u32_at(12),
        supervised: u32_at(16),
    }
}

/// Appends the little-endian ids of `raw` (`width` bytes each) to `out`.
fn decode(raw: &[u8], width: usize, out: &mut Vec<u32>) {
    match width {
        2 => out.extend(
            raw.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
        ),
        _ => out.extend(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap())),
        ),
    }
}
