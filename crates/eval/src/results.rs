//! What an `eval` run writes: every task's numbers with what produced them, as JSON and as a table.

use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::task::Kind;
use crate::EvalError;

/// The version of this file's layout; readers refuse another.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// Always `eval`: what wrote the file.
    pub stage: String,
    pub format: u32,
    pub zerolm_version: String,
    pub model: ModelInfo,
    pub settings: Settings,
    pub tasks: Vec<TaskResult>,
    pub seconds: f64,
}

/// The model scored: its directory, name, weights and what produced it (from its `zerolm.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    pub dir: String,
    pub name: String,
    pub weights_blake3: String,
    pub tokenizer_fingerprint: String,
    /// The stage that wrote the model and its step, when the directory says.
    pub stage: Option<String>,
    pub step: Option<u64>,
}

/// How the run scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Rows per forward pass of the log-likelihood tasks.
    pub batch_size: usize,
    /// Longest model input (tokens); longer inputs lose their first tokens.
    pub max_length: usize,
    /// Items used per task (0 = all).
    pub limit: usize,
    /// Reply length limit of answer tasks.
    pub max_new_tokens: usize,
    pub precision: String,
    pub threads: usize,
}

/// One task's numbers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub kind: Kind,
    pub file: String,
    pub file_blake3: String,
    pub items: usize,
    /// Items left out (empty documents), counted.
    pub skipped: usize,
    /// Inputs that lost their first tokens to `max_length`.
    pub truncated: usize,
    /// `acc`, `acc_stderr`, `acc_norm`, … (standard errors as the harness computes them).
    pub metrics: IndexMap<String, f64>,
    pub seconds: f64,
    pub items_per_s: f64,
}

impl Results {
    /// Reads an `eval` results file, refusing anything else.
    pub fn read(path: &Path) -> Result<Results, EvalError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EvalError::Io(zerolm_io::IoError::read(path, e)))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EvalError::task(path, format!("malformed JSON: {e}")))?;
        if value.get("stage").and_then(|s| s.as_str()) != Some("eval") {
            return Err(EvalError::task(path, "not an `eval` results file"));
        }
        if value.get("format").and_then(|f| f.as_u64()) != Some(u64::from(FORMAT)) {
            return Err(EvalError::task(
                path,
                format!("written in another results format (this build reads format {FORMAT})"),
            ));
        }
        serde_json::from_value(value).map_err(|e| EvalError::task(path, e.to_string()))
    }

    /// A table of every task's metrics, a standard error beside the value it belongs to.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| task | kind | items | metric | value | ± stderr |\n|---|---|---:|---|---:|---:|\n",
        );
        for t in &self.tasks {
            let mut first = true;
            for (name, value) in &t.metrics {
                if name.ends_with("_stderr") {
                    continue;
                }
                let stderr = t.metrics.get(&format!("{name}_stderr"));
                let (task, kind, items) = match first {
                    true => (t.task.as_str(), t.kind.name(), t.items.to_string()),
                    false => ("", "", String::new()),
                };
                out.push_str(&format!(
                    "| {task} | {kind} | {items} | {name} | {} | {} |\n",
                    number(*value),
                    stderr.map_or(String::new(), |s| number(*s))
                ));
                first = false;
            }
        }
        out
    }
}

/// Samples as JSON lines.
pub fn jsonl(samples: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in samples {
        out.extend(s.to_string().into_bytes());
        out.push(b'\n');
    }
    out
}

/// Four decimals for fractions and small numbers, whole numbers as they are.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() >= 1.0 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The standard error of a mean of 0/1 (or any) values as the harness computes it: the sample
/// standard deviation (n − 1) over √n; 0 for fewer than two values.
pub fn mean_stderr(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    var.sqrt() / (n as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_the_sample_deviation_over_root_n() {
        // numpy: np.std([1,0,1,1], ddof=1) / 2 = 0.25
        assert!((mean_stderr(&[1.0, 0.0, 1.0, 1.0]) - 0.25).abs() < 1e-15);
        assert_eq!(mean_stderr(&[1.0]), 0.0);
    }

    #[test]
    fn the_table_puts_each_stderr_beside_its_metric() {
        let mut metrics = IndexMap::new();
        metrics.insert("acc".to_string(), 0.5);
        metrics.insert("acc_stderr".to_string(), 0.25);
        metrics.insert("tokens".to_string(), 120.0);
        let r = TaskResult {
            task: "facts".into(),
            kind: Kind::Mc,
            file: "f".into(),
            file_blake3: String::new(),
            items: 4,
            skipped: 0,
            truncated: 0,
            metrics,
            seconds: 1.0,
            items_per_s: 4.0,
        };
        let results = Results {
            stage: "eval".into(),
            format: FORMAT,
            zerolm_version: String::new(),
            model: ModelInfo {
                dir: String::new(),
                name: String::new(),
                weights_blake3: String::new(),
                tokenizer_fingerprint: String::new(),
                stage: None,
                step: None,
            },
            settings: Settings {
                batch_size: 1,
                max_length: 1,
                limit: 0,
                max_new_tokens: 1,
                precision: "f32".into(),
                threads: 1,
            },
            tasks: vec![r],
            seconds: 1.0,
        };
        let table = results.table();
        assert!(
            table.contains("| facts | mc | 4 | acc | 0.5000 | 0.2500 |"),
            "{table}"
        );
        assert!(table.contains("|  |  |  | tokens | 120 |  |"), "{table}");
    }
}
