//! The held-out answer check: greedy-decode each question of a file that carries an `answer` field
//! (conversations, or preference rows whose `prompt` string is the question) and count the replies that
//! contain the answer string (the shipped `sft_eval.jsonl` asks about facts never seen in SFT, so this
//! measures what SFT made of pretrained knowledge). `eval` runs it as the `answer` task; `sft` and `dpo`
//! run it as the training loop's probe, before the first step and after the last.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use zerolm_data::chat::{Message, Role};
use zerolm_data::formats::{self, Format, Kind, Record};
use zerolm_data::input::RowReader;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_data::DataError;
use zerolm_model::sample::{generate, Sampler, SamplingConfig};
use zerolm_model::Model;

use crate::EvalError;

/// Questions (rendered prompt ids) and their expected answers.
pub struct AnswerSet {
    pub path: PathBuf,
    pub items: Vec<Question>,
    /// Reply length limit.
    pub max_new_tokens: usize,
}

pub struct Question {
    pub prompt_ids: Vec<u32>,
    pub answer: String,
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    pub correct: usize,
    pub total: usize,
}

impl std::fmt::Display for Score {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}% ({}/{})",
            100.0 * self.accuracy(),
            self.correct,
            self.total
        )
    }
}

/// The held-out answer check of a run: which file, how many questions, how long a reply may be.
#[derive(Clone, Debug)]
pub struct AnswerCheck {
    pub path: PathBuf,
    /// Questions used (0 = all).
    pub max: usize,
    /// Reply length limit.
    pub max_new_tokens: usize,
}

impl AnswerCheck {
    /// Reads its questions with `tokenizer`.
    pub fn load(&self, tokenizer: &TokenizerDir) -> Result<AnswerSet, EvalError> {
        let items = questions(&self.path, tokenizer, self.max)?;
        Ok(AnswerSet {
            path: self.path.clone(),
            items,
            max_new_tokens: self.max_new_tokens,
        })
    }
}

impl Score {
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// Reads up to `max` rows (0 = all) of a conversations/messages file with an `answer` string per row.
/// The conversation up to (not including) its last assistant turn is the prompt.
fn questions(
    path: &Path,
    tokenizer: &TokenizerDir,
    max: usize,
) -> Result<Vec<Question>, EvalError> {
    let mut reader = RowReader::open(path)?;
    let mut items = Vec::new();
    while let Some(row) = reader.next_row()? {
        if max > 0 && items.len() >= max {
            break;
        }
        let bad = |msg: String| {
            EvalError::Data(DataError::BadRow {
                at: row.at.clone(),
                msg,
            })
        };
        let value = row.value.as_ref().map_err(|e| bad(e.clone()))?;
        let answer = match value.get("answer") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(bad(
                    "field `answer` (a non-empty string) is missing; the answer check needs it"
                        .into(),
                ))
            }
        };
        let mut messages = match value.get("prompt") {
            // preference rows (the article's format): the prompt string is the user's question
            Some(Value::String(q)) => vec![Message::new(Role::User, q.clone())],
            _ => {
                let format = Format::detect(Kind::Sft, value, "text").map_err(bad)?;
                match formats::normalize(format, value, "text", formats::Template::Chat) {
                    Ok(Record::Chat(m)) => m,
                    Ok(_) => return Err(bad("expected a conversation".into())),
                    Err(formats::Problem::Bad(m) | formats::Problem::Empty(m)) => {
                        return Err(bad(m))
                    }
                }
            }
        };
        while messages.last().is_some_and(|m| m.role == Role::Assistant) {
            messages.pop();
        }
        if !messages.iter().any(|m| m.role == Role::User) {
            return Err(bad("no user turn to ask".into()));
        }
        let text = tokenizer.template.render(&messages, true)?;
        items.push(Question {
            prompt_ids: tokenizer.encode(&text)?,
            answer,
        });
    }
    if items.is_empty() {
        return Err(EvalError::Data(DataError::BadFile {
            path: path.into(),
            msg: "no questions".into(),
        }));
    }
    Ok(items)
}

/// Greedy-decodes every question (up to the set's `max_new_tokens`, stopping at eos) and counts replies
/// that contain the answer.
pub fn check(model: &Model, tokenizer: &TokenizerDir, set: &AnswerSet) -> Result<Score, EvalError> {
    let hits = hits(set, &replies(model, tokenizer, set, &|_| {})?);
    Ok(Score {
        correct: hits.iter().filter(|h| **h).count(),
        total: hits.len(),
    })
}

/// Whether each reply contains its question's answer.
pub fn hits(set: &AnswerSet, replies: &[String]) -> Vec<bool> {
    (set.items.iter().zip(replies))
        .map(|(q, r)| r.contains(&q.answer))
        .collect()
}

/// Every question's greedy reply (without the end-of-turn token), in the set's order; `tick` is called
/// once per finished reply (from the worker threads).
pub fn replies(
    model: &Model,
    tokenizer: &TokenizerDir,
    set: &AnswerSet,
    tick: &(dyn Fn(usize) + Sync),
) -> Result<Vec<String>, EvalError> {
    let eos = tokenizer.eos_id;
    set.items
        .par_iter()
        .map(|q| {
            let mut sampler = Sampler::new(SamplingConfig::default())?;
            let ids = generate(
                model,
                &q.prompt_ids,
                set.max_new_tokens,
                &[eos],
                &mut sampler,
            )?;
            tick(1);
            Ok(tokenizer.decode(ids.strip_suffix(&[eos]).unwrap_or(&ids))?)
        })
        .collect()
}
