//! The generation worker: one thread that owns decoding. Requests wait in a bounded queue (a full queue
//! is the caller's 429); up to `max_active` sequences decode at once, each with its own KV cache. Every
//! round feeds all of them through the model together (continuous batching: one packed forward whose
//! matrix products take every sequence's rows; a new request's prompt joins the next round), and each
//! takes one token. Every token's text goes to the request's channel as soon as it is known; a request
//! whose receiver is gone (the client disconnected) is dropped before the next round.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use candle_core::Tensor;
use tokio::sync::mpsc::UnboundedSender;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::sample::{Sampler, SamplingConfig};
use zerolm_model::{KvCache, Model, Segment};

use crate::error::ApiError;

/// Why a completion ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model's end of turn or a stop string.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a request hears back, in order: text pieces, then one `Done` (or one `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Done {
        finish: Finish,
        completion_ids: Vec<u32>,
    },
    Failed(String),
}

/// One generation to run.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    /// Decode past the end-of-turn token (it is then never picked).
    pub ignore_eos: bool,
    pub events: UnboundedSender<Event>,
}

/// The handle requests submit through.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Job>,
    pub stats: Arc<Stats>,
}

/// What the worker has done so far (for `/health`).
#[derive(Default, Debug)]
pub struct Stats {
    /// Sequences decoding now.
    pub active: AtomicUsize,
    /// Sequences that ran to a finish.
    pub finished: AtomicUsize,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicUsize,
}

impl Stats {
    pub fn json(&self) -> serde_json::Value {
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        serde_json::json!({
            "active": get(&self.active),
            "finished": get(&self.finished),
            "cancelled": get(&self.cancelled),
        })
    }
}

/// Limits of the worker.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests waiting beyond the running ones before new ones get 429.
    pub queue: usize,
    /// Sequences decoded together.
    pub max_active: usize,
}

impl Engine {
    /// Starts the worker thread over `model` and `tokenizer`.
    pub fn start(model: Arc<Model>, tokenizer: Arc<TokenizerDir>, limits: Limits) -> Engine {
        let (queue, jobs) = mpsc::sync_channel(limits.queue.max(1));
        let stats = Arc::new(Stats::default());
        let worker = Worker {
            model,
            tokenizer,
            max_active: limits.max_active.max(1),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("zerolm-decode".into())
            .spawn(move || worker.run(jobs))
            .expect("spawning the decoding thread");
        Engine { queue, stats }
    }

    /// Queues `job`; a full queue is a 429 for the caller.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::busy(
                "the server is busy: its request queue is full; retry after a moment",
            ),
            TrySendError::Disconnected(_) => ApiError::internal("the decoding thread has stopped"),
        })
    }
}

struct Worker {
    model: Arc<Model>,
    tokenizer: Arc<TokenizerDir>,
    max_active: usize,
    stats: Arc<Stats>,
}

/// A sequence being decoded.
struct Active {
    job: Job,
    cache: KvCache,
    sampler: Sampler,
    /// Ids to feed next: the prompt, then each new token.
    next: Vec<u32>,
    /// The completion's ids so far.
    ids: Vec<u32>,
    /// The text of `ids[..settled]`, decoded up to a whole character.
    text: String,
    settled: usize,
    /// Bytes of `text` already sent.
    sent: usize,
}

impl Worker {
    fn run(self, jobs: Receiver<Job>) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            if active.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.admit(job, &mut active),
                    Err(_) => return,
                }
            }
            while active.len() < self.max_active {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job, &mut active),
                    Err(_) => break,
                }
            }
            self.round(&mut active);
            self.stats.active.store(active.len(), Ordering::Relaxed);
        }
    }

    fn admit(&self, job: Job, active: &mut Vec<Active>) {
        match Sampler::new(job.sampling.clone()) {
            Ok(sampler) => active.push(Active {
                next: job.prompt.clone(),
                job,
                cache: KvCache::new(),
                sampler,
                ids: Vec::new(),
                text: String::new(),
                settled: 0,
                sent: 0,
            }),
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
            }
        }
    }

    /// One token for every running sequence, all of them fed through the model together; drops those
    /// that finish and those whose client has gone.
    fn round(&self, active: &mut Vec<Active>) {
        active.retain_mut(|a| self.still_running(a));
        if active.is_empty() {
            return;
        }
        match self.next_logits(active) {
            Ok(rows) => {
                let mut rows = rows.into_iter();
                active.retain_mut(|a| match rows.next() {
                    Some(row) => self.take_token(a, row),
                    None => self.fail(a, "internal: fewer logit rows than sequences".into()),
                });
            }
            Err(e) => active.retain_mut(|a| self.fail(a, e.clone())),
        }
    }

    /// False (after telling whoever listens) when `a` is over before its next token: its client has
    /// gone, or it has reached `max_tokens` or the end of the context.
    fn still_running(&self, a: &mut Active) -> bool {
        if a.job.events.is_closed() {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let max_pos = self.model.config().max_position_embeddings;
        if a.ids.len() >= a.job.max_tokens || a.job.prompt.len() + a.ids.len() >= max_pos {
            return self.finish(a, Finish::Length);
        }
        true
    }

    /// The next-token logits of every sequence, one row each, from one packed forward.
    fn next_logits(&self, active: &mut [Active]) -> Result<Vec<Vec<f32>>, String> {
        let mut segments: Vec<Segment> = (active.iter_mut())
            .map(|a| Segment {
                ids: &a.next,
                cache: &mut a.cache,
            })
            .collect();
        let logits = self.model.forward_packed(&mut segments);
        logits
            .map_err(|e| e.to_string())?
            .to_vec2()
            .map_err(|e| e.to_string())
    }

    /// Samples `a`'s next token from `logits` and sends the text it completes; false when `a` is done.
    fn take_token(&self, a: &mut Active, mut logits: Vec<f32>) -> bool {
        if a.job.ignore_eos {
            if let Some(l) = logits.get_mut(self.tokenizer.eos_id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let id = a.sampler.pick(&logits);
        if id == self.tokenizer.eos_id {
            return self.finish(a, Finish::Stop);
        }
        a.ids.push(id);
        a.next = vec![id];
        let tail = match self.tokenizer.decode(&a.ids[a.settled..]) {
            Ok(t) => t,
            Err(e) => return self.fail(a, e.to_string()),
        };
        // A token that ends inside a character decodes to U+FFFD: wait for the rest of it.
        if tail.ends_with('\u{FFFD}') {
            return true;
        }
        a.text.push_str(&tail);
        a.settled = a.ids.len();
        if let Some(cut) = first_stop(&a.text, a.sent, &a.job.stop) {
            a.text.truncate(cut);
            self.send_text(a, a.text.len());
            a.settled = a.ids.len();
            return self.finish(a, Finish::Stop);
        }
        let hold = held_back(&a.text, &a.job.stop);
        self.send_text(a, a.text.len() - hold);
        true
    }

    /// Sends what is left of `a`'s text, then `Done`; returns false (the sequence is over).
    fn finish(&self, a: &mut Active, finish: Finish) -> bool {
        if a.settled < a.ids.len() {
            if let Ok(tail) = self.tokenizer.decode(&a.ids[a.settled..]) {
                a.text.push_str(&tail);
            }
        }
        self.send_text(a, a.text.len());
        self.stats.finished.fetch_add(1, Ordering::Relaxed);
        let _ = a.job.events.send(Event::Done {
            finish,
            completion_ids: std::mem::take(&mut a.ids),
        });
        false
    }

    fn fail(&self, a: &mut Active, message: String) -> bool {
        let _ = a.job.events.send(Event::Failed(message));
        false
    }

    /// Sends `a.text[sent..upto]`, if any.
    fn send_text(&self, a: &mut Active, upto: usize) {
        if upto > a.sent {
            let _ = (a.job.events).send(Event::Text(a.text[a.sent..upto].to_string()));
            a.sent = upto;
        }
    }
}

/// Where the first stop string in `text` starts, searching from a little before `sent`.
fn first_stop(text: &str, sent: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let from = floor_char(text, sent.saturating_sub(s.len()));
            text[from..].find(s.as_str()).map(|i| from + i)
        })
        .min()
}

/// Bytes at the end of `text` that could be the start of a stop string (not sent until known).
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .max()
        })
        .max()
        .unwrap_or(0)
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Runs a whole generation through `engine` and collects it: the text, why it ended and the ids.
pub async fn collect(
    engine: &Engine,
    job: impl FnOnce(UnboundedSender<Event>) -> Job,
) -> Result<(String, Finish, Vec<u32>), ApiError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    engine.submit(job(tx))?;
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                completion_ids,
            } => return Ok((text, finish, completion_ids)),
            Event::Failed(e) => return Err(ApiError::internal(e)),
        }
    }
    Err(ApiError::internal(
        "the decoding thread stopped mid-request",
    ))
}

/// Log-probabilities of `ids` under the model: for each position t ≥ 1, log p(ids[t] | ids[..t]) and
/// the `top` most likely tokens there (id, log-prob), most likely first.
pub type Scored = Vec<(f32, Vec<(u32, f32)>)>;

pub fn score(model: &Model, ids: &[u32], top: usize) -> Result<Scored, ApiError> {
    if ids.len() < 2 {
        return Ok(Vec::new());
    }
    let x = Tensor::new(ids, model.device())
        .and_then(|t| t.unsqueeze(0))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let logits = model.forward(&x)?;
    let rows: Vec<Vec<f32>> = logits
        .squeeze(0)
        .and_then(|t| t.to_vec2())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let out = rows[..ids.len() - 1]
        .iter()
        .zip(&ids[1..])
        .map(|(row, &next)| {
            let lse = log_sum_exp(row);
            let best = most_likely(row, top)
                .into_iter()
                .map(|i| (i as u32, row[i] - lse))
                .collect();
            (row[next as usize] - lse, best)
        })
        .collect();
    Ok(out)
}

/// The indices of the `k` largest values of `row`, largest first (only those k are sorted).
fn most_likely(row: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..row.len()).collect();
    let by_value = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]);
    order.select_nth_unstable_by(k - 1, by_value);
    order.truncate(k);
    order.sort_by(by_value);
    order
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_pieces_and_held_back_while_unsure() {
        let stops = vec!["END".to_string()];
        assert_eq!(first_stop("abcEN", 3, &stops), None);
        assert_eq!(held_back("abcEN", &stops), 2);
        assert_eq!(first_stop("abcEND!", 5, &stops), Some(3));
        assert_eq!(held_back("abc", &stops), 0);
        assert_eq!(first_stop("é END", 1, &stops), Some(3));
    }

    #[test]
    fn the_most_likely_tokens_come_largest_first() {
        let row = [0.5f32, 3.0, -1.0, 2.0, 2.5];
        assert_eq!(most_likely(&row, 3), vec![1, 4, 3]);
        assert_eq!(most_likely(&row, 0), Vec::<usize>::new());
        assert_eq!(most_likely(&row, 9).len(), 5);
    }
}
