//! Loading task files and scoring them on a model.

use std::path::Path;
use std::time::Instant;

use indexmap::IndexMap;
use serde_json::{json, Value};
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::Model;

use crate::answer::{self, AnswerCheck, AnswerSet};
use crate::loglik::{self, Request, Scorer};
use crate::mc::{self, McItem, McOutcome};
use crate::ppl::{self, Docs};
use crate::progress::Ticker;
use crate::results::{mean_stderr, ModelInfo, Results, Settings, TaskResult, FORMAT};
use crate::task::{Kind, TaskSpec};
use crate::EvalError;

/// A task file read and checked, ready to score.
pub struct Task {
    pub name: String,
    pub kind: Kind,
    pub path: String,
    pub file_blake3: String,
    items: Items,
}

enum Items {
    Mc(Vec<McItem>),
    Ppl(Docs),
    Answer(AnswerSet),
}

impl Task {
    /// Reads the file of `spec` as its kind (every item checked) with `tok`.
    pub fn load(spec: &TaskSpec, tok: &TokenizerDir, s: &Settings) -> Result<Task, EvalError> {
        let kind = spec.kind()?;
        let items = match kind {
            Kind::Mc => Items::Mc(mc::load(&spec.path, s.limit)?),
            Kind::Ppl => Items::Ppl(ppl::load(&spec.path, s.limit)?),
            Kind::Answer => Items::Answer(
                AnswerCheck {
                    path: spec.path.clone(),
                    max: s.limit,
                    max_new_tokens: s.max_new_tokens,
                }
                .load(tok)?,
            ),
        };
        Ok(Task {
            name: spec.name(),
            kind,
            path: spec.path.display().to_string(),
            file_blake3: zerolm_io::hash_file(&spec.path)?.0,
            items,
        })
    }

    pub fn len(&self) -> usize {
        match &self.items {
            Items::Mc(items) => items.len(),
            Items::Ppl(docs) => docs.docs.len(),
            Items::Answer(set) => set.items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A task's result and one record per item (what `--samples` writes).
pub struct Scored {
    pub result: TaskResult,
    pub samples: Vec<Value>,
}

/// What scoring one kind of task gives before timing is added.
struct Part {
    skipped: usize,
    truncated: usize,
    metrics: IndexMap<String, f64>,
    samples: Vec<Value>,
}

/// Scores tasks on one model.
pub struct Evaluator<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a TokenizerDir,
    pub settings: &'a Settings,
    /// No progress output.
    pub quiet: bool,
}

impl Evaluator<'_> {
    /// Scores `tasks` in order, handing each finished task's result to `done`: the results of `model`
    /// (timed from `started`) and every task's samples.
    pub fn score_all(
        &self,
        tasks: &[Task],
        model: ModelInfo,
        started: Instant,
        done: &mut dyn FnMut(&TaskResult),
    ) -> Result<(Results, Vec<Value>), EvalError> {
        let (mut results, mut samples) = (Vec::new(), Vec::new());
        for task in tasks {
            let scored = self.score(task)?;
            done(&scored.result);
            results.push(scored.result);
            samples.extend(scored.samples);
        }
        let results = Results {
            stage: "eval".into(),
            format: FORMAT,
            zerolm_version: env!("CARGO_PKG_VERSION").into(),
            model,
            settings: self.settings.clone(),
            tasks: results,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((results, samples))
    }

    pub fn score(&self, task: &Task) -> Result<Scored, EvalError> {
        let started = Instant::now();
        let part = match &task.items {
            Items::Mc(items) => self.mc(task, items)?,
            Items::Ppl(docs) => self.ppl(task, docs)?,
            Items::Answer(set) => self.answer(task, set)?,
        };
        let seconds = started.elapsed().as_secs_f64();
        let mut samples = part.samples;
        for s in &mut samples {
            s["task"] = json!(task.name);
        }
        Ok(Scored {
            result: TaskResult {
                task: task.name.clone(),
                kind: task.kind,
                file: task.path.clone(),
                file_blake3: task.file_blake3.clone(),
                items: task.len(),
                skipped: part.skipped,
                truncated: part.truncated,
                metrics: part.metrics,
                seconds,
                items_per_s: task.len() as f64 / seconds.max(1e-9),
            },
            samples,
        })
    }

    fn scorer(&self) -> Scorer<'_> {
        Scorer {
            model: self.model,
            batch_size: self.settings.batch_size,
            max_length: self.settings.max_length,
            pad_id: self.tokenizer.pad_id,
        }
    }

    /// Each choice scored after its context; `acc`, `acc_norm` and their standard errors.
    fn mc(&self, task: &Task, items: &[McItem]) -> Result<Part, EvalError> {
        let requests = mc_requests(items, self.tokenizer, self.settings.max_length)?;
        let ticker = Ticker::new(&task.name, requests.len(), self.quiet);
        let scores = self.scorer().score(&requests, &mut |n| ticker.tick(n))?;
        ticker.finish();
        let mut lls = scores.logliks.into_iter();
        let outcomes: Vec<McOutcome> = (items.iter())
            .map(|it| McOutcome::of(it, lls.by_ref().take(it.choices.len()).collect()))
            .collect();
        let hits = |f: &dyn Fn(&McOutcome, &McItem) -> bool| -> Vec<f64> {
            (outcomes.iter().zip(items))
                .map(|(o, it)| f64::from(u8::from(f(o, it))))
                .collect()
        };
        let acc = hits(&|o, it| o.pred == it.gold);
        let acc_norm = hits(&|o, it| o.pred_norm == it.gold);
        let samples = (items.iter().zip(&outcomes))
            .map(|(it, o)| {
                json!({"at": it.at, "context": it.context, "choices": it.choices, "gold": it.gold,
                       "lls": o.lls, "pred": o.pred, "pred_norm": o.pred_norm,
                       "acc": o.pred == it.gold, "acc_norm": o.pred_norm == it.gold})
            })
            .collect();
        Ok(Part {
            skipped: 0,
            truncated: scores.truncated,
            metrics: mean_metrics(&[("acc", &acc), ("acc_norm", &acc_norm)]),
            samples,
        })
    }

    /// Every document's rolling log-likelihood; bits per byte and the perplexities.
    fn ppl(&self, task: &Task, docs: &Docs) -> Result<Part, EvalError> {
        let prefix = loglik::prefix_id(self.tokenizer);
        let max_length = self.settings.max_length;
        let (requests, owner) = ppl::requests(&docs.docs, self.tokenizer, prefix, max_length)?;
        let ticker = Ticker::new(&task.name, requests.len(), self.quiet);
        let scores = self.scorer().score(&requests, &mut |n| ticker.tick(n))?;
        ticker.finish();
        let mut per_doc = vec![(0.0f64, 0usize); docs.docs.len()];
        for ((&d, ll), r) in owner.iter().zip(&scores.logliks).zip(&requests) {
            per_doc[d].0 += ll;
            per_doc[d].1 += r.continuation.len();
        }
        let total: f64 = per_doc.iter().map(|(ll, _)| ll).sum();
        let tokens = per_doc.iter().map(|(_, n)| *n as u64).sum();
        let samples = (docs.docs.iter().zip(&per_doc))
            .map(|(d, (ll, n))| json!({"at": d.at, "loglik": ll, "tokens": n, "bytes": d.text.len()}))
            .collect();
        Ok(Part {
            skipped: docs.empty,
            truncated: 0,
            metrics: (ppl::metrics(total, tokens, &docs.docs, docs.empty).into_iter())
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            samples,
        })
    }

    /// Greedy replies checked for the answer string.
    fn answer(&self, task: &Task, set: &AnswerSet) -> Result<Part, EvalError> {
        let ticker = Ticker::new(&task.name, set.items.len(), self.quiet);
        let replies = answer::replies(self.model, self.tokenizer, set, &|n| ticker.tick(n))?;
        ticker.finish();
        let hits = answer::hits(set, &replies);
        let values: Vec<f64> = hits.iter().map(|&h| f64::from(u8::from(h))).collect();
        let mut metrics = mean_metrics(&[("accuracy", &values)]);
        metrics.insert("correct".into(), values.iter().sum());
        let samples = (set.items.iter().zip(&replies).zip(&hits))
            .map(|((q, r), h)| json!({"answer": q.answer, "reply": r, "correct": h}))
            .collect();
        Ok(Part {
            skipped: 0,
            truncated: 0,
            metrics,
            samples,
        })
    }
}

/// Every choice of every item as a request (`" " + choice` after the context), in item order; a choice
/// with no tokens of its own, or more than `max_length`, is an error naming the item.
fn mc_requests(
    items: &[McItem],
    tok: &TokenizerDir,
    max_length: usize,
) -> Result<Vec<Request>, EvalError> {
    let prefix = loglik::prefix_id(tok);
    let mut out = Vec::new();
    for it in items {
        for (i, c) in it.choices.iter().enumerate() {
            let r = loglik::encode_pair(
                tok,
                &it.context,
                &format!("{}{c}", mc::TARGET_DELIMITER),
                prefix,
            )?;
            if r.continuation.is_empty() {
                return Err(EvalError::item(
                    &it.at,
                    format!("choice {i} gives no tokens of its own after the context"),
                ));
            }
            if r.continuation.len() > max_length {
                return Err(EvalError::item(
                    &it.at,
                    format!(
                        "choice {i} is {} tokens long, more than --max-length {max_length}",
                        r.continuation.len()
                    ),
                ));
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// `name` and `name_stderr` for each list of per-item values.
fn mean_metrics(lists: &[(&str, &Vec<f64>)]) -> IndexMap<String, f64> {
    let mut m = IndexMap::new();
    for (name, values) in lists {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        m.insert(name.to_string(), mean);
        m.insert(format!("{name}_stderr"), mean_stderr(values));
    }
    m
}

/// The scored model as results record it: from its `zerolm.json` when it has one, else the weights'
/// hash.
pub fn model_info(dir: &Path, tok: &TokenizerDir) -> Result<ModelInfo, EvalError> {
    let meta: Option<Value> = std::fs::read(dir.join("zerolm.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let field = |k: &str| meta.as_ref().and_then(|m| m.get(k)).cloned();
    let weights = match field("weights_blake3").and_then(|v| v.as_str().map(String::from)) {
        Some(h) => h,
        None => zerolm_io::hash_file(&dir.join("model.safetensors"))?.0,
    };
    Ok(ModelInfo {
        dir: dir.display().to_string(),
        name: zerolm_model::io::model_name(dir),
        weights_blake3: weights,
        tokenizer_fingerprint: tok.fingerprint.clone(),
        stage: field("stage").and_then(|v| v.as_str().map(String::from)),
        step: field("step").and_then(|v| v.as_u64()),
    })
}
