//! Perplexity tasks as lm-evaluation-harness's `loglikelihood_rolling` scores them: each document's
//! tokens are predicted in windows of the model's input length, the first token after the prefix token,
//! and the sums give perplexity per token, per word and per byte, and bits per byte (which, unlike
//! token perplexity, compares models with different tokenizers).

use std::path::Path;

use serde_json::Value;
use zerolm_data::input::RowReader;
use zerolm_data::tokenizer::TokenizerDir;

use crate::loglik::Request;
use crate::EvalError;

/// One document to score.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub at: String,
    pub text: String,
}

/// Documents of a file (`text` field of JSONL/JSON/Parquet rows; blank-line separated blocks of a text
/// file) and how many were empty and so skipped.
pub struct Docs {
    pub docs: Vec<Doc>,
    pub empty: usize,
}

/// Reads up to `limit` documents (0 = all).
pub fn load(path: &Path, limit: usize) -> Result<Docs, EvalError> {
    let mut reader = RowReader::open(path)?;
    let (mut docs, mut empty) = (Vec::new(), 0);
    while let Some(row) = reader.next_row()? {
        if limit > 0 && docs.len() + empty >= limit {
            break;
        }
        let at = row.at.to_string();
        let value = row.value.map_err(|e| EvalError::item(&at, e))?;
        match value.get("text") {
            Some(Value::String(s)) if s.is_empty() => empty += 1,
            Some(Value::String(s)) => docs.push(Doc {
                at,
                text: s.clone(),
            }),
            _ => {
                return Err(EvalError::item(
                    &at,
                    "a perplexity row needs a `text` string field",
                ))
            }
        }
    }
    if docs.is_empty() {
        return Err(EvalError::task(path, "no non-empty documents"));
    }
    Ok(Docs { docs, empty })
}

/// A document's scoring windows (the harness's rolling windows with one token of context): the first
/// predicts up to `max_length` tokens after `prefix_id`, each next one the following `max_length`
/// tokens, seeing only the `max_length` tokens before its last.
pub fn windows(tokens: &[u32], prefix_id: u32, max_length: usize) -> Vec<Request> {
    assert!(max_length > 0, "ppl: windows of no tokens");
    let mut out = Vec::new();
    let mut done = 0;
    while done < tokens.len() {
        let end = (done + max_length).min(tokens.len());
        let context = match done {
            0 => vec![prefix_id],
            _ => tokens[(end - max_length - 1).min(done - 1)..done].to_vec(),
        };
        out.push(Request {
            context,
            continuation: tokens[done..end].to_vec(),
        });
        done = end;
    }
    out
}

/// Every document's windows, with the index of the document each belongs to.
pub fn requests(
    docs: &[Doc],
    tok: &TokenizerDir,
    prefix_id: u32,
    max_length: usize,
) -> Result<(Vec<Request>, Vec<usize>), EvalError> {
    let (mut reqs, mut owner) = (Vec::new(), Vec::new());
    for (d, doc) in docs.iter().enumerate() {
        for w in windows(&tok.encode(&doc.text)?, prefix_id, max_length) {
            reqs.push(w);
            owner.push(d);
        }
    }
    Ok((reqs, owner))
}

/// Words as the harness counts them: the pieces of a split at runs of whitespace.
pub fn words(text: &str) -> u64 {
    let mut count = 1;
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() && !in_space {
            count += 1;
        }
        in_space = c.is_whitespace();
    }
    count
}

/// The task's numbers from the summed log-likelihood (nats) of all documents; each of the `empty`
/// documents counts one word, as the harness counts an empty string.
pub fn metrics(loglik: f64, tokens: u64, docs: &[Doc], empty: usize) -> Vec<(&'static str, f64)> {
    let bytes: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
    let words: u64 = docs.iter().map(|d| words(&d.text)).sum::<u64>() + empty as u64;
    vec![
        (
            "bits_per_byte",
            -loglik / bytes as f64 / std::f64::consts::LN_2,
        ),
        ("byte_perplexity", (-loglik / bytes as f64).exp()),
        ("word_perplexity", (-loglik / words as f64).exp()),
        ("token_perplexity", (-loglik / tokens as f64).exp()),
        ("tokens", tokens as f64),
        ("bytes", bytes as f64),
        ("words", words as f64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_predict_every_token_once_as_the_harness_does() {
        let t: Vec<u32> = (10..17).collect(); // 7 tokens
        let w = windows(&t, 1, 3);
        let pairs: Vec<(Vec<u32>, Vec<u32>)> =
            w.into_iter().map(|r| (r.context, r.continuation)).collect();
        assert_eq!(
            pairs,
            vec![
                (vec![1], vec![10, 11, 12]),
                (vec![12], vec![13, 14, 15]),
                (vec![13, 14, 15], vec![16]),
            ]
        );
        // the scorer's input is (context + continuation) without its last token: [12, 13, 14] predicts
        // [13, 14, 15]; the last, short window sees the 3 tokens before 16, as the harness's does
        assert!(windows(&[], 1, 3).is_empty());
        assert_eq!(windows(&[5], 1, 3)[0].context, vec![1]);
    }

    #[test]
    fn words_and_bits_per_byte_follow_the_harness() {
        assert_eq!(words("a b"), 2);
        assert_eq!(words(" a  b\n"), 4);
        assert_eq!(words("一二三"), 1);
        let docs = vec![Doc {
            at: String::new(),
            text: "ab cd".into(),
        }];
        let m = metrics(-5.0 * std::f64::consts::LN_2, 2, &docs, 0);
        assert!((m[0].1 - 1.0).abs() < 1e-12, "{m:?}");
        assert!((m[1].1 - 2.0).abs() < 1e-12);
    }
}
