//! The reference cache: a DPO token file with two more columns, the reference model's summed
//! completion log-probs of every pair (`ref_chosen_logps`, `ref_rejected_logps`), and metadata that
//! says which model, which rows and which length rule made them. `ref-logprobs` writes it; `dpo`
//! reads it back and refuses a cache made for other rows, another tokenizer or (when named) another
//! reference model.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;
use zerolm_data::artifact::{self, TokenRow, TokenWriter};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_train::TrainError;

use super::pairs::{sequence_logps, PairSet};

/// Metadata keys of a reference cache (besides the token-file keys).
pub mod keys {
    pub const REF_MODEL_FINGERPRINT: &str = "zerolm.ref_model_fingerprint";
    pub const REF_MODEL: &str = "zerolm.ref_model";
    pub const ROWS_FINGERPRINT: &str = "zerolm.dpo_rows_fingerprint";
    pub const MAX_LEN: &str = "zerolm.max_len";
    pub const PART: &str = "zerolm.part";
}

pub const CHOSEN: &str = "ref_chosen_logps";
pub const REJECTED: &str = "ref_rejected_logps";

/// blake3 of a model directory's weights file: the identity a cache records for its reference model.
pub fn model_fingerprint(model_dir: &Path) -> Result<String, TrainError> {
    Ok(zerolm_io::hash_file(&model_dir.join("model.safetensors"))?.0)
}

/// Reference log-probs of `pairs` (chosen, rejected) under the model in `model_dir`, in pair order.
pub fn compute(
    model: &zerolm_model::Model,
    pairs: &PairSet,
    range: std::ops::Range<usize>,
    batch_size: usize,
    bar: Option<&ProgressBar>,
) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = range.collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, y, w) = pairs.batch(chunk, model.device())?;
        let sums: Vec<f32> = sequence_logps(model, &x, &y, &w, false)?.sums.to_vec1()?;
        chosen.extend_from_slice(&sums[..chunk.len()]);
        rejected.extend_from_slice(&sums[chunk.len()..]);
        if let Some(b) = bar {
            b.inc(chunk.len() as u64);
        }
    }
    Ok((chosen, rejected))
}

pub fn write_cache(
    path: &Path,
    pairs: &PairSet,
    range: std::ops::Range<usize>,
    chosen: &[f32],
    rejected: &[f32],
    meta: BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let rows: Vec<TokenRow> = pairs.pairs[range]
        .iter()
        .map(|p| TokenRow::Dpo {
            id: p.id.clone(),
            prompt_ids: p.prompt.clone(),
            chosen_ids: p.chosen.clone(),
            rejected_ids: p.rejected.clone(),
        })
        .collect();
    let mut w = TokenWriter::create_with_extra(path, Kind::Dpo, &[CHOSEN, REJECTED])?;
    w.write_with_extra(&rows, &[chosen, rejected])?;
    w.finish(meta)?;
    Ok(())
}

/// A reference cache read back and checked against the pairs a `dpo` run trains on.
pub struct RefCache {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
    pub model_fingerprint: String,
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
    let file = artifact::read(path, Kind::Dpo)?;
    let refuse =
        |m: String| TrainError::Config(format!("{role} reference cache {}: {m}", path.display()));
    let (Some(c), Some(r)) = (file.extra.get(CHOSEN), file.extra.get(REJECTED)) else {
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
    if get(keys::ROWS_FINGERPRINT) != pairs.fingerprint() || c.len() != pairs.pairs.len() {
        return Err(refuse(format!(
            "it was computed for other DPO rows ({} pairs) than {data_flag} gives ({} pairs); rerun `ref-logprobs` on that data",
            c.len(),
            pairs.pairs.len()
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
    Ok(RefCache {
        chosen: c.clone(),
        rejected: r.clone(),
        model_fingerprint: recorded,
    })
}
