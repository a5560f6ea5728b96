//! `serve` as a user starts it: it listens where told, answers its greedy chat answer as `generate --chat`
//! does, logs a line per request, stops on Ctrl-C, and bad calls exit 1 naming the problem.

mod common;

use common::{generate_chat, model_dir, request, start};
use std::io::Read;

fn serve(args: &[&str]) -> zerolm_testkit::Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_serve"), args)
}

#[test]
fn it_serves_the_greedy_chat_answer_generate_gives_and_logs_each_request() {
    let model = model_dir("chat");
    let want = generate_chat(&model, "Hello there", 10);
    let (server, addr, mut log) = start(&model);
    let (status, health) = request(&addr, "GET", "/health", "");
    assert_eq!((status, health.contains("\"ok\"")), (200, true), "{health}");
    let body =
        r#"{"messages":[{"role":"user","content":"Hello there"}],"temperature":0,"max_tokens":10}"#;
    let (status, answer) = request(&addr, "POST", "/v1/chat/completions", body);
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, want);
    let (status, _) = request(&addr, "PUT", "/health", "");
    assert_eq!(status, 405);
    drop(server);
    let mut rest = String::new();
    log.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("GET /health 200"), "{rest}");
    assert!(rest.contains("POST /v1/chat/completions 200"), "{rest}");
    assert!(rest.contains("PUT /health 405"), "{rest}");
}

#[test]
fn bad_calls_exit_1_naming_the_problem() {
    serve(&["--model", "/nonexistent/model"]).assert_user_error("/nonexistent/model");
    let model = model_dir("bad");
    serve(&["--model", &model, "--host", "not-an-address"]).assert_user_error("--host");
    let (server, addr, _log) = start(&model);
    let port = addr.rsplit(':').next().unwrap().to_string();
    serve(&["--model", &model, "--port", &port]).assert_user_error("cannot listen");
    drop(server);
}

fn serve_load(args: &[&str]) -> zerolm_testkit::Run {
    let bins = zerolm_testkit::binaries(env!("CARGO_BIN_EXE_serve"), &["serve-load"]);
    zerolm_testkit::run(bins.join("serve-load").to_str().unwrap(), args)
}

#[test]
fn a_bounded_load_test_passes_without_a_failed_request() {
    let model = model_dir("load");
    let (server, addr, _log) = start(&model);
    let url = format!("http://{addr}");
    let args = [
        "--url",
        &url,
        "--clients",
        "8",
        "--requests",
        "48",
        "--max-tokens",
        "16",
    ];
    let run = serve_load(&[&args[..], &["--ignore-eos", "--json"]].concat());
    run.assert_ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (report["ok"].as_u64(), report["failed"].as_u64()),
        (Some(48), Some(0))
    );
    assert_eq!(report["completion_tokens"], 48 * 16);
    let ttft = (
        report["ttft_p50_ms"].as_f64().unwrap(),
        report["ttft_p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < ttft.0 && ttft.0 <= ttft.1, "{report}");
    assert!(
        report["server_rss_mb"]["samples"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let table = serve_load(&args);
    table.assert_ok();
    assert!(
        table.stdout.contains("| ok / failed | 48 / 0 |"),
        "{}",
        table.stdout
    );
    drop(server);
    // Nobody listens any more: every request fails, and the run says so.
    serve_load(&args).assert_user_error("48 of 48 requests failed");
    serve_load(&["--clients", "0"]).assert_user_error("--clients");
}
