//! `serve` as a user starts it: it listens where told, answers its greedy chat answer as `generate --chat`
//! does, logs a line per request, stops on Ctrl-C, and bad calls exit 1 naming the problem.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

fn serve(args: &[&str]) -> zerolm_testkit::Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_serve"), args)
}

fn model_dir(name: &str) -> String {
    let dir = zerolm_testkit::workdir("serve-cli", name).join("model");
    zerolm_testkit::micro_model(&dir, 2).display().to_string()
}

/// A started server, killed when dropped (also when a test fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on a free port; returns it and its `host:port`, read from its first line.
fn start(model: &str) -> (Server, String, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
        .args(["--model", model, "--port", "0", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    log.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (Server(child), addr, log)
}

/// One HTTP/1.1 request; the status code and body.
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[test]
fn it_serves_the_greedy_chat_answer_generate_gives_and_logs_each_request() {
    let model = model_dir("chat");
    let bins = zerolm_testkit::binaries(env!("CARGO_BIN_EXE_serve"), &["generate"]);
    let want = zerolm_testkit::run(
        bins.join("generate").to_str().unwrap(),
        &[
            "--model",
            &model,
            "--chat",
            "Hello there",
            "--max-new-tokens",
            "10",
        ],
    );
    want.assert_ok();
    let (server, addr, mut log) = start(&model);
    let (status, health) = request(&addr, "GET", "/health", "");
    assert_eq!((status, health.contains("\"ok\"")), (200, true), "{health}");
    let body =
        r#"{"messages":[{"role":"user","content":"Hello there"}],"temperature":0,"max_tokens":10}"#;
    let (status, answer) = request(&addr, "POST", "/v1/chat/completions", body);
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    // `generate` prints the answer and a newline.
    assert_eq!(Some(content), want.stdout.strip_suffix('\n'));
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
