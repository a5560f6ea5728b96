//! The `tokenize` command as a user runs it: bad inputs give one clear message naming file, line and
//! field, exit code 1 and no output file; `--skip-bad` / `--strict` change that as documented.

use std::path::{Path, PathBuf};

use zerolm_testkit::{fixtures, Run};

fn tokenize(args: &[&str]) -> Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_tokenize"), args)
}

fn workdir(name: &str) -> PathBuf {
    zerolm_testkit::workdir("tokenize", name)
}

/// Run `tokenize <kind>` on one fixture into a fresh directory; returns the run and that directory.
fn encode(kind: &str, input: &str, extra: &[&str]) -> (Run, PathBuf) {
    let dir = workdir(&format!("{kind}-{}", input.replace('/', "_")));
    let out = dir.join("out.parquet");
    let tok = fixtures().join("tokenizer");
    let input = fixtures().join(input);
    let mut args = vec![
        kind,
        "--tokenizer",
        tok.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (tokenize(&args), dir)
}

fn assert_nothing_written(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn bad_rows_fail_with_file_line_and_field_and_leave_nothing() {
    let cases = [
        (
            "pretrain",
            "bad/malformed.jsonl",
            "malformed.jsonl:3",
            "malformed JSON",
        ),
        (
            "sft",
            "bad/missing_field.jsonl",
            "missing_field.jsonl:2",
            "missing field `conversations`",
        ),
        (
            "pretrain",
            "bad/wrong_type.jsonl",
            "wrong_type.jsonl:2",
            "field `text` must be a string, found a number",
        ),
        (
            "pretrain",
            "bad/invalid_utf8.jsonl",
            "invalid_utf8.jsonl:2",
            "invalid UTF-8",
        ),
        (
            "sft",
            "bad/unknown_role.jsonl",
            "unknown_role.jsonl:2",
            "unknown role `robot`",
        ),
    ];
    for (kind, input, at, what) in cases {
        let (run, dir) = encode(kind, input, &[]);
        assert_eq!(run.code, 1, "{input}: {}", run.stderr);
        assert!(
            run.stderr.contains(at) && run.stderr.contains(what),
            "{input}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
            "{}",
            run.stderr
        );
        assert_nothing_written(&dir);
    }
}

#[test]
fn missing_field_names_the_expected_fields() {
    // The first row decides the format; a later row without it names the missing field.
    let (run, _) = encode("sft", "bad/missing_field.jsonl", &[]);
    assert!(run.stderr.contains("--skip-bad"), "{}", run.stderr);
}

#[test]
fn skip_bad_turns_row_errors_into_counted_skips() {
    let (run, dir) = encode("pretrain", "bad/malformed.jsonl", &["--skip-bad"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("skipped bad 1"), "{}", run.stderr);
    assert!(
        run.stderr.contains("malformed.jsonl:3"),
        "the skipped row is reported: {}",
        run.stderr
    );
    assert!(dir.join("out.parquet").exists() && dir.join("out.resolved_config.json").exists());
}

#[test]
fn empty_rows_are_reported_and_strict_makes_them_fatal() {
    let (run, _) = encode("pretrain", "bad/empty_rows.jsonl", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("skipped empty 2"), "{}", run.stderr);
    let (run, dir) = encode("pretrain", "bad/empty_rows.jsonl", &["--strict"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("empty_rows.jsonl:2") && run.stderr.contains("empty text"),
        "{}",
        run.stderr
    );
    assert_nothing_written(&dir);
}

#[test]
fn wrong_stage_or_format_is_a_usage_error() {
    let (run, _) = encode("dpo", "sft/conversations.jsonl", &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("conversations.jsonl:1") && run.stderr.contains("prompt"),
        "{}",
        run.stderr
    );
    let (run, _) = encode("sft", "sft/conversations.jsonl", &["--format", "article"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("--format article holds dpo data"),
        "{}",
        run.stderr
    );
    let (run, _) = encode(
        "sft",
        "sft/conversations.jsonl",
        &["--overlong", "split", "--max-len", "8"],
    );
    assert_eq!(run.code, 1);
    let run = tokenize(&[
        "pretrain",
        "--tokenizer",
        "/nonexistent/tok",
        "--input",
        "x",
        "--out",
        "y",
    ]);
    run.assert_user_error("/nonexistent/tok/tokenizer.json");
}

#[test]
fn detected_format_is_printed_and_train_tokenizer_writes_an_hf_directory() {
    let (run, _) = encode("dpo", "dpo/hh_rlhf.jsonl", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("format `hh-rlhf`"), "{}", run.stderr);

    let dir = workdir("train");
    let out = dir.join("tok");
    let corpus = fixtures().join("pretrain/text.jsonl");
    let run = tokenize(&[
        "--threads",
        "1",
        "train-tokenizer",
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--vocab-size",
        "300",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["pad_token"], "<|endoftext|>");
    assert!(cfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("add_generation_prompt"));
    assert!(out.join("resolved_config.json").exists());
    let run = tokenize(&[
        "train-tokenizer",
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--vocab-size",
        "100",
    ]);
    run.assert_user_error("--vocab-size 100 is too small");

    // An output path through a file is the user's mistake (exit 1), and nothing is written.
    std::fs::write(dir.join("a-file"), b"").unwrap();
    let through = dir.join("a-file/tok");
    tokenize(&[
        "train-tokenizer",
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        through.to_str().unwrap(),
        "--vocab-size",
        "300",
    ])
    .assert_user_error("a-file/tok");
}
