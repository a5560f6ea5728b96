//! A load test for a running server: `clients` concurrent streaming chat clients share `requests`
//! requests; each request's time to first token, length and outcome are recorded, and the server's
//! resident memory is sampled from `/health` throughout. What `serve-load` prints.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_stream::StreamExt;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// `http://host:port`
    pub url: String,
    pub clients: usize,
    pub requests: usize,
    pub max_tokens: usize,
    /// Decode past the end of turn so every request is `max_tokens` long.
    pub ignore_eos: bool,
    pub temperature: f32,
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Outcome {
    ttft: Duration,
    total: Duration,
    tokens: usize,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// Up to five failures' messages.
    pub failures: Vec<String>,
    pub wall_s: f64,
    pub completion_tokens: usize,
    /// Completion tokens of all requests per second of wall time.
    pub aggregate_tokens_per_s: f64,
    /// Median over requests of tokens per second after the first token.
    pub per_stream_tokens_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// The server's resident memory (MB) in the first and last tenth of the run, and its peak.
    pub server_rss_mb: RssSamples,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RssSamples {
    pub early: Option<f64>,
    pub late: Option<f64>,
    pub peak: Option<f64>,
    pub samples: usize,
}

/// Runs `plan` against the server and reports; failures are counted, not raised.
pub async fn run(plan: LoadPlan) -> LoadReport {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_rss(http.clone(), plan.url.clone(), stop.clone()));
    let clients: Vec<_> = (0..plan.clients.max(1))
        .map(|_| tokio::spawn(client(http.clone(), plan.clone(), next.clone())))
        .collect();
    let mut results = Vec::new();
    for c in clients {
        results.extend(
            c.await
                .unwrap_or_else(|e| vec![Err(format!("client task: {e}"))]),
        );
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rss = sampler.await.unwrap_or_default();
    summarize(&plan, results, wall, rss)
}

/// One client: takes request numbers until none are left, one request at a time.
async fn client(
    http: reqwest::Client,
    plan: LoadPlan,
    next: Arc<AtomicUsize>,
) -> Vec<Result<Outcome, String>> {
    let mut out = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.requests {
            return out;
        }
        out.push(one_request(&http, &plan, i).await);
    }
}

const QUESTIONS: [&str; 4] = [
    "What is the capital of the country you know best?",
    "Tell me a short story about a cat.",
    "What is 17 plus 25?",
    "Describe the weather today.",
];

async fn one_request(http: &reqwest::Client, plan: &LoadPlan, i: usize) -> Result<Outcome, String> {
    let body = json!({
        "messages": [{"role": "user", "content": QUESTIONS[i % QUESTIONS.len()]}],
        "max_tokens": plan.max_tokens,
        "temperature": plan.temperature,
        "seed": i,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": plan.ignore_eos,
    });
    let started = Instant::now();
    let url = format!("{}/v1/chat/completions", plan.url);
    let response = http.post(url).json(&body).send().await;
    let response = response.map_err(|e| format!("request {i}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("request {i}: HTTP {status}: {text}"));
    }
    let mut events = SseLines::default();
    let mut stream = response.bytes_stream();
    let (mut ttft, mut tokens, mut done) = (None, None, false);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| format!("request {i}: stream broke: {e}"))?;
        for data in events.push(&piece) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk: Value =
                serde_json::from_str(&data).map_err(|e| format!("request {i}: bad chunk: {e}"))?;
            if ttft.is_none() && chunk["choices"][0]["delta"]["content"].is_string() {
                ttft = Some(started.elapsed());
            }
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n as usize);
            }
        }
    }
    let total = started.elapsed();
    match (done, tokens) {
        (true, Some(tokens)) => Ok(Outcome {
            ttft: ttft.unwrap_or(total),
            total,
            tokens,
        }),
        _ => Err(format!(
            "request {i}: the stream ended without usage and [DONE]"
        )),
    }
}

/// Splits a Server-Sent Events byte stream into its `data:` payloads.
#[derive(Default)]
struct SseLines {
    buffer: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                out.push(data.trim().to_string());
            }
        }
        out
    }
}

/// Polls `/health` every 200 ms for the server's resident memory until `stop` is set.
async fn sample_rss(http: reqwest::Client, url: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = http.get(format!("{url}/health")).send().await {
            if let Some(mb) = r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["rss_mb"].as_f64())
            {
                samples.push(mb);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples
}

fn summarize(
    plan: &LoadPlan,
    results: Vec<Result<Outcome, String>>,
    wall: Duration,
    rss: Vec<f64>,
) -> LoadReport {
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    let ok: Vec<Outcome> = ok.into_iter().flatten().collect();
    let failures: Vec<String> = failed
        .iter()
        .filter_map(|r| r.clone().err())
        .take(5)
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ttft: Vec<f64> = ok.iter().map(|o| ms(o.ttft)).collect();
    let latency: Vec<f64> = ok.iter().map(|o| ms(o.total)).collect();
    let per_stream: Vec<f64> = (ok.iter())
        .filter(|o| o.tokens > 1 && o.total > o.ttft)
        .map(|o| (o.tokens - 1) as f64 / (o.total - o.ttft).as_secs_f64())
        .collect();
    let tokens: usize = ok.iter().map(|o| o.tokens).sum();
    LoadReport {
        clients: plan.clients,
        requests: plan.requests,
        ok: ok.len(),
        failed: failed.len(),
        failures,
        wall_s: wall.as_secs_f64(),
        completion_tokens: tokens,
        aggregate_tokens_per_s: tokens as f64 / wall.as_secs_f64(),
        per_stream_tokens_per_s: percentile(&per_stream, 0.5),
        ttft_p50_ms: percentile(&ttft, 0.5),
        ttft_p99_ms: percentile(&ttft, 0.99),
        latency_p50_ms: percentile(&latency, 0.5),
        latency_p99_ms: percentile(&latency, 0.99),
        server_rss_mb: rss_summary(&rss),
    }
}

/// The `q` quantile of `values` (nearest rank); 0 when empty.
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Mean RSS over the first and the last tenth of the samples, and the peak.
fn rss_summary(samples: &[f64]) -> RssSamples {
    if samples.is_empty() {
        return RssSamples::default();
    }
    let tenth = samples.len().div_ceil(10);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    RssSamples {
        early: Some(mean(&samples[..tenth])),
        late: Some(mean(&samples[samples.len() - tenth..])),
        peak: samples.iter().copied().reduce(f64::max),
        samples: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_payloads_are_cut_at_line_ends_across_pieces() {
        let mut s = SseLines::default();
        assert_eq!(s.push(b"data: {\"a\""), Vec::<String>::new());
        assert_eq!(s.push(b":1}\n\ndata: [DO"), vec!["{\"a\":1}".to_string()]);
        assert_eq!(s.push(b"NE]\r\n\r\n"), vec!["[DONE]".to_string()]);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
