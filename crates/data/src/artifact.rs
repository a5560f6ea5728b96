//! Tokenized Parquet artifacts (pretrain / SFT / DPO token files): schemas, an atomic writer that records
//! provenance in the file's key-value metadata, and a reader that checks it.

use crate::error::{parquet_err, DataError, Result};
use crate::formats::Kind;
use arrow::array::{
    Array, ArrayRef, Float32Array, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
    UInt32Array, UInt32Builder, UInt8Array, UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zerolm_io::IoError;

/// Bumped whenever a column or a metadata key changes meaning.
pub const SCHEMA_VERSION: &str = "1";

/// Metadata keys every token file carries.
pub mod keys {
    pub const SCHEMA_VERSION: &str = "zerolm.schema_version";
    pub const KIND: &str = "zerolm.kind";
    pub const TOKENIZER_FINGERPRINT: &str = "zerolm.tokenizer_fingerprint";
    pub const VOCAB_SIZE: &str = "zerolm.vocab_size";
    pub const INPUTS: &str = "zerolm.inputs";
    pub const COUNTS: &str = "zerolm.counts";
    pub const CONFIG: &str = "zerolm.config";
    pub const COMMAND: &str = "zerolm.command";
    /// SFT and DPO: where a chat completion ends (`template` or `eos`, see `chat::CompletionEnd`).
    pub const COMPLETION_END: &str = "zerolm.completion_end";
    /// In a sharded output: the file's index among the shards.
    pub const SHARD: &str = "zerolm.shard";
}

/// One row of a token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRow {
    Doc(Vec<u32>),
    Sft {
        input_ids: Vec<u32>,
        loss_mask: Vec<u8>,
    },
    Dpo {
        id: String,
        prompt_ids: Vec<u32>,
        chosen_ids: Vec<u32>,
        rejected_ids: Vec<u32>,
    },
}

fn list_field(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new_list_field(item, true))),
        false,
    )
}

/// The Arrow schema of a token file of `kind`.
pub fn schema(kind: Kind) -> Schema {
    match kind {
        Kind::Pretrain => Schema::new(vec![list_field("input_ids", DataType::UInt32)]),
        Kind::Sft => Schema::new(vec![
            list_field("input_ids", DataType::UInt32),
            list_field("loss_mask", DataType::UInt8),
        ]),
        Kind::Dpo => Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            list_field("prompt_ids", DataType::UInt32),
            list_field("chosen_ids", DataType::UInt32),
            list_field("rejected_ids", DataType::UInt32),
        ]),
    }
}

fn u32_list<'a>(rows: impl Iterator<Item = &'a [u32]>) -> ArrayRef {
    let mut b = ListBuilder::new(UInt32Builder::new());
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Writes a token file to a temporary name; [`TokenWriter::finish`] adds the metadata and renames it into
/// place. Dropped unfinished, it removes the temporary file.
pub struct TokenWriter {
    writer: Option<ArrowWriter<File>>,
    kind: Kind,
    schema: Arc<Schema>,
    path: PathBuf,
    tmp: PathBuf,
    rows: usize,
    extra: Vec<String>,
}

impl TokenWriter {
    pub fn create(path: &Path, kind: Kind) -> Result<TokenWriter> {
        TokenWriter::create_with_extra(path, kind, &[])
    }

    /// A token file with additional non-null f32 columns after the kind's own (e.g. the reference
    /// log-prob cache: the DPO columns + `ref_chosen_logps`, `ref_rejected_logps`).
    pub fn create_with_extra(path: &Path, kind: Kind, extra: &[&str]) -> Result<TokenWriter> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|cause| IoError::write(parent, cause))?;
        }
        let tmp = zerolm_io::temp_path(path);
        let file = File::create(&tmp).map_err(|cause| IoError::write(&tmp, cause))?;
        let mut fields: Vec<Field> = schema(kind)
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            extra
                .iter()
                .map(|name| Field::new(*name, DataType::Float32, false)),
        );
        let schema = Arc::new(Schema::new(fields));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid zstd level"),
            ))
            .set_max_row_group_row_count(Some(8192))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| {
            DataError::Parquet {
                path: tmp.clone(),
                msg: e.to_string(),
            }
        })?;
        Ok(TokenWriter {
            writer: Some(writer),
            kind,
            schema,
            path: path.to_path_buf(),
            tmp,
            rows: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn write(&mut self, rows: &[TokenRow]) -> Result<()> {
        self.write_with_extra(rows, &[])
    }

    /// Writes rows and, for a writer made with extra columns, one value per row for each of them.
    pub fn write_with_extra(&mut self, rows: &[TokenRow], extra: &[&[f32]]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.check_extra(rows.len(), extra)?;
        let mut columns = self.kind_columns(rows)?;
        columns.extend(
            extra
                .iter()
                .map(|c| Arc::new(Float32Array::from(c.to_vec())) as ArrayRef),
        );
        self.write_batch(columns)?;
        self.rows += rows.len();
        Ok(())
    }

    fn check_extra(&self, rows: usize, extra: &[&[f32]]) -> Result<()> {
        if extra.len() != self.extra.len() || extra.iter().any(|c| c.len() != rows) {
            return Err(DataError::Usage(format!(
                "internal: {} extra columns of {rows} rows expected",
                self.extra.len(),
            )));
        }
        Ok(())
    }

    /// The columns of the kind's own schema.
    fn kind_columns(&self, rows: &[TokenRow]) -> Result<Vec<ArrayRef>> {
        let columns = match self.kind {
            Kind::Pretrain => doc_columns(rows),
            Kind::Sft => sft_columns(rows),
            Kind::Dpo => dpo_columns(rows),
        };
        columns.ok_or_else(|| {
            DataError::Usage(format!(
                "internal: row of the wrong kind for a {} token file",
                self.kind.name()
            ))
        })
    }

    fn write_batch(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(parquet_err(&self.tmp))?;
        self.writer
            .as_mut()
            .expect("writer is open until finish")
            .write(&batch)
            .map_err(parquet_err(&self.tmp))
    }

    /// Add `metadata` (plus schema version and kind), close the file and rename it into place.
    pub fn finish(mut self, metadata: BTreeMap<String, String>) -> Result<()> {
        let mut writer = self.writer.take().expect("writer is open until finish");
        let mut all = metadata;
        all.insert(keys::SCHEMA_VERSION.into(), SCHEMA_VERSION.into());
        all.insert(keys::KIND.into(), self.kind.name().into());
        for (k, v) in all {
            writer.append_key_value_metadata(KeyValue::new(k, v));
        }
        if let Err(e) = writer.close() {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(DataError::Parquet {
                path: self.tmp.clone(),
                msg: e.to_string(),
            });
        }
        Ok(zerolm_io::commit(&self.tmp, &self.path)?)
    }
}

impl Drop for TokenWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The pretraining column; `None` if a row is not a document.
fn doc_columns(rows: &[TokenRow]) -> Option<Vec<ArrayRef>> {
    let docs = rows
        .iter()
        .map(|r| match r {
            TokenRow::Doc(d) => Some(d.as_slice()),
            _ => None,
        })
        .collect::<Option<Vec<&[u32]>>>()?;
    Some(vec![u32_list(docs.into_iter())])
}

/// The SFT columns; `None` if a row is not an SFT row.
fn sft_columns(rows: &[TokenRow]) -> Option<Vec<ArrayRef>> {
    let mut ids = Vec::new();
    let mut mask = ListBuilder::new(UInt8Builder::new());
    for r in rows {
        let TokenRow::Sft {
            input_ids,
            loss_mask,
        } = r
        else {
            return None;
        };
        ids.push(input_ids.as_slice());
        mask.values().append_slice(loss_mask);
        mask.append(true);
    }
    Some(vec![u32_list(ids.into_iter()), Arc::new(mask.finish())])
}

/// The DPO columns; `None` if a row is not a DPO row.
fn dpo_columns(rows: &[TokenRow]) -> Option<Vec<ArrayRef>> {
    let mut id = StringBuilder::new();
    let (mut p, mut c, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let TokenRow::Dpo {
            id: i,
            prompt_ids,
            chosen_ids,
            rejected_ids,
        } = row
        else {
            return None;
        };
        id.append_value(i);
        p.push(prompt_ids.as_slice());
        c.push(chosen_ids.as_slice());
        r.push(rejected_ids.as_slice());
    }
    Some(vec![
        Arc::new(id.finish()),
        u32_list(p.into_iter()),
        u32_list(c.into_iter()),
        u32_list(r.into_iter()),
    ])
}

/// A token file read back: its provenance metadata and rows.
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub path: PathBuf,
    pub kind: Kind,
    pub metadata: BTreeMap<String, String>,
    pub rows: Vec<TokenRow>,
    /// Additional f32 columns (e.g. the reference log-probs of a cache), by name, one value per row.
    pub extra: BTreeMap<String, Vec<f32>>,
}

impl TokenFile {
    pub fn tokenizer_fingerprint(&self) -> &str {
        self.metadata
            .get(keys::TOKENIZER_FINGERPRINT)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Where the file's chat completions end (`template` or `eos`); SFT and DPO files written before the
    /// setting existed ended them at eos. `None` for pretraining files.
    pub fn completion_end(&self) -> Option<&str> {
        match self.kind {
            Kind::Pretrain => None,
            _ => Some(
                self.metadata
                    .get(keys::COMPLETION_END)
                    .map_or("eos", String::as_str),
            ),
        }
    }

    /// Refuse a file made with another tokenizer.
    pub fn check_tokenizer(&self, fingerprint: &str) -> Result<()> {
        if self.tokenizer_fingerprint() != fingerprint {
            return Err(DataError::Mismatch {
                what: "tokenizer".into(),
                path: self.path.clone(),
                msg: format!(
                    "the file was tokenized with tokenizer {} but this run uses {}; re-run `tokenize` with this tokenizer",
                    short(self.tokenizer_fingerprint()),
                    short(fingerprint)
                ),
            });
        }
        Ok(())
    }
}

fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

fn list_rows(col: &dyn Array, path: &Path, name: &str) -> Result<Vec<Vec<u32>>> {
    let bad = || DataError::BadFile {
        path: path.into(),
        msg: format!("column `{name}` is not list<uint32>"),
    };
    let list = col.as_any().downcast_ref::<ListArray>().ok_or_else(bad)?;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(bad)?;
    let offsets = list.value_offsets();
    Ok((0..list.len())
        .map(|i| values.values()[offsets[i] as usize..offsets[i + 1] as usize].to_vec())
        .collect())
}

/// Read a whole token file, checking that it is a zerolm token file of `kind` with a known schema version.
pub fn read(path: &Path, kind: Kind) -> Result<TokenFile> {
    let file = File::open(path).map_err(|cause| IoError::read(path, cause))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(path))?;
    let metadata = key_value_metadata(&builder);
    check_header(&metadata, path, kind)?;
    let mut rows = Vec::new();
    let mut extra: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for batch in builder.build().map_err(parquet_err(path))? {
        let batch = batch.map_err(parquet_err(path))?;
        collect_f32_columns(&batch, &mut extra);
        rows.extend(batch_rows(&batch, kind, path)?);
    }
    Ok(TokenFile {
        path: path.into(),
        kind,
        metadata,
        rows,
        extra,
    })
}

/// A token file's metadata and kind, checked like [`read`]'s, without its rows.
pub fn read_header(path: &Path, kind: Kind) -> Result<TokenFile> {
    let file = File::open(path).map_err(|cause| IoError::read(path, cause))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(path))?;
    let metadata = key_value_metadata(&builder);
    check_header(&metadata, path, kind)?;
    Ok(TokenFile {
        path: path.into(),
        kind,
        metadata,
        rows: Vec::new(),
        extra: BTreeMap::new(),
    })
}

/// A token file's metadata and its `f32` columns (e.g. a reference cache's log-probs), checked like
/// [`read`]'s, without its token rows.
pub fn read_f32_columns(path: &Path, kind: Kind) -> Result<TokenFile> {
    let file = File::open(path).map_err(|cause| IoError::read(path, cause))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(path))?;
    let metadata = key_value_metadata(&builder);
    check_header(&metadata, path, kind)?;
    let floats: Vec<usize> = (builder.schema().fields().iter().enumerate())
        .filter(|(_, f)| f.data_type() == &DataType::Float32)
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), floats);
    let mut extra: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for batch in builder
        .with_projection(mask)
        .build()
        .map_err(parquet_err(path))?
    {
        collect_f32_columns(&batch.map_err(parquet_err(path))?, &mut extra);
    }
    Ok(TokenFile {
        path: path.into(),
        kind,
        metadata,
        rows: Vec::new(),
        extra,
    })
}

/// Calls `f` with each row of a token file, in order, holding one batch of rows at a time.
pub fn stream_rows(
    path: &Path,
    kind: Kind,
    mut f: impl FnMut(TokenRow) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|cause| IoError::read(path, cause))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(path))?;
    check_header(&key_value_metadata(&builder), path, kind)?;
    for batch in builder
        .with_batch_size(1024)
        .build()
        .map_err(parquet_err(path))?
    {
        let batch = batch.map_err(parquet_err(path))?;
        for row in batch_rows(&batch, kind, path)? {
            f(row)?;
        }
    }
    Ok(())
}

/// The file's key-value metadata (keys without a value are left out).
fn key_value_metadata(builder: &ParquetRecordBatchReaderBuilder<File>) -> BTreeMap<String, String> {
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Refuse a file without zerolm's schema version, with another one, or of another kind.
fn check_header(metadata: &BTreeMap<String, String>, path: &Path, kind: Kind) -> Result<()> {
    match metadata.get(keys::SCHEMA_VERSION).map(String::as_str) {
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(DataError::BadFile { path: path.into(), msg: format!("token file schema version {v}, this build reads {SCHEMA_VERSION}; re-run `tokenize`") })
        }
        None => return Err(DataError::BadFile { path: path.into(), msg: "not a zerolm token file (no zerolm.schema_version metadata); make it with `tokenize`".into() }),
    }
    let found = metadata.get(keys::KIND).cloned().unwrap_or_default();
    if found != kind.name() {
        return Err(DataError::BadFile {
            path: path.into(),
            msg: format!("holds `{found}` tokens, expected `{}`", kind.name()),
        });
    }
    Ok(())
}

/// Append the values of every f32 column of `batch` to `extra`, by column name.
fn collect_f32_columns(batch: &RecordBatch, extra: &mut BTreeMap<String, Vec<f32>>) {
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if let Some(values) = column.as_any().downcast_ref::<Float32Array>() {
            extra
                .entry(field.name().clone())
                .or_default()
                .extend(values.values().iter().copied());
        }
    }
}

fn column(batch: &RecordBatch, name: &str, path: &Path) -> Result<ArrayRef> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| DataError::BadFile {
            path: path.into(),
            msg: format!("missing column `{name}`"),
        })
}

/// The list<uint32> column `name` of `batch`, one id list per row.
fn id_lists(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Vec<u32>>> {
    list_rows(column(batch, name, path)?.as_ref(), path, name)
}

/// The rows of one batch of a `kind` token file.
fn batch_rows(batch: &RecordBatch, kind: Kind, path: &Path) -> Result<Vec<TokenRow>> {
    match kind {
        Kind::Pretrain => Ok(id_lists(batch, "input_ids", path)?
            .into_iter()
            .map(TokenRow::Doc)
            .collect()),
        Kind::Sft => sft_rows(batch, path),
        Kind::Dpo => dpo_rows(batch, path),
    }
}

fn sft_rows(batch: &RecordBatch, path: &Path) -> Result<Vec<TokenRow>> {
    let ids = id_lists(batch, "input_ids", path)?;
    let bad_mask = || DataError::BadFile {
        path: path.into(),
        msg: "column `loss_mask` is not list<uint8>".into(),
    };
    let mask_col = column(batch, "loss_mask", path)?;
    let mask = mask_col
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(bad_mask)?;
    let mut rows = Vec::with_capacity(ids.len());
    for (i, input_ids) in ids.into_iter().enumerate() {
        let m = mask.value(i);
        let m = m
            .as_any()
            .downcast_ref::<UInt8Array>()
            .ok_or_else(bad_mask)?;
        rows.push(TokenRow::Sft {
            input_ids,
            loss_mask: m.values().to_vec(),
        });
    }
    Ok(rows)
}

fn dpo_rows(batch: &RecordBatch, path: &Path) -> Result<Vec<TokenRow>> {
    let id_col = column(batch, "id", path)?;
    let ids = id_col
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DataError::BadFile {
            path: path.into(),
            msg: "column `id` is not a string".into(),
        })?;
    let p = id_lists(batch, "prompt_ids", path)?;
    let c = id_lists(batch, "chosen_ids", path)?;
    let r = id_lists(batch, "rejected_ids", path)?;
    Ok(p.into_iter()
        .zip(c)
        .zip(r)
        .enumerate()
        .map(|(i, ((p, c), r))| TokenRow::Dpo {
            id: ids.value(i).to_string(),
            prompt_ids: p,
            chosen_ids: c,
            rejected_ids: r,
        })
        .collect())
}
