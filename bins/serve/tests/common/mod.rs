//! What the serve binary's tests share: a model to serve, a started server, one HTTP request, and the
//! greedy chat answer `generate` gives.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

pub fn model_dir(name: &str) -> String {
    let dir = zerolm_testkit::workdir("serve-cli", name).join("model");
    zerolm_testkit::micro_model(&dir, 2).display().to_string()
}

/// A started server, killed when dropped (also when a test fails).
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on a free port; returns it and its `host:port`, read from its first line.
pub fn start(model: &str) -> (Server, String, BufReader<std::process::ChildStderr>) {
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
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
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

/// What `generate --chat` answers to `question` greedily in `max_new` tokens (without its final newline).
pub fn generate_chat(model: &str, question: &str, max_new: usize) -> String {
    generate_with(model, question, max_new, &[])
}

/// [`generate_chat`] with more `generate` arguments (`--system`, `--temperature`, `--seed`).
pub fn generate_with(model: &str, question: &str, max_new: usize, more: &[&str]) -> String {
    let bins = zerolm_testkit::binaries(env!("CARGO_BIN_EXE_serve"), &["generate"]);
    let max_new = max_new.to_string();
    let mut args = vec![
        "--model",
        model,
        "--chat",
        question,
        "--max-new-tokens",
        &max_new,
    ];
    args.extend_from_slice(more);
    let want = zerolm_testkit::run(bins.join("generate").to_str().unwrap(), &args);
    want.assert_ok();
    want.stdout
        .strip_suffix('\n')
        .unwrap_or(&want.stdout)
        .to_string()
}
