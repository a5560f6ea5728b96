//! The `dpo` stage: preference optimisation of a model directory (the SFT output) on `tokenize dpo`
//! pairs, with the reference log-probs from a `ref-logprobs` cache (checked against the data, the
//! tokenizer and, when named, the reference model) or computed once at start from `--ref-model`.
//! Chosen and rejected run in one batch; the loss is any weighted mix of the TRL family.

mod reference;
mod task;

use std::path::PathBuf;

use serde_json::{json, Map};
use zerolm_data::formats::Kind;
use zerolm_train::trainer::{self, Outcome};
use zerolm_train::TrainError;

pub use reference::RefSources;

use crate::answers::{self, AnswerCheck, AnswerScores};
use crate::common::summary::show;
use crate::common::{closing_line, StageArgs, StageRun, StartModel};
use crate::preference::losses::{LossParams, LossSpec};
use crate::preference::pairs::PairSet;
use reference::References;
use task::DpoTask;

/// A DPO run: the shared stage arguments, the policy to start from, where the reference log-probs
/// come from, the loss, and the optional held-out answer check.
pub struct DpoArgs {
    pub stage: StageArgs,
    pub model: PathBuf,
    pub reference: RefSources,
    pub loss: LossSpec,
    pub loss_params: LossParams,
    pub answers: Option<AnswerCheck>,
}

pub struct DpoReport {
    pub outcome: Outcome,
    pub model_dir: PathBuf,
    pub pairs: usize,
    pub reference: String,
    /// Held-out answer accuracy of the starting policy and of the result.
    pub answers: AnswerScores,
}

impl DpoReport {
    /// The run's closing line.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        let eval = o.eval.as_ref();
        let acc = eval.and_then(|e| e.metrics.get("rewards/accuracies").copied());
        let details = [
            format!(
                "eval loss {}, eval rewards/accuracies {}",
                show(eval.map(|e| e.loss), 4),
                show(acc, 3)
            ),
            format!("held-out answers {}", self.answers),
        ];
        let trained = format!("{} pairs", self.pairs);
        closing_line("dpo", o, &trained, &details, &self.model_dir)
    }
}

/// LD-DPO needs each reference sum's tail part, which caches made before they were recorded lack.
fn check_tails(split: &task::Split) -> Result<(), TrainError> {
    match &split.reference {
        Some(r) if r.chosen_tail.len() != r.chosen.len() => Err(TrainError::Config(
            "--ld-alpha needs a reference cache with the tail columns (ref_chosen_tail_logps); this one was \
             made by an older `ref-logprobs`: rerun it"
                .into(),
        )),
        _ => Ok(()),
    }
}

pub fn run(args: DpoArgs) -> Result<DpoReport, TrainError> {
    let cfg = &args.stage.cfg;
    let (start, files) = StartModel::with_streams(&args.model, &args.stage, Kind::Dpo)?;
    let tokenizer = &start.tokenizer;
    let mut inputs = files.prints;
    let completion_end = files.completion_end;
    let pair_set = |streams| PairSet::new(streams, cfg.seq_len, tokenizer.pad_id);
    let eval_pairs = match files.eval.is_empty() {
        true => None,
        false => Some(pair_set(files.eval)?),
    };
    let train_pairs = pair_set(files.train)?;
    let policy = start.weights.blake3.clone();
    let refs = References::new(
        &args.reference,
        tokenizer,
        policy,
        cfg.batch_size,
        cfg.precision,
    );
    let resolved_refs = refs.resolve(args.loss.needs_reference(), train_pairs, eval_pairs)?;
    let (train, eval, reference) = (
        resolved_refs.train,
        resolved_refs.eval,
        resolved_refs.described,
    );
    inputs.extend(resolved_refs.inputs);
    if args.loss_params.ld_alpha.is_some() {
        check_tails(&train)?;
        eval.as_ref().map(check_tails).transpose()?;
    }
    let answer_set = args
        .answers
        .as_ref()
        .map(|a| answers::load(a, tokenizer))
        .transpose()?;
    let total = trainer::total_steps(cfg, train.pairs.len())?;
    let pairs = train.pairs.len();
    eprintln!(
        "dpo: {pairs} pairs ({} with an empty completion and {} with a prompt too long for --max-len {} skipped, \
         {} truncated); eval {} pairs; loss {:?} β {}; reference: {}; {total} steps",
        train.pairs.skipped_empty,
        train.pairs.skipped_long_prompt,
        cfg.seq_len,
        train.pairs.truncated,
        eval.as_ref().map_or(0, |e| e.pairs.len()),
        args.loss.0,
        args.loss_params.beta,
        reference,
    );
    let init = start.params(&cfg.model)?;
    let task = DpoTask {
        train,
        eval,
        spec: args.loss.clone(),
        params: args.loss_params.clone(),
        answers: (answer_set.as_ref()).map(|set| answers::Probe { set, tokenizer }),
        device: zerolm_model::device::current(),
    };
    let loss = format!("{:?}", args.loss.0);
    let mut resolved = Map::new();
    resolved.insert("model".into(), json!(args.model.display().to_string()));
    resolved.insert("reference".into(), json!(reference));
    resolved.insert("loss".into(), json!(loss));
    resolved.insert("loss_params".into(), json!(args.loss_params));
    let run = StageRun {
        stage: "dpo",
        args: &args.stage,
        tokenizer,
        inputs,
        total_steps: total,
        resolved,
        stage_settings: Some(json!({"loss": loss, "loss_params": args.loss_params})),
        completion_end,
    };
    let (outcome, model_dir) = run.train_and_export(&task, init)?;
    let answers = match answer_set {
        Some(_) => answers::scores(&outcome),
        None => AnswerScores::default(),
    };
    Ok(DpoReport {
        outcome,
        model_dir,
        pairs,
        reference,
        answers,
    })
}
