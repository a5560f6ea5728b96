//! Input containers: JSONL, a JSON array, Parquet and plain text (each optionally gzip-compressed),
//! read as a stream of JSON rows that remember where they came from.
//!
//! JSONL, text and Parquet are streamed (bounded memory). A JSON array is parsed whole: use JSONL or
//! Parquet for inputs larger than memory.

use crate::error::{parquet_err, DataError, Location, Result};
use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use zerolm_io::IoError;

/// One input row: its location and either the parsed JSON object or why it could not be parsed.
#[derive(Debug, Clone)]
pub struct RawRow {
    pub at: Location,
    pub value: std::result::Result<Value, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Jsonl,
    JsonArray,
    Parquet,
    Text,
}

impl std::fmt::Display for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Container::Jsonl => "JSONL",
            Container::JsonArray => "JSON array",
            Container::Parquet => "Parquet",
            Container::Text => "text",
        })
    }
}

enum Source {
    Lines(Lines),
    Array {
        items: std::vec::IntoIter<Value>,
        row: u64,
    },
    Parquet(ParquetRows),
    Text(Lines),
}

/// A byte stream read line by line, counting lines (1-based) and uncompressed bytes.
struct Lines {
    reader: Box<dyn BufRead + Send>,
    line: u64,
    bytes: u64,
}

impl Lines {
    fn new(reader: Box<dyn BufRead + Send>) -> Lines {
        Lines {
            reader,
            line: 0,
            bytes: 0,
        }
    }

    /// Read the next line, newline included, into `buf` (cleared first); false at the end.
    fn next_line(&mut self, buf: &mut Vec<u8>, path: &Path) -> Result<bool> {
        buf.clear();
        let n = self.reader.read_until(b'\n', buf).map_err(read_err(path))?;
        if n == 0 {
            return Ok(false);
        }
        self.bytes += n as u64;
        self.line += 1;
        Ok(true)
    }
}

/// Parquet record batches, turned into JSON rows one batch at a time.
struct ParquetRows {
    reader: ParquetRecordBatchReader,
    pending: std::vec::IntoIter<Value>,
    row: u64,
}

/// A streaming reader over one input file.
pub struct RowReader {
    path: PathBuf,
    container: Container,
    source: Source,
    text_key: String,
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |cause| IoError::read(path, cause).into()
}

fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// Open `path`, decompressing `.gz`, as a buffered byte stream.
fn open_bytes(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).map_err(read_err(path))?;
    Ok(if is_gzip(path) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, file))
    })
}

/// Decide the container from the file name, sniffing the first bytes where the name does not say.
pub fn detect_container(path: &Path) -> Result<Container> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".parquet") {
        return Ok(Container::Parquet);
    }
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        return Ok(Container::Jsonl);
    }
    if name.ends_with(".txt") || name.ends_with(".md") {
        return Ok(Container::Text);
    }
    let mut head = Vec::with_capacity(256);
    open_bytes(path)?
        .take(4096)
        .read_to_end(&mut head)
        .map_err(read_err(path))?;
    if head.starts_with(b"PAR1") {
        return Ok(Container::Parquet);
    }
    Ok(
        match head
            .iter()
            .find(|b| !b.is_ascii_whitespace() && **b != 0xEF && **b != 0xBB && **b != 0xBF)
        {
            Some(b'[') => Container::JsonArray,
            Some(b'{') => Container::Jsonl,
            _ if name.ends_with(".json") => {
                return Err(DataError::BadFile {
                    path: path.to_path_buf(),
                    msg:
                        "a .json file must hold a JSON array of objects or one JSON object per line"
                            .into(),
                })
            }
            _ => Container::Text,
        },
    )
}

impl RowReader {
    pub fn open(path: &Path) -> Result<RowReader> {
        let container = detect_container(path)?;
        let source = match container {
            Container::Jsonl => Source::Lines(Lines::new(open_bytes(path)?)),
            Container::Text => Source::Text(Lines::new(open_bytes(path)?)),
            Container::JsonArray => json_array_source(path)?,
            Container::Parquet => parquet_source(path)?,
        };
        Ok(RowReader {
            path: path.to_path_buf(),
            container,
            source,
            text_key: "text".into(),
        })
    }

    pub fn container(&self) -> Container {
        self.container
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The field name plain-text documents are given (default `text`), to match `--text-field`.
    pub fn text_key(mut self, key: &str) -> RowReader {
        self.text_key = key.to_string();
        self
    }

    /// Uncompressed bytes of JSONL / text consumed so far (0 for JSON arrays and Parquet).
    pub fn bytes_read(&self) -> u64 {
        match &self.source {
            Source::Lines(lines) | Source::Text(lines) => lines.bytes,
            Source::Array { .. } | Source::Parquet(_) => 0,
        }
    }

    /// The next row, `None` at the end. I/O failures are errors; a row that cannot be parsed is a row
    /// whose `value` is `Err`.
    pub fn next_row(&mut self) -> Result<Option<RawRow>> {
        let path = self.path.as_path();
        match &mut self.source {
            Source::Lines(lines) => next_json_line(lines, path),
            Source::Text(lines) => next_text_doc(lines, path, &self.text_key),
            Source::Array { items, row } => Ok(items.next().map(|v| numbered_row(path, row, v))),
            Source::Parquet(rows) => rows.next_row(path),
        }
    }

    /// Up to `n` rows.
    pub fn next_chunk(&mut self, n: usize) -> Result<Vec<RawRow>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_row()? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A JSON array file, parsed whole.
fn json_array_source(path: &Path) -> Result<Source> {
    let mut bytes = Vec::new();
    open_bytes(path)?
        .read_to_end(&mut bytes)
        .map_err(read_err(path))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::BadFile {
        path: path.to_path_buf(),
        msg: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
    })?;
    let value: Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
        DataError::BadFile {
            path: path.to_path_buf(),
            msg: format!("malformed JSON: {e}"),
        }
    })?;
    match value {
        Value::Array(items) => Ok(Source::Array {
            items: items.into_iter(),
            row: 0,
        }),
        _ => Err(DataError::BadFile {
            path: path.to_path_buf(),
            msg: "expected a JSON array of objects".into(),
        }),
    }
}

/// A Parquet file, read in batches of 1024 rows.
fn parquet_source(path: &Path) -> Result<Source> {
    if is_gzip(path) {
        return Err(DataError::BadFile {
            path: path.to_path_buf(),
            msg: "gzip-compressed Parquet is not supported; Parquet compresses internally".into(),
        });
    }
    let file = File::open(path).map_err(read_err(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_err(path))?
        .with_batch_size(1024)
        .build()
        .map_err(parquet_err(path))?;
    Ok(Source::Parquet(ParquetRows {
        reader,
        pending: Vec::new().into_iter(),
        row: 0,
    }))
}

/// Parse one non-blank JSONL line (a leading byte-order mark is skipped).
fn parse_json_line(buf: &[u8]) -> std::result::Result<Value, String> {
    let start = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let trimmed = buf.trim_ascii();
    let (skipped, trimmed) = match trimmed.strip_prefix(BOM) {
        Some(rest) => (start + 3, rest),
        None => (start, trimmed),
    };
    match std::str::from_utf8(trimmed) {
        Err(e) => Err(format!(
            "invalid UTF-8 at byte {} of the line",
            skipped + e.valid_up_to() + 1
        )),
        Ok(s) => serde_json::from_str::<Value>(s).map_err(|e| format!("malformed JSON: {e}")),
    }
}

/// The next JSONL row: the next non-blank line.
fn next_json_line(lines: &mut Lines, path: &Path) -> Result<Option<RawRow>> {
    let mut buf = Vec::new();
    while lines.next_line(&mut buf, path)? {
        if buf.trim_ascii().is_empty() {
            continue;
        }
        return Ok(Some(RawRow {
            at: location(path, Some(lines.line), None),
            value: parse_json_line(&buf),
        }));
    }
    Ok(None)
}

/// A text document being gathered from its lines.
#[derive(Default)]
struct TextBlock {
    doc: String,
    first_line: Option<u64>,
    /// The first invalid UTF-8 found.
    bad: Option<String>,
}

impl TextBlock {
    fn push(&mut self, buf: &[u8], line: u64) {
        self.first_line.get_or_insert(line);
        let text = if line == 1 {
            buf.strip_prefix(BOM).unwrap_or(buf)
        } else {
            buf
        };
        match std::str::from_utf8(text) {
            Ok(s) => self.doc.push_str(s),
            Err(e) => {
                self.bad.get_or_insert(format!(
                    "invalid UTF-8 at line {line}, byte {}",
                    e.valid_up_to() + 1
                ));
            }
        }
    }

    /// The row's value: an object with the text under `text_key`, or why it is malformed.
    fn into_value(self, text_key: &str) -> std::result::Result<Value, String> {
        if let Some(msg) = self.bad {
            return Err(msg);
        }
        let mut obj = serde_json::Map::new();
        obj.insert(
            text_key.to_string(),
            Value::String(self.doc.trim_end().to_string()),
        );
        Ok(Value::Object(obj))
    }
}

/// The next text document: one block of non-blank lines.
fn next_text_doc(lines: &mut Lines, path: &Path, text_key: &str) -> Result<Option<RawRow>> {
    let mut block = TextBlock::default();
    let mut buf = Vec::new();
    while lines.next_line(&mut buf, path)? {
        if buf.trim_ascii().is_empty() {
            if block.first_line.is_some() {
                break;
            }
            continue;
        }
        block.push(&buf, lines.line);
    }
    let Some(first) = block.first_line else {
        return Ok(None);
    };
    Ok(Some(RawRow {
        at: location(path, Some(first), None),
        value: block.into_value(text_key),
    }))
}

/// The row `value` at 0-based index `*row` of `path`; advances the index.
fn numbered_row(path: &Path, row: &mut u64, value: Value) -> RawRow {
    let r = *row;
    *row += 1;
    RawRow {
        at: location(path, None, Some(r)),
        value: Ok(value),
    }
}

impl ParquetRows {
    fn next_row(&mut self, path: &Path) -> Result<Option<RawRow>> {
        loop {
            if let Some(v) = self.pending.next() {
                return Ok(Some(numbered_row(path, &mut self.row, v)));
            }
            let Some(batch) = self.reader.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(parquet_err(path))?;
            self.pending = batch_to_json(&batch, path)?.into_iter();
        }
    }
}

/// One record batch as JSON objects, via Arrow's JSON writer.
fn batch_to_json(batch: &RecordBatch, path: &Path) -> Result<Vec<Value>> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer
        .write(batch)
        .and_then(|_| writer.finish())
        .map_err(parquet_err(path))?;
    let bytes = writer.into_inner();
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice::<Value>)
        .collect::<std::result::Result<Vec<Value>, _>>()
        .map_err(parquet_err(path))
}

fn location(path: &Path, line: Option<u64>, row: Option<u64>) -> Location {
    Location {
        file: path.to_path_buf(),
        line,
        row,
    }
}
