//! `dpo` (with `ref-logprobs` through the library) as a user runs it: the first logged loss of a policy
//! that equals its reference is ln 2 and every TRL metric is logged; caches from another model, other
//! data or another length rule are refused; empty completions and over-long prompts are counted skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use zerolm_data::artifact::{TokenRow, TokenWriter};
use zerolm_data::formats::Kind;
use zerolm_stages::ref_logprobs::{self, RefArgs};
use zerolm_testkit::{
    fixture_tokenizer, has_checkpoint, kill_when, micro_model, repo, token_file, workdir, Run,
};

struct Setup {
    dir: PathBuf,
    model: PathBuf,
    other_model: PathBuf,
    train: PathBuf,
    eval: PathBuf,
    cache: PathBuf,
    eval_cache: PathBuf,
}

/// Two untrained micro models (seeds 1 and 2), DPO token files of the shipped data, reference caches.
fn setup(name: &str) -> Setup {
    let dir = zerolm_testkit::workdir("dpo", name);
    let export = |seed: u64, name: &str| micro_model(&dir.join(name), seed);
    let enc = |input: &str| {
        let out = dir.join(input.replace(".jsonl", ".parquet"));
        token_file(Kind::Dpo, &[repo().join("data").join(input)], &out)
    };
    let (model, other_model) = (export(1, "model"), export(2, "other"));
    let (train, eval) = (enc("dpo.jsonl"), enc("dpo_eval.jsonl"));
    let cache = dir.join("ref.parquet");
    let eval_cache = dir.join("ref_eval.parquet");
    ref_cache(&model, &train, &cache, 256);
    ref_cache(&model, &eval, &eval_cache, 256);
    Setup {
        dir,
        model,
        other_model,
        train,
        eval,
        cache,
        eval_cache,
    }
}

fn ref_cache(model: &Path, input: &Path, out: &Path, max_len: usize) -> ref_logprobs::RefReport {
    ref_logprobs::run(RefArgs {
        inputs: vec![input.to_path_buf()],
        model: model.to_path_buf(),
        tokenizer: None,
        out: out.to_path_buf(),
        max_len,
        batch_size: 16,
        threads: 1,
        progress: false,
        command: "test".into(),
        precision: zerolm_model::Precision::F32,
    })
    .unwrap()
}

fn dpo(args: &[String]) -> Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_dpo"), args)
}

fn base(s: &Setup, out: &str, steps: usize) -> Vec<String> {
    let mut a: Vec<String> = [
        "--threads",
        "1",
        "--batch-size",
        "4",
        "--max-len",
        "256",
        "--lr",
        "0.001",
        "--no-progress",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend([
        "--max-steps".into(),
        steps.to_string(),
        "--set".into(),
        "log_every=1".into(),
        "--set".into(),
        "eval_batches=4".into(),
    ]);
    for (flag, p) in [
        ("--model", &s.model),
        ("--input", &s.train),
        ("--out", &s.dir.join(out)),
    ] {
        a.extend([flag.to_string(), p.display().to_string()]);
    }
    a
}

fn with(mut a: Vec<String>, extra: &[&str]) -> Vec<String> {
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn first_loss_is_ln2_metrics_have_trl_names_and_caches_are_checked() {
    let s = setup("flow");
    let args = with(
        base(&s, "run", 12),
        &[
            "--ref-cache",
            &path(&s.cache),
            "--eval-input",
            &path(&s.eval),
            "--eval-ref-cache",
            &path(&s.eval_cache),
        ],
    );
    let r = dpo(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = zerolm_io::read_rows(&s.dir.join("run/metrics.jsonl"));
    let first = rows.iter().find(|r| r.contains_key("loss")).unwrap();
    let loss = first["loss"].as_f64().unwrap();
    assert!(
        (loss - 2f64.ln()).abs() < 1e-5,
        "first loss {loss}, expected ln 2"
    );
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "grad_norm",
        "learning_rate",
    ] {
        assert!(first.contains_key(key), "train row lacks {key}: {first:?}");
    }
    let eval = rows.iter().find(|r| r.contains_key("eval_loss")).unwrap();
    for key in [
        "eval_rewards/accuracies",
        "eval_rewards/margins",
        "eval_logps/chosen",
        "eval_logits/rejected",
    ] {
        assert!(eval.contains_key(key), "eval row lacks {key}: {eval:?}");
    }
    assert!(
        first["rewards/chosen"].as_f64().unwrap().abs() < 1e-6,
        "policy = reference at step 1: rewards ≈ 0"
    );
    assert!(s.dir.join("run/model/model.safetensors").is_file());

    // Reference computed at start from --ref-model (no cache): the same first loss.
    let r = dpo(&with(
        base(&s, "onthefly", 2),
        &["--ref-model", &path(&s.model)],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = zerolm_io::read_rows(&s.dir.join("onthefly/metrics.jsonl"));
    assert!((rows[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-5);

    // Refusals: cache from another reference model, from other data, with another --max-len; no reference.
    let other = dpo(&with(
        base(&s, "x1", 2),
        &[
            "--ref-cache",
            &path(&s.cache),
            "--ref-model",
            &path(&s.other_model),
        ],
    ));
    other.assert_user_error("computed with reference model");
    let wrong_data = dpo(&with(
        base(&s, "x2", 2),
        &["--ref-cache", &path(&s.eval_cache)],
    ));
    wrong_data.assert_user_error("other DPO rows");
    let mut short = with(base(&s, "x3", 2), &["--ref-cache", &path(&s.cache)]);
    let at = short.iter().position(|a| a == "--max-len").unwrap() + 1;
    short[at] = "128".into();
    dpo(&short).assert_user_error("--max-len 256, this run uses 128");
    dpo(&base(&s, "x4", 2)).assert_user_error("needs reference log-probs");
    dpo(&with(base(&s, "x5", 2), &["--loss", "dpo"])).assert_user_error("unknown loss `dpo`");
    // Reference-free losses need no cache.
    let simpo = dpo(&with(
        base(&s, "simpo", 2),
        &["--loss", "simpo", "--beta", "2"],
    ));
    assert_eq!(simpo.code, 0, "{}", simpo.stderr);
}

#[test]
fn empty_completions_and_long_prompts_are_counted_skips_and_fewer_pairs_than_a_batch_train() {
    let dir = workdir("dpo", "skips");
    let tok = fixture_tokenizer();
    let model = micro_model(&dir.join("model"), 1);
    let row = |id: &str, p: Vec<u32>, c: Vec<u32>, r: Vec<u32>| TokenRow::Dpo {
        id: id.into(),
        prompt_ids: p,
        chosen_ids: c,
        rejected_ids: r,
    };
    let file = dir.join("pairs.parquet");
    let mut w = TokenWriter::create(&file, Kind::Dpo).unwrap();
    w.write(&[
        row("good", vec![1, 40, 41], vec![50, 2], vec![60, 2]),
        row("empty", vec![1, 40], vec![], vec![60, 2]),
        row(
            "long",
            (0..40).map(|i| 100 + i).collect(),
            vec![50, 2],
            vec![60, 2],
        ),
        row(
            "cut",
            vec![1, 40],
            (0..50).map(|i| 200 + i).collect(),
            vec![60, 2],
        ),
    ])
    .unwrap();
    let mut meta = BTreeMap::new();
    meta.insert(
        zerolm_data::artifact::keys::TOKENIZER_FINGERPRINT.to_string(),
        tok.fingerprint.clone(),
    );
    w.finish(meta).unwrap();
    let report = ref_cache(&model, &file, &dir.join("ref.parquet"), 32);
    assert_eq!(
        (
            report.rows,
            report.skipped_empty,
            report.skipped_long_prompt,
            report.truncated
        ),
        (2, 1, 1, 1)
    );
    let cache = zerolm_data::artifact::read(&dir.join("ref.parquet"), Kind::Dpo).unwrap();
    assert_eq!(cache.rows.len(), 2);
    let logps = &cache.extra["ref_chosen_logps"];
    assert!(logps.iter().all(|v| v.is_finite() && *v < 0.0), "{logps:?}");

    // Two usable pairs and batch 8: one partial batch of 2 per step, said so in the log.
    let out = dir.join("partial");
    let r = dpo(&[
        "--model",
        &path(&model),
        "--input",
        &path(&file),
        "--out",
        &path(&out),
        "--threads",
        "1",
        "--max-len",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "3",
        "--loss",
        "simpo",
        "--no-progress",
    ]
    .map(String::from));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("every step trains on one partial batch of 2"),
        "{}",
        r.stderr
    );
    let steps = zerolm_testkit::train_steps(&out.join("metrics.jsonl"));
    assert_eq!(steps.last(), Some(&3), "one step per epoch: {steps:?}");
    assert!(out.join("model/model.safetensors").is_file());
}

#[test]
fn a_killed_dpo_run_resumes_to_bit_identical_weights() {
    let s = setup("resume");
    let args = |out: &str| {
        with(
            base(&s, out, 200),
            &["--ref-cache", &path(&s.cache), "--save-every", "10"],
        )
    };
    let r = dpo(&args("straight"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let killed = s.dir.join("killed");
    kill_when(
        Command::new(env!("CARGO_BIN_EXE_dpo")).args(args("killed")),
        || has_checkpoint(&killed.join("checkpoints")),
    );
    assert!(
        !killed.join("model").exists(),
        "the run finished before the kill; the test would prove nothing"
    );
    let r = dpo(&args("killed"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    let a = std::fs::read(s.dir.join("straight/model/model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("model/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed DPO weights differ from the uninterrupted run's"
    );
    let mut other = args("killed");
    other.extend(["--beta".into(), "0.2".into()]);
    dpo(&other).assert_user_error("settings differ");
}

#[test]
fn train_only_trains_the_matching_weights_and_leaves_the_rest_bit_identical() {
    let s = setup("train-only");
    let args = |out: &str, pattern: &str| {
        with(
            base(&s, out, 3),
            &["--ref-cache", &path(&s.cache), "--train-only", pattern],
        )
    };
    let r = dpo(&args("norms", "norm"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("train_only `norm`"), "{}", r.stderr);
    let load = |p: PathBuf| {
        zerolm_model::io::load_safetensors(&p.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .0
    };
    let before = load(s.model.clone());
    let after = load(s.dir.join("norms/model"));
    let (mut trained, mut frozen) = (0, 0);
    for (name, t) in &before {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = after[name].flatten_all().unwrap().to_vec1().unwrap();
        if name.contains("norm") {
            assert!(a != b, "{name} should have been trained");
            trained += 1;
        } else {
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} is frozen but changed"
            );
            frozen += 1;
        }
    }
    assert!(
        trained >= 3 && frozen >= 10,
        "{trained} trained, {frozen} frozen"
    );
    // The setting is recorded, so a resume with another pattern is refused as a different run.
    let resolved = std::fs::read_to_string(s.dir.join("norms/resolved_config.json")).unwrap();
    assert!(resolved.contains("\"train_only\": \"norm\""), "{resolved}");

    dpo(&args("none", "no_such_weight"))
        .assert_user_error("matches none of the model's parameters");
    dpo(&args("bad", "norm(")).assert_user_error("is not a valid regex");
    assert!(!s.dir.join("bad/model").exists() && !s.dir.join("none/model").exists());
}

#[test]
fn trl_options_that_cannot_work_are_refused_with_the_reason() {
    let s = setup("options");
    let cached = |out: &str, extra: &[&str]| {
        let a = with(base(&s, out, 1), &["--ref-cache", &path(&s.cache)]);
        dpo(&with(a, extra))
    };
    cached("o1", &["--sync-ref-model"]).assert_user_error("TR-DPO) is not supported");
    cached(
        "o2",
        &["--loss", "nca_pair", "--f-divergence-type", "js_divergence"],
    )
    .assert_user_error("partition term of f-DPO does not cancel");
    cached("o3", &["--f-divergence-type", "kl"]).assert_user_error("unknown value `kl`");
    cached("o4", &["--loss", "aot", "--use-weighting"]).assert_user_error("they sort the batch");
    cached("o5", &["--ld-alpha", "1.5"]).assert_user_error("--ld-alpha must be in [0, 1]");
    cached("o6", &["--label-smoothing", "0.1"])
        .assert_user_error("robust, exo_pair, aot and aot_unpaired only");
    // a cache written before the tail columns existed serves every run but an LD-DPO one
    let old = s.dir.join("ref_v1.parquet");
    let cache = zerolm_data::artifact::read(&s.cache, Kind::Dpo).unwrap();
    let columns = ["ref_chosen_logps", "ref_rejected_logps"];
    let mut w = TokenWriter::create_with_extra(&old, Kind::Dpo, &columns).unwrap();
    w.write_with_extra(
        &cache.rows,
        &[&cache.extra[columns[0]], &cache.extra[columns[1]]],
    )
    .unwrap();
    let mut meta = cache.metadata.clone();
    meta.retain(|k, _| k.starts_with("zerolm.") && k != "zerolm.ref_cache_format");
    w.finish(meta).unwrap();
    let with_old = |out: &str, extra: &[&str]| {
        let a = with(base(&s, out, 1), &["--ref-cache", &path(&old)]);
        dpo(&with(a, extra))
    };
    with_old("v1a", &["--ld-alpha", "0.5"]).assert_user_error("made by an older `ref-logprobs`");
    with_old("v1b", &[]).assert_ok();
    // what is allowed runs: aot with label smoothing, f-divergence with the sft mix, WPO + LD-DPO
    for (out, extra) in [
        ("ok1", vec!["--loss", "aot", "--label-smoothing", "0.1"]),
        (
            "ok2",
            vec![
                "--loss",
                "sigmoid:1,sft:0.5",
                "--f-divergence-type",
                "alpha_divergence",
            ],
        ),
        ("ok3", vec!["--use-weighting", "--ld-alpha", "0.5"]),
    ] {
        let r = cached(out, &extra);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
        let rows = zerolm_io::read_rows(&s.dir.join(out).join("metrics.jsonl"));
        assert!((rows[0]["loss"].as_f64().unwrap()).is_finite());
    }
}

#[test]
fn completions_that_end_another_way_than_the_model_learned_are_refused() {
    let s = setup("completion-end");
    // token files made with --completion-end eos, mixed with the default (template) ones
    let eos = zerolm_testkit::token_file_with(
        Kind::Dpo,
        &[repo().join("data/dpo_eval.jsonl")],
        &s.dir.join("eos.parquet"),
        |cfg| cfg.completion_end = zerolm_data::chat::CompletionEnd::Eos,
    );
    let mixed = with(
        base(&s, "m1", 1),
        &["--ref-model", &path(&s.model), "--eval-input", &path(&eos)],
    );
    dpo(&mixed).assert_user_error("--completion-end eos but");
    // a model trained (by sft/dpo) on template-ended completions refuses eos-ended data
    let trained = dpo(&with(base(&s, "m2", 1), &["--ref-cache", &path(&s.cache)]));
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    let model = s.dir.join("m2/model");
    let recorded = std::fs::read_to_string(model.join("zerolm.json")).unwrap();
    assert!(
        recorded.contains("\"completion_end\": \"template\""),
        "{recorded}"
    );
    let mut on_eos = base(&s, "m3", 1);
    let at = on_eos.iter().position(|a| a == "--model").unwrap() + 1;
    on_eos[at] = path(&model);
    let at = on_eos.iter().position(|a| a == "--input").unwrap() + 1;
    on_eos[at] = path(&eos);
    dpo(&with(on_eos, &["--ref-model", &path(&model)]))
        .assert_user_error("trained on completions tokenized with --completion-end template");
}
