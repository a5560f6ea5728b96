//! Task files: which kind each is (given as `KIND:FILE`, or told by the file), and its name.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zerolm_data::input::{Container, RowReader};

use crate::EvalError;

/// What a task file is scored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Multiple choice: log-likelihood of each choice, `acc` and `acc_norm`.
    Mc,
    /// Perplexity and bits per byte of documents.
    Ppl,
    /// Greedy answers checked for the expected string.
    Answer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mc => "mc",
            Kind::Ppl => "ppl",
            Kind::Answer => "answer",
        }
    }
}

/// A task as given on the command line: `FILE`, or `mc:FILE`, `ppl:FILE`, `answer:FILE`.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    pub kind: Option<Kind>,
    pub path: PathBuf,
}

impl FromStr for TaskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<TaskSpec, String> {
        let kinds = [Kind::Mc, Kind::Ppl, Kind::Answer];
        let (kind, path) = match s.split_once(':') {
            Some((k, p)) if kinds.iter().any(|kind| kind.name() == k) => {
                (kinds.into_iter().find(|kind| kind.name() == k), p)
            }
            _ => (None, s),
        };
        if path.is_empty() {
            return Err(format!("`{s}` names no file (give FILE or KIND:FILE)"));
        }
        Ok(TaskSpec {
            kind,
            path: PathBuf::from(path),
        })
    }
}

impl TaskSpec {
    /// The task's name in results: the file's name without its extensions.
    pub fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let file = file.unwrap_or_else(|| self.path.display().to_string());
        let mut name = file.as_str();
        for ext in [".gz", ".jsonl", ".json", ".parquet", ".csv", ".txt"] {
            name = name.strip_suffix(ext).unwrap_or(name);
        }
        name.to_string()
    }

    /// The kind given, or the one the file's first row tells: a CSV file or a row with `choices` /
    /// `endings` is multiple choice, a row with `answer` an answer check, a text file or a row with
    /// `text` a perplexity task.
    pub fn kind(&self) -> Result<Kind, EvalError> {
        match self.kind {
            Some(k) => Ok(k),
            None => detect(&self.path),
        }
    }
}

fn detect(path: &Path) -> Result<Kind, EvalError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return Ok(Kind::Mc);
    }
    let mut reader = RowReader::open(path)?;
    if reader.container() == Container::Text {
        return Ok(Kind::Ppl);
    }
    let Some(row) = reader.next_row()? else {
        return Err(EvalError::task(path, "the file has no rows"));
    };
    let value = row.value.map_err(|e| EvalError::item(&row.at, e))?;
    let has = |k: &str| value.get(k).is_some();
    if has("choices") || has("endings") {
        Ok(Kind::Mc)
    } else if has("answer") {
        Ok(Kind::Answer)
    } else if has("text") {
        Ok(Kind::Ppl)
    } else {
        let keys = value
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>());
        Err(EvalError::item(
            &row.at,
            format!(
                "cannot tell the task kind from the fields {:?}: multiple choice needs `choices` \
                 (or `endings`), an answer check `answer`, perplexity `text`; or name the kind \
                 as mc:FILE, ppl:FILE or answer:FILE",
                keys.unwrap_or_default()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_take_an_optional_kind() {
        let s: TaskSpec = "mc:data/x.jsonl".parse().unwrap();
        assert_eq!((s.kind, s.name()), (Some(Kind::Mc), "x".to_string()));
        let s: TaskSpec = "c:/x/facts.jsonl.gz".parse().unwrap();
        assert_eq!((s.kind, s.name()), (None, "facts".to_string()));
        assert!("ppl:".parse::<TaskSpec>().is_err());
    }

    #[test]
    fn the_kind_comes_from_the_first_row() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            TaskSpec {
                kind: None,
                path: p,
            }
            .kind()
        };
        let mc = r#"{"question":"q","choices":["a","b"],"answer":0}"#;
        assert_eq!(write("a.jsonl", mc).unwrap(), Kind::Mc);
        assert_eq!(write("b.jsonl", r#"{"text":"x"}"#).unwrap(), Kind::Ppl);
        assert_eq!(
            write("c.jsonl", r#"{"prompt":"q","answer":"a"}"#).unwrap(),
            Kind::Answer
        );
        assert_eq!(write("d.txt", "some text\n").unwrap(), Kind::Ppl);
        assert_eq!(write("e.csv", "x").unwrap(), Kind::Mc);
        let err = write("f.jsonl", r#"{"foo":1}"#).unwrap_err().to_string();
        assert!(
            err.contains("f.jsonl:1") && err.contains("mc:FILE"),
            "{err}"
        );
        assert!(write("g.jsonl", "")
            .unwrap_err()
            .to_string()
            .contains("no rows"));
    }
}
