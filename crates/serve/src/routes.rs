//! The HTTP routes: the chat page at `/`, `/health`, `/v1/models`, `/v1/chat/completions` (whole or streamed as Server-Sent
//! Events) and `/v1/completions` (with prompt log-probs for scoring), every error in OpenAI's shape,
//! and one log line per request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::Model;

use crate::engine::{self, Engine, Event, Finish, Job};
use crate::error::ApiError;
use crate::openai::{ChatRequest, CompletionRequest, Decoding};

/// What every handler reads.
pub struct AppState {
    pub model: Arc<Model>,
    pub tokenizer: Arc<TokenizerDir>,
    pub engine: Engine,
    /// The model's name in `/v1/models` and in every response.
    pub model_id: String,
}

type Shared = State<Arc<AppState>>;

/// The server's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// The chat page, embedded in the binary; it may load nothing from elsewhere.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:",
        ),
    ];
    (headers, PAGE).into_response()
}

async fn health(State(s): Shared) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "sequences": s.engine.stats.json(),
        "rss_mb": resident_mb(),
    }))
}

/// This process's resident memory in MB (Linux; `None` elsewhere).
fn resident_mb() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((pages * 4096.0 / 1e6 * 10.0).round() / 10.0)
}

async fn models(State(s): Shared) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": s.model_id, "object": "model", "created": 0, "owned_by": "zerolm",
    }]}))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{} does not take {method}", uri.path()))
}

/// Token counts a handler reports for the log line.
#[derive(Clone, Copy)]
struct Tokens(usize);

async fn log_request(req: Request, next: Next) -> Response {
    let (method, path, started) = (
        req.method().clone(),
        req.uri().path().to_string(),
        Instant::now(),
    );
    let response = next.run(req).await;
    let tokens = response
        .extensions()
        .get::<Tokens>()
        .map_or(String::new(), |t| format!(" {} tokens", t.0));
    eprintln!(
        "{method} {path} {}{tokens} {} ms",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}

impl AppState {
    fn check_model(&self, asked: &Option<String>) -> Result<(), ApiError> {
        match asked {
            Some(m) if m != &self.model_id => Err(ApiError::invalid(
                "model",
                format!(
                    "unknown model `{m}`; this server serves `{}`",
                    self.model_id
                ),
            )
            .with_code("model_not_found")),
            _ => Ok(()),
        }
    }

    /// The prompt's ids, refused (400) when they leave no room in the context.
    fn encode(&self, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
        let ids = self
            .tokenizer
            .encode(text)
            .map_err(|e| ApiError::invalid(param, e.to_string()))?;
        let context = self.model.config().max_position_embeddings;
        if ids.len() >= context {
            return Err(ApiError::invalid(
                param,
                format!(
                    "the prompt is {} tokens; this model's context is {context}",
                    ids.len()
                ),
            )
            .with_code("context_length_exceeded"));
        }
        if ids.is_empty() {
            return Err(ApiError::invalid(param, "the prompt is empty"));
        }
        Ok(ids)
    }

    fn job(
        &self,
        prompt: Vec<u32>,
        d: &Decoding,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Job {
        Job {
            prompt,
            max_tokens: d.max_tokens,
            sampling: d.sampling.clone(),
            stop: d.stop.clone(),
            ignore_eos: d.ignore_eos,
            events,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}")
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn with_tokens(mut r: Response, n: usize) -> Response {
    r.extensions_mut().insert(Tokens(n));
    r
}

async fn chat(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req = ChatRequest::parse(&body)?;
    s.check_model(&req.model)?;
    let text = s
        .tokenizer
        .template
        .render(&req.messages, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let prompt = s.encode(&text, "messages")?;
    if req.decoding.stream {
        return chat_stream(s, prompt, req.decoding);
    }
    let n = prompt.len();
    let (content, finish, ids) =
        engine::collect(&s.engine, |tx| s.job(prompt, &req.decoding, tx)).await?;
    let body = json!({
        "id": id("chatcmpl"), "object": "chat.completion", "created": now(), "model": s.model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": null, "finish_reason": finish.name()}],
        "usage": usage(n, ids.len()),
    });
    Ok(with_tokens(Json(body).into_response(), ids.len()))
}

/// The chat completion as `chat.completion.chunk` events: the role first, then text deltas, a chunk
/// with the finish reason, the usage when asked, and `[DONE]`. A task turns the engine's events into
/// chunks; when the client goes, the chunks' receiver closes, the task ends, and with it the engine's
/// receiver, which stops the generation.
fn chat_stream(s: Arc<AppState>, prompt: Vec<u32>, d: Decoding) -> Result<Response, ApiError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let n = prompt.len();
    s.engine.submit(s.job(prompt, &d, tx))?;
    let (out, chunks) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (cid, created, model) = (id("chatcmpl"), now(), s.model_id.clone());
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    tokio::spawn(async move {
        let started = Instant::now();
        let send = |v: Value| out.send(v.to_string()).is_ok();
        if !send(chunk(json!({"role": "assistant", "content": ""}), None)) {
            return;
        }
        while let Some(event) = rx.recv().await {
            match event {
                Event::Text(t) => {
                    if !send(chunk(json!({"content": t}), None)) {
                        return;
                    }
                }
                Event::Done {
                    finish,
                    completion_ids,
                } => {
                    eprintln!(
                        "stream finished: {} tokens in {} ms ({})",
                        completion_ids.len(),
                        started.elapsed().as_millis(),
                        finish.name()
                    );
                    send(chunk(json!({}), Some(finish.name())));
                    if d.include_usage {
                        let mut u = chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage(n, completion_ids.len());
                        send(u);
                    }
                    break;
                }
                Event::Failed(e) => {
                    send(ApiError::internal(e).body());
                    break;
                }
            }
        }
        let _ = out.send("[DONE]".into());
    });
    let stream = UnboundedReceiverStream::new(chunks)
        .map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn completions(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req = CompletionRequest::parse(&body)?;
    s.check_model(&req.model)?;
    if req.decoding.stream {
        return Err(ApiError::invalid(
            "stream",
            "streaming is offered on /v1/chat/completions; ask /v1/completions without `stream`",
        ));
    }
    let prompt = s.encode(&req.prompt, "prompt")?;
    let (text, finish, new_ids) = if req.decoding.max_tokens == 0 {
        (String::new(), Finish::Length, Vec::new())
    } else {
        engine::collect(&s.engine, |tx| s.job(prompt.clone(), &req.decoding, tx)).await?
    };
    let logprobs = match req.logprobs {
        None => Value::Null,
        Some(top) => logprobs(&s, &prompt, &new_ids, req.echo, top).await?,
    };
    let shown = if req.echo {
        format!("{}{text}", req.prompt)
    } else {
        text
    };
    let body = json!({
        "id": id("cmpl"), "object": "text_completion", "created": now(), "model": s.model_id,
        "choices": [{"index": 0, "text": shown, "logprobs": logprobs, "finish_reason": finish.name()}],
        "usage": usage(prompt.len(), new_ids.len()),
    });
    Ok(with_tokens(Json(body).into_response(), new_ids.len()))
}

/// OpenAI's completions `logprobs` object for the new tokens (and the prompt's, with `echo`; the first
/// prompt token has none).
async fn logprobs(
    s: &Arc<AppState>,
    prompt: &[u32],
    new_ids: &[u32],
    echo: bool,
    top: usize,
) -> Result<Value, ApiError> {
    let all: Vec<u32> = prompt.iter().chain(new_ids).copied().collect();
    let model = s.model.clone();
    let ids = all.clone();
    let scored = tokio::task::spawn_blocking(move || engine::score(&model, &ids, top))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let from = if echo { 0 } else { prompt.len() };
    let piece = |id: u32| s.tokenizer.decode(&[id]).unwrap_or_default();
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = 0usize;
    for (i, &tok) in all.iter().enumerate().skip(from) {
        let text = piece(tok);
        offsets.push(offset);
        offset += text.chars().count();
        tokens.push(text);
        match i.checked_sub(1).map(|j| &scored[j]) {
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
            Some((lp, best)) => {
                lps.push(json!(lp));
                let map: serde_json::Map<String, Value> = best
                    .iter()
                    .map(|(id, lp)| (piece(*id), json!(lp)))
                    .collect();
                tops.push(Value::Object(map));
            }
        }
    }
    Ok(
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}),
    )
}
