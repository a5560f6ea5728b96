//! zerolm's DPO against the real TRL 1.16 `DPOTrainer` (fixtures by `tests/reference/trl_reference.py`):
//! `tokenize dpo` gives exactly TRL's token ids for a conversational and a standard (string) dataset,
//! and `tokenize dpo` + `ref-logprobs` + `dpo` reproduce TRL's per-step log — the loss and every metric
//! TRL logs — for every loss type and option, within `zerolm_testkit::trl::TOL` relative. The worst
//! differences are printed (run with `--nocapture`).

use std::path::{Path, PathBuf};

use zerolm_testkit::{run, trl, workdir};

fn bin(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// The token file and reference cache of one of the fixture datasets, made as a user would.
fn prepare(bins: &Path, work: &Path, dataset: &str) -> (PathBuf, PathBuf) {
    let tokens = work.join(format!("{dataset}.parquet"));
    let input = trl::dir().join(format!("dpo_{dataset}.jsonl"));
    let model = trl::model();
    let mut args = vec![
        "dpo".to_string(),
        "--tokenizer".into(),
        model.display().to_string(),
        "--input".into(),
        input.display().to_string(),
        "--out".into(),
        tokens.display().to_string(),
    ];
    if dataset == "standard" {
        args.extend(["--template".into(), "raw".into()]);
    }
    run(&bin(bins, "tokenize"), &args).assert_ok();
    let cache = work.join(format!("{dataset}.ref.parquet"));
    run(
        &bin(bins, "ref-logprobs"),
        &[
            "--model",
            &model.display().to_string(),
            "--input",
            &tokens.display().to_string(),
            "--out",
            &cache.display().to_string(),
            "--threads",
            "2",
        ],
    )
    .assert_ok();
    (tokens, cache)
}

fn bins() -> PathBuf {
    zerolm_testkit::binaries(
        env!("CARGO_BIN_EXE_dpo"),
        &["tokenize", "ref-logprobs", "dpo"],
    )
}

#[test]
fn tokenize_dpo_gives_trls_token_ids_for_conversational_and_standard_data() {
    let expected = trl::expected();
    let (bins, work) = (bins(), workdir("trl", "tokens"));
    for dataset in ["conversational", "standard"] {
        let (tokens, _) = prepare(&bins, &work, dataset);
        let got = trl::token_rows(&tokens, zerolm_data::formats::Kind::Dpo);
        let want = expected["tokens"][dataset].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{dataset}: rows");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "{dataset}: row {i} differs from TRL's tokenization");
        }
    }
}

#[test]
fn every_loss_and_option_follows_trls_curve() {
    let expected = trl::expected();
    let (bins, work) = (bins(), workdir("trl", "runs"));
    let prepared: Vec<(&str, (PathBuf, PathBuf))> = ["conversational", "standard"]
        .into_iter()
        .map(|d| (d, prepare(&bins, &work, d)))
        .collect();
    let mut worst = Vec::new();
    for (name, case) in expected["dpo"].as_object().unwrap() {
        let dataset = case["dataset"].as_str().unwrap();
        let (tokens, cache) = &prepared.iter().find(|(d, _)| *d == dataset).unwrap().1;
        let out = work.join(name.replace('+', "_"));
        let mut args: Vec<String> = vec![
            "--model".into(),
            trl::model().display().to_string(),
            "--input".into(),
            tokens.display().to_string(),
            "--ref-cache".into(),
            cache.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(trl::training_flags(&expected));
        let flags = case["flags"].as_array().unwrap();
        args.extend(flags.iter().map(|f| f.as_str().unwrap().to_string()));
        run(&bin(&bins, "dpo"), &args).assert_ok();
        let steps = case["steps"].as_array().unwrap();
        worst.push((
            name.clone(),
            trl::compare(name, &trl::train_rows(&out), steps, 0.1),
        ));
    }
    let table: Vec<String> = worst.iter().map(|(n, w)| format!("{n} {w:.1e}")).collect();
    eprintln!("worst relative difference per run: {}", table.join(", "));
}
