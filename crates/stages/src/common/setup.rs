//! The run set-up every training stage shares: read and fingerprint its token files, describe the run
//! in `resolved_config.json`, hand the task to the training loop, and export the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::{json, Map, Value};
use zerolm_data::artifact::{self, TokenFile};
use zerolm_data::formats::Kind;
use zerolm_data::stream::{Layout, TokenStream};
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_train::checkpoint::InputFingerprint;
use zerolm_train::trainer::{self, Outcome, RunSpec, Task};
use zerolm_train::TrainError;

use super::args::StageArgs;
use super::export::{export_model_dir, Provenance};

/// A file a run depends on, by content, under `role`.
pub fn fingerprint(path: &Path, role: &str) -> Result<InputFingerprint, TrainError> {
    Ok(InputFingerprint {
        role: role.to_string(),
        path: path.display().to_string(),
        blake3: zerolm_io::hash_file(path)?.0,
    })
}

/// The completion end every file in `files` was tokenized with, refusing a mix: a model trained on
/// completions that end one way and scored on completions that end another learns a token it is then
/// penalised for (or never sees it).
pub fn common_completion_end<'a>(
    files: impl IntoIterator<Item = &'a TokenFile>,
) -> Result<Option<String>, TrainError> {
    let mut seen: Option<(&str, &Path)> = None;
    for file in files {
        let Some(end) = file.completion_end() else {
            continue;
        };
        match seen {
            Some((first, path)) if first != end => {
                return Err(TrainError::Config(format!(
                    "{} was tokenized with --completion-end {end} but {} with --completion-end {first}; \
                     re-run `tokenize` so that every input of the run uses the same one",
                    file.path.display(),
                    path.display()
                )))
            }
            Some(_) => {}
            None => seen = Some((end, &file.path)),
        }
    }
    Ok(seen.map(|(end, _)| end.to_string()))
}

/// Refuses to fine-tune or score with a model trained on completions that end another way than the
/// data's (recorded as `completion_end` in its `zerolm.json` by `sft` and `dpo`).
pub fn check_model_completion_end(model: &Path, data: Option<&str>) -> Result<(), TrainError> {
    let Some(data) = data else { return Ok(()) };
    let path = model.join("zerolm.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let recorded: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match recorded.get("completion_end").and_then(Value::as_str) {
        Some(end) if end != data => Err(TrainError::Config(format!(
            "{} was trained on completions tokenized with --completion-end {end}, but this run's data uses \
             --completion-end {data}; re-run `tokenize` with --completion-end {end} (or retrain the model on \
             data tokenized like this run's)",
            model.display()
        ))),
        _ => Ok(()),
    }
}

/// Refuses a run without `--input`.
fn require_input(args: &StageArgs, kind: Kind) -> Result<(), TrainError> {
    if args.inputs.is_empty() {
        return Err(TrainError::Config(format!(
            "no --input token file given (make one with `tokenize {}`)",
            kind.name()
        )));
    }
    Ok(())
}

/// A stage's train and eval token files as on-disk streams (see `zerolm_data::stream`): each checked from
/// its header (schema, kind, tokenizer, completion end) and fingerprinted; no file's rows are read into
/// memory.
pub struct StreamInputs {
    pub train: Vec<TokenStream>,
    pub eval: Vec<TokenStream>,
    pub prints: Vec<InputFingerprint>,
    pub completion_end: Option<String>,
}

/// Opens `--input` (at least one) and `--eval-input` of `kind` as streams, each path a file, a directory
/// of shards or a glob; a missing or stale stream is built once.
pub fn stream_inputs(
    args: &StageArgs,
    kind: Kind,
    tokenizer: &TokenizerDir,
) -> Result<StreamInputs, TrainError> {
    require_input(args, kind)?;
    let train = open_streams(&args.inputs, kind, tokenizer, "train")?;
    let eval = open_streams(&args.eval_inputs, kind, tokenizer, "eval")?;
    let completion_end = common_completion_end(train.headers.iter().chain(&eval.headers))?;
    let mut prints = train.prints;
    prints.extend(eval.prints);
    Ok(StreamInputs {
        train: train.streams,
        eval: eval.streams,
        prints,
        completion_end,
    })
}

/// Token files opened as streams, with their headers and fingerprints.
pub struct OpenStreams {
    pub streams: Vec<TokenStream>,
    pub headers: Vec<TokenFile>,
    pub prints: Vec<InputFingerprint>,
}

/// Opens the token files of `kind` at `paths` (files, directories of shards, globs) as streams, each
/// checked from its header (schema, kind, tokenizer) and fingerprinted under `role`.
pub fn open_streams(
    paths: &[PathBuf],
    kind: Kind,
    tokenizer: &TokenizerDir,
    role: &str,
) -> Result<OpenStreams, TrainError> {
    let layout = Layout::of(kind).ok_or_else(|| {
        TrainError::Internal(format!("{} token files have no stream", kind.name()))
    })?;
    let mut out = OpenStreams {
        streams: Vec::new(),
        headers: Vec::new(),
        prints: Vec::new(),
    };
    for path in &zerolm_data::output::expand_inputs(paths)? {
        let header = artifact::read_header(path, kind)?;
        header.check_tokenizer(&tokenizer.fingerprint)?;
        let (stream, blake3) =
            TokenStream::open_or_build(path, layout, tokenizer.eos_id, tokenizer.vocab_size())?;
        out.prints.push(InputFingerprint {
            role: role.to_string(),
            path: path.display().to_string(),
            blake3,
        });
        out.headers.push(header);
        out.streams.push(stream);
    }
    Ok(out)
}

/// A training stage ready to run: what it is, on what, and what it records besides the common keys.
pub struct StageRun<'a> {
    pub stage: &'a str,
    pub args: &'a StageArgs,
    pub tokenizer: &'a TokenizerDir,
    pub inputs: Vec<InputFingerprint>,
    pub total_steps: usize,
    /// Stage-specific keys of `resolved_config.json` (e.g. `model`, `loss`).
    pub resolved: Map<String, Value>,
    /// Stage settings outside the training config that change the result (checked on resume).
    pub stage_settings: Option<Value>,
    /// Where the data's chat completions end (recorded in the exported model).
    pub completion_end: Option<String>,
}

impl StageRun<'_> {
    /// Trains `task` from `init` (or resumes), then exports `<out>/model`.
    pub fn train_and_export(
        self,
        task: &dyn Task,
        init: BTreeMap<String, Tensor>,
    ) -> Result<(Outcome, PathBuf), TrainError> {
        let args = self.args;
        let spec = RunSpec {
            stage: self.stage,
            out: &args.out,
            cfg: &args.cfg,
            resolved: self.resolved_config(),
            inputs: self.inputs,
            tokenizer_fingerprint: self.tokenizer.fingerprint.clone(),
            threads: args.threads,
            no_resume: args.no_resume,
            progress: args.progress,
            stage_settings: self.stage_settings,
        };
        let outcome = trainer::train(task, init, &spec)?;
        let dir = args.out.join("model");
        if !zerolm_train::collective::is_writer() {
            return Ok((outcome, dir));
        }
        let config = serde_json::to_value(&args.cfg).expect("config serialises");
        let prov = Provenance {
            stage: self.stage,
            step: outcome.step,
            tokenizer_fingerprint: &spec.tokenizer_fingerprint,
            inputs: &spec.inputs,
            config: &config,
            completion_end: self.completion_end.as_deref(),
        };
        export_model_dir(
            &dir,
            &args.cfg.model,
            &outcome.params,
            self.tokenizer,
            &prov,
        )?;
        Ok((outcome, dir))
    }

    /// `resolved_config.json`: the keys every stage writes, then the stage's own.
    fn resolved_config(&self) -> Value {
        let args = self.args;
        let mut v = json!({
            "stage": self.stage,
            "command": args.command,
            "threads": args.threads,
            "tokenizer": self.tokenizer.dir.display().to_string(),
            "tokenizer_fingerprint": self.tokenizer.fingerprint,
            "inputs": self.inputs,
            "total_steps": self.total_steps,
            "config": serde_json::to_value(&args.cfg).expect("config serialises"),
        });
        let obj = v.as_object_mut().expect("an object");
        obj.extend(self.resolved.clone());
        v
    }
}
