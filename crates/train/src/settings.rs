//! Training settings and how they are layered: defaults ← `--preset` ← `--config FILE.yaml` ← flags ←
//! `--set key=value`. Every override is checked against the defaults: an unknown key is an error that
//! names the nearest known keys, and a value must parse as the type of the value it replaces.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zerolm_model::{ModelConfig, Precision};

use crate::TrainError;

/// Everything a training run depends on. Serialised into `resolved_config.json` and checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The preset the model shape came from (informational once `model` is resolved).
    pub preset: String,
    pub model: ModelConfig,
    pub seed: u64,
    /// Tokens per training row (`--max-len`).
    pub seq_len: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub epochs: usize,
    /// Optimizer steps to run; 0 = as many as `epochs` take.
    pub max_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// The cosine decay ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    /// Decoupled weight decay, applied to matrices (embeddings, projections, head) but not to the 1-D
    /// RMSNorm weights.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip; 0 = off.
    pub grad_clip: f64,
    /// Checkpoint every N optimizer steps (and always at the end); 0 = only at the end.
    pub save_every: usize,
    /// Checkpoints kept on disk (the newest ones).
    pub keep_checkpoints: usize,
    /// Eval every N optimizer steps (and always at the end); 0 = only at the end.
    pub eval_every: usize,
    /// Eval batches per evaluation; 0 = the whole eval split.
    pub eval_batches: usize,
    /// Log a metrics row every N steps.
    pub log_every: usize,
    /// Train only the parameters whose Hugging Face name this regex matches (searched, e.g. `norm`,
    /// or `^model\.norm\.weight$`); the rest stay frozen and get no optimizer state. `null`: all.
    #[serde(default)]
    pub train_only: Option<String>,
    /// Precision of the matrix products: `f32`, or `bf16` mixed precision (bf16 operands, f32 sums;
    /// weights, gradients, optimizer state, softmax, norms and the loss in f32), as PyTorch's autocast.
    #[serde(default)]
    pub precision: Precision,
}

/// Settings that may change between a run and its resume without changing the result.
pub const RESUMABLE_KEYS: &[&str] = &["save_every", "keep_checkpoints", "log_every"];

impl TrainConfig {
    /// Defaults for a pretraining run with the given model preset.
    pub fn pretrain_defaults(preset: &str) -> Result<TrainConfig, TrainError> {
        let model = ModelConfig::preset(preset).map_err(|e| TrainError::Config(e.to_string()))?;
        Ok(TrainConfig {
            preset: preset.to_string(),
            model,
            seed: 42,
            seq_len: 256,
            batch_size: 16,
            grad_accum: 1,
            epochs: 1,
            max_steps: 0,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 20,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            save_every: 100,
            keep_checkpoints: 2,
            eval_every: 100,
            eval_batches: 0,
            log_every: 10,
            train_only: None,
            precision: Precision::F32,
        })
    }

    /// Checks values a run cannot start with; the message names the key.
    // `!(x > 0.0)` is meant: unlike `x <= 0.0` it also rejects NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.seq_len < 2 {
            return bad("seq_len must be at least 2");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1");
        }
        if self.epochs == 0 && self.max_steps == 0 {
            return bad("set epochs or max_steps to at least 1");
        }
        if !(self.lr > 0.0) || !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("lr must be positive and min_lr_ratio in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
            || !(self.eps > 0.0)
        {
            return bad("beta1 and beta2 must be in [0, 1) and eps positive");
        }
        if self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            return bad("weight_decay and grad_clip must be non-negative");
        }
        if let Some(p) = &self.train_only {
            crate::params::compile_train_only(p)?;
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints must be at least 1 (resume needs one)");
        }
        if self.seq_len > self.model.max_position_embeddings {
            return Err(TrainError::Config(format!(
                "seq_len {} exceeds model.max_position_embeddings {}",
                self.seq_len, self.model.max_position_embeddings
            )));
        }
        self.model
            .validate()
            .map_err(|e| TrainError::Config(e.to_string()))
    }
}

/// Where a run's settings come from, each layer over the one before: the stage's defaults for the
/// preset, the `--config` YAML file, the dedicated flags, then `--set key=value` overrides.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// `--preset` (wins over the YAML's `preset:`).
    pub preset: Option<String>,
    pub config_file: Option<PathBuf>,
    pub flags: Overrides,
    pub sets: Vec<String>,
}

/// The settings that have a flag of their own (`--lr`, `--max-len`, …), typed.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub seed: Option<u64>,
    pub seq_len: Option<usize>,
    pub max_steps: Option<usize>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub lr: Option<f64>,
    pub save_every: Option<usize>,
    pub eval_every: Option<usize>,
    pub train_only: Option<String>,
    pub precision: Option<Precision>,
}

impl Overrides {
    fn apply(&self, cfg: &mut TrainConfig) {
        let set = |slot: &mut usize, v: Option<usize>| *slot = v.unwrap_or(*slot);
        cfg.seed = self.seed.unwrap_or(cfg.seed);
        set(&mut cfg.seq_len, self.seq_len);
        set(&mut cfg.max_steps, self.max_steps);
        set(&mut cfg.epochs, self.epochs);
        set(&mut cfg.batch_size, self.batch_size);
        set(&mut cfg.grad_accum, self.grad_accum);
        cfg.lr = self.lr.unwrap_or(cfg.lr);
        set(&mut cfg.save_every, self.save_every);
        set(&mut cfg.eval_every, self.eval_every);
        if let Some(p) = &self.train_only {
            cfg.train_only = Some(p.clone());
        }
        cfg.precision = self.precision.unwrap_or(cfg.precision);
    }
}

impl Layers {
    /// The resolved settings, and whether the user set `model.vocab_size` explicitly. `defaults` gives a
    /// stage's defaults for the preset (the flag's, else the YAML's `preset:`, else none).
    pub fn resolve(
        &self,
        defaults: impl Fn(Option<&str>) -> Result<TrainConfig, TrainError>,
    ) -> Result<(TrainConfig, bool), TrainError> {
        let yaml = self.read_config_file()?;
        let yaml_value: Value = match &yaml {
            None => Value::Null,
            Some((text, source)) => serde_yaml::from_str(text)
                .map_err(|e| TrainError::Config(format!("{source}: not valid YAML: {e}")))?,
        };
        let preset = self.preset.clone().or_else(|| {
            let named = yaml_value.get("preset").and_then(Value::as_str);
            named.map(str::to_string)
        });
        let mut cfg = defaults(preset.as_deref())?;
        if let Some((text, source)) = &yaml {
            let label = cfg.preset.clone();
            cfg = apply_yaml(&cfg, text, source)?;
            cfg.preset = label; // the preset that shaped the model, even when --preset overrode the YAML's
        }
        self.flags.apply(&mut cfg);
        let cfg = apply_sets(&cfg, &self.sets)?;
        let in_sets = (self.sets.iter()).any(|s| s.trim_start().starts_with("model.vocab_size"));
        let in_yaml = yaml_value
            .get("model")
            .and_then(|m| m.get("vocab_size"))
            .is_some();
        Ok((cfg, in_sets || in_yaml))
    }

    /// The `--config` file's text and its name, if one is given.
    fn read_config_file(&self) -> Result<Option<(String, String)>, TrainError> {
        let Some(p) = &self.config_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| TrainError::Config(format!("{}: {e}", p.display())))?;
        Ok(Some((text, p.display().to_string())))
    }
}

/// Applies a YAML document (a mapping of keys, nested for `model`) on top of `base`.
pub fn apply_yaml<T: Serialize + for<'de> Deserialize<'de>>(
    base: &T,
    yaml: &str,
    source: &str,
) -> Result<T, TrainError> {
    let overrides: Value = serde_yaml::from_str(yaml)
        .map_err(|e| TrainError::Config(format!("{source}: not valid YAML: {e}")))?;
    let mut value = serde_json::to_value(base).expect("settings serialise");
    merge(&mut value, &overrides, "", source)?;
    serde_json::from_value(value).map_err(|e| TrainError::Config(format!("{source}: {e}")))
}

fn merge(into: &mut Value, from: &Value, prefix: &str, source: &str) -> Result<(), TrainError> {
    let Some(map) = from.as_object() else {
        if from.is_null() && prefix.is_empty() {
            return Ok(()); // an empty YAML file
        }
        return Err(TrainError::Config(format!(
            "{source}: expected a mapping of settings at `{prefix}`"
        )));
    };
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let slot =
            lookup(into, prefix, k).map_err(|e| TrainError::Config(format!("{source}: {e}")))?;
        if slot.is_object() {
            merge(slot, v, &key, source)?;
        } else {
            *slot =
                typed(slot, v, &key).map_err(|e| TrainError::Config(format!("{source}: {e}")))?;
        }
    }
    Ok(())
}

/// Applies `key=value` overrides (dotted keys reach into `model`).
pub fn apply_sets<T: Serialize + for<'de> Deserialize<'de>>(
    base: &T,
    sets: &[String],
) -> Result<T, TrainError> {
    let mut value = serde_json::to_value(base).expect("settings serialise");
    for set in sets {
        let (key, raw) = set
            .split_once('=')
            .ok_or_else(|| TrainError::Config(format!("--set {set}: expected key=value")))?;
        let key = key.trim();
        if key == "preset" {
            return Err(TrainError::Config(format!(
                "--set {set}: choose the preset with --preset (it shapes the model)"
            )));
        }
        let slot = lookup(&mut value, "", key)
            .map_err(|e| TrainError::Config(format!("--set {set}: {e}")))?;
        let parsed: Value =
            serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        *slot = typed(slot, &parsed, key)
            .map_err(|e| TrainError::Config(format!("--set {set}: {e}")))?;
        // Optional fields (null by default) are only type-checked by deserialising: do it per setting so
        // the error names the one that failed.
        serde_json::from_value::<T>(value.clone())
            .map_err(|e| TrainError::Config(format!("--set {set}: {e}")))?;
    }
    serde_json::from_value(value).map_err(|e| TrainError::Config(format!("--set: {e}")))
}

/// The value at dotted `key` under `root` (which itself sits at `prefix`, for messages).
fn lookup<'a>(root: &'a mut Value, prefix: &str, key: &str) -> Result<&'a mut Value, String> {
    let mut cur = root;
    let mut path = prefix.to_string();
    for part in key.split('.') {
        let known: Vec<String> = cur
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let here = path.clone();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(part);
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| format!("`{here}` has no sub-keys"))?;
        if !obj.contains_key(part) {
            let mut near: Vec<&String> = known.iter().filter(|k| similar(k, part)).collect();
            if near.is_empty() {
                near = known.iter().collect();
            }
            let near: Vec<String> = near
                .iter()
                .map(|k| {
                    if here.is_empty() {
                        k.to_string()
                    } else {
                        format!("{here}.{k}")
                    }
                })
                .collect();
            return Err(format!(
                "unknown setting `{path}`; known: {}",
                near.join(", ")
            ));
        }
        cur = obj.get_mut(part).expect("checked");
    }
    Ok(cur)
}

fn similar(a: &str, b: &str) -> bool {
    a.contains(b) || b.contains(a) || a.split('_').any(|w| w.len() > 2 && b.contains(w))
}

/// `new` converted to the type of `old`, or an error naming the key and both types.
fn typed(old: &Value, new: &Value, key: &str) -> Result<Value, String> {
    let want = match old {
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "a non-negative integer",
        Value::Number(n) if n.is_i64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Null => return Ok(new.clone()), // optional field: the deserialiser checks it
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    };
    let ok = match (old, new) {
        (Value::Bool(_), Value::Bool(_)) => true,
        (Value::Number(o), Value::Number(n)) if o.is_u64() => n.is_u64(),
        (Value::Number(o), Value::Number(n)) if o.is_i64() => n.is_i64(),
        (Value::Number(_), Value::Number(_)) => true,
        (Value::String(_), Value::String(_)) => true,
        (Value::String(_), Value::Number(_) | Value::Bool(_)) => {
            return Ok(Value::String(new.to_string()))
        }
        (Value::Array(_), Value::Array(_)) => true,
        _ => false,
    };
    if ok {
        Ok(new.clone())
    } else {
        Err(format!("`{key}` must be {want}, got {new}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layered(
        preset: Option<&str>,
        yaml: Option<&std::path::Path>,
        flags: Overrides,
        sets: &[&str],
    ) -> Layers {
        Layers {
            preset: preset.map(str::to_string),
            config_file: yaml.map(|p| p.to_path_buf()),
            flags,
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn pretrain(preset: Option<&str>) -> Result<TrainConfig, TrainError> {
        TrainConfig::pretrain_defaults(preset.unwrap_or("tiny"))
    }

    #[test]
    fn yaml_preset_then_flags_then_sets() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("c.yaml");
        std::fs::write(&yaml, "preset: micro\nlr: 0.01\nbatch_size: 3\nmodel:\n  num_hidden_layers: 1\n  vocab_size: 7000\n").unwrap();
        let batch5 = Overrides {
            batch_size: Some(5),
            ..Default::default()
        };
        let (c, explicit) = layered(None, Some(&yaml), batch5, &["batch_size=6"])
            .resolve(pretrain)
            .unwrap();
        assert_eq!(c.preset, "micro");
        assert_eq!(
            c.model.hidden_size, 32,
            "the YAML's preset shapes the model"
        );
        assert_eq!(c.model.num_hidden_layers, 1);
        assert_eq!(c.lr, 0.01);
        assert_eq!(
            c.batch_size, 6,
            "--set wins over the flag, the flag over the YAML"
        );
        assert!(explicit, "vocab_size given in the YAML");
        let lr = Overrides {
            lr: Some(0.5),
            ..Default::default()
        };
        let (c, explicit) = layered(Some("tiny"), None, lr, &[])
            .resolve(pretrain)
            .unwrap();
        assert_eq!((c.model.hidden_size, c.lr, explicit), (128, 0.5, false));
        let (c, _) = layered(Some("tiny"), Some(&yaml), Overrides::default(), &[])
            .resolve(pretrain)
            .unwrap();
        assert_eq!(
            (c.preset.as_str(), c.model.hidden_size),
            ("tiny", 128),
            "--preset wins and is what is recorded"
        );
        let missing = std::path::Path::new("/no/such.yaml");
        let e = layered(None, Some(missing), Overrides::default(), &[])
            .resolve(pretrain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such.yaml"), "{e}");
    }

    #[test]
    fn every_flag_lands_in_its_setting() {
        let flags = Overrides {
            seed: Some(7),
            seq_len: Some(33),
            max_steps: Some(9),
            epochs: Some(4),
            batch_size: Some(3),
            grad_accum: Some(2),
            lr: Some(0.25),
            save_every: Some(5),
            eval_every: Some(6),
            train_only: Some("norm".into()),
            precision: Some(Precision::Bf16),
        };
        let (c, _) = layered(None, None, flags, &[]).resolve(pretrain).unwrap();
        assert_eq!(
            (
                c.seed,
                c.seq_len,
                c.max_steps,
                c.epochs,
                c.batch_size,
                c.grad_accum
            ),
            (7, 33, 9, 4, 3, 2)
        );
        assert_eq!((c.lr, c.save_every, c.eval_every), (0.25, 5, 6));
        assert_eq!(c.train_only.as_deref(), Some("norm"));
        assert_eq!(c.precision, Precision::Bf16);
    }

    #[test]
    fn precision_is_set_by_name_and_an_unknown_one_is_refused() {
        let base = TrainConfig::pretrain_defaults("tiny").unwrap();
        assert_eq!(base.precision, Precision::F32);
        let c = apply_sets(&base, &["precision=bf16".into()]).unwrap();
        assert_eq!(c.precision, Precision::Bf16);
        let e = apply_sets(&base, &["precision=fp16".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("precision=fp16") && e.contains("bf16"), "{e}");
        // A config saved before the setting existed reads as f32.
        let mut old = serde_json::to_value(&base).unwrap();
        old.as_object_mut().unwrap().remove("precision");
        let back: TrainConfig = serde_json::from_value(old).unwrap();
        assert_eq!(back.precision, Precision::F32);
    }

    #[test]
    fn sets_are_typed_and_reach_into_the_model() {
        let base = TrainConfig::pretrain_defaults("tiny").unwrap();
        let c = apply_sets(
            &base,
            &[
                "lr=3e-4".into(),
                "model.num_hidden_layers=2".into(),
                "seed=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.lr, 3e-4);
        assert_eq!(c.model.num_hidden_layers, 2);
        assert_eq!(c.seed, 7);
        let e = apply_sets(&base, &["batch_size=two".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size") && e.contains("integer"), "{e}");
        let e = apply_sets(&base, &["learning_rate=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting `learning_rate`"), "{e}");
        let e = apply_sets(&base, &["model.hidden=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.hidden_size"), "{e}");
        let e = apply_sets(&base, &["model.head_dim=x".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set model.head_dim=x"), "{e}");
        assert!(apply_sets(&base, &["preset=micro".into()])
            .unwrap_err()
            .to_string()
            .contains("--preset"));
        let e = apply_sets(&base, &["lr".into()]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
    }

    #[test]
    fn yaml_merges_nested_and_refuses_unknown() {
        let base = TrainConfig::pretrain_defaults("tiny").unwrap();
        let c = apply_yaml(&base, "lr: 0.002\nmodel:\n  hidden_size: 64\n", "x.yaml").unwrap();
        assert_eq!(c.lr, 0.002);
        assert_eq!(c.model.hidden_size, 64);
        assert_eq!(c.model.num_hidden_layers, base.model.num_hidden_layers);
        let e = apply_yaml(&base, "lrr: 1\n", "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.yaml") && e.contains("lrr"), "{e}");
        let e = apply_yaml(&base, "epochs: -1\n", "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs"), "{e}");
    }
}
