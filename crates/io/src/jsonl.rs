//! Rows of a JSON-lines file such as a training run's `metrics.jsonl`.

use std::path::Path;

use serde_json::{Map, Value};

/// Every line of `path` that is a JSON object, in order. A missing file has no rows, and a line that
/// is not an object (a half-written last line of a killed run) is not a row.
pub fn read_rows(path: &Path) -> Vec<Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Map<String, Value>>(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn objects_are_rows_and_the_rest_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(&p, "{\"step\":1}\n[1]\n{\"step\":2,\"lo").unwrap();
        let rows = super::read_rows(&p);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["step"], 1);
        assert!(super::read_rows(&dir.path().join("none")).is_empty());
    }
}
