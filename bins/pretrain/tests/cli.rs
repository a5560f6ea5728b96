//! `pretrain` as a user runs it: a small run trains, evaluates and exports a model directory; a kill -9 mid-run followed by the same command ends with bit-identical weights; resumes
//! with other settings, data or tokenizer are refused; bad inputs exit 1 with a clear message.

use std::path::Path;
use std::process::Command;

mod common;

use common::{micro, token_files};
use zerolm_data::formats::Kind;
use zerolm_testkit::{has_checkpoint, kill_when, repo, strings, token_file, workdir, Run};

fn pretrain(args: &[String]) -> Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_pretrain"), args)
}

#[test]
fn pretrain_learns_exports_and_generates() {
    let dir = workdir("pretrain", "learn");
    let (train, eval, tok) = token_files(&dir);
    let out = dir.join("run");
    let r = pretrain(&micro(&train, &eval, &tok, &out, 60));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = zerolm_io::read_rows(&out.join("metrics.jsonl"));
    let train_rows: Vec<_> = rows.iter().filter(|r| r.contains_key("loss")).collect();
    let first = train_rows.first().unwrap()["loss"].as_f64().unwrap();
    let last = train_rows.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < first - 0.5, "loss {first} → {last}");
    for key in ["step", "lr", "grad_norm", "tokens_per_s", "elapsed_s"] {
        assert!(train_rows[0].contains_key(key), "metrics row lacks {key}");
    }
    let evals: Vec<_> = rows
        .iter()
        .filter(|r| r.contains_key("eval_loss"))
        .collect();
    assert_eq!(
        evals
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 50, 60],
        "eval at the start, every 50 steps and at the end"
    );
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "zerolm.json",
    ] {
        assert!(out.join("model").join(f).is_file(), "model/{f} missing");
    }
    assert!(out.join("resolved_config.json").is_file());
    let ckpts: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(ckpts.len(), 2, "keep_checkpoints=2: {ckpts:?}");

    // The same command again: everything is done, it resumes at the end and re-exports the same weights.
    let before = std::fs::read(out.join("model/model.safetensors")).unwrap();
    let again = pretrain(&micro(&train, &eval, &tok, &out, 60));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains("resuming from"), "{}", again.stderr);
    assert_eq!(
        before,
        std::fs::read(out.join("model/model.safetensors")).unwrap()
    );
}

#[test]
fn kill_and_rerun_gives_bit_identical_weights() {
    let dir = workdir("pretrain", "resume");
    let (train, eval, tok) = token_files(&dir);
    let steps = 300;
    let straight = dir.join("straight");
    let r = pretrain(&micro(&train, &eval, &tok, &straight, steps));
    assert_eq!(r.code, 0, "{}", r.stderr);

    let killed = dir.join("killed");
    kill_when(
        Command::new(env!("CARGO_BIN_EXE_pretrain"))
            .args(micro(&train, &eval, &tok, &killed, steps)),
        || has_checkpoint(&killed.join("checkpoints")),
    );
    assert!(
        !killed.join("model").exists(),
        "the run finished before the kill; the test would prove nothing"
    );

    let r = pretrain(&micro(&train, &eval, &tok, &killed, steps));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    let a = std::fs::read(straight.join("model/model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("model/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
    let steps_logged: Vec<u64> = zerolm_io::read_rows(&killed.join("metrics.jsonl"))
        .iter()
        .filter(|r| r.contains_key("loss"))
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    let mut sorted = steps_logged.clone();
    sorted.dedup();
    assert_eq!(steps_logged, sorted, "a step was logged twice after resume");

    // Resuming with other settings or other data is refused, with the difference named.
    let mut other = micro(&train, &eval, &tok, &killed, steps);
    let lr = other.iter().position(|a| a == "--lr").unwrap();
    other[lr + 1] = "0.001".into();
    pretrain(&other).assert_user_error("lr: checkpoint 0.003 vs now 0.001");
    let other_data = micro(&eval, &eval, &tok, &killed, steps);
    pretrain(&other_data).assert_user_error("input data differ");
    let mut fresh = other.clone();
    fresh.push("--no-resume".into());
    let at = fresh.iter().position(|a| a == "--max-steps").unwrap() + 1;
    fresh[at] = "5".into();
    let r = pretrain(&fresh);
    assert_eq!(r.code, 0, "--no-resume starts over: {}", r.stderr);
    assert!(!r.stderr.contains("resuming"), "{}", r.stderr);
}

#[test]
fn bf16_runs_are_deterministic_resume_bit_identically_and_refuse_another_precision() {
    let dir = workdir("pretrain", "bf16");
    let (train, eval, tok) = token_files(&dir);
    // grad-accum 2: each weight's bf16 copy serves both micro-batches of a step.
    let args = |out: &Path, precision: &str| {
        let mut a = micro(&train, &eval, &tok, out, 200);
        a.extend(strings(&["--precision", precision, "--grad-accum", "2"]));
        a
    };
    let weights = |out: &Path| std::fs::read(out.join("model/model.safetensors")).unwrap();
    let (one, two) = (dir.join("one"), dir.join("two"));
    for out in [&one, &two] {
        let r = pretrain(&args(out, "bf16"));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert!(weights(&one) == weights(&two), "two bf16 runs differ");
    let resolved = std::fs::read_to_string(one.join("resolved_config.json")).unwrap();
    assert!(resolved.contains(r#""precision": "bf16""#), "{resolved}");

    let f32_run = dir.join("f32");
    let r = pretrain(&args(&f32_run, "f32"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        weights(&one) != weights(&f32_run),
        "bf16 trained the f32 weights"
    );

    let killed = dir.join("killed");
    kill_when(
        Command::new(env!("CARGO_BIN_EXE_pretrain")).args(args(&killed, "bf16")),
        || has_checkpoint(&killed.join("checkpoints")),
    );
    assert!(!killed.join("model").exists(), "finished before the kill");
    pretrain(&args(&killed, "f32")).assert_user_error("precision");
    let r = pretrain(&args(&killed, "bf16"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    assert!(
        weights(&one) == weights(&killed),
        "resumed bf16 weights differ"
    );
    pretrain(&args(&dir.join("bad"), "fp16")).assert_user_error("fp16");
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let dir = workdir("pretrain", "bad");
    let (train, eval, tok) = token_files(&dir);
    let out = dir.join("run");

    // A tokenizer other than the one the data was made with.
    let other_tok = dir.join("other-tokenizer");
    std::fs::create_dir_all(&other_tok).unwrap();
    std::fs::copy(tok.join("tokenizer.json"), other_tok.join("tokenizer.json")).unwrap();
    let cfg = std::fs::read_to_string(tok.join("tokenizer_config.json")).unwrap();
    std::fs::write(
        other_tok.join("tokenizer_config.json"),
        cfg.replacen('{', "{\"model_max_length_note\": 1,", 1),
    )
    .unwrap();
    pretrain(&micro(&train, &eval, &other_tok, &out, 5))
        .assert_user_error("re-run `tokenize` with this tokenizer");

    // SFT tokens are not pretrain tokens.
    let sft = token_file(
        Kind::Sft,
        &[repo().join("data/sft_eval.jsonl")],
        &dir.join("sft.parquet"),
    );
    pretrain(&micro(&sft, &eval, &tok, &out, 5)).assert_user_error("expected `pretrain`");

    pretrain(&micro(&dir.join("nope.parquet"), &eval, &tok, &out, 5))
        .assert_user_error("nope.parquet");
    let mut unknown = micro(&train, &eval, &tok, &out, 5);
    unknown.extend(strings(&["--set", "model.hiden_size=8"]));
    pretrain(&unknown).assert_user_error("unknown setting `model.hiden_size`");
    // A refused run leaves no output directory behind.
    let untouched = dir.join("untouched");
    let mut none = micro(&train, &eval, &tok, &untouched, 5);
    none.extend(strings(&["--train-only", "no_such_weight"]));
    pretrain(&none).assert_user_error("matches none of the model's parameters");
    assert!(
        !untouched.exists(),
        "a refused run created {}",
        untouched.display()
    );
    let mut small_vocab = micro(&train, &eval, &tok, &out, 5);
    small_vocab.extend(strings(&["--set", "model.vocab_size=10"]));
    pretrain(&small_vocab).assert_user_error("smaller than the tokenizer's vocabulary");
    let mut preset = micro(&train, &eval, &tok, &out, 5);
    preset[1] = "giant".into();
    pretrain(&preset).assert_user_error("unknown preset `giant`");
    assert!(
        !out.join("model").exists(),
        "a failed run left a model behind"
    );

    // Divergence: a huge learning rate blows the loss up; the error says so and the checkpoint stays.
    let mut wild = micro(&train, &eval, &tok, &out, 20);
    let at = wild.iter().position(|a| a == "--lr").unwrap() + 1;
    wild[at] = "1e9".into();
    let at = wild.iter().position(|a| a == "--save-every").unwrap() + 1;
    wild[at] = "1".into();
    wild.extend(strings(&[
        "--set",
        "warmup_steps=0",
        "--set",
        "grad_clip=0.0",
    ]));
    let r = pretrain(&wild);
    r.assert_user_error("training diverged at step");
    assert!(r.stderr.contains("last good checkpoint"), "{}", r.stderr);
    assert!(!out.join("model").exists());
}

#[test]
fn gradient_accumulation_matches_one_larger_batch() {
    let dir = workdir("pretrain", "accum");
    let (train, eval, tok) = token_files(&dir);
    let run_with = |name: &str, batch: &str, accum: &str| {
        let out = dir.join(name);
        let mut a = micro(&train, &eval, &tok, &out, 4);
        let at = a.iter().position(|x| x == "--batch-size").unwrap() + 1;
        a[at] = batch.into();
        a.extend(strings(&["--grad-accum", accum, "--set", "log_every=1"]));
        let r = pretrain(&a);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let losses: Vec<f64> = zerolm_io::read_rows(&out.join("metrics.jsonl"))
            .iter()
            .filter_map(|r| r.get("loss").and_then(|v| v.as_f64()))
            .collect();
        let (w, _) = zerolm_model::io::load_safetensors(
            &out.join("model/model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        (losses, w)
    };
    let (la, wa) = run_with("whole", "8", "1");
    let (lb, wb) = run_with("accum", "4", "2");
    assert_eq!(la.len(), 4);
    for (a, b) in la.iter().zip(&lb) {
        assert!((a - b).abs() < 1e-5 * a.abs(), "losses {la:?} vs {lb:?}");
    }
    for (name, a) in &wa {
        let d = (a - &wb[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d < 1e-5,
            "`{name}` differs by {d} between batch 8 and 2 × 4 accumulated"
        );
    }
}

#[test]
fn device_flag_cpu_matches_the_default_and_unavailable_devices_are_refused() {
    let dir = workdir("pretrain", "device");
    let (train, eval, tok) = token_files(&dir);
    let run = |out: &str, extra: &[&str]| {
        let mut a = micro(&train, &eval, &tok, &dir.join(out), 12);
        a.extend(extra.iter().map(|s| s.to_string()));
        pretrain(&a)
    };
    let r = run("default", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run("cpu", &["--device", "cpu"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(dir.join("default/model/model.safetensors")).unwrap(),
        std::fs::read(dir.join("cpu/model/model.safetensors")).unwrap()
    );
    run("tpu", &["--device", "tpu"]).assert_user_error("expected cpu, cuda or cuda:N");
    // Which build the binary is cannot be told from here (features unify across the workspace), so
    // the answer decides: a CPU build refuses with the rebuild instruction, a CUDA build on a machine
    // without a usable GPU says it cannot open it, and a CUDA build with a GPU trains.
    let r = run("gpu", &["--device", "cuda"]);
    if r.stderr.contains("cannot open GPU 0") {
        r.assert_user_error("LD_LIBRARY_PATH");
        assert!(!dir.join("gpu").exists());
    } else if r.code != 0 {
        r.assert_user_error("this build has no CUDA support");
        assert!(!dir.join("gpu").exists());
    } else {
        assert!(r.stderr.contains("device: cuda:0"), "{}", r.stderr);
        assert!(dir.join("gpu/model/model.safetensors").exists());
    }
    assert!(!dir.join("tpu").exists());
}

#[test]
fn a_launch_as_several_ranks_is_refused_before_anything_is_written() {
    let dir = workdir("pretrain", "ranks");
    let (train, eval, tok) = token_files(&dir);
    let out = dir.join("out");
    for (var, launcher) in [
        ("OMPI_COMM_WORLD_SIZE", "mpirun"),
        ("SLURM_STEP_NUM_TASKS", "srun"),
        ("WORLD_SIZE", "torchrun"),
    ] {
        let run = Run::of(
            Command::new(env!("CARGO_BIN_EXE_pretrain"))
                .args(micro(&train, &eval, &tok, &out, 2))
                .env(var, "2"),
        );
        run.assert_user_error("one of 2 ranks");
        assert!(run.stderr.contains(launcher), "{}", run.stderr);
        assert!(!out.exists(), "nothing is written");
    }
    // one rank is a single process
    let one = Run::of(
        Command::new(env!("CARGO_BIN_EXE_pretrain"))
            .args(micro(&train, &eval, &tok, &out, 2))
            .env("OMPI_COMM_WORLD_SIZE", "1"),
    );
    assert_eq!(one.code, 0, "{}", one.stderr);
}

#[test]
fn a_directory_or_glob_of_shards_trains_exactly_like_the_one_file() {
    let dir = workdir("pretrain", "shards");
    let (train, eval, tok) = token_files(&dir);
    let shards = dir.join("shards");
    let mut cfg = zerolm_data::encode::EncodeConfig::new(Kind::Pretrain);
    cfg.shard.rows = Some(700);
    let input = repo().join("data/pretrain.jsonl");
    let report = zerolm_data::encode::run(
        &zerolm_testkit::fixture_tokenizer(),
        &[input],
        &shards,
        &cfg,
        &[],
        &mut (),
    )
    .unwrap();
    assert!(report.files.len() > 2, "{:?}", report.files);
    for f in &report.files {
        assert!(f.is_file() && zerolm_data::stream::path_for(f).is_file());
    }
    let weights = |input: &Path, name: &str| {
        let out = dir.join(name);
        pretrain(&micro(input, &eval, &tok, &out, 4)).assert_ok();
        std::fs::read(out.join("model/model.safetensors")).unwrap()
    };
    let one = weights(&train, "one");
    assert_eq!(weights(&shards, "dir"), one, "a directory of shards");
    assert_eq!(
        weights(&shards.join("part-*.parquet"), "glob"),
        one,
        "a glob of shards"
    );
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    pretrain(&micro(&empty, &eval, &tok, &dir.join("x"), 1))
        .assert_user_error("no token file (*.parquet) there");
}
