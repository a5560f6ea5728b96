//! The held-out answer check as the training loop's probe (`sft`, `dpo`): the check itself lives in
//! `zerolm-eval` (the `eval` binary's `answer` task runs the same code); here it becomes a metrics row
//! before the first step and after the last, and the run's "before → after" line.

use serde_json::Value;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_eval::EvalError;
use zerolm_model::Model;
use zerolm_train::trainer::Outcome;
use zerolm_train::TrainError;

pub use zerolm_eval::answer::{check, AnswerCheck, AnswerSet, Score};

/// A run's answer accuracy before its first step and after its last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnswerScores {
    pub before: Option<Score>,
    pub after: Option<Score>,
}

/// "before → after" for a run's last line ("-" where a score is missing).
impl std::fmt::Display for AnswerScores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |s: &Option<Score>| s.as_ref().map_or("-".to_string(), Score::to_string);
        write!(f, "{} → {}", show(&self.before), show(&self.after))
    }
}

/// The check's errors as the training stages report them.
fn train_error(e: EvalError) -> TrainError {
    match e {
        EvalError::Data(d) => TrainError::Data(d),
        EvalError::Model(m) => TrainError::Model(m),
        EvalError::Io(io) => TrainError::Io(io),
        EvalError::Candle(c) => TrainError::Candle(c),
        other => TrainError::Config(other.to_string()),
    }
}

/// Reads the check's questions with `tokenizer`.
pub fn load(check: &AnswerCheck, tokenizer: &TokenizerDir) -> Result<AnswerSet, TrainError> {
    check.load(tokenizer).map_err(train_error)
}

/// The answer check as a training probe: questions, the tokenizer and the reply length limit.
pub struct Probe<'a> {
    pub set: &'a AnswerSet,
    pub tokenizer: &'a TokenizerDir,
}

impl Probe<'_> {
    /// The metrics row of one check (`answer_accuracy`, `answer_correct`, `answer_total`).
    pub fn row(&self, model: &Model) -> Result<serde_json::Map<String, Value>, TrainError> {
        let score = check(model, self.tokenizer, self.set).map_err(train_error)?;
        let mut row = serde_json::Map::new();
        row.insert(
            "answer_accuracy".into(),
            serde_json::json!(score.accuracy()),
        );
        row.insert("answer_correct".into(), serde_json::json!(score.correct));
        row.insert("answer_total".into(), serde_json::json!(score.total));
        Ok(row)
    }
}

/// The answer-check scores at step 0 and at the run's final step, read back from its metrics log (the
/// step-0 row may come from before a resume).
pub fn scores(outcome: &Outcome) -> AnswerScores {
    let rows = zerolm_io::read_rows(&outcome.metrics_path);
    let at = |step: u64| {
        rows.iter()
            .rev()
            .find(|r| {
                r.get("step").and_then(Value::as_u64) == Some(step)
                    && r.contains_key("probe_answer_total")
            })
            .map(|r| Score {
                correct: r["probe_answer_correct"].as_u64().unwrap_or(0) as usize,
                total: r["probe_answer_total"].as_u64().unwrap_or(0) as usize,
            })
    };
    AnswerScores {
        before: at(0),
        after: at(outcome.step as u64),
    }
}
