//! The `dpo` stage: preference optimisation of a model directory (the SFT output) on `tokenize dpo`
//! pairs, with the reference log-probs from a `ref-logprobs` cache (checked against the data, the
//! tokenizer and, when named, the reference model) or computed once at start from `--ref-model`.
//! Chosen and rejected run in one batch; the loss is any weighted mix of the TRL family.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use zerolm_data::formats::Kind;
use zerolm_model::Model;

use crate::answers::{self, Score};
use crate::pairs::{sequence_logps, PairSet};
use crate::preference::{self, LossParams, LossSpec, Pairs};
use crate::ref_logprobs::{self, RefCache};
use crate::settings::TrainConfig;
use crate::stage;
use crate::trainer::{self, BatchLoss, EvalResult, Outcome, RunSpec, Task};
use crate::TrainError;

/// One split: the pairs and their reference log-probs (empty for reference-free losses).
struct Split {
    pairs: PairSet,
    ref_chosen: Vec<f32>,
    ref_rejected: Vec<f32>,
}

struct DpoTask<'a> {
    train: Split,
    eval: Option<Split>,
    spec: LossSpec,
    params: LossParams,
    answers: Option<answers::Probe<'a>>,
    device: Device,
}

impl DpoTask<'_> {
    /// Loss tensor, completion tokens and TRL metrics for pairs `idx` of `split`.
    fn pairs_loss(
        &self,
        model: &Model,
        split: &Split,
        idx: &[usize],
    ) -> Result<(Tensor, usize, BTreeMap<String, f64>), TrainError> {
        let (x, y, w) = split.pairs.batch(idx, &self.device)?;
        let s = sequence_logps(model, &x, &y, &w, true)?;
        let b = idx.len();
        let reference = |v: &[f32]| -> Result<Option<Tensor>, TrainError> {
            if v.is_empty() {
                return Ok(None);
            }
            let picked: Vec<f32> = idx.iter().map(|&i| v[i]).collect();
            Ok(Some(Tensor::from_vec(picked, b, &self.device)?))
        };
        let p = Pairs {
            lc: s.sums.narrow(0, 0, b)?,
            lr: s.sums.narrow(0, b, b)?,
            rc: reference(&split.ref_chosen)?,
            rr: reference(&split.ref_rejected)?,
            len_c: s.lens.narrow(0, 0, b)?,
            len_r: s.lens.narrow(0, b, b)?,
        };
        let loss = preference::batch_loss(&self.spec, &p, &self.params)?;
        let mut metrics = preference::reward_metrics(&p, self.params.beta)?;
        let lens: Vec<f64> = s.lens.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let group = |r: std::ops::Range<usize>| {
            s.logit_sums[r.clone()].iter().sum::<f64>() / lens[r].iter().sum::<f64>().max(1.0)
        };
        metrics.insert("logits/chosen".into(), group(0..b));
        metrics.insert("logits/rejected".into(), group(b..2 * b));
        let tokens = lens.iter().sum::<f64>() as usize;
        Ok((loss, tokens, metrics))
    }
}

impl Task for DpoTask<'_> {
    fn num_samples(&self) -> usize {
        self.train.pairs.pairs.len()
    }

    fn batch_loss(&self, model: &Model, samples: &[usize]) -> Result<BatchLoss, TrainError> {
        let (loss, tokens, metrics) = self.pairs_loss(model, &self.train, samples)?;
        Ok(BatchLoss {
            loss,
            tokens,
            metrics,
        })
    }

    fn evaluate(
        &self,
        model: &Model,
        batch_size: usize,
        max_batches: usize,
    ) -> Result<Option<EvalResult>, TrainError> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let order: Vec<usize> = (0..eval.pairs.pairs.len()).collect();
        let (mut loss, mut tokens, mut rows) = (0f64, 0usize, 0usize);
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for (i, chunk) in order.chunks(batch_size).enumerate() {
            if max_batches > 0 && i >= max_batches {
                break;
            }
            let (l, t, m) = self.pairs_loss(model, eval, chunk)?;
            let n = chunk.len() as f64;
            loss += l.to_scalar::<f32>()? as f64 * n;
            for (k, v) in m {
                *sums.entry(k).or_default() += v * n;
            }
            tokens += t;
            rows += chunk.len();
        }
        let n = rows.max(1) as f64;
        let metrics = sums.into_iter().map(|(k, v)| (k, v / n)).collect();
        Ok((rows > 0).then(|| EvalResult {
            loss: loss / n,
            tokens,
            rows,
            perplexity: false,
            metrics,
        }))
    }

    fn probe(&self, model: &Model) -> Result<Option<Map<String, Value>>, TrainError> {
        self.answers.as_ref().map(|p| p.row(model)).transpose()
    }
}

/// A DPO run as the CLI describes it.
pub struct DpoArgs {
    pub model: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub eval_inputs: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub ref_cache: Option<PathBuf>,
    pub eval_ref_cache: Option<PathBuf>,
    pub ref_model: Option<PathBuf>,
    pub out: PathBuf,
    pub cfg: TrainConfig,
    pub loss: LossSpec,
    pub loss_params: LossParams,
    pub answers: crate::cli::AnswerCheckArgs,
    pub threads: usize,
    pub no_resume: bool,
    pub progress: bool,
    pub command: String,
}

pub struct DpoReport {
    pub outcome: Outcome,
    pub model_dir: PathBuf,
    pub pairs: usize,
    pub reference: String,
    pub answers_before: Option<Score>,
    pub answers_after: Option<Score>,
}

/// Default DPO settings for a model loaded from a directory (the article's β 0.1 is `--beta`'s default).
pub fn dpo_defaults(model: zerolm_model::ModelConfig) -> TrainConfig {
    let mut c = crate::sft::sft_defaults(model);
    c.lr = 1e-4;
    c.epochs = 1;
    c.batch_size = 8;
    c
}

pub fn run(args: DpoArgs) -> Result<DpoReport, TrainError> {
    stage::check_start_shape(&args.model, &args.cfg)?;
    let cfg = args.cfg;
    let (tokenizer, _) = stage::start_tokenizer(&args.model, args.tokenizer.as_deref())?;
    if args.inputs.is_empty() {
        return Err(TrainError::Config(
            "no --input DPO token file given (make one with `tokenize dpo`)".into(),
        ));
    }
    let (train_files, mut inputs) =
        stage::read_token_files(&args.inputs, Kind::Dpo, &tokenizer, "train")?;
    let (eval_files, eval_prints) =
        stage::read_token_files(&args.eval_inputs, Kind::Dpo, &tokenizer, "eval")?;
    inputs.extend(eval_prints);
    let start = stage::start_weights(&args.model)?;
    let policy_fingerprint = start.blake3.clone();
    inputs.push(start);

    let train_pairs = PairSet::new(&train_files, cfg.seq_len, tokenizer.pad_id);
    let eval_pairs =
        (!eval_files.is_empty()).then(|| PairSet::new(&eval_files, cfg.seq_len, tokenizer.pad_id));
    let needs_ref = args.loss.needs_reference();
    let mut reference = if needs_ref {
        "none yet"
    } else {
        "none (reference-free loss)"
    }
    .to_string();
    let mut ref_model = None;
    let mut resolve = |pairs: PairSet,
                       cache: Option<&PathBuf>,
                       role: &str,
                       inputs: &mut Vec<_>|
     -> Result<Split, TrainError> {
        if !needs_ref {
            return Ok(Split {
                pairs,
                ref_chosen: vec![],
                ref_rejected: vec![],
            });
        }
        let (c, r) = match (cache, &args.ref_model) {
            (Some(path), named) => {
                let RefCache { chosen, rejected, model_fingerprint } =
                    ref_logprobs::load_checked(path, &pairs, &tokenizer, named.as_deref(), role)?;
                if named.is_none() && model_fingerprint != policy_fingerprint {
                    eprintln!(
                        "note: the {role} cache {} was made by another model than --model (usual when the reference is not \
                         the starting policy); pass --ref-model DIR to have it checked",
                        path.display()
                    );
                }
                inputs.push(crate::checkpoint::InputFingerprint {
                    role: format!("{role}_ref_cache"),
                    path: path.display().to_string(),
                    blake3: zerolm_data::fingerprint::file(path)?.0,
                });
                let line = format!("{role}: cache {} (reference model {})", path.display(), &model_fingerprint[..12.min(model_fingerprint.len())]);
                reference = if reference.starts_with("none") { line } else { format!("{reference}; {line}") };
                (chosen, rejected)
            }
            (None, Some(dir)) => {
                stage::start_tokenizer(dir, Some(&tokenizer.dir))?;
                if ref_model.is_none() {
                    let model = zerolm_model::io::load_model_dir(dir, &crate::device::current())?;
                    ref_model = Some(model.for_inference()?);
                    inputs.push(crate::checkpoint::InputFingerprint {
                        role: "ref_model".into(),
                        path: dir.join("model.safetensors").display().to_string(),
                        blake3: ref_logprobs::model_fingerprint(dir)?,
                    });
                }
                let m = ref_model.as_ref().expect("loaded");
                let line = format!("{role}: computed at start from {}", dir.display());
                reference = if reference.starts_with("none") { line } else { format!("{reference}; {line}") };
                ref_logprobs::compute(m, &pairs, 0..pairs.pairs.len(), cfg.batch_size, None)?
            }
            (None, None) => {
                return Err(TrainError::Config(format!(
                    "the loss needs reference log-probs for the {role} split: give --{}ref-cache (from `ref-logprobs`) or --ref-model DIR",
                    if role == "eval" { "eval-" } else { "" }
                )))
            }
        };
        Ok(Split {
            pairs,
            ref_chosen: c,
            ref_rejected: r,
        })
    };
    let train = resolve(train_pairs, args.ref_cache.as_ref(), "train", &mut inputs)?;
    let eval = match eval_pairs {
        Some(p) => Some(resolve(
            p,
            args.eval_ref_cache.as_ref(),
            "eval",
            &mut inputs,
        )?),
        None => None,
    };
    drop(ref_model); // the reference model is not needed during training
    let answer_set = answers::load_for(&args.answers, &tokenizer)?;
    let total = trainer::total_steps(&cfg, train.pairs.pairs.len())?;
    let pairs = train.pairs.pairs.len();
    eprintln!(
        "dpo: {pairs} pairs ({} with an empty completion and {} with a prompt too long for --max-len {} skipped, {} truncated); \
         eval {} pairs; loss {:?} β {}; reference: {reference}; {total} steps",
        train.pairs.skipped_empty,
        train.pairs.skipped_long_prompt,
        cfg.seq_len,
        train.pairs.truncated,
        eval.as_ref().map_or(0, |e| e.pairs.pairs.len()),
        args.loss.0,
        args.loss_params.beta,
    );
    std::fs::create_dir_all(&args.out).map_err(|cause| TrainError::Write {
        path: args.out.clone(),
        cause,
    })?;
    let resolved = json!({
        "stage": "dpo",
        "command": args.command,
        "threads": args.threads,
        "model": args.model.display().to_string(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "inputs": inputs,
        "reference": reference,
        "loss": format!("{:?}", args.loss.0),
        "loss_params": args.loss_params,
        "total_steps": total,
        "config": serde_json::to_value(&cfg).expect("config serialises"),
    });
    let init = stage::start_params(&args.model, &cfg.model)?;
    let task = DpoTask {
        train,
        eval,
        spec: args.loss.clone(),
        params: args.loss_params.clone(),
        answers: answer_set.as_ref().map(|set| answers::Probe {
            set,
            tokenizer: &tokenizer,
            max_new_tokens: args.answers.answer_max_new_tokens,
        }),
        device: crate::device::current(),
    };
    let spec = RunSpec {
        stage: "dpo",
        out: &args.out,
        cfg: &cfg,
        inputs,
        tokenizer_fingerprint: tokenizer.fingerprint.clone(),
        threads: args.threads,
        no_resume: args.no_resume,
        progress: args.progress,
        resolved,
        stage_settings: Some(
            json!({"loss": format!("{:?}", args.loss.0), "loss_params": args.loss_params}),
        ),
    };
    let (outcome, model_dir) = stage::train_and_export(&task, init, &spec, &tokenizer)?;
    let (answers_before, answers_after) = crate::sft::probe_scores(&outcome, answer_set.is_some());
    Ok(DpoReport {
        outcome,
        model_dir,
        pairs,
        reference,
        answers_before,
        answers_after,
    })
}
