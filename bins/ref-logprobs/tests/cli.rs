//! `ref-logprobs` as a user runs it: killed mid-run with SIGKILL and rerun, it reuses the finished
//! parts and writes the same cache as an uninterrupted run; bad starts exit 1 with a clear message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use zerolm_data::encode::{self, EncodeConfig};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_model::{init_parameters, ModelConfig};
use zerolm_train::stage::{export_model_dir, Provenance};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[String]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ref-logprobs"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_killed_run_resumes_from_its_parts_and_matches_an_uninterrupted_one() {
    let dir = std::env::temp_dir().join(format!("zerolm-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tok = TokenizerDir::load(&root().join("tests/fixtures/tokenizer")).unwrap();
    let mut cfg = ModelConfig::preset("micro").unwrap();
    cfg.vocab_size = tok.vocab_size();
    let model = dir.join("model");
    let prov = Provenance {
        stage: "test",
        step: 0,
        tokenizer_fingerprint: &tok.fingerprint,
        inputs: &[],
        config: &serde_json::json!({}),
    };
    export_model_dir(
        &model,
        &cfg,
        &init_parameters(&cfg, 1, &Device::Cpu).unwrap(),
        &tok,
        &prov,
    )
    .unwrap();
    let data = dir.join("dpo.parquet");
    encode::run(
        &tok,
        &[root().join("data/dpo.jsonl")],
        &data,
        &EncodeConfig::new(Kind::Dpo),
        &["t".into()],
        &mut (),
    )
    .unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "1",
            "--batch-size",
            "2",
            "--no-progress",
            "--model",
            model.to_str().unwrap(),
            "--input",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let straight = dir.join("straight.parquet");
    let (code, err) = run(&args(&straight));
    assert_eq!(code, 0, "{err}");

    let killed = dir.join("killed.parquet");
    let parts = dir.join("killed.parquet.parts");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ref-logprobs"))
        .args(args(&killed))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let done_parts = || {
        std::fs::read_dir(&parts)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with("0.parquet"))
                    .count()
            })
            .unwrap_or(0)
    };
    while done_parts() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no part appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.exists(),
        "the run finished before the kill; the test would prove nothing"
    );
    let (code, err) = run(&args(&killed));
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("(0 parts reused"),
        "the rerun should reuse the finished parts: {err}"
    );
    assert!(!parts.exists(), "parts are removed once merged");
    let a = zerolm_data::artifact::read(&straight, Kind::Dpo).unwrap();
    let b = zerolm_data::artifact::read(&killed, Kind::Dpo).unwrap();
    assert_eq!(a.rows, b.rows);
    assert_eq!(
        a.extra, b.extra,
        "resumed log-probs differ from the uninterrupted run's"
    );

    let (code, err) = run(&args(&dir.join("x.parquet"))
        .into_iter()
        .map(|a| {
            if a.ends_with("/model") {
                "/no/model".into()
            } else {
                a
            }
        })
        .collect::<Vec<_>>());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/no/model"), "{err}");
}
