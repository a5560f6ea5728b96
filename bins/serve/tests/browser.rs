//! The chat page in a real browser: Debian's Chromium driven by Playwright (`tests/browser/chat.mjs`)
//! sets a system prompt, temperature and seed, types a question, sees the answer arrive in pieces, gets
//! the answer `generate --chat` samples with the same settings, and stops a second answer mid-way. Needs `tools/install-browser.sh` (`.ci/run` calls it); without Chromium,
//! Node.js or playwright-core the test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{generate_with, start};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn require(what: &str, present: bool) {
    assert!(
        present,
        "{what} is missing: run tools/install-browser.sh (Debian's chromium, and playwright-core \
         from npm into tests/browser)"
    );
}

#[test]
fn a_user_chats_on_the_page_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    require("Chromium", Path::new(&chromium).exists());
    require(
        "playwright-core",
        browser_dir().join("node_modules/playwright-core").exists(),
    );
    // A model of MiniMind2's size, slow enough (milliseconds a token) that the page's updates can be seen.
    let dir = zerolm_testkit::workdir("serve-cli", "browser").join("model");
    let model = zerolm_testkit::untrained_model(&dir, "minimind2", 2)
        .display()
        .to_string();
    let sampled = ["--system", "Be brief.", "--temperature", "1", "--seed", "7"];
    let want = generate_with(&model, "Hello there", 24, &sampled);
    let (server, addr, _log) = start(&model);
    let shot = zerolm_testkit::workdir("serve-browser", "shot").join("chat.png");
    let url = format!("http://{addr}/");
    let out = Command::new("node")
        .current_dir(browser_dir())
        .args(["chat.mjs", &url, "Be brief.", "Hello there", "1", "7", "24"])
        .arg(&shot)
        .output();
    require("Node.js", out.is_ok());
    let out = out.unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chat.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["answer"], want.as_str(), "{seen}");
    assert!(
        ["stop", "length"].contains(&seen["finish"].as_str().unwrap()),
        "{seen}"
    );
    assert_eq!(seen["userBubble"], "Hello there");
    let label = seen["model"].as_str().unwrap();
    assert!(label.starts_with("model: zerolm-serve-cli-"), "{label}");
    // The reply was drawn piece by piece as it streamed, not once at the end.
    assert!(seen["lengths"].as_array().unwrap().len() > 3, "{seen}");
    assert_eq!(
        seen["external"],
        serde_json::json!([]),
        "no external request"
    );
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["sendDisabledWhileRunning"], true);
    assert_eq!(seen["stoppedFinish"], "stopped", "{seen}");
    assert_eq!(seen["sendEnabledAfter"], true);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
}
