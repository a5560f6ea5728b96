//! The micro-sized copy of the shipped flow that the pipeline tests run (tokenizer → tokenize → pretrain →
//! SFT → ref-logprobs → DPO → report, seconds on 2 cores), and reading what a run did from its output.

use crate::{repo, workdir, Run};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `pipes/tiny.yaml` of a [`project`].
pub const MICRO_PIPELINE: &str = r#"vars:
  data: ../data
  out: ../runs
run_dir: ${vars.out}/pipeline
stages:
  tokenizer:
    cmd: tokenize train-tokenizer
    args: {input: "${vars.data}/pretrain.jsonl", out: "${vars.out}/tokenizer", vocab-size: 600}
  tok-pretrain:
    cmd: tokenize pretrain
    args: {tokenizer: "${stages.tokenizer.outs[0]}", input: "${vars.data}/pretrain.jsonl", out: "${vars.out}/tokens/pretrain.parquet"}
  tok-pretrain-eval:
    cmd: tokenize pretrain
    args: {tokenizer: "${stages.tokenizer.outs[0]}", input: "${vars.data}/pretrain_eval.jsonl", out: "${vars.out}/tokens/pretrain_eval.parquet"}
  tok-sft:
    cmd: tokenize sft
    args: {tokenizer: "${stages.tokenizer.outs[0]}", input: "${vars.data}/sft.jsonl", out: "${vars.out}/tokens/sft.parquet", max-len: 256}
  tok-dpo:
    cmd: tokenize dpo
    args: {tokenizer: "${stages.tokenizer.outs[0]}", input: "${vars.data}/dpo.jsonl", out: "${vars.out}/tokens/dpo.parquet", max-len: 256}
  pretrain:
    cmd: pretrain
    args:
      preset: micro
      tokenizer: ${stages.tokenizer.outs[0]}
      input: ${stages.tok-pretrain.outs[0]}
      eval-input: ${stages.tok-pretrain-eval.outs[0]}
      out: ${vars.out}/pretrain
      max-steps: 300
      batch-size: 4
      max-len: 32
      lr: 3e-3
      save-every: 10
      eval-every: 100
      threads: 1
      no-progress: true
      set: {eval_batches: 4}
  sft:
    cmd: sft
    args:
      model: ${stages.pretrain.outs[0]}/model
      input: ${stages.tok-sft.outs[0]}
      out: ${vars.out}/sft
      max-steps: 6
      batch-size: 4
      lr: 1e-3
      answer-check: ${vars.data}/sft_eval.jsonl
      answer-max: 3
      answer-max-new-tokens: 8
      threads: 1
      no-progress: true
  ref:
    cmd: ref-logprobs
    args: {model: "${stages.sft.outs[0]}/model", input: "${stages.tok-dpo.outs[0]}", out: "${vars.out}/ref/dpo.parquet", threads: 1}
  dpo:
    cmd: dpo
    args:
      model: ${stages.sft.outs[0]}/model
      input: ${stages.tok-dpo.outs[0]}
      ref-cache: ${stages.ref.outs[0]}
      out: ${vars.out}/dpo
      max-steps: 4
      batch-size: 2
      lr: 1e-4
      threads: 1
      no-progress: true
  report:
    cmd: pipeline report ${vars.out}/pipeline
    args: {out: "${vars.out}/report"}
    deps: ["${stages.pretrain.outs[0]}", "${stages.sft.outs[0]}", "${stages.dpo.outs[0]}"]
results:
  final model: ${vars.out}/dpo/model
"#;

/// The stages of [`MICRO_PIPELINE`].
pub const ALL: [&str; 10] = [
    "tokenizer",
    "tok-pretrain",
    "tok-pretrain-eval",
    "tok-sft",
    "tok-dpo",
    "pretrain",
    "sft",
    "ref",
    "dpo",
    "report",
];

/// A fresh project directory for test suite `suite`: data/ (a slice of the shipped data) and
/// pipes/tiny.yaml.
pub fn project(suite: &str, name: &str) -> PathBuf {
    let dir = workdir(suite, name);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("pipes")).unwrap();
    for (file, lines) in [
        ("pretrain.jsonl", 2000),
        ("pretrain_eval.jsonl", 64),
        ("sft.jsonl", 200),
        ("sft_eval.jsonl", 10),
        ("dpo.jsonl", 32),
    ] {
        let text = std::fs::read_to_string(repo().join("data").join(file)).unwrap();
        let part: Vec<&str> = text.lines().take(lines).collect();
        std::fs::write(dir.join("data").join(file), part.join("\n") + "\n").unwrap();
    }
    std::fs::write(dir.join("pipes/tiny.yaml"), MICRO_PIPELINE).unwrap();
    dir
}

/// The stages a run started.
pub fn ran(r: &Run) -> BTreeSet<String> {
    r.stderr
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split_once("] "))
        .filter_map(|(_, rest)| rest.split_once(": running"))
        .map(|(name, _)| name.to_string())
        .collect()
}

pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Wall-clock fields of metrics and trainer states: the only parts of a run's files that differ between
/// two runs of the same stages.
const TIMINGS: &[&str] = &["elapsed_s", "tokens_per_s"];

/// Every file under `dir/runs` — relative path → content — except the run directory's own books and
/// logs (`runs/pipeline`), the report (it shows wall times), and the token streams (`*.bin`, caches of
/// their Parquet files that record the file's modification time; the Parquet files are compared);
/// JSON and JSON-lines files lose their [`TIMINGS`] fields.
pub fn artifacts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let root = dir.join("runs");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            if rel == "pipeline" || rel == "report" || rel.ends_with(".bin") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(rel, without_timings(&path));
            }
        }
    }
    out
}

fn without_timings(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let name = path.display().to_string();
    if !name.ends_with(".json") && !name.ends_with(".jsonl") {
        return bytes;
    }
    let strip = |line: &str| match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.retain(|k, _| !TIMINGS.contains(&k.as_str()));
            serde_json::Value::Object(m).to_string()
        }
        _ => line.to_string(),
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = if name.ends_with(".jsonl") {
        text.lines().map(strip).collect()
    } else {
        vec![strip(&text)]
    };
    lines.join("\n").into_bytes()
}

/// Panics naming the first file that differs between two [`artifacts`] sets.
pub fn assert_same_artifacts(
    a: &BTreeMap<String, Vec<u8>>,
    b: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(names(a), names(b), "{what}: not the same files");
    for (k, v) in a {
        assert!(*v == b[k], "{what}: `{k}` differs");
    }
}
