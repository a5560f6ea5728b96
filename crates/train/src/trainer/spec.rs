//! What a stage asks of the loop (a [`RunSpec`]) and what it gets back (an [`Outcome`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::Value;

use super::task::EvalResult;
use crate::checkpoint::InputFingerprint;
use crate::settings::TrainConfig;

/// What identifies a run besides its settings.
pub struct RunSpec<'a> {
    pub stage: &'a str,
    pub out: &'a Path,
    pub cfg: &'a TrainConfig,
    pub inputs: Vec<InputFingerprint>,
    pub tokenizer_fingerprint: String,
    pub threads: usize,
    /// Start over even if checkpoints exist.
    pub no_resume: bool,
    /// Show a progress bar when on a terminal.
    pub progress: bool,
    /// Written as `resolved_config.json` once the run is known to start or resume.
    pub resolved: Value,
    /// Stage settings outside `TrainConfig` that change the result (e.g. DPO's loss and β): stored in
    /// checkpoints under `stage_settings` and checked on resume like the rest of the config.
    pub stage_settings: Option<Value>,
}

/// The end of a run.
pub struct Outcome {
    pub params: BTreeMap<String, Tensor>,
    pub step: usize,
    pub resumed_from: Option<usize>,
    pub final_loss: Option<f64>,
    pub eval: Option<EvalResult>,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
    pub metrics_path: PathBuf,
}

impl Outcome {
    /// `, resumed from step N` when the run resumed, else nothing (for closing summaries).
    pub fn resumed_note(&self) -> String {
        self.resumed_from
            .map_or(String::new(), |s| format!(", resumed from step {s}"))
    }
}
