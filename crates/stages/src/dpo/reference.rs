//! Where a DPO run's reference log-probs come from, per split: a `ref-logprobs` cache (checked against
//! the pairs, the tokenizer and, when `--ref-model` is named, that model), or the reference model itself,
//! run once at start.

use std::path::{Path, PathBuf};

use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::{Model, Precision};
use zerolm_train::checkpoint::InputFingerprint;
use zerolm_train::TrainError;

use super::task::Split;
use crate::common::setup::fingerprint;
use crate::common::start::start_tokenizer;
use crate::preference::cache::{self, RefCache, RefLogps};
use crate::preference::pairs::PairSet;

/// `--ref-cache`, `--eval-ref-cache`, `--ref-model`.
#[derive(Clone, Debug, Default)]
pub struct RefSources {
    pub ref_cache: Option<PathBuf>,
    pub eval_ref_cache: Option<PathBuf>,
    pub ref_model: Option<PathBuf>,
}

/// Resolves the splits of one run, remembering what it used.
pub struct References<'a> {
    sources: &'a RefSources,
    tokenizer: &'a TokenizerDir,
    /// blake3 of the policy's starting weights (a cache made by another model is noted).
    policy: String,
    batch_size: usize,
    /// The run's precision: the reference model's when it is run here; a cache made in another is noted.
    precision: Precision,
    /// The reference model, loaded on first use.
    model: Option<Model>,
    /// One line per split, for the log and resolved_config.json.
    lines: Vec<String>,
    /// The caches or model used, as run inputs.
    inputs: Vec<InputFingerprint>,
}

/// Both splits resolved (the reference model, if one was run, is dropped with the resolver).
pub struct Resolved {
    pub train: Split,
    pub eval: Option<Split>,
    /// What the reference is, e.g. `train: cache runs/ref/dpo.parquet (reference model 1a2b…)`.
    pub described: String,
    /// The caches or model used, as run inputs.
    pub inputs: Vec<InputFingerprint>,
}

impl<'a> References<'a> {
    pub fn new(
        sources: &'a RefSources,
        tokenizer: &'a TokenizerDir,
        policy: String,
        batch_size: usize,
        precision: Precision,
    ) -> References<'a> {
        References {
            sources,
            tokenizer,
            policy,
            batch_size,
            precision,
            model: None,
            lines: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// Both splits with their reference log-probs; a reference-free loss needs none.
    pub fn resolve(
        mut self,
        needs_reference: bool,
        train: PairSet,
        eval: Option<PairSet>,
    ) -> Result<Resolved, TrainError> {
        if !needs_reference {
            let bare = |pairs| Split {
                pairs,
                reference: None,
            };
            return Ok(Resolved {
                train: bare(train),
                eval: eval.map(bare),
                described: "none (reference-free loss)".into(),
                inputs: Vec::new(),
            });
        }
        let train = self.split(train, "train")?;
        let eval = eval.map(|p| self.split(p, "eval")).transpose()?;
        Ok(Resolved {
            train,
            eval,
            described: self.lines.join("; "),
            inputs: self.inputs,
        })
    }

    /// The train split (`role` "train") or eval split (`"eval"`) with its reference log-probs.
    fn split(&mut self, pairs: PairSet, role: &str) -> Result<Split, TrainError> {
        let cache = match role {
            "eval" => self.sources.eval_ref_cache.clone(),
            _ => self.sources.ref_cache.clone(),
        };
        let reference = match (cache, self.sources.ref_model.clone()) {
            (Some(path), _) => self.cached(&path, &pairs, role)?,
            (None, Some(dir)) => self.computed(&dir, &pairs, role)?,
            (None, None) => {
                return Err(TrainError::Config(format!(
                    "the loss needs reference log-probs for the {role} split: give --{}ref-cache (from \
                     `ref-logprobs`) or --ref-model DIR",
                    if role == "eval" { "eval-" } else { "" }
                )))
            }
        };
        Ok(Split {
            pairs,
            reference: Some(reference),
        })
    }

    fn cached(&mut self, path: &Path, pairs: &PairSet, role: &str) -> Result<RefLogps, TrainError> {
        let named = self.sources.ref_model.as_deref();
        let RefCache {
            logps,
            model_fingerprint,
            precision,
        } = cache::load_checked(path, pairs, self.tokenizer, named, role)?;
        if precision != self.precision.name() {
            eprintln!(
                "note: the {role} cache {} was computed in {precision}, this run trains in {} (the reference \
                 log-probs differ by the rounding; rerun `ref-logprobs --precision {}` to match)",
                path.display(),
                self.precision,
                self.precision
            );
        }
        if named.is_none() && model_fingerprint != self.policy {
            eprintln!(
                "note: the {role} cache {} was made by another model than --model (usual when the reference is not \
                 the starting policy); pass --ref-model DIR to have it checked",
                path.display()
            );
        }
        self.inputs
            .push(fingerprint(path, &format!("{role}_ref_cache"))?);
        self.lines.push(format!(
            "{role}: cache {} (reference model {}, {precision})",
            path.display(),
            &model_fingerprint[..12.min(model_fingerprint.len())]
        ));
        Ok(logps)
    }

    fn computed(
        &mut self,
        dir: &Path,
        pairs: &PairSet,
        role: &str,
    ) -> Result<RefLogps, TrainError> {
        start_tokenizer(dir, Some(&self.tokenizer.dir))?;
        if self.model.is_none() {
            let mut model =
                zerolm_model::io::load_model_dir(dir, &zerolm_model::device::current())?;
            model.set_precision(self.precision);
            self.model = Some(model.for_inference()?);
            self.inputs.push(InputFingerprint {
                role: "ref_model".into(),
                path: dir.join("model.safetensors").display().to_string(),
                blake3: cache::model_fingerprint(dir)?,
            });
        }
        let model = self.model.as_ref().expect("loaded");
        self.lines
            .push(format!("{role}: computed at start from {}", dir.display()));
        cache::compute(model, pairs, 0..pairs.len(), self.batch_size, None)
    }
}
