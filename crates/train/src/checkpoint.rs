//! Checkpoints: `checkpoints/step-NNNNNNNN/{model,optimizer}.safetensors + trainer_state.json`, written
//! into a temp directory and renamed into place, so a kill at any moment leaves either the previous
//! checkpoint or the new one, never a half one. Older checkpoints beyond `keep` are removed after a new
//! one lands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use zerolm_model::io::{load_safetensors, safetensors_bytes};

use crate::TrainError;

/// Bumped when the checkpoint layout changes meaning.
pub const CHECKPOINT_VERSION: u32 = 1;

/// A file a run depends on, by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFingerprint {
    /// `train` or `eval` (or a stage-specific role such as `model`).
    pub role: String,
    pub path: String,
    pub blake3: String,
}

/// Where the data order stands: the shuffle of epoch `epoch` is a pure function of `seed` and `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    /// Micro-batches consumed since the start of training.
    pub micro_batches: usize,
    pub epoch: usize,
    /// Micro-batches consumed within `epoch`.
    pub batch_in_epoch: usize,
    pub shuffle_seed: u64,
}

/// `trainer_state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub checkpoint_version: u32,
    pub stage: String,
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub cursor: DataCursor,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
    pub threads: usize,
    /// Ranks that trained it (data-parallel runs); 1 for checkpoints from before ranks existed.
    #[serde(default = "one_rank")]
    pub ranks: usize,
    pub tokenizer_fingerprint: String,
    pub inputs: Vec<InputFingerprint>,
    /// The resolved training settings.
    pub config: serde_json::Value,
}

fn one_rank() -> usize {
    1
}

pub fn checkpoint_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Writes a checkpoint atomically and prunes older ones beyond `keep`.
pub fn save(
    root: &Path,
    state: &TrainerState,
    model: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let mut meta = BTreeMap::new();
    meta.insert("zerolm.stage".to_string(), state.stage.clone());
    meta.insert("zerolm.step".to_string(), state.step.to_string());
    let model_bytes = safetensors_bytes(model, &meta)?;
    meta.insert("zerolm.optimizer".to_string(), "adamw".to_string());
    let opt_bytes = safetensors_bytes(optimizer, &meta)?;
    let state_bytes = serde_json::to_vec_pretty(state).expect("state serialises");
    let dir = step_dir(root, state.step);
    zerolm_io::write_files_atomically(
        &dir,
        &[
            ("model.safetensors", &model_bytes),
            ("optimizer.safetensors", &opt_bytes),
            ("trainer_state.json", &state_bytes),
        ],
    )?;
    let all = list(root)?;
    for (_, old) in all.iter().rev().skip(keep) {
        std::fs::remove_dir_all(old).map_err(|cause| TrainError::Write {
            path: old.clone(),
            cause,
        })?;
    }
    Ok(dir)
}

/// Complete checkpoints under `root`, oldest first. Temp directories of interrupted writes are skipped
/// (and removed).
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>, TrainError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".tmp") || name.ends_with(".old") {
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if path.join("trainer_state.json").is_file() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    pub model: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
}

pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint, TrainError> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", state_path.display())))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", state_path.display())))?;
    if state.checkpoint_version != CHECKPOINT_VERSION {
        return Err(TrainError::Resume(format!(
            "{}: checkpoint version {}, this build writes {CHECKPOINT_VERSION}; start over with --no-resume",
            state_path.display(),
            state.checkpoint_version
        )));
    }
    let (model, _) = load_safetensors(&dir.join("model.safetensors"), device)?;
    let (optimizer, _) = load_safetensors(&dir.join("optimizer.safetensors"), device)?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        model,
        optimizer,
    })
}

/// Explains how `saved` differs from `now` (the run's identity), or `None` when the run may resume.
/// Keys in `allowed` may differ.
pub fn config_difference(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    allowed: &[&str],
) -> Option<String> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else {
        return (saved != now).then(|| "the settings differ".to_string());
    };
    let mut diffs = Vec::new();
    for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        let (x, y) = (a.get(key), b.get(key));
        if x == y {
            continue;
        }
        match (x, y) {
            (Some(x @ serde_json::Value::Object(_)), Some(y @ serde_json::Value::Object(_))) => {
                if let Some(d) = config_difference(x, y, &[]) {
                    diffs.push(format!("{key}.{{{d}}}"));
                }
            }
            _ => diffs.push(format!(
                "{key}: checkpoint {} vs now {}",
                x.map_or("(unset)".into(), |v| v.to_string()),
                y.map_or("(unset)".into(), |v| v.to_string())
            )),
        }
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_difference_names_the_key() {
        let a = serde_json::json!({"lr": 1.0, "save_every": 5, "model": {"hidden_size": 8}});
        let b = serde_json::json!({"lr": 2.0, "save_every": 9, "model": {"hidden_size": 16}});
        let d = config_difference(&a, &b, &["save_every"]).unwrap();
        assert!(d.contains("lr: checkpoint 1.0 vs now 2.0"), "{d}");
        assert!(d.contains("hidden_size"), "{d}");
        assert!(!d.contains("save_every"));
        assert!(config_difference(&a, &a, &[]).is_none());
    }
}
