//! The reference cache: a DPO token file with four more columns, the reference model's summed
//! completion log-probs of every pair (`ref_chosen_logps`, `ref_rejected_logps`) and the part of each
//! sum over the tokens past the pair's shorter completion (`ref_chosen_tail_logps`,
//! `ref_rejected_tail_logps`: LD-DPO's down-weighted tokens, so one cache serves any `--ld-alpha`), and
//! metadata that says which model, which rows and which length rule made them. `ref-logprobs` writes it; `dpo`
//! reads it back and refuses a cache made for other rows, another tokenizer or (when named) another
//! reference model.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;
use zerolm_data::artifact::{self, TokenRow, TokenWriter};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_train::TrainError;

use super::pairs::{sequence_logps, PairSet, Stats};

/// Metadata keys of a reference cache (besides the token-file keys).
pub mod keys {
    pub const REF_MODEL_FINGERPRINT: &str = "zerolm.ref_model_fingerprint";
    pub const REF_MODEL: &str = "zerolm.ref_model";
    /// `f32` or `bf16`: the precision of the reference model's matrix products (absent: f32).
    pub const PRECISION: &str = "zerolm.ref_precision";
    pub const ROWS_FINGERPRINT: &str = "zerolm.dpo_rows_fingerprint";
    pub const MAX_LEN: &str = "zerolm.max_len";
    pub const PART: &str = "zerolm.part";
    /// The cache layout's version: 2 added the tail columns.
    pub const FORMAT: &str = "zerolm.ref_cache_format";
}

/// The layout [`write_cache`] writes.
pub const FORMAT_VERSION: &str = "2";

pub const CHOSEN: &str = "ref_chosen_logps";
pub const REJECTED: &str = "ref_rejected_logps";
pub const CHOSEN_TAIL: &str = "ref_chosen_tail_logps";
pub const REJECTED_TAIL: &str = "ref_rejected_tail_logps";

/// Reference log-probs of pairs, in pair order: summed over each completion, and over its tail (the
/// tokens past the pair's shorter completion). The tails are empty for a cache made before they were
/// recorded.
#[derive(Clone, Debug, Default)]
pub struct RefLogps {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
    pub chosen_tail: Vec<f32>,
    pub rejected_tail: Vec<f32>,
}

impl RefLogps {
    fn extend(&mut self, other: &RefLogps) {
        self.chosen.extend_from_slice(&other.chosen);
        self.rejected.extend_from_slice(&other.rejected);
        self.chosen_tail.extend_from_slice(&other.chosen_tail);
        self.rejected_tail.extend_from_slice(&other.rejected_tail);
    }

    /// The four columns as bytes (each length, then the values, little-endian), to send between ranks.
    pub fn to_bytes(&self) -> Vec<u8> {
        let cols = [
            &self.chosen,
            &self.rejected,
            &self.chosen_tail,
            &self.rejected_tail,
        ];
        let mut out = Vec::new();
        for c in cols {
            out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        }
        for x in cols.into_iter().flatten() {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    /// Reads [`RefLogps::to_bytes`] back; `None` when the bytes are not such.
    pub fn from_bytes(bytes: &[u8]) -> Option<RefLogps> {
        let (head, mut body) = (bytes.get(..32)?, bytes.get(32..)?);
        let mut cols: Vec<Vec<f32>> = Vec::with_capacity(4);
        for len in head.chunks_exact(8) {
            let n = u64::from_le_bytes(len.try_into().ok()?) as usize;
            let (col, rest) = (body.get(..n * 4)?, body.get(n * 4..)?);
            cols.push(
                col.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            );
            body = rest;
        }
        let [chosen, rejected, chosen_tail, rejected_tail]: [Vec<f32>; 4] = cols.try_into().ok()?;
        body.is_empty().then_some(RefLogps {
            chosen,
            rejected,
            chosen_tail,
            rejected_tail,
        })
    }

    /// The columns of a cache file read back.
    pub fn of_file(file: &artifact::TokenFile) -> Option<RefLogps> {
        let col = |name: &str| file.extra.get(name).cloned();
        Some(RefLogps {
            chosen: col(CHOSEN)?,
            rejected: col(REJECTED)?,
            chosen_tail: col(CHOSEN_TAIL).unwrap_or_default(),
            rejected_tail: col(REJECTED_TAIL).unwrap_or_default(),
        })
    }
}

/// blake3 of a model directory's weights file: the identity a cache records for its reference model.
pub fn model_fingerprint(model_dir: &Path) -> Result<String, TrainError> {
    Ok(zerolm_io::hash_file(&model_dir.join("model.safetensors"))?.0)
}

/// Reference log-probs of `pairs[range]` under `model`, in pair order.
pub fn compute(
    model: &zerolm_model::Model,
    pairs: &PairSet,
    range: std::ops::Range<usize>,
    batch_size: usize,
    bar: Option<&ProgressBar>,
) -> Result<RefLogps, TrainError> {
    let mut out = RefLogps::default();
    let idx: Vec<usize> = range.collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let b = pairs.batch(chunk, model.device())?;
        let s = sequence_logps(model, &b, Stats::None)?;
        let (sums, tails): (Vec<f32>, Vec<f32>) = (s.sums.to_vec1()?, s.tail_sums.to_vec1()?);
        let n = chunk.len();
        out.extend(&RefLogps {
            chosen: sums[..n].to_vec(),
            rejected: sums[n..].to_vec(),
            chosen_tail: tails[..n].to_vec(),
            rejected_tail: tails[n..].to_vec(),
        });
        if let Some(b) = bar {
            b.inc(n as u64);
        }
    }
    Ok(out)
}

/// Writes the cache of `pairs[range]` with their log-probs `logps` at `path`.
pub fn write_cache(
    path: &Path,
    pairs: &PairSet,
    range: std::ops::Range<usize>,
    logps: &RefLogps,
    meta: BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let mut w = CacheWriter::create(path)?;
    w.append(pairs, range, logps)?;
    w.finish(meta)
}

/// A cache written range by range (the pairs of a range and their log-probs held only while written).
pub struct CacheWriter {
    w: TokenWriter,
}

impl CacheWriter {
    pub fn create(path: &Path) -> Result<CacheWriter, TrainError> {
        let columns = [CHOSEN, REJECTED, CHOSEN_TAIL, REJECTED_TAIL];
        Ok(CacheWriter {
            w: TokenWriter::create_with_extra(path, Kind::Dpo, &columns)?,
        })
    }

    /// Appends the pairs `pairs[range]` with their log-probs `logps`.
    pub fn append(
        &mut self,
        pairs: &PairSet,
        range: std::ops::Range<usize>,
        logps: &RefLogps,
    ) -> Result<(), TrainError> {
        let rows: Vec<TokenRow> = (range.map(|i| pairs.get(i)))
            .map(|p| {
                p.map(|p| TokenRow::Dpo {
                    id: p.id,
                    prompt_ids: p.prompt,
                    chosen_ids: p.chosen,
                    rejected_ids: p.rejected,
                })
            })
            .collect::<Result<_, _>>()?;
        let columns: [&[f32]; 4] = [
            &logps.chosen,
            &logps.rejected,
            &logps.chosen_tail,
            &logps.rejected_tail,
        ];
        self.w.write_with_extra(&rows, &columns)?;
        Ok(())
    }

    /// Records `meta` (and the cache format) and renames the cache into place.
    pub fn finish(self, mut meta: BTreeMap<String, String>) -> Result<(), TrainError> {
        meta.insert(keys::FORMAT.to_string(), FORMAT_VERSION.to_string());
        self.w.finish(meta)?;
        Ok(())
    }
}

/// A reference cache read back and checked against the pairs a `dpo` run trains on.
pub struct RefCache {
    pub logps: RefLogps,
    pub model_fingerprint: String,
    /// The precision the reference ran in (`f32` for a cache that does not record it).
    pub precision: String,
}

/// Reads a cache and refuses it unless it was made from exactly `pairs` (same rows, same length rule),
/// with `tokenizer`, and — when `ref_model` is named — by that model.
pub fn load_checked(
    path: &Path,
    pairs: &PairSet,
    tokenizer: &TokenizerDir,
    ref_model: Option<&Path>,
    role: &str,
) -> Result<RefCache, TrainError> {
    let data_flag = if role == "eval" {
        "--eval-input"
    } else {
        "--input"
    };
    let file = artifact::read_f32_columns(path, Kind::Dpo)?;
    let refuse =
        |m: String| TrainError::Config(format!("{role} reference cache {}: {m}", path.display()));
    let Some(logps) = RefLogps::of_file(&file) else {
        return Err(refuse(format!(
            "no `{CHOSEN}`/`{REJECTED}` columns: make it with `ref-logprobs`"
        )));
    };
    file.check_tokenizer(&tokenizer.fingerprint)?;
    let get = |k: &str| file.metadata.get(k).cloned().unwrap_or_default();
    if get(keys::MAX_LEN) != pairs.max_len.to_string() {
        return Err(refuse(format!(
            "made with --max-len {}, this run uses {}; use the same --max-len or rebuild the cache",
            get(keys::MAX_LEN),
            pairs.max_len
        )));
    }
    if logps.chosen.len() != pairs.len() || get(keys::ROWS_FINGERPRINT) != pairs.fingerprint()? {
        return Err(refuse(format!(
            "it was computed for other DPO rows ({} pairs) than {data_flag} gives ({} pairs); rerun `ref-logprobs` on that data",
            logps.chosen.len(),
            pairs.len()
        )));
    }
    let recorded = get(keys::REF_MODEL_FINGERPRINT);
    if let Some(dir) = ref_model {
        if model_fingerprint(dir)? != recorded {
            return Err(refuse(format!(
                "it was computed with reference model {} ({}), not {}; rerun `ref-logprobs --model {}`",
                get(keys::REF_MODEL),
                &recorded[..12.min(recorded.len())],
                dir.display(),
                dir.display()
            )));
        }
    }
    let precision = file.metadata.get(keys::PRECISION).cloned();
    Ok(RefCache {
        logps,
        model_fingerprint: recorded,
        precision: precision.unwrap_or_else(|| "f32".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probs_survive_the_trip_between_ranks() {
        let l = RefLogps {
            chosen: vec![-1.5, -0.0],
            rejected: vec![-2.0, f32::MIN],
            chosen_tail: vec![0.0, -0.25],
            rejected_tail: vec![],
        };
        let back = RefLogps::from_bytes(&l.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), l.to_bytes());
        assert!(RefLogps::from_bytes(&l.to_bytes()[..40]).is_none());
        assert!(RefLogps::from_bytes(&[]).is_none());
    }
}
