//! The official `openai` Python client against `serve` (`tests/clients/openai_check.py`): its greedy
//! answer, whole and streamed, is `generate --chat`'s, and so is its seeded sampled answer with a system
//! prompt; prompt scoring and the errors come back in the
//! shapes the client parses. Needs `tools/install-clients.sh` (`.ci/run` calls it); without the venv
//! the test fails and says so.

mod common;

use std::path::Path;
use std::process::Command;

use common::{generate_chat, generate_with, model_dir, start};

#[test]
fn the_openai_python_client_chats_streams_scores_and_gets_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv-clients/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tools/install-clients.sh",
        python.display()
    );
    let model = model_dir("clients");
    let want = generate_chat(&model, "Hello there", 12);
    let sampled = ["--system", "Be brief.", "--temperature", "1", "--seed", "7"];
    let want_sampled = generate_with(&model, "Hello there", 12, &sampled);
    let (server, addr, _log) = start(&model);
    let out = Command::new(&python)
        .arg(root.join("tests/clients/openai_check.py"))
        .args([
            &format!("http://{addr}"),
            "Hello there",
            "12",
            "Be brief.",
            "7",
        ])
        .output()
        .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai_check.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["sampled"], want_sampled.as_str(), "{seen}");
    let whole = &seen["whole"];
    assert_eq!(whole["content"], want.as_str(), "{seen}");
    assert_eq!(whole["role"], "assistant");
    assert_eq!(whole["object"], "chat.completion");
    let usage = &whole["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(p.unwrap() + c.unwrap())
    );
    let stream = &seen["stream"];
    assert_eq!(stream["content"], want.as_str(), "{seen}");
    assert_eq!(stream["first_role"], "assistant");
    assert_eq!(
        stream["finish_reasons"],
        serde_json::json!([whole["finish_reason"]])
    );
    assert_eq!(&stream["usage"], usage, "{seen}");
    assert_eq!(
        stream["ids"].as_array().unwrap().len(),
        1,
        "one id per completion"
    );
    assert!(stream["chunks"].as_u64().unwrap() >= 4, "{seen}");
    let scored = &seen["scored"];
    let tokens = scored["tokens"].as_array().unwrap();
    let lps = scored["token_logprobs"].as_array().unwrap();
    assert_eq!(scored["text"], "The cat sat on the mat");
    assert_eq!(tokens.len(), lps.len());
    assert!(
        lps[0].is_null() && lps[1..].iter().all(|v| v.as_f64().unwrap() < 0.0),
        "{seen}"
    );
    let top = scored["top_logprobs"].as_array().unwrap();
    assert!(
        top[1..]
            .iter()
            .all(|t| (1..=2).contains(&t.as_object().unwrap().len())),
        "{seen}"
    );
    let errors = &seen["errors"];
    for (name, param) in [
        ("temperature", "temperature"),
        ("model", "model"),
        ("max_tokens", "max_tokens"),
    ] {
        let e = &errors[name];
        assert_eq!(
            (e["class"].as_str(), e["status"].as_u64()),
            (Some("BadRequestError"), Some(400)),
            "{e}"
        );
        assert_eq!(e["param"], param, "{e}");
    }
}
