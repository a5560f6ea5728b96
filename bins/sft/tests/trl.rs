//! zerolm's SFT against the real TRL 1.16 `SFTTrainer` with assistant-only loss (fixtures by
//! `tests/reference/trl_reference.py`): `tokenize sft` gives exactly TRL's token ids and loss masks for
//! conversational data (single and multi-turn, with a system message), and `sft` reproduces TRL's
//! per-step loss and gradient norm within `zerolm_testkit::trl::TOL` relative (printed with `--nocapture`).

use zerolm_testkit::{run, trl, workdir};

#[test]
fn tokenize_sft_and_sft_follow_trls_assistant_only_training() {
    let expected = trl::expected();
    let bins = zerolm_testkit::binaries(env!("CARGO_BIN_EXE_sft"), &["tokenize", "sft"]);
    let work = workdir("trl", "sft");
    let tokens = work.join("sft.parquet");
    let model = trl::model().display().to_string();
    let input = trl::dir().join("sft_messages.jsonl");
    run(
        &bins.join("tokenize").display().to_string(),
        &[
            "sft",
            "--tokenizer",
            &model,
            "--input",
            &input.display().to_string(),
            "--out",
            &tokens.display().to_string(),
        ],
    )
    .assert_ok();
    let got = trl::token_rows(&tokens, zerolm_data::formats::Kind::Sft);
    let want = expected["tokens"]["sft"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "row {i}: ids or loss mask differ from TRL's");
    }

    let out = work.join("run");
    let mut args = vec![
        "--model".to_string(),
        model,
        "--input".into(),
        tokens.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(trl::training_flags(&expected));
    run(env!("CARGO_BIN_EXE_sft"), &args).assert_ok();
    // SFTTrainer also logs its entropy, token accuracy and token count; zerolm's SFT logs the loss and
    // the gradient norm, which are compared.
    let steps: Vec<serde_json::Value> = expected["sft"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let keep = ["loss", "grad_norm", "learning_rate"];
            let m: serde_json::Map<String, serde_json::Value> = s
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            serde_json::Value::Object(m)
        })
        .collect();
    trl::compare("sft", &trl::train_rows(&out), &steps, 0.0);
}
