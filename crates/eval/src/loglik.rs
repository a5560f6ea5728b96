//! Log-likelihoods of continuations given contexts, as lm-evaluation-harness defines its
//! `loglikelihood` requests for causal models, computed in padded batches.

use candle_core::Tensor;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::Model;

use crate::EvalError;

/// One scoring request: the log-probability of `continuation` following `context` (token ids).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// The ids of a (context, continuation) text pair as lm-evaluation-harness makes them: trailing
/// whitespace of the context moves to the continuation, the whole text is encoded once and the
/// continuation is what follows the context's own encoding; an empty (or all-whitespace) context is the
/// prefix token.
pub fn encode_pair(
    tok: &TokenizerDir,
    context: &str,
    continuation: &str,
    prefix_id: u32,
) -> Result<Request, EvalError> {
    let kept = context.trim_end();
    let moved = format!("{}{continuation}", &context[kept.len()..]);
    if kept.is_empty() {
        return Ok(Request {
            context: vec![prefix_id],
            continuation: tok.encode(&moved)?,
        });
    }
    let whole = tok.encode(&format!("{kept}{moved}"))?;
    let context = tok.encode(kept)?;
    let continuation = whole.get(context.len()..).unwrap_or_default().to_vec();
    Ok(Request {
        context,
        continuation,
    })
}

/// The token lm-evaluation-harness conditions an empty context on: the tokenizer's bos token when it
/// names one, else its eos token.
pub fn prefix_id(tok: &TokenizerDir) -> u32 {
    let bos = &tok.template.bos_token;
    (!bos.is_empty())
        .then(|| tok.tokenizer.token_to_id(bos))
        .flatten()
        .unwrap_or(tok.eos_id)
}

/// Scores requests in batches of similar length.
pub struct Scorer<'a> {
    pub model: &'a Model,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// The longest input (tokens); longer ones lose their first tokens, as the harness does.
    pub max_length: usize,
    pub pad_id: u32,
}

/// What a scoring run gives back: each request's log-likelihood, and how many were cut to fit.
pub struct Scores {
    pub logliks: Vec<f64>,
    pub truncated: usize,
}

/// A request's model input and targets after truncation to `max_length`, and how many final
/// positions are scored.
struct Window {
    input: Vec<u32>,
    targets: Vec<u32>,
    scored: usize,
    truncated: bool,
}

impl Scorer<'_> {
    fn window(&self, r: &Request) -> Result<Window, EvalError> {
        if r.continuation.is_empty() || r.context.is_empty() {
            return Err(EvalError::Usage(
                "a scoring request needs a context and a non-empty continuation".into(),
            ));
        }
        if r.continuation.len() > self.max_length {
            return Err(EvalError::Usage(format!(
                "a continuation of {} tokens is longer than the model's input limit of {} tokens \
                 (--max-length)",
                r.continuation.len(),
                self.max_length
            )));
        }
        let whole: Vec<u32> = [r.context.as_slice(), &r.continuation].concat();
        let keep = whole.len().min(self.max_length + 1);
        let kept = &whole[whole.len() - keep..];
        Ok(Window {
            input: kept[..keep - 1].to_vec(),
            targets: kept[1..].to_vec(),
            scored: r.continuation.len(),
            truncated: keep < whole.len(),
        })
    }

    /// Every request's log-likelihood, longest inputs first in batches of `batch_size` rows (fewer
    /// when the rows are long); `tick` is told how many requests each batch finished.
    pub fn score(
        &self,
        requests: &[Request],
        tick: &mut dyn FnMut(usize),
    ) -> Result<Scores, EvalError> {
        let windows = (requests.iter())
            .map(|r| self.window(r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(windows[i].input.len()));
        let mut logliks = vec![0.0; windows.len()];
        let mut start = 0;
        while start < order.len() {
            let longest = windows[order[start]].input.len();
            let rows = self.rows_for(longest).min(order.len() - start);
            let batch = &order[start..start + rows];
            let sums = self.batch(batch.iter().map(|&i| &windows[i]).collect(), longest)?;
            for (&i, s) in batch.iter().zip(sums) {
                logliks[i] = s;
            }
            tick(rows);
            start += rows;
        }
        Ok(Scores {
            logliks,
            truncated: windows.iter().filter(|w| w.truncated).count(),
        })
    }

    /// Rows per batch for inputs of `len` tokens: `batch_size`, or fewer so that a batch holds at
    /// most max(len, 16384) tokens (the logits of a batch are rows × len × vocab floats).
    fn rows_for(&self, len: usize) -> usize {
        let by_tokens = (16384 / len.max(1)).max(1);
        self.batch_size.clamp(1, by_tokens.max(1))
    }

    /// The summed log-probabilities of each window's scored positions (rows right-padded to `t`).
    fn batch(&self, windows: Vec<&Window>, t: usize) -> Result<Vec<f64>, EvalError> {
        let b = windows.len();
        let mut ids = vec![self.pad_id; b * t];
        let mut targets = vec![self.pad_id; b * t];
        for (r, w) in windows.iter().enumerate() {
            ids[r * t..r * t + w.input.len()].copy_from_slice(&w.input);
            targets[r * t..r * t + w.targets.len()].copy_from_slice(&w.targets);
        }
        let device = self.model.device();
        let ids = Tensor::from_vec(ids, (b, t), device)?;
        let targets = Tensor::from_vec(targets, (b, t), device)?;
        let lp = self
            .model
            .token_logprobs(&ids, &targets)?
            .to_vec2::<f32>()?;
        Ok((windows.iter().zip(lp))
            .map(|(w, row)| {
                let end = w.input.len();
                row[end - w.scored..end].iter().map(|&x| f64::from(x)).sum()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scorer(model: &Model, max_length: usize) -> Scorer<'_> {
        Scorer {
            model,
            batch_size: 3,
            max_length,
            pad_id: 0,
        }
    }

    #[test]
    fn pairs_are_encoded_as_the_harness_encodes_them() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer");
        let tok = TokenizerDir::load(&dir).unwrap();
        let r = encode_pair(&tok, "Question: x\nAnswer: ", "Paris", 1).unwrap();
        // the context's trailing space moves to the continuation
        assert_eq!(r.context, tok.encode("Question: x\nAnswer:").unwrap());
        let whole = tok.encode("Question: x\nAnswer: Paris").unwrap();
        assert_eq!([r.context.clone(), r.continuation.clone()].concat(), whole);
        for empty in ["", "  "] {
            let r = encode_pair(&tok, empty, "Paris", 1).unwrap();
            assert_eq!(r.context, vec![1]);
            assert_eq!(
                r.continuation,
                tok.encode(&format!("{empty}Paris")).unwrap()
            );
        }
    }

    #[test]
    fn windows_keep_the_last_tokens_and_score_the_continuation() {
        let model = crate::testing::micro_model(1);
        let s = scorer(&model, 4);
        let r = Request {
            context: vec![5, 6, 7, 8],
            continuation: vec![9, 10],
        };
        let w = s.window(&r).unwrap();
        assert_eq!(w.input, vec![6, 7, 8, 9]);
        assert!(w.truncated);
        assert_eq!(w.targets, vec![7, 8, 9, 10]);
        assert_eq!(w.scored, 2);
        let long = Request {
            context: vec![1],
            continuation: vec![2; 5],
        };
        assert!(s.window(&long).is_err());
    }
}
