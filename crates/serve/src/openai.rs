//! The requests of OpenAI's chat and completions APIs, read and checked: every value the server cannot
//! honour is a 400 naming its field, and fields that would change the answer but are not supported
//! (`n` > 1, tools, logit bias, …) are refused rather than ignored. Fields that do not change the answer
//! (`user`, `metadata`, …) are accepted and ignored, as OpenAI-compatible servers do.

use serde::Deserialize;
use serde_json::Value;
use zerolm_data::chat::{Message, Role};
use zerolm_model::sample::SamplingConfig;

use crate::error::ApiError;

/// How many tokens a request may generate when it does not say (OpenAI: up to the context).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// What both endpoints share once checked: how to sample and when to stop.
#[derive(Debug, Clone)]
pub struct Decoding {
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Keep going past the model's end of turn (vLLM's `ignore_eos`: for load tests).
    pub ignore_eos: bool,
}

/// A checked `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub decoding: Decoding,
}

/// A checked `POST /v1/completions`.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: String,
    pub decoding: Decoding,
    pub echo: bool,
    /// Log-probs of each token and the `k` most likely alternatives (`logprobs: k`, 0 ≤ k ≤ 5).
    pub logprobs: Option<usize>,
}

/// The fields both endpoints read, as sent.
#[derive(Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    stop: Option<Value>,
    seed: Option<Value>,
    n: Option<Value>,
    stream: Option<Value>,
    stream_options: Option<Value>,
    ignore_eos: Option<Value>,
}

/// Fields that would change the answer in ways this server does not implement.
const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "response_format",
    "best_of",
    "suffix",
    "presence_penalty",
    "frequency_penalty",
];

/// The body as a JSON object, or the 400 a client gets for anything else.
pub fn parse_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "",
            format!("the body is not valid JSON ({e}); send a JSON object"),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("", "the body must be a JSON object")),
    }
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        let map = parse_body(body)?;
        let common = common(&map)?;
        let messages = match map.get("messages") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, m)| message(i, m))
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Array(_)) => {
                return Err(ApiError::invalid("messages", "`messages` is empty"))
            }
            Some(_) => return Err(ApiError::invalid("messages", "`messages` must be an array")),
            None => return Err(ApiError::invalid("messages", "`messages` is required")),
        };
        Ok(ChatRequest {
            model: common.model.clone(),
            messages,
            decoding: decoding(&common, false)?,
        })
    }
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<CompletionRequest, ApiError> {
        let map = parse_body(body)?;
        let common = common(&map)?;
        let prompt = match map.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "one prompt per request: send `prompt` as a string",
                ))
            }
            Some(_) => return Err(ApiError::invalid("prompt", "`prompt` must be a string")),
            None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        };
        let echo = boolean(&map, "echo")?.unwrap_or(false);
        let logprobs = match map.get("logprobs") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(k) if k <= 5 => Some(k as usize),
                _ => {
                    return Err(ApiError::invalid(
                        "logprobs",
                        "`logprobs` must be an integer from 0 to 5",
                    ))
                }
            },
        };
        Ok(CompletionRequest {
            model: common.model.clone(),
            prompt,
            decoding: decoding(&common, true)?,
            echo,
            logprobs,
        })
    }
}

fn common(map: &serde_json::Map<String, Value>) -> Result<Common, ApiError> {
    if let Some(field) = UNSUPPORTED
        .iter()
        .find(|f| map.get(**f).is_some_and(|v| !v.is_null()))
    {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` is not supported by this server"),
        ));
    }
    serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| ApiError::invalid("", e.to_string()))
}

/// Message `i` of `messages`: a role and text content (a string, or text parts).
fn message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let param = format!("messages[{i}]");
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .and_then(Role::parse)
        .ok_or_else(|| {
            ApiError::invalid(
                &format!("{param}.role"),
                format!("{param}.role must be \"system\", \"user\" or \"assistant\""),
            )
        })?;
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                    _ => Err(ApiError::invalid(
                        &format!("{param}.content"),
                        format!("{param}.content: only text parts are supported"),
                    )),
                },
            )
            .collect::<Result<Vec<_>, _>>()?
            .concat(),
        _ => {
            return Err(ApiError::invalid(
                &format!("{param}.content"),
                format!("{param}.content must be a string"),
            ))
        }
    };
    Ok(Message::new(role, content))
}

fn decoding(c: &Common, zero_tokens_allowed: bool) -> Result<Decoding, ApiError> {
    if let Some(n) = &c.n {
        if n.as_u64() != Some(1) {
            return Err(ApiError::invalid("n", "only `n: 1` is supported"));
        }
    }
    let (field, limit) = match (&c.max_completion_tokens, &c.max_tokens) {
        (Some(v), _) if !v.is_null() => ("max_completion_tokens", Some(v)),
        (_, Some(v)) if !v.is_null() => ("max_tokens", Some(v)),
        _ => ("max_tokens", None),
    };
    let max_tokens = match limit {
        None => DEFAULT_MAX_TOKENS,
        Some(v) => match v.as_i64() {
            Some(k) if k > 0 || (k == 0 && zero_tokens_allowed) => k as usize,
            _ => {
                let least = if zero_tokens_allowed { 0 } else { 1 };
                return Err(ApiError::invalid(
                    field,
                    format!("`{field}` must be an integer ≥ {least}"),
                ));
            }
        },
    };
    let temperature = number(&c.temperature, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2 (got {temperature})"),
        ));
    }
    let top_p = number(&c.top_p, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1] (got {top_p})"),
        ));
    }
    let seed = match &c.seed {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .map(|s| s as u64)
            .ok_or_else(|| ApiError::invalid("seed", "`seed` must be an integer"))?,
    };
    let stream = match &c.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream",
                "`stream` must be true or false",
            ))
        }
    };
    let include_usage = c
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Decoding {
        max_tokens,
        sampling: SamplingConfig {
            temperature,
            top_k: 0,
            top_p,
            seed,
        },
        stop: stops(&c.stop)?,
        stream,
        include_usage,
        ignore_eos: match &c.ignore_eos {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "ignore_eos",
                    "`ignore_eos` must be true or false",
                ))
            }
        },
    })
}

fn number(v: &Option<Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a number"))),
    }
}

fn boolean(map: &serde_json::Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("`{field}` must be true or false"),
        )),
    }
}

/// `stop`: a string or up to 4 strings, none empty.
fn stops(v: &Option<Value>) -> Result<Vec<String>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("stop", "`stop` must be a string or strings"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or strings",
            ))
        }
    };
    if list.len() > 4 || list.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "`stop` takes up to 4 non-empty strings",
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(body.as_bytes())
    }

    #[test]
    fn a_chat_request_reads_its_messages_and_settings() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "max_completion_tokens":7,"temperature":0,"top_p":0.5,"stop":["\n"],"seed":3,
                "stream":true,"stream_options":{"include_usage":true},"user":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[1].content, "hi there");
        let d = r.decoding;
        assert_eq!((d.max_tokens, d.sampling.seed), (7, 3));
        assert_eq!(d.sampling.temperature, 0.0);
        assert_eq!(d.stop, vec!["\n".to_string()]);
        assert!(d.stream && d.include_usage);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("{", ""),
            ("[1]", ""),
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":-1}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                "top_p",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":1.5}"#,
                "top_p",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{}]}"#,
                "tools",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":[""]}"#,
                "stop",
            ),
        ];
        for (body, param) in cases {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(
                e.param.as_deref().unwrap_or(""),
                param,
                "{body}: {}",
                e.message
            );
        }
    }

    #[test]
    fn completions_allow_zero_tokens_and_ask_for_logprobs() {
        let r = CompletionRequest::parse(
            br#"{"prompt":"The sky is","max_tokens":0,"echo":true,"logprobs":1}"#,
        )
        .unwrap();
        assert_eq!(
            (r.decoding.max_tokens, r.echo, r.logprobs),
            (0, true, Some(1))
        );
        let e = CompletionRequest::parse(br#"{"prompt":"x","logprobs":9}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        let e = CompletionRequest::parse(br#"{"prompt":"x","max_tokens":-1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }
}
