//! `sft` as a user runs it: it fine-tunes a pretrained model directory on the shipped conversations,
//! scores the held-out answer check before and after (SFT must beat the pretrained model), resumes
//! bit-identically after a kill -9, and refuses bad starts with a clear message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zerolm_data::encode::{self, EncodeConfig};
use zerolm_data::formats::Kind;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_train::pretrain::{self, PretrainArgs};
use zerolm_train::TrainConfig;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zerolm-sft-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Token files of the shipped data (fixture tokenizer) and a `micro` model pretrained on them through
/// the library: (pretrained model dir, sft.parquet, sft_eval.parquet).
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let tok_dir = root().join("tests/fixtures/tokenizer");
    let tok = TokenizerDir::load(&tok_dir).unwrap();
    let enc = |kind, input: &str| {
        let out = dir.join(input.replace(".jsonl", ".parquet"));
        let cfg = EncodeConfig::new(kind);
        encode::run(
            &tok,
            &[root().join("data").join(input)],
            &out,
            &cfg,
            &["test".into()],
            &mut (),
        )
        .unwrap();
        out
    };
    let pre = enc(Kind::Pretrain, "pretrain.jsonl");
    let mut cfg = TrainConfig::pretrain_defaults("micro").unwrap();
    (
        cfg.seq_len,
        cfg.batch_size,
        cfg.max_steps,
        cfg.lr,
        cfg.save_every,
    ) = (64, 8, 150, 5e-3, 0);
    let out = dir.join("pretrain");
    pretrain::run(PretrainArgs {
        inputs: vec![pre],
        eval_inputs: vec![],
        tokenizer: tok_dir,
        out: out.clone(),
        cfg,
        vocab_explicit: false,
        threads: rayon::current_num_threads(),
        no_resume: true,
        progress: false,
        command: "test".into(),
    })
    .unwrap();
    (
        out.join("model"),
        enc(Kind::Sft, "sft.jsonl"),
        enc(Kind::Sft, "sft_eval.jsonl"),
    )
}

struct Run {
    code: i32,
    stderr: String,
}

fn sft(args: &[String]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_sft"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn args(model: &Path, train: &Path, eval: &Path, out: &Path, steps: usize) -> Vec<String> {
    let mut a: Vec<String> = [
        "--threads",
        "1",
        "--batch-size",
        "8",
        "--lr",
        "0.003",
        "--save-every",
        "20",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend([
        "--max-steps".into(),
        steps.to_string(),
        "--set".into(),
        "eval_batches=3".into(),
    ]);
    for (flag, p) in [
        ("--model", model),
        ("--input", train),
        ("--eval-input", eval),
        ("--out", out),
    ] {
        a.extend([flag.to_string(), p.display().to_string()]);
    }
    a
}

fn assert_user_error(r: &Run, needle: &str) {
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(needle),
        "expected `{needle}` in: {}",
        r.stderr
    );
}

#[test]
fn sft_beats_the_pretrained_model_on_held_out_answers_and_resumes_bit_identically() {
    let dir = workdir("flow");
    let (model, train, eval) = setup(&dir);

    // A run with the answer check: accuracy before (the pretrained model) and after SFT.
    let out = dir.join("sft");
    let mut a = args(&model, &train, &eval, &out, 250);
    a.extend([
        "--answer-check".into(),
        root().join("data/sft_eval.jsonl").display().to_string(),
    ]);
    a.extend([
        "--answer-max".into(),
        "60".into(),
        "--answer-max-new-tokens".into(),
        "24".into(),
    ]);
    let r = sft(&a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = zerolm_train::metrics::read_rows(&out.join("metrics.jsonl"));
    let probe = |step: u64| {
        rows.iter()
            .find(|r| r["step"].as_u64() == Some(step) && r.contains_key("probe_answer_correct"))
            .map(|r| r["probe_answer_correct"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no answer check at step {step}: {rows:?}"))
    };
    let (before, after) = (probe(0), probe(250));
    eprintln!("held-out answers (micro model): {before}/60 before SFT, {after}/60 after");
    assert!(
        after > before,
        "held-out answers: {before}/60 before SFT, {after}/60 after"
    );
    assert!(r.stderr.contains("held-out answers"), "{}", r.stderr);
    let losses: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get("loss").and_then(|v| v.as_f64()))
        .collect();
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.8),
        "SFT loss should fall: {losses:?}"
    );
    assert!(
        out.join("model/model.safetensors").is_file() && out.join("model/tokenizer.json").is_file()
    );

    // Kill -9 after the first checkpoint, rerun: the same bytes as an uninterrupted run.
    let straight = dir.join("straight");
    let r = sft(&args(&model, &train, &eval, &straight, 120));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let killed = dir.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sft"))
        .args(args(&model, &train, &eval, &killed, 120))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let complete = |p: &Path| {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten().any(|e| {
                    e.path().join("trainer_state.json").is_file()
                        && !e.file_name().to_string_lossy().ends_with(".tmp")
                })
            })
            .unwrap_or(false)
    };
    while !complete(&killed.join("checkpoints")) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("model").exists(),
        "the run finished before the kill; the test would prove nothing"
    );
    let r = sft(&args(&model, &train, &eval, &killed, 120));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    assert!(
        std::fs::read(straight.join("model/model.safetensors")).unwrap()
            == std::fs::read(killed.join("model/model.safetensors")).unwrap(),
        "resumed SFT weights differ from the uninterrupted run's"
    );

    // Bad starts.
    assert_user_error(
        &sft(&args(&dir.join("nope"), &train, &eval, &out, 5)),
        "nope/config.json",
    );
    let pre_tokens = dir.join("pretrain.parquet");
    assert_user_error(
        &sft(&args(&model, &pre_tokens, &eval, &dir.join("x"), 5)),
        "expected `sft`",
    );
    let mut preset = args(&model, &train, &eval, &dir.join("y"), 5);
    preset.extend(["--preset".into(), "tiny".into()]);
    assert_user_error(&sft(&preset), "--preset is for pretrain");
    let mut shape = args(&model, &train, &eval, &dir.join("z"), 5);
    shape.extend(["--set".into(), "model.hidden_size=64".into()]);
    assert_user_error(&sft(&shape), "cannot change it");
    let mut bad_flag = args(&model, &train, &eval, &dir.join("w"), 5);
    bad_flag.push("--no-such-flag".into());
    assert_user_error(&sft(&bad_flag), "--no-such-flag");
}
