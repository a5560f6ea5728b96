//! `generate` as a user runs it on an exported model directory: raw prompts continue the prompt, chat
//! messages are answered through the template, sampling is seeded, and bad calls exit 1 clearly.

use std::path::PathBuf;

use candle_core::Device;
use zerolm_data::tokenizer::TokenizerDir;
use zerolm_testkit::Run;

fn generate(args: &[&str]) -> Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_generate"), args)
}

/// An untrained micro model exported with the fixture tokenizer.
fn model_dir(name: &str) -> PathBuf {
    zerolm_testkit::micro_model(&zerolm_testkit::workdir("generate", name).join("model"), 1)
}

#[test]
fn raw_and_chat_generation_work_and_are_seeded() {
    let dir = model_dir("sample");
    let model = dir.display().to_string();
    let g = generate(&[
        "--model",
        &model,
        "--prompt",
        "Alice",
        "--max-new-tokens",
        "8",
    ]);
    assert_eq!(g.code, 0, "{}", g.stderr);
    assert!(
        g.stdout.starts_with("Alice") && g.stdout.trim_end().len() > "Alice".len(),
        "{}",
        g.stdout
    );
    let sample = [
        "--model",
        &model,
        "--chat",
        "Where does Alice live?",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "5",
    ];
    let (a, b) = (generate(&sample), generate(&sample));
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(a.stdout, b.stdout, "same seed, same sample");
    let mut other_seed = sample.to_vec();
    other_seed[9] = "6";
    let c = generate(&other_seed);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_ne!(
        a.stdout, c.stdout,
        "an untrained model's samples should depend on the seed"
    );

    let logits = dir.join("logits.safetensors");
    let l = generate(&[
        "--model",
        &model,
        "--prompt",
        "Alice lives",
        "--logits-out",
        logits.to_str().unwrap(),
    ]);
    assert_eq!(l.code, 0, "{}", l.stderr);
    let (t, _) = zerolm_model::io::load_safetensors(&logits, &Device::Cpu).unwrap();
    assert_eq!(
        t["logits"].dims(),
        [
            t["ids"].dim(0).unwrap(),
            TokenizerDir::load(&dir).unwrap().vocab_size()
        ]
    );
}

#[test]
fn bad_calls_exit_1_with_a_clear_message() {
    let dir = model_dir("bad");
    let model = dir.display().to_string();
    let none = generate(&["--model", &model]);
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(none.stderr.contains("--prompt"), "{}", none.stderr);
    let missing = generate(&["--model", "/nonexistent/model", "--prompt", "x"]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("/nonexistent/model/config.json"),
        "{}",
        missing.stderr
    );
    let bad = generate(&["--model", &model, "--prompt", "x", "--temperature=-1"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("temperature"), "{}", bad.stderr);
}
