//! `eval` against lm-evaluation-harness itself: tests/fixtures/lm_eval/micro.json is what the harness
//! computed (`tools/lm_eval_check.py harness`, its `hf` backend in float32) on the committed micro model
//! for the shipped multiple-choice sets, the held-out pretraining text, and small HellaSwag-format and
//! C-Eval-format files scored by the harness's own `hellaswag` definition and C-Eval template. `eval` must
//! give every choice's and every document's log-likelihood within float rounding, the same predictions,
//! and the same acc / acc_norm / standard errors / bits per byte.

use std::collections::BTreeMap;

use serde_json::Value;
use zerolm_testkit::{fixtures, repo, workdir};

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// numpy's argmax: the first of the largest.
fn argmax(values: &[f64]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
        "{what}: eval {a} vs harness {b}"
    );
}

#[test]
fn eval_equals_lm_evaluation_harness_on_the_shipped_sets_hellaswag_and_ceval() {
    let want = read_json(&fixtures().join("lm_eval/micro.json"));
    let work = workdir("eval-lm", "micro");
    let (data, fx) = (repo().join("data"), fixtures().join("lm_eval"));
    let files = [
        data.join("facts_mc_en.jsonl"),
        data.join("facts_mc_zh.jsonl"),
        data.join("sums_mc.jsonl"),
        data.join("pretrain_eval.jsonl"),
        fx.join("hellaswag.jsonl"),
        fx.join("ceval.csv"),
    ];
    let mut args: Vec<String> = (files.iter())
        .flat_map(|f| ["--task".to_string(), f.display().to_string()])
        .collect();
    let model = fixtures().join("trl/model");
    let (samples, out) = (work.join("samples.jsonl"), work.join("results.json"));
    for (flag, path) in [
        ("--model", &model),
        ("--samples", &samples),
        ("--out", &out),
    ] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.extend(["--batch-size", "7", "--threads", "2", "--quiet"].map(String::from));
    zerolm_testkit::run(env!("CARGO_BIN_EXE_eval"), &args).assert_ok();

    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in std::fs::read_to_string(&samples).unwrap().lines() {
        let s: Value = serde_json::from_str(line).unwrap();
        got.entry(s["task"].as_str().unwrap().to_string())
            .or_default()
            .push(s);
    }
    let results = read_json(&out);
    for (task, w) in want["tasks"].as_object().unwrap() {
        let g = &got[task];
        let harness: Vec<Value> = w["logliks"].as_array().unwrap().clone();
        assert_eq!(g.len(), harness.len(), "{task}: item count");
        let metrics = &results["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == *task)
            .unwrap()["metrics"];
        if w["kind"] == "mc" {
            for (i, (s, h)) in g.iter().zip(&harness).enumerate() {
                let h: Vec<f64> = h
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                let e: Vec<f64> = s["lls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                for (a, b) in e.iter().zip(&h) {
                    close(*a, *b, &format!("{task} item {i}"));
                }
                assert_eq!(
                    s["pred"].as_u64().unwrap() as usize,
                    argmax(&h),
                    "{task} item {i}"
                );
            }
            for m in ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"] {
                let (a, b) = (
                    metrics[m].as_f64().unwrap(),
                    w["metrics"][m].as_f64().unwrap(),
                );
                assert!((a - b).abs() < 1e-12, "{task} {m}: eval {a} vs harness {b}");
            }
        } else {
            for (i, (s, h)) in g.iter().zip(&harness).enumerate() {
                close(
                    s["loglik"].as_f64().unwrap(),
                    h.as_f64().unwrap(),
                    &format!("{task} doc {i}"),
                );
            }
            for m in ["bits_per_byte", "byte_perplexity", "word_perplexity"] {
                close(
                    metrics[m].as_f64().unwrap(),
                    w["metrics"][m].as_f64().unwrap(),
                    &format!("{task} {m}"),
                );
            }
        }
    }
}
