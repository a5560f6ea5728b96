//! `sft` as a user runs it: it fine-tunes a pretrained model directory on the shipped conversations,
//! scores the held-out answer check before and after (SFT must beat the pretrained model), resumes
//! bit-identically after a kill -9, and refuses bad starts with a clear message.

use std::path::{Path, PathBuf};
use std::process::Command;

use zerolm_data::formats::Kind;
use zerolm_stages::common::StageArgs;
use zerolm_stages::pretrain::{self, PretrainArgs};
use zerolm_testkit::{
    fixtures, has_checkpoint, kill_when, micro_model, repo, token_file, workdir, Run,
};
use zerolm_train::TrainConfig;

/// Token files of the shipped data (fixture tokenizer) and a `micro` model pretrained on them through
/// the library: (pretrained model dir, sft.parquet, sft_eval.parquet).
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let tok_dir = fixtures().join("tokenizer");
    let enc = |kind, input: &str| {
        let out = dir.join(input.replace(".jsonl", ".parquet"));
        token_file(kind, &[repo().join("data").join(input)], &out)
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
        stage: StageArgs {
            inputs: vec![pre],
            eval_inputs: vec![],
            tokenizer: Some(tok_dir),
            out: out.clone(),
            cfg,
            threads: rayon::current_num_threads(),
            no_resume: true,
            progress: false,
            command: "test".into(),
        },
        vocab_explicit: false,
    })
    .unwrap();
    (
        out.join("model"),
        enc(Kind::Sft, "sft.jsonl"),
        enc(Kind::Sft, "sft_eval.jsonl"),
    )
}

fn sft(args: &[String]) -> Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_sft"), args)
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

#[test]
fn sft_beats_the_pretrained_model_on_held_out_answers_and_resumes_bit_identically() {
    let dir = workdir("sft", "flow");
    let (model, train, eval) = setup(&dir);

    // A run with the answer check: accuracy before (the pretrained model) and after SFT.
    let out = dir.join("sft");
    let mut a = args(&model, &train, &eval, &out, 250);
    a.extend([
        "--answer-check".into(),
        repo().join("data/sft_eval.jsonl").display().to_string(),
    ]);
    a.extend([
        "--answer-max".into(),
        "60".into(),
        "--answer-max-new-tokens".into(),
        "24".into(),
    ]);
    let r = sft(&a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = zerolm_io::read_rows(&out.join("metrics.jsonl"));
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
    kill_when(
        Command::new(env!("CARGO_BIN_EXE_sft")).args(args(&model, &train, &eval, &killed, 120)),
        || has_checkpoint(&killed.join("checkpoints")),
    );
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
    sft(&args(&dir.join("nope"), &train, &eval, &out, 5)).assert_user_error("nope/config.json");
    let pre_tokens = dir.join("pretrain.parquet");
    sft(&args(&model, &pre_tokens, &eval, &dir.join("x"), 5)).assert_user_error("expected `sft`");
    let mut preset = args(&model, &train, &eval, &dir.join("y"), 5);
    preset.extend(["--preset".into(), "tiny".into()]);
    sft(&preset).assert_user_error("--preset is for pretrain");
    let mut shape = args(&model, &train, &eval, &dir.join("z"), 5);
    shape.extend(["--set".into(), "model.hidden_size=64".into()]);
    sft(&shape).assert_user_error("cannot change it");
    let mut bad_flag = args(&model, &train, &eval, &dir.join("w"), 5);
    bad_flag.push("--no-such-flag".into());
    sft(&bad_flag).assert_user_error("--no-such-flag");
}

#[test]
fn fewer_rows_than_a_batch_train_as_one_partial_batch_and_a_broken_model_writes_nothing() {
    let dir = workdir("sft", "small");
    let model = micro_model(&dir.join("model"), 1);
    let text = std::fs::read_to_string(repo().join("data/sft.jsonl")).unwrap();
    let three: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(dir.join("three.jsonl"), three.join("\n") + "\n").unwrap();
    let train = token_file(
        Kind::Sft,
        &[dir.join("three.jsonl")],
        &dir.join("three.parquet"),
    );
    let run = |model: &Path, out: &Path| {
        let a = [
            "--model",
            &model.display().to_string(),
            "--input",
            &train.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--threads",
            "1",
            "--batch-size",
            "16",
            "--epochs",
            "2",
            "--no-progress",
        ];
        sft(&a.map(String::from))
    };
    let out = dir.join("out");
    let r = run(&model, &out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("every step trains on one partial batch of 3"),
        "{}",
        r.stderr
    );
    let steps = zerolm_testkit::train_steps(&out.join("metrics.jsonl"));
    assert_eq!(steps, vec![1, 2], "one step per epoch");

    // A truncated weights file is refused before anything is written.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, broken.join(f.file_name().unwrap())).unwrap();
    }
    let weights = broken.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let refused = dir.join("refused");
    let r = run(&broken, &refused);
    r.assert_user_error("model.safetensors");
    assert!(
        !refused.exists(),
        "a refused run created {}",
        refused.display()
    );
}

#[test]
fn token_files_and_models_must_agree_on_where_completions_end() {
    let dir = zerolm_testkit::workdir("sft", "completion-end");
    let model = zerolm_testkit::micro_model(&dir.join("micro"), 3);
    let input = repo().join("data/sft_eval.jsonl");
    let template = token_file(
        Kind::Sft,
        std::slice::from_ref(&input),
        &dir.join("t.parquet"),
    );
    let eos =
        zerolm_testkit::token_file_with(Kind::Sft, &[input], &dir.join("eos.parquet"), |cfg| {
            cfg.completion_end = zerolm_data::chat::CompletionEnd::Eos
        });
    sft(&args(&model, &template, &eos, &dir.join("mixed"), 2))
        .assert_user_error("--completion-end eos but");
    let trained = dir.join("trained");
    sft(&args(&model, &template, &template, &trained, 2)).assert_ok();
    let recorded = std::fs::read_to_string(trained.join("model/zerolm.json")).unwrap();
    assert!(
        recorded.contains("\"completion_end\": \"template\""),
        "{recorded}"
    );
    sft(&args(
        &trained.join("model"),
        &eos,
        &eos,
        &dir.join("again"),
        2,
    ))
    .assert_user_error("trained on completions tokenized with --completion-end template");
    // a model that records none (pretrained, or made before the setting) takes either
    sft(&args(&model, &eos, &eos, &dir.join("fresh"), 2)).assert_ok();
}
