//! The server over real HTTP on loopback: every endpoint, the streamed and whole answers against the
//! library's own generation, prompt scoring against the model's log-probs, OpenAI-shaped errors, a full
//! queue's 429 and a disconnected client's generation being stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use zerolm_model::infer::Generator;
use zerolm_model::sample::SamplingConfig;
use zerolm_model::Precision;
use zerolm_serve::{AppState, Limits};

/// A micro model directory (untrained, fixture tokenizer), with `max_positions` when given.
fn model_dir(name: &str, max_positions: Option<usize>) -> PathBuf {
    let dir = zerolm_testkit::workdir("serve", name).join("model");
    zerolm_testkit::micro_model(&dir, 5);
    if let Some(n) = max_positions {
        let path = dir.join("config.json");
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        cfg["max_position_embeddings"] = json!(n);
        std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    }
    dir
}

/// Starts a server for `dir` on a free loopback port; returns its base URL and state.
async fn start(dir: &Path, limits: Limits) -> (String, Arc<AppState>) {
    let state = zerolm_serve::load(dir, Precision::F32, limits).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = state.clone();
    tokio::spawn(async move {
        zerolm_serve::serve(listener, served, std::future::pending())
            .await
            .unwrap()
    });
    (url, state)
}

const LIMITS: Limits = Limits {
    queue: 8,
    max_active: 4,
};

async fn get_json(c: &Client, url: &str) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// Waits up to 20 s for `done`, failing the test naming `what`.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn post_owned(url: String, body: Value) -> (StatusCode, Value) {
    post(&url, body).await
}

async fn post(url: &str, body: Value) -> (StatusCode, Value) {
    let r = Client::new().post(url).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer_and_errors_have_openai_shape() {
    let dir = model_dir("routes", None);
    let (url, state) = start(&dir, LIMITS).await;
    let c = Client::new();
    let health = get_json(&c, &format!("{url}/health")).await;
    assert_eq!(health["status"], "ok");
    let models = get_json(&c, &format!("{url}/v1/models")).await;
    assert_eq!(models["data"][0]["id"], json!(state.model_id));
    // A stage's `…/model` folder is served under its parent's name.
    let parent = dir.canonicalize().unwrap().parent().unwrap().to_path_buf();
    assert_eq!(
        state.model_id,
        parent.file_name().unwrap().to_string_lossy()
    );

    let r = c.get(format!("{url}/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "not_found_error"
    );
    let r = c
        .delete(format!("{url}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());

    let chat = format!("{url}/v1/chat/completions");
    let r = c.post(&chat).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let cases = [
        (json!({"model": "gpt-4", "messages": user("hi")}), "model"),
        (
            json!({"messages": user("hi"), "temperature": -0.5}),
            "temperature",
        ),
        (json!({"messages": user("hi"), "top_p": 0}), "top_p"),
        (
            json!({"messages": user("hi"), "max_tokens": 0}),
            "max_tokens",
        ),
        (json!({"messages": user("hi"), "n": 3}), "n"),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
    ];
    for (body, param) in cases {
        let (status, e) = post(&chat, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().len() > 10);
    }
    let (status, e) = post(&format!("{url}/v1/completions"), json!({"prompt": 7})).await;
    assert_eq!(
        (status, e["error"]["param"].clone()),
        (StatusCode::BAD_REQUEST, json!("prompt"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_chat_answer_equals_the_librarys_whole_and_streamed() {
    let dir = model_dir("chat", None);
    let (url, _) = start(&dir, LIMITS).await;
    let question = "Where does Elena Moreau live?";
    let g = Generator::load(&dir, Precision::F32).unwrap();
    let want = g
        .complete(
            &g.chat_prompt(None, question).unwrap(),
            12,
            SamplingConfig::default(),
        )
        .unwrap();

    let body = json!({"messages": user(question), "temperature": 0, "max_tokens": 12});
    let (status, r) = post(&format!("{url}/v1/chat/completions"), body.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["message"]["content"], json!(want.text));
    let finish = if want.stopped_at_eos {
        "stop"
    } else {
        "length"
    };
    assert_eq!(r["choices"][0]["finish_reason"], finish);
    assert_eq!(r["usage"]["prompt_tokens"], json!(want.prompt_ids.len()));

    let mut stream_body = body;
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let text = Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&stream_body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, want.text);
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], finish);
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(
        chunks[n - 1]["usage"]["prompt_tokens"],
        json!(want.prompt_ids.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_score_the_prompt_with_the_models_log_probs() {
    let dir = model_dir("score", None);
    let (url, state) = start(&dir, LIMITS).await;
    let prompt = "Elena Moreau lives in Nairobi.";
    let body = json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2});
    let (status, r) = post(&format!("{url}/v1/completions"), body).await;
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["text"], prompt);
    let lp = &choice["logprobs"];
    let got = lp["token_logprobs"].as_array().unwrap();
    let ids = state.tokenizer.encode(prompt).unwrap();
    assert_eq!(got.len(), ids.len());
    assert!(got[0].is_null());
    let x = Tensor::new(&ids[..ids.len() - 1], &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let y = Tensor::new(&ids[1..], &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want: Vec<f32> = state
        .model
        .token_logprobs(&x, &y)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (g, w) in got[1..].iter().zip(&want) {
        assert!((g.as_f64().unwrap() as f32 - w).abs() < 1e-4, "{g} vs {w}");
    }
    assert_eq!(lp["tokens"].as_array().unwrap().concat_strings(), prompt);
    assert_eq!(lp["top_logprobs"][1].as_object().unwrap().len(), 2);

    let (status, r) = post(
        &format!("{url}/v1/completions"),
        json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 3);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
}

trait ConcatStrings {
    fn concat_strings(&self) -> String;
}

impl ConcatStrings for Vec<Value> {
    fn concat_strings(&self) -> String {
        self.iter().filter_map(Value::as_str).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_a_400() {
    let (url, _) = start(&model_dir("context", Some(24)), LIMITS).await;
    let long = "Elena Moreau lives in Nairobi. ".repeat(20);
    let (status, e) = post(
        &format!("{url}/v1/chat/completions"),
        json!({"messages": user(&long)}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    let (status, _) = post(&format!("{url}/v1/completions"), json!({"prompt": long})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_a_429_and_a_gone_client_stops_its_generation() {
    let limits = Limits {
        queue: 1,
        max_active: 1,
    };
    let (url, state) = start(&model_dir("queue", None), limits).await;
    let chat = format!("{url}/v1/chat/completions");
    // A long streamed generation holds the only decoding slot.
    let long =
        json!({"messages": user("hi"), "stream": true, "max_tokens": 30000, "ignore_eos": true});
    let mut running = Client::new().post(&chat).json(&long).send().await.unwrap();
    assert_eq!(running.status(), 200);
    let first = running.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    let stats = state.engine.stats.clone();
    wait_for("the long generation to start", || {
        stats.active.load(Ordering::Relaxed) > 0
    })
    .await;
    // Three more at once: one waits in the queue, the other two find it full.
    let short = json!({"messages": user("hi"), "max_tokens": 2});
    let mut tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(post_owned(chat.clone(), short.clone())))
        .collect();
    wait_for("two requests refused while the queue is full", || {
        tasks.iter().filter(|t| t.is_finished()).count() >= 2
    })
    .await;
    let mut waiting = Vec::new();
    for t in tasks.drain(..) {
        if t.is_finished() {
            let (status, e) = t.await.unwrap();
            assert_eq!(status, 429, "{e}");
            assert_eq!(e["error"]["type"], "rate_limit_error");
        } else {
            waiting.push(t);
        }
    }
    assert_eq!(waiting.len(), 1);
    let waiting = waiting.pop().unwrap();
    // The client of the long generation goes away: its sequence is dropped and the queued one runs.
    drop(running);
    wait_for("the generation to stop after its client left", || {
        stats.cancelled.load(Ordering::Relaxed) > 0
    })
    .await;
    let (status, r) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the queued request was served")
        .unwrap();
    assert_eq!(status, 200, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_decoded_together_answer_as_each_one_alone() {
    let dir = model_dir("batched", None);
    let (url, state) = start(&dir, LIMITS).await;
    let chat = format!("{url}/v1/chat/completions");
    let body = |i: u64| {
        json!({"messages": user(&format!("question {i}")), "temperature": 1.0, "seed": i,
               "max_tokens": 24 + 4 * i, "ignore_eos": true})
    };
    let mut alone = Vec::new();
    for i in 0..6 {
        alone.push(post(&chat, body(i)).await);
    }
    // Six at once on four decoding slots: they share rounds, join and leave at different tokens.
    let together: Vec<_> = (0..6)
        .map(|i| tokio::spawn(post_owned(chat.clone(), body(i))))
        .collect();
    for (i, (task, want)) in together.into_iter().zip(&alone).enumerate() {
        let (status, got) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{got}");
        let text = |v: &Value| v["choices"][0]["message"]["content"].clone();
        assert_eq!(text(&got), text(&want.1), "request {i}");
        assert_eq!(got["usage"]["completion_tokens"], 24 + 4 * i as u64);
    }
    assert_eq!(state.engine.stats.finished.load(Ordering::Relaxed), 12);
}
