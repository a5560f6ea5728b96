//! The `ref-logprobs` stage: the reference model's summed completion log-probs for every DPO pair,
//! computed once (forward only, no autograd graph) and cached as Parquet: the DPO columns +
//! `ref_chosen_logps`, `ref_rejected_logps`, with the fingerprints `dpo` checks.
//!
//! Resumable: rows are computed in parts of `PART_ROWS` pairs, each written atomically to
//! `<out>.parts/part-NNNNN.parquet` with the run's fingerprints; a rerun keeps the parts that match and
//! computes the rest, then merges them into `<out>` and removes the parts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use zerolm_data::artifact::{self, TokenRow, TokenWriter};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;

use crate::pairs::{sequence_logps, PairSet};
use crate::stage;
use crate::TrainError;

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
const PART_ROWS: usize = 256;

pub struct RefArgs {
    pub inputs: Vec<PathBuf>,
    pub model: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub out: PathBuf,
    pub max_len: usize,
    pub batch_size: usize,
    pub threads: usize,
    pub progress: bool,
    pub command: String,
}

pub struct RefReport {
    pub rows: usize,
    pub parts_reused: usize,
    pub skipped_empty: usize,
    pub skipped_long_prompt: usize,
    pub truncated: usize,
    pub elapsed_s: f64,
}

/// blake3 of a model directory's weights file: the identity a cache records for its reference model.
pub fn model_fingerprint(model_dir: &Path) -> Result<String, TrainError> {
    Ok(zerolm_data::fingerprint::file(&model_dir.join("model.safetensors"))?.0)
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

pub fn run(args: RefArgs) -> Result<RefReport, TrainError> {
    let started = std::time::Instant::now();
    let (tokenizer, _) = stage::start_tokenizer(&args.model, args.tokenizer.as_deref())?;
    if args.inputs.is_empty() {
        return Err(TrainError::Config(
            "no --input DPO token file given (make one with `tokenize dpo`)".into(),
        ));
    }
    let (files, inputs) = stage::read_token_files(&args.inputs, Kind::Dpo, &tokenizer, "dpo")?;
    let pairs = PairSet::new(&files, args.max_len, tokenizer.pad_id);
    if pairs.pairs.is_empty() {
        return Err(TrainError::Config(format!(
            "no usable pair: {} with an empty completion, {} whose prompt leaves no room within --max-len {}",
            pairs.skipped_empty, pairs.skipped_long_prompt, args.max_len
        )));
    }
    let model = zerolm_model::io::load_model_dir(&args.model, &crate::device::current())?
        .for_inference()?;
    let mut meta = BTreeMap::new();
    meta.insert(
        keys::REF_MODEL_FINGERPRINT.to_string(),
        model_fingerprint(&args.model)?,
    );
    meta.insert(
        keys::REF_MODEL.to_string(),
        args.model.display().to_string(),
    );
    meta.insert(keys::ROWS_FINGERPRINT.to_string(), pairs.fingerprint());
    meta.insert(keys::MAX_LEN.to_string(), args.max_len.to_string());
    meta.insert(
        artifact::keys::TOKENIZER_FINGERPRINT.to_string(),
        tokenizer.fingerprint.clone(),
    );
    meta.insert(
        artifact::keys::VOCAB_SIZE.to_string(),
        tokenizer.vocab_size().to_string(),
    );
    meta.insert(
        artifact::keys::INPUTS.to_string(),
        serde_json::to_string(&inputs).expect("json"),
    );
    meta.insert(artifact::keys::COMMAND.to_string(), args.command.clone());

    let parts_dir = parts_dir(&args.out);
    std::fs::create_dir_all(&parts_dir).map_err(|cause| TrainError::Write {
        path: parts_dir.clone(),
        cause,
    })?;
    let n = pairs.pairs.len();
    let part_rows = PART_ROWS.div_ceil(args.batch_size.max(1)) * args.batch_size.max(1);
    let parts = n.div_ceil(part_rows);
    eprintln!(
        "ref-logprobs: {n} pairs ({} with an empty completion and {} with a prompt too long for --max-len {} skipped, \
         {} truncated) in {parts} parts, batch {}",
        pairs.skipped_empty, pairs.skipped_long_prompt, args.max_len, pairs.truncated, args.batch_size
    );
    let bar = (args.progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "ref-logprobs {bar:30} {pos}/{len} pairs · {per_sec} · {eta_precise}",
            )
            .expect("template"),
        );
        b
    });
    let mut reused = 0;
    for k in 0..parts {
        let range = k * part_rows..((k + 1) * part_rows).min(n);
        let path = parts_dir.join(format!("part-{k:05}.parquet"));
        let mut part_meta = meta.clone();
        part_meta.insert(
            keys::PART.to_string(),
            format!("{}..{}", range.start, range.end),
        );
        if let Ok(existing) = artifact::read(&path, Kind::Dpo) {
            if part_meta.iter().all(|(key, v)| {
                key == artifact::keys::COMMAND || existing.metadata.get(key) == Some(v)
            }) {
                reused += 1;
                if let Some(b) = &bar {
                    b.inc(range.len() as u64);
                }
                continue;
            }
        }
        let (c, r) = compute(&model, &pairs, range.clone(), args.batch_size, bar.as_ref())?;
        write_cache(&path, &pairs, range, &c, &r, part_meta)?;
        if bar.is_none() {
            eprintln!("ref-logprobs: part {}/{parts} done", k + 1);
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    // Merge the parts into the cache file.
    let (mut c, mut r) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for k in 0..parts {
        let part = artifact::read(&parts_dir.join(format!("part-{k:05}.parquet")), Kind::Dpo)?;
        c.extend_from_slice(&part.extra[CHOSEN]);
        r.extend_from_slice(&part.extra[REJECTED]);
    }
    let counts = json!({
        "pairs": n, "skipped_empty": pairs.skipped_empty, "skipped_long_prompt": pairs.skipped_long_prompt,
        "truncated": pairs.truncated, "threads": args.threads,
    });
    meta.insert(artifact::keys::COUNTS.to_string(), counts.to_string());
    write_cache(&args.out, &pairs, 0..n, &c, &r, meta)?;
    std::fs::remove_dir_all(&parts_dir).map_err(|cause| TrainError::Write {
        path: parts_dir,
        cause,
    })?;
    Ok(RefReport {
        rows: n,
        parts_reused: reused,
        skipped_empty: pairs.skipped_empty,
        skipped_long_prompt: pairs.skipped_long_prompt,
        truncated: pairs.truncated,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

fn parts_dir(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".parts");
    out.with_file_name(name)
}

fn write_cache(
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
