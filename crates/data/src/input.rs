//! Input containers: JSONL, a JSON array, Parquet and plain text (each optionally gzip-compressed),
//! read as a stream of JSON rows that remember where they came from.
//!
//! JSONL, text and Parquet are streamed (bounded memory). A JSON array is parsed whole: use JSONL or
//! Parquet for inputs larger than memory.

use crate::error::{DataError, Location, Result};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

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
    Lines {
        reader: Box<dyn BufRead + Send>,
        line: u64,
    },
    Array {
        items: std::vec::IntoIter<Value>,
        row: u64,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        pending: std::vec::IntoIter<Value>,
        row: u64,
    },
    Text {
        reader: Box<dyn BufRead + Send>,
        line: u64,
    },
}

/// A streaming reader over one input file.
pub struct RowReader {
    path: PathBuf,
    container: Container,
    source: Source,
    bytes: u64,
    text_key: String,
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Read {
        path: path.to_path_buf(),
        cause: source,
    }
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
            Container::Jsonl => Source::Lines {
                reader: open_bytes(path)?,
                line: 0,
            },
            Container::Text => Source::Text {
                reader: open_bytes(path)?,
                line: 0,
            },
            Container::JsonArray => {
                let mut bytes = Vec::new();
                open_bytes(path)?
                    .read_to_end(&mut bytes)
                    .map_err(read_err(path))?;
                let text = std::str::from_utf8(&bytes).map_err(|e| DataError::BadFile {
                    path: path.to_path_buf(),
                    msg: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                })?;
                let value: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
                    .map_err(|e| DataError::BadFile {
                        path: path.to_path_buf(),
                        msg: format!("malformed JSON: {e}"),
                    })?;
                match value {
                    Value::Array(items) => Source::Array {
                        items: items.into_iter(),
                        row: 0,
                    },
                    _ => {
                        return Err(DataError::BadFile {
                            path: path.to_path_buf(),
                            msg: "expected a JSON array of objects".into(),
                        })
                    }
                }
            }
            Container::Parquet => {
                if is_gzip(path) {
                    return Err(DataError::BadFile {
                        path: path.to_path_buf(),
                        msg: "gzip-compressed Parquet is not supported; Parquet compresses internally".into(),
                    });
                }
                let file = File::open(path).map_err(read_err(path))?;
                let pq = |e: parquet::errors::ParquetError| DataError::Parquet {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                };
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(pq)?
                    .with_batch_size(1024)
                    .build()
                    .map_err(pq)?;
                Source::Parquet {
                    reader,
                    pending: Vec::new().into_iter(),
                    row: 0,
                }
            }
        };
        Ok(RowReader {
            path: path.to_path_buf(),
            container,
            source,
            bytes: 0,
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
        self.bytes
    }

    /// The next row, `None` at the end. I/O failures are errors; a row that cannot be parsed is a row
    /// whose `value` is `Err`.
    pub fn next_row(&mut self) -> Result<Option<RawRow>> {
        let path = self.path.clone();
        let bytes = &mut self.bytes;
        let text_key = self.text_key.as_str();
        match &mut self.source {
            Source::Lines { reader, line } => {
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    let n = reader
                        .read_until(b'\n', &mut buf)
                        .map_err(read_err(&path))?;
                    if n == 0 {
                        return Ok(None);
                    }
                    *bytes += n as u64;
                    *line += 1;
                    let n = *line;
                    let start = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
                    let trimmed = buf.trim_ascii();
                    if trimmed.is_empty() {
                        continue;
                    }
                    let (skipped, trimmed) = match trimmed.strip_prefix(b"\xEF\xBB\xBF".as_slice())
                    {
                        Some(rest) => (start + 3, rest),
                        None => (start, trimmed),
                    };
                    let value = match std::str::from_utf8(trimmed) {
                        Err(e) => Err(format!(
                            "invalid UTF-8 at byte {} of the line",
                            skipped + e.valid_up_to() + 1
                        )),
                        Ok(s) => serde_json::from_str::<Value>(s)
                            .map_err(|e| format!("malformed JSON: {e}")),
                    };
                    return Ok(Some(RawRow {
                        at: location(&path, Some(n), None),
                        value,
                    }));
                }
            }
            Source::Text { reader, line } => {
                // One document per block of non-blank lines.
                let mut doc = String::new();
                let mut first_line = None;
                let mut buf = Vec::new();
                let mut bad = None;
                loop {
                    buf.clear();
                    let n = reader
                        .read_until(b'\n', &mut buf)
                        .map_err(read_err(&path))?;
                    if n == 0 {
                        break;
                    }
                    *bytes += n as u64;
                    *line += 1;
                    if buf.trim_ascii().is_empty() {
                        if first_line.is_some() {
                            break;
                        }
                        continue;
                    }
                    first_line.get_or_insert(*line);
                    let text = if *line == 1 {
                        buf.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&buf)
                    } else {
                        &buf
                    };
                    match std::str::from_utf8(text) {
                        Ok(s) => doc.push_str(s),
                        Err(e) => {
                            bad.get_or_insert(format!(
                                "invalid UTF-8 at line {}, byte {}",
                                *line,
                                e.valid_up_to() + 1
                            ));
                        }
                    }
                }
                let Some(first) = first_line else {
                    return Ok(None);
                };
                let value = match bad {
                    Some(msg) => Err(msg),
                    None => {
                        let mut obj = serde_json::Map::new();
                        obj.insert(
                            text_key.to_string(),
                            Value::String(doc.trim_end().to_string()),
                        );
                        Ok(Value::Object(obj))
                    }
                };
                Ok(Some(RawRow {
                    at: location(&path, Some(first), None),
                    value,
                }))
            }
            Source::Array { items, row } => {
                let Some(v) = items.next() else {
                    return Ok(None);
                };
                let r = *row;
                *row += 1;
                Ok(Some(RawRow {
                    at: location(&path, None, Some(r)),
                    value: Ok(v),
                }))
            }
            Source::Parquet {
                reader,
                pending,
                row,
            } => loop {
                if let Some(v) = pending.next() {
                    let r = *row;
                    *row += 1;
                    return Ok(Some(RawRow {
                        at: location(&path, None, Some(r)),
                        value: Ok(v),
                    }));
                }
                let Some(batch) = reader.next() else {
                    return Ok(None);
                };
                let batch = batch.map_err(|e| DataError::Parquet {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
                let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
                writer
                    .write(&batch)
                    .and_then(|_| writer.finish())
                    .map_err(|e| DataError::Parquet {
                        path: path.clone(),
                        msg: e.to_string(),
                    })?;
                let bytes = writer.into_inner();
                let rows: std::result::Result<Vec<Value>, _> = bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(serde_json::from_slice::<Value>)
                    .collect();
                let rows = rows.map_err(|e| DataError::Parquet {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
                *pending = rows.into_iter();
            },
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

fn location(path: &Path, line: Option<u64>, row: Option<u64>) -> Location {
    Location {
        file: path.to_path_buf(),
        line,
        row,
    }
}
