//! The `ref-logprobs` stage: the reference model's summed completion log-probs for every DPO pair,
//! computed once (forward only, no autograd graph) and cached as Parquet (see
//! [`crate::preference::cache`]) for `dpo`.
//!
//! Resumable: rows are computed in parts of `PART_ROWS` pairs, each written atomically to
//! `<out>.parts/part-NNNNN.parquet` with the run's fingerprints; a rerun keeps the parts that match and
//! computes the rest, then merges them into `<out>` and removes the parts.
//!
//! On several ranks (`mpirun -np N ref-logprobs …`) the parts left to compute are dealt out in rounds,
//! one to each rank; rank 0 gathers each round's log-probs and alone writes parts and cache, so the
//! cache is the same file as one rank's.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use zerolm_data::artifact;
use zerolm_data::formats::Kind;
use zerolm_model::Model;
use zerolm_model::Precision;
use zerolm_train::collective::{self, Collective};
use zerolm_train::TrainError;

use crate::common::setup::{check_model_completion_end, common_completion_end, open_streams};
use crate::common::start::start_tokenizer;
use crate::preference::cache::{
    self, compute, keys, write_cache, CacheWriter, RefLogps, FORMAT_VERSION,
};
use crate::preference::pairs::PairSet;

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
    pub precision: Precision,
}

pub struct RefReport {
    pub rows: usize,
    pub parts_reused: usize,
    pub skipped_empty: usize,
    pub skipped_long_prompt: usize,
    pub truncated: usize,
    pub elapsed_s: f64,
}

impl RefReport {
    /// The run's closing line.
    pub fn summary(&self, out: &Path) -> String {
        format!(
            "ref-logprobs: {} pairs in {:.1}s ({} parts reused from an interrupted run); skipped {} empty, {} long \
             prompts; {} truncated → {}",
            self.rows,
            self.elapsed_s,
            self.parts_reused,
            self.skipped_empty,
            self.skipped_long_prompt,
            self.truncated,
            out.display()
        )
    }
}

pub fn run(args: RefArgs) -> Result<RefReport, TrainError> {
    let started = std::time::Instant::now();
    let (pairs, mut meta) = read_pairs(&args)?;
    let mut model =
        zerolm_model::io::load_model_dir(&args.model, &zerolm_model::device::current())?;
    model.set_precision(args.precision);
    let model = model.for_inference()?;
    meta.insert(keys::PRECISION.to_string(), args.precision.to_string());
    meta.insert(
        keys::REF_MODEL_FINGERPRINT.to_string(),
        cache::model_fingerprint(&args.model)?,
    );
    meta.insert(
        keys::REF_MODEL.to_string(),
        args.model.display().to_string(),
    );
    let parts = Parts::new(&args.out, pairs.len(), args.batch_size)?;
    eprintln!(
        "ref-logprobs: {} pairs ({} with an empty completion and {} with a prompt too long for --max-len {} skipped, \
         {} truncated) in {} parts, batch {}",
        pairs.len(), pairs.skipped_empty, pairs.skipped_long_prompt, args.max_len, pairs.truncated,
        parts.count, args.batch_size
    );
    let reused = parts.compute(&model, &pairs, &meta, &args)?;
    let report = RefReport {
        rows: pairs.len(),
        parts_reused: reused,
        skipped_empty: pairs.skipped_empty,
        skipped_long_prompt: pairs.skipped_long_prompt,
        truncated: pairs.truncated,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    if !collective::is_writer() {
        return Ok(report);
    }

    let counts = json!({
        "pairs": pairs.len(), "skipped_empty": pairs.skipped_empty,
        "skipped_long_prompt": pairs.skipped_long_prompt, "truncated": pairs.truncated, "threads": args.threads,
    });
    meta.insert(artifact::keys::COUNTS.to_string(), counts.to_string());
    parts.merge_into(&args.out, &pairs, meta)?;
    parts.remove()?;
    Ok(RefReport {
        elapsed_s: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// The DPO pairs of `--input` under the run's length rule, and the cache metadata that identifies them.
fn read_pairs(args: &RefArgs) -> Result<(PairSet, BTreeMap<String, String>), TrainError> {
    let (tokenizer, _) = start_tokenizer(&args.model, args.tokenizer.as_deref())?;
    if args.inputs.is_empty() {
        return Err(TrainError::Config(
            "no --input token file given (make one with `tokenize dpo`)".into(),
        ));
    }
    let opened = open_streams(&args.inputs, Kind::Dpo, &tokenizer, "dpo")?;
    let completion_end = common_completion_end(&opened.headers)?;
    let inputs = opened.prints;
    check_model_completion_end(&args.model, completion_end.as_deref())?;
    let pairs = PairSet::new(opened.streams, args.max_len, tokenizer.pad_id)?;
    if pairs.is_empty() {
        return Err(TrainError::Config(format!(
            "no usable pair: {} with an empty completion, {} whose prompt leaves no room within --max-len {}",
            pairs.skipped_empty, pairs.skipped_long_prompt, args.max_len
        )));
    }
    let mut meta = BTreeMap::new();
    meta.insert(keys::ROWS_FINGERPRINT.to_string(), pairs.fingerprint()?);
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
    if let Some(end) = completion_end {
        meta.insert(artifact::keys::COMPLETION_END.to_string(), end);
    }
    Ok((pairs, meta))
}

/// The parts a cache is computed in: `count` ranges of `rows` pairs (a multiple of the batch size),
/// kept in `<out>.parts/` until they are merged.
struct Parts {
    dir: PathBuf,
    rows: usize,
    count: usize,
    pairs: usize,
}

impl Parts {
    fn new(out: &Path, pairs: usize, batch_size: usize) -> Result<Parts, TrainError> {
        let mut name = out
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".parts");
        let dir = out.with_file_name(name);
        if collective::is_writer() {
            std::fs::create_dir_all(&dir).map_err(|cause| TrainError::Write {
                path: dir.clone(),
                cause,
            })?;
        }
        let rows = PART_ROWS.div_ceil(batch_size.max(1)) * batch_size.max(1);
        Ok(Parts {
            dir,
            rows,
            count: pairs.div_ceil(rows),
            pairs,
        })
    }

    fn range(&self, k: usize) -> Range<usize> {
        k * self.rows..((k + 1) * self.rows).min(self.pairs)
    }

    fn path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("part-{k:05}.parquet"))
    }

    /// The metadata part `k` is written with.
    fn part_meta(&self, k: usize, meta: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let range = self.range(k);
        let mut part_meta = meta.clone();
        part_meta.insert(keys::FORMAT.to_string(), FORMAT_VERSION.to_string());
        let span = format!("{}..{}", range.start, range.end);
        part_meta.insert(keys::PART.to_string(), span);
        part_meta
    }

    /// Computes every part that an interrupted run did not leave behind with the same metadata, dealt
    /// out to the ranks in rounds; returns how many were reused.
    fn compute(
        &self,
        model: &Model,
        pairs: &PairSet,
        meta: &BTreeMap<String, String>,
        args: &RefArgs,
    ) -> Result<usize, TrainError> {
        let world = collective::world();
        let todo = self.todo(world, meta)?;
        let bar = args.progress.then(|| progress_bar(self.pairs)).flatten();
        if let Some(b) = &bar {
            b.inc((self.pairs - todo.iter().map(|&k| self.range(k).len()).sum::<usize>()) as u64);
        }
        let own_bar = bar.as_ref().filter(|_| world.size() == 1);
        for round in todo.chunks(world.size()) {
            let logps = match round.get(world.rank()) {
                Some(&k) => compute(model, pairs, self.range(k), args.batch_size, own_bar)?,
                None => RefLogps::default(),
            };
            let gathered = gather(world, &logps)?;
            for (&k, logps) in round.iter().zip(&gathered) {
                if world.rank() == 0 {
                    write_cache(
                        &self.path(k),
                        pairs,
                        self.range(k),
                        logps,
                        self.part_meta(k, meta),
                    )?;
                }
                match (&bar, own_bar) {
                    (Some(b), None) => b.inc(self.range(k).len() as u64),
                    (None, _) => eprintln!("ref-logprobs: part {}/{} done", k + 1, self.count),
                    _ => {}
                }
            }
        }
        if let Some(b) = &bar {
            b.finish();
        }
        Ok(self.count - todo.len())
    }

    /// The parts still to compute: rank 0 looks at what an interrupted run left and tells the others.
    fn todo(
        &self,
        world: &dyn Collective,
        meta: &BTreeMap<String, String>,
    ) -> Result<Vec<usize>, TrainError> {
        let mut bytes = Vec::new();
        if world.rank() == 0 {
            for k in (0..self.count).filter(|&k| !self.is_done(k, &self.part_meta(k, meta))) {
                bytes.extend_from_slice(&(k as u64).to_le_bytes());
            }
        }
        world.broadcast(&mut bytes)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .collect())
    }

    /// Whether part `k` exists with exactly this metadata (the command line may differ).
    fn is_done(&self, k: usize, part_meta: &BTreeMap<String, String>) -> bool {
        let Ok(existing) = artifact::read_header(&self.path(k), Kind::Dpo) else {
            return false;
        };
        part_meta
            .iter()
            .all(|(key, v)| key == artifact::keys::COMMAND || existing.metadata.get(key) == Some(v))
    }

    /// Writes the cache at `out`: the pairs with their parts' log-probs, part by part.
    fn merge_into(
        &self,
        out: &Path,
        pairs: &PairSet,
        meta: BTreeMap<String, String>,
    ) -> Result<(), TrainError> {
        let mut w = CacheWriter::create(out)?;
        for k in 0..self.count {
            let path = self.path(k);
            let part = artifact::read_f32_columns(&path, Kind::Dpo)?;
            let logps = RefLogps::of_file(&part).ok_or_else(|| {
                TrainError::Internal(format!("{} has no log-prob columns", path.display()))
            })?;
            w.append(pairs, self.range(k), &logps)?;
        }
        w.finish(meta)
    }

    fn remove(self) -> Result<(), TrainError> {
        std::fs::remove_dir_all(&self.dir).map_err(|cause| TrainError::Write {
            path: self.dir,
            cause,
        })
    }
}

/// Every rank's log-probs of a round, in rank order (a rank without a part sends none).
fn gather(world: &dyn Collective, mine: &RefLogps) -> Result<Vec<RefLogps>, TrainError> {
    if world.size() == 1 {
        return Ok(vec![mine.clone()]);
    }
    (world.all_gather(&mine.to_bytes())?.iter())
        .map(|b| {
            RefLogps::from_bytes(b)
                .ok_or_else(|| TrainError::Internal("a rank sent unreadable log-probs".into()))
        })
        .collect()
}

/// A bar over `pairs` when stderr is a terminal.
fn progress_bar(pairs: usize) -> Option<ProgressBar> {
    std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let b = ProgressBar::with_draw_target(Some(pairs as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "ref-logprobs {bar:30} {pos}/{len} pairs · {per_sec} · {eta_precise}",
            )
            .expect("template"),
        );
        b
    })
}
