//! Replaying `tests/fixtures/trl/expected.json` (written by `tests/reference/trl_reference.py` with the
//! real TRL): the fixture model, the runs' shared optimiser settings, and the comparison of a zerolm
//! run's `metrics.jsonl` with TRL's per-step log.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The relative tolerance of every compared value.
pub const TOL: f64 = 1e-5;

/// `tests/fixtures/trl/`.
pub fn dir() -> PathBuf {
    crate::fixtures().join("trl")
}

/// The fixture model both TRL and zerolm start from (its reference model too).
pub fn model() -> PathBuf {
    dir().join("model")
}

/// TRL's token ids and per-step logs.
pub fn expected() -> Value {
    let path = dir().join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The settings every replayed run shares with TRL's: `steps` steps over all rows in one batch, a
/// constant learning rate, AdamW (0.9, 0.999, 1e-8) without weight decay, clipping at 1, every step logged.
pub fn training_flags(expected: &Value) -> Vec<String> {
    let get = |k: &str| expected[k].to_string();
    let mut flags: Vec<String> = [
        "--max-steps",
        &get("steps"),
        "--batch-size",
        &get("batch"),
        "--lr",
        &get("lr"),
        "--threads",
        "2",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for set in [
        "warmup_steps=0",
        "min_lr_ratio=1",
        "weight_decay=0",
        "beta1=0.9",
        "beta2=0.999",
        "eps=1e-8",
        "grad_clip=1",
        "log_every=1",
        "save_every=1000",
        "eval_every=0",
    ] {
        flags.push("--set".into());
        flags.push(set.into());
    }
    flags
}

/// The rows of a zerolm token file of `kind` as TRL's fixture writes them (lists of ids per column).
pub fn token_rows(path: &Path, kind: zerolm_data::formats::Kind) -> Vec<Value> {
    use zerolm_data::artifact::{self, TokenRow};
    let file = artifact::read(path, kind).unwrap();
    file.rows
        .iter()
        .map(|row| match row {
            TokenRow::Dpo {
                prompt_ids,
                chosen_ids,
                rejected_ids,
                ..
            } => serde_json::json!({
                "prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids
            }),
            TokenRow::Sft {
                input_ids,
                loss_mask,
            } => serde_json::json!({"input_ids": input_ids, "loss_mask": loss_mask}),
            TokenRow::Doc(ids) => serde_json::json!({ "input_ids": ids }),
        })
        .collect()
}

/// The tolerance of `grad_norm`: along a 10-step curve the f32 rounding differences of two
/// implementations compound in the gradient, most for the losses whose slope is steep (measured worst:
/// discopop, τ = 0.05, 3.3e-5 at step 9, while its loss stays within 3e-7).
pub const GRAD_NORM_TOL: f64 = 1e-4;

/// Rewards are β times the difference of two summed completion log-probs (policy and reference) that
/// f32 holds to about 1e-7 of their size; a reward's difference is measured against the larger of its
/// own size and this fraction of β·|summed log-probs|.
pub const REWARD_FLOOR: f64 = 0.1;

/// zerolm's name for a key of TRL's log.
fn ours(key: &str) -> &str {
    match key {
        "num_tokens" => "tokens",
        k => k,
    }
}

/// What a metric's difference is divided by: its own size, or for a reward see [`REWARD_FLOOR`].
fn scale(key: &str, want: f64, step: &Value, beta: f64) -> f64 {
    let logps = |k: &str| step[k].as_f64().unwrap_or(0.0).abs();
    let floor = match key {
        "rewards/chosen" => logps("logps/chosen"),
        "rewards/rejected" => logps("logps/rejected"),
        "rewards/margins" => logps("logps/chosen").max(logps("logps/rejected")),
        _ => 0.0,
    } * beta
        * REWARD_FLOOR;
    want.abs().max(floor).max(1e-12)
}

/// The worst relative difference of one metric over a run, and at which step.
struct Worst {
    key: String,
    rel: f64,
    step: usize,
}

/// Compares `got` (zerolm's train rows) with TRL's `steps`, metric by metric, and panics (with the
/// table of worst differences) when one exceeds its tolerance; returns the worst difference of all.
pub fn compare(
    run: &str,
    got: &[serde_json::Map<String, Value>],
    steps: &[Value],
    beta: f64,
) -> f64 {
    assert_eq!(got.len(), steps.len(), "{run}: steps logged");
    let mut worst: Vec<Worst> = Vec::new();
    for (k, (row, want)) in got.iter().zip(steps).enumerate() {
        for (key, w) in want.as_object().unwrap() {
            let w = w.as_f64().unwrap();
            let g = row
                .get(ours(key))
                .and_then(Value::as_f64)
                .unwrap_or_else(|| panic!("{run}: step {} has no `{}`: {row:?}", k + 1, ours(key)));
            let rel = (g - w).abs() / scale(key, w, want, beta);
            match worst.iter_mut().find(|e| e.key == *key) {
                Some(e) if rel > e.rel => (e.rel, e.step) = (rel, k + 1),
                Some(_) => {}
                None => worst.push(Worst {
                    key: key.clone(),
                    rel,
                    step: k + 1,
                }),
            }
        }
    }
    let table: Vec<String> = worst
        .iter()
        .map(|e| format!("{} {:.1e} (step {})", e.key, e.rel, e.step))
        .collect();
    eprintln!("{run}: worst relative differences: {}", table.join(", "));
    for e in &worst {
        let tol = if e.key == "grad_norm" {
            GRAD_NORM_TOL
        } else {
            TOL
        };
        assert!(
            e.rel <= tol,
            "{run}: {} beyond {tol}: {}",
            e.key,
            table.join(", ")
        );
    }
    worst.iter().map(|e| e.rel).fold(0.0, f64::max)
}

/// The train rows (those with a `loss`) of a run's `metrics.jsonl`.
pub fn train_rows(out: &Path) -> Vec<serde_json::Map<String, Value>> {
    let rows = zerolm_io::read_rows(&out.join("metrics.jsonl"));
    rows.into_iter()
        .filter(|r| r.contains_key("loss"))
        .collect()
}
