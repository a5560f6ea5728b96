//! Multiple-choice tasks as lm-evaluation-harness scores them: each choice's log-likelihood after the
//! item's context (the choice preceded by one space), `acc` when the likeliest choice is the gold one,
//! `acc_norm` when it is the likeliest per character of the choice.
//!
//! Item formats: `{"question", "choices": [...], "answer": index or letter}`; HellaSwag's rows
//! (`ctx_a`/`ctx_b`/`activity_label`/`endings`/`label`, prepared as the harness prepares them, or a plain
//! `ctx`/`context` with `endings` and `label`); and C-Eval's CSV (`question,A,B,C,D,answer`), asked as
//! the harness's C-Eval template asks it (without the per-subject description line of its
//! `ceval-valid-*` tasks).

use std::path::Path;

use serde_json::Value;
use zerolm_data::input::RowReader;

use crate::EvalError;

/// One question: the context the choices follow, the choices, and the gold choice's index.
#[derive(Clone, Debug, PartialEq)]
pub struct McItem {
    /// Where it came from (`file:line`).
    pub at: String,
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

/// What the harness puts between a context and a choice.
pub const TARGET_DELIMITER: &str = " ";

/// Reads up to `limit` items (0 = all) of a JSONL/JSON/Parquet file or a C-Eval CSV file.
pub fn load(path: &Path, limit: usize) -> Result<Vec<McItem>, EvalError> {
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let items = if is_csv {
        load_csv(path, limit)?
    } else {
        load_rows(path, limit)?
    };
    if items.is_empty() {
        return Err(EvalError::task(path, "no multiple-choice items"));
    }
    Ok(items)
}

fn load_rows(path: &Path, limit: usize) -> Result<Vec<McItem>, EvalError> {
    let mut reader = RowReader::open(path)?;
    let mut items = Vec::new();
    while let Some(row) = reader.next_row()? {
        if limit > 0 && items.len() >= limit {
            break;
        }
        let at = row.at.to_string();
        let value = row.value.map_err(|e| EvalError::item(&at, e))?;
        items.push(item_of(&value, at)?);
    }
    Ok(items)
}

/// One JSON row as an item: HellaSwag's fields when it has `endings`, else question/choices/answer.
fn item_of(v: &Value, at: String) -> Result<McItem, EvalError> {
    let (context, choices, gold) = if v.get("endings").is_some() {
        hellaswag(v).map_err(|m| EvalError::item(&at, m))?
    } else if v.get("choices").is_some() {
        question_choices(v).map_err(|m| EvalError::item(&at, m))?
    } else {
        return Err(EvalError::item(
            &at,
            "a multiple-choice row needs `question`, `choices` and `answer` (or HellaSwag's \
             `ctx`/`endings`/`label`)",
        ));
    };
    check(McItem {
        at,
        context,
        choices,
        gold,
    })
}

type Parts = (String, Vec<String>, usize);

fn question_choices(v: &Value) -> Result<Parts, String> {
    let question = string_field(v, "question")?;
    let choices = strings(v, "choices")?;
    let gold = match v.get("answer") {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
        Some(Value::String(s)) => letter_index(s).or_else(|| s.trim().parse().ok()),
        _ => None,
    }
    .ok_or("field `answer` must be the gold choice's index (0, 1, …) or letter (A, B, …)")?;
    Ok((question, choices, gold))
}

fn hellaswag(v: &Value) -> Result<Parts, String> {
    let endings = strings(v, "endings")?;
    let gold = match v.get("label") {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or("field `label` must be the gold ending's index (0, 1, … or \"0\", \"1\", …)")?;
    if v.get("ctx_a").is_some() {
        // The HellaSwag dataset's own rows, prepared as the harness's `hellaswag` task prepares them.
        let (a, b) = (string_field(v, "ctx_a")?, string_field(v, "ctx_b")?);
        let label = string_field(v, "activity_label")?;
        let ctx = format!("{a} {}", capitalize(&b));
        let query = preprocess(&format!("{label}: {ctx}"));
        let choices = endings.iter().map(|e| preprocess(e)).collect();
        return Ok((query, choices, gold));
    }
    let context = string_field(v, "ctx").or_else(|_| string_field(v, "context"))?;
    Ok((context, endings, gold))
}

/// Python's `str.capitalize`: the first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// The harness's HellaSwag text clean-up (WikiHow's bracketed artifacts removed).
fn preprocess(text: &str) -> String {
    static BRACKETS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let brackets = BRACKETS.get_or_init(|| regex::Regex::new(r"\[.*?\]").expect("valid regex"));
    let text = text.trim().replace(" [title]", ". ");
    brackets.replace_all(&text, "").replace("  ", " ")
}

fn string_field(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field `{key}` must be a string")),
        None => Err(format!("field `{key}` is missing")),
    }
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, String> {
    let list = v.get(key).and_then(Value::as_array);
    list.and_then(|l| l.iter().map(|c| c.as_str().map(str::to_string)).collect())
        .ok_or_else(|| format!("field `{key}` must be a list of strings"))
}

fn letter_index(s: &str) -> Option<usize> {
    match s.trim().as_bytes() {
        [c @ b'A'..=b'Z'] => Some((c - b'A') as usize),
        _ => None,
    }
}

/// At least two non-empty choices and a gold index among them.
fn check(item: McItem) -> Result<McItem, EvalError> {
    if item.choices.len() < 2 {
        return Err(EvalError::item(
            &item.at,
            "an item needs at least two choices",
        ));
    }
    if let Some(i) = item.choices.iter().position(|c| c.is_empty()) {
        return Err(EvalError::item(
            &item.at,
            format!("choice {i} is empty (a choice needs at least one character to be scored)"),
        ));
    }
    if item.gold >= item.choices.len() {
        return Err(EvalError::item(
            &item.at,
            format!(
                "the answer index {} is outside the {} choices",
                item.gold,
                item.choices.len()
            ),
        ));
    }
    Ok(item)
}

/// C-Eval's CSV: `question`, `A`–`D` and `answer` (a letter) columns; other columns are ignored.
fn load_csv(path: &Path, limit: usize) -> Result<Vec<McItem>, EvalError> {
    let io = |e: std::io::Error| EvalError::Io(zerolm_io::IoError::read(path, e));
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
    let headers = reader
        .headers()
        .map_err(|e| EvalError::task(path, format!("cannot read the CSV header: {e}")))?
        .clone();
    let column = |name: &str| {
        (headers.iter().position(|h| h.trim() == name)).ok_or_else(|| {
            EvalError::task(
                path,
                format!(
                    "a C-Eval CSV needs the columns question, A, B, C, D and answer; `{name}` is \
                     missing (found: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let cols: Vec<usize> = ["question", "A", "B", "C", "D", "answer"]
        .iter()
        .map(|n| column(n))
        .collect::<Result<_, _>>()?;
    let mut items = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if limit > 0 && items.len() >= limit {
            break;
        }
        let record = record.map_err(|e| {
            EvalError::item(
                format!("{}: record {}", path.display(), i + 1),
                format!("unreadable CSV row: {e}"),
            )
        })?;
        let line = record.position().map_or(i as u64 + 2, |p| p.line());
        let at = format!("{}:{line}", path.display());
        let field = |k: usize| record.get(cols[k]).unwrap_or_default();
        let gold = letter_index(field(5)).filter(|&g| g < 4).ok_or_else(|| {
            EvalError::item(
                &at,
                format!("`answer` must be A, B, C or D, not {:?}", field(5)),
            )
        })?;
        let context = format!(
            "{}\nA. {}\nB. {}\nC. {}\nD. {}\n答案：",
            field(0).trim(),
            field(1),
            field(2),
            field(3),
            field(4)
        );
        let choices = ["A", "B", "C", "D"].map(String::from).to_vec();
        items.push(check(McItem {
            at,
            context,
            choices,
            gold,
        })?);
    }
    Ok(items)
}

/// The outcome of one item: each choice's log-likelihood and the two predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct McOutcome {
    pub lls: Vec<f64>,
    pub pred: usize,
    pub pred_norm: usize,
}

impl McOutcome {
    /// `lls` in the item's choice order; `acc_norm` divides by each choice's length in characters.
    pub fn of(item: &McItem, lls: Vec<f64>) -> McOutcome {
        let norm: Vec<f64> = (lls.iter().zip(&item.choices))
            .map(|(ll, c)| ll / c.chars().count() as f64)
            .collect();
        McOutcome {
            pred: first_max(&lls),
            pred_norm: first_max(&norm),
            lls,
        }
    }
}

/// The index of the largest value, the first one on ties (numpy's `argmax`).
fn first_max(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(v: Value) -> Result<McItem, EvalError> {
        item_of(&v, "t.jsonl:1".into())
    }

    #[test]
    fn the_three_row_formats_become_items() {
        let q = item(json!({"question": "Q:", "choices": ["a", "b"], "answer": 1})).unwrap();
        assert_eq!((q.context.as_str(), q.gold), ("Q:", 1));
        let letter = item(json!({"question": "Q", "choices": ["a", "b", "c"], "answer": "C"}));
        assert_eq!(letter.unwrap().gold, 2);
        let plain =
            item(json!({"ctx": "A man", "endings": ["runs", "sits"], "label": "1"})).unwrap();
        assert_eq!((plain.context.as_str(), plain.gold), ("A man", 1));
        let hs = item(json!({
            "activity_label": "Baking cookies", "ctx_a": "A woman mixes dough.",
            "ctx_b": "she [title] puts it", "endings": [" in the oven [step] now.", "away."],
            "label": 0
        }))
        .unwrap();
        assert_eq!(
            hs.context,
            "Baking cookies: A woman mixes dough. She. puts it"
        );
        assert_eq!(hs.choices, vec!["in the oven now.", "away."]);
    }

    #[test]
    fn bad_rows_name_what_is_wrong() {
        let msg = |v: Value| item(v).unwrap_err().to_string();
        assert!(
            msg(json!({"question": "Q", "choices": ["a"], "answer": 0})).contains("two choices")
        );
        assert!(
            msg(json!({"question": "Q", "choices": ["a", ""], "answer": 0}))
                .contains("choice 1 is empty")
        );
        assert!(
            msg(json!({"question": "Q", "choices": ["a", "b"], "answer": 2})).contains("outside")
        );
        assert!(msg(json!({"question": "Q", "choices": ["a", "b"]})).contains("`answer`"));
        assert!(msg(json!({"text": "x"})).starts_with("t.jsonl:1: a multiple-choice row needs"));
        assert!(msg(json!({"choices": ["a", "b"], "answer": 0})).contains("`question` is missing"));
    }

    #[test]
    fn acc_norm_divides_by_characters_and_ties_take_the_first() {
        let it = McItem {
            at: String::new(),
            context: "c".into(),
            choices: vec!["ab".into(), "abcd".into(), "x".into()],
            gold: 1,
        };
        let o = McOutcome::of(&it, vec![-2.0, -3.0, -2.0]);
        assert_eq!((o.pred, o.pred_norm), (0, 1));
        assert_eq!(first_max(&[1.0, 1.0]), 0);
    }

    #[test]
    fn ceval_csv_is_asked_as_the_harness_asks_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ceval.csv");
        std::fs::write(
            &p,
            "id,question,A,B,C,D,answer,explanation\n0,\" 1+1=? \",1,2,3,4,B,\"x, y\"\n",
        )
        .unwrap();
        let items = load(&p, 0).unwrap();
        assert_eq!(items[0].context, "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\n答案：");
        assert_eq!((items[0].gold, items[0].choices.len()), (1, 4));
        std::fs::write(&p, "question,A,B,C,answer\nq,1,2,3,A\n").unwrap();
        assert!(load(&p, 0)
            .unwrap_err()
            .to_string()
            .contains("`D` is missing"));
        std::fs::write(&p, "question,A,B,C,D,answer\nq,1,2,3,4,E\n").unwrap();
        assert!(load(&p, 0)
            .unwrap_err()
            .to_string()
            .contains("ceval.csv:2: `answer` must be A, B, C or D"));
    }
}
