//! What the pretrain tests share: token files from the shipped data and a micro-model command line.

use std::path::{Path, PathBuf};

use zerolm_data::formats::Kind;
use zerolm_testkit::{fixtures, repo, strings, token_file};

/// Token files from the shipped pretrain data with the fixture tokenizer: (train, eval, tokenizer dir).
pub fn token_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let file = |name: &str, out: &str| {
        token_file(
            Kind::Pretrain,
            &[repo().join("data").join(name)],
            &dir.join(out),
        )
    };
    (
        file("pretrain.jsonl", "train.parquet"),
        file("pretrain_eval.jsonl", "eval.parquet"),
        fixtures().join("tokenizer"),
    )
}

/// A micro-model run on the shipped data: 32-token rows, batch 4, checkpoints every 10 steps.
pub fn micro(train: &Path, eval: &Path, tok: &Path, out: &Path, steps: usize) -> Vec<String> {
    let mut a = strings(&[
        "--preset",
        "micro",
        "--threads",
        "1",
        "--max-len",
        "32",
        "--batch-size",
        "4",
        "--lr",
        "0.003",
    ]);
    a.extend(strings(&[
        "--save-every",
        "10",
        "--eval-every",
        "50",
        "--no-progress",
        "--set",
        "eval_batches=4",
    ]));
    a.extend(["--max-steps".into(), steps.to_string()]);
    for (flag, p) in [
        ("--input", train),
        ("--eval-input", eval),
        ("--tokenizer", tok),
        ("--out", out),
    ] {
        a.extend([flag.to_string(), p.display().to_string()]);
    }
    a
}
