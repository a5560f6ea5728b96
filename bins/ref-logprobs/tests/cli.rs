//! `ref-logprobs` as a user runs it: killed mid-run with SIGKILL and rerun, it reuses the finished
//! parts and writes the same cache as an uninterrupted run; bad starts exit 1 with a clear message.

use std::path::Path;
use std::process::Command;

use zerolm_data::formats::Kind;
use zerolm_testkit::{kill_when, micro_model, repo, token_file, workdir};

fn run(args: &[String]) -> (i32, String) {
    let r = zerolm_testkit::run(env!("CARGO_BIN_EXE_ref-logprobs"), args);
    (r.code, r.stderr)
}

#[test]
fn a_killed_run_resumes_from_its_parts_and_matches_an_uninterrupted_one() {
    let dir = workdir("ref", "resume");
    let model = micro_model(&dir.join("model"), 1);
    let data = token_file(
        Kind::Dpo,
        &[repo().join("data/dpo.jsonl")],
        &dir.join("dpo.parquet"),
    );
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
    let done_parts = || {
        std::fs::read_dir(&parts)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with("0.parquet"))
                    .count()
            })
            .unwrap_or(0)
    };
    kill_when(
        Command::new(env!("CARGO_BIN_EXE_ref-logprobs")).args(args(&killed)),
        || done_parts() > 0,
    );
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
