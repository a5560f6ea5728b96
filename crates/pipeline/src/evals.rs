//! The report's evaluation table: the results file of every `eval` stage (written by the `eval`
//! binary, checked here to be one), a row per task and metric, a column per stage.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{PipelineError, Result};

/// Rows of (task · metric, one cell per column); columns are the eval stages in run order.
#[derive(Debug, Default, PartialEq)]
pub struct EvalTable {
    pub columns: Vec<String>,
    pub rows: Vec<(String, Vec<String>)>,
}

/// The metrics shown for each task kind (every one is in the results file).
fn shown(kind: &str) -> &'static [&'static str] {
    match kind {
        "mc" => &["acc", "acc_norm"],
        "ppl" => &["bits_per_byte", "token_perplexity"],
        "answer" => &["accuracy"],
        _ => &[],
    }
}

/// The table of `stages` (stage name, its `--out` results file); `None` when there is none.
pub fn table(stages: &[(String, PathBuf)]) -> Result<Option<EvalTable>> {
    if stages.is_empty() {
        return Ok(None);
    }
    let mut t = EvalTable::default();
    for (col, (stage, path)) in stages.iter().enumerate() {
        t.columns.push(stage.clone());
        for (row, cell) in cells(&read(path)?) {
            let at = match t.rows.iter().position(|(r, _)| *r == row) {
                Some(i) => i,
                None => {
                    t.rows.push((row, vec![String::new(); stages.len()]));
                    t.rows.len() - 1
                }
            };
            t.rows[at].1[col] = cell;
        }
    }
    Ok(Some(t))
}

/// An `eval` results file, refused when it is something else.
fn read(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::read(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| PipelineError::Usage(format!("{}: malformed JSON: {e}", path.display())))?;
    if v["stage"] != "eval" || v["format"] != 1 || !v["tasks"].is_array() {
        return Err(PipelineError::Usage(format!(
            "{}: not an `eval` results file of format 1 (rerun the eval stage)",
            path.display()
        )));
    }
    Ok(v)
}

/// (`task · metric`, `value ± stderr`) of the shown metrics of every task.
fn cells(results: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in results["tasks"].as_array().into_iter().flatten() {
        let name = task["task"].as_str().unwrap_or("?");
        for metric in shown(task["kind"].as_str().unwrap_or("")) {
            let Some(v) = task["metrics"][*metric].as_f64() else {
                continue;
            };
            let cell = match task["metrics"][format!("{metric}_stderr")].as_f64() {
                Some(se) => format!("{v:.3} ± {se:.3}"),
                None => format!("{v:.4}"),
            };
            out.push((format!("{name} · {metric}"), cell));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_column_per_stage_one_row_per_task_metric() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, acc: f64| {
            let p = dir.path().join(name);
            let v = json!({"stage": "eval", "format": 1, "tasks": [
                {"task": "facts", "kind": "mc", "metrics": {"acc": acc, "acc_stderr": 0.01, "acc_norm": 0.5, "acc_norm_stderr": 0.02}},
                {"task": "text", "kind": "ppl", "metrics": {"bits_per_byte": 0.43, "token_perplexity": 2.7}}]});
            std::fs::write(&p, v.to_string()).unwrap();
            p
        };
        let stages = vec![
            ("eval-a".to_string(), write("a.json", 0.25)),
            ("eval-b".to_string(), write("b.json", 0.75)),
        ];
        let t = table(&stages).unwrap().unwrap();
        assert_eq!(t.columns, ["eval-a", "eval-b"]);
        assert_eq!(
            t.rows[0],
            (
                "facts · acc".to_string(),
                vec!["0.250 ± 0.010".to_string(), "0.750 ± 0.010".to_string()]
            )
        );
        assert_eq!(t.rows[2].0, "text · bits_per_byte");
        assert_eq!(t.rows[2].1[0], "0.4300");
        assert!(table(&[]).unwrap().is_none());
    }

    #[test]
    fn another_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, r#"{"stage": "dpo"}"#).unwrap();
        let err = table(&[("e".into(), p)]).unwrap_err().to_string();
        assert!(err.contains("not an `eval` results file"), "{err}");
    }
}
