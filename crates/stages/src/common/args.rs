//! What every training stage is given: its token files, tokenizer, output directory, resolved
//! settings, and how it runs (threads, resume, progress display).

use std::path::PathBuf;

use zerolm_train::TrainConfig;

/// The inputs `pretrain`, `sft` and `dpo` share.
pub struct StageArgs {
    /// Token files to train on (from `tokenize`).
    pub inputs: Vec<PathBuf>,
    /// Held-out token files, scored during the run.
    pub eval_inputs: Vec<PathBuf>,
    /// The tokenizer directory the token files were made with; stages that start from a model directory
    /// default to the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Output directory: model/, checkpoints/, metrics.jsonl, resolved_config.json.
    pub out: PathBuf,
    pub cfg: TrainConfig,
    /// Worker threads in use (recorded: results are bit-identical for a given count).
    pub threads: usize,
    /// Start over even if checkpoints exist.
    pub no_resume: bool,
    /// Show a progress bar when on a terminal.
    pub progress: bool,
    /// The command line, recorded in resolved_config.json.
    pub command: String,
}
