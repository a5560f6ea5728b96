//! Row formats users bring (every one is listed in docs/formats.md), detected from a row's fields or
//! forced by name, and normalised into [`Record`]s: a text, a conversation, or a preference pair.

use crate::chat::{Message, Role};
use crate::error::{unknown_choice, DataError};
use serde_json::Value;

/// Which stage's data a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Pretrain,
    Sft,
    Dpo,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pretrain => "pretrain",
            Kind::Sft => "sft",
            Kind::Dpo => "dpo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"text": "..."}` (MiniMind `pretrain_hq.jsonl`), a Parquet text column, or a plain text file.
    Text,
    /// MiniMind SFT: `{"conversations": [{"role", "content"}, ...]}`.
    Conversations,
    /// OpenAI / TRL: `{"messages": [...]}`.
    Messages,
    /// The article's `{"id", "prompt", "chosen", "rejected"}` strings.
    Article,
    /// TRL standard: `prompt`, `chosen`, `rejected` strings.
    TrlStandard,
    /// TRL conversational: `prompt`, `chosen`, `rejected` message lists.
    TrlConversational,
    /// Implicit prompt, message lists (MiniMind `dpo.jsonl`, TRL conversational implicit prompt): the
    /// prompt is the leading messages chosen and rejected share.
    ImplicitConversational,
    /// Anthropic hh-rlhf text: `chosen`/`rejected` strings of `\n\nHuman:` / `\n\nAssistant:` turns;
    /// the prompt is everything up to the last `\n\nAssistant:`.
    HhRlhf,
}

pub const ALL_FORMATS: &[(&str, Format)] = &[
    ("text", Format::Text),
    ("conversations", Format::Conversations),
    ("messages", Format::Messages),
    ("article", Format::Article),
    ("trl-standard", Format::TrlStandard),
    ("trl-conversational", Format::TrlConversational),
    ("implicit-conversational", Format::ImplicitConversational),
    ("hh-rlhf", Format::HhRlhf),
];

impl Format {
    pub fn name(self) -> &'static str {
        ALL_FORMATS
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    pub fn parse(s: &str) -> Option<Format> {
        ALL_FORMATS.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    /// The stage whose data this format holds.
    pub fn kind(self) -> Kind {
        match self {
            Format::Text => Kind::Pretrain,
            Format::Conversations | Format::Messages => Kind::Sft,
            _ => Kind::Dpo,
        }
    }

    /// Decide the format of `kind` data from one row's fields.
    pub fn detect(kind: Kind, row: &Value, text_field: &str) -> Result<Format, String> {
        let obj = row
            .as_object()
            .ok_or_else(|| "a row must be a JSON object".to_string())?;
        let has = |k: &str| obj.contains_key(k);
        let keys = obj
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        match kind {
            Kind::Pretrain if has(text_field) => Ok(Format::Text),
            Kind::Pretrain => Err(format!("no `{text_field}` field (fields: {keys}); name the text column with --text-field")),
            Kind::Sft if has("conversations") => Ok(Format::Conversations),
            Kind::Sft if has("messages") => Ok(Format::Messages),
            Kind::Sft => Err(format!("expected a `conversations` or `messages` field (fields: {keys})")),
            Kind::Dpo => match (obj.get("prompt"), obj.get("chosen")) {
                (Some(Value::String(_)), _) if has("id") => Ok(Format::Article),
                (Some(Value::String(_)), _) => Ok(Format::TrlStandard),
                (Some(Value::Array(_)), _) => Ok(Format::TrlConversational),
                (None, Some(Value::Array(_))) => Ok(Format::ImplicitConversational),
                (None, Some(Value::String(_))) => Ok(Format::HhRlhf),
                _ => Err(format!(
                    "expected `prompt`/`chosen`/`rejected` (strings or message lists) or `chosen`/`rejected` (fields: {keys})"
                )),
            },
        }
    }
}

impl serde::Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// How string prompts and completions become token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// Strings become a user turn and an assistant turn rendered with the chat template (hh-rlhf text is
    /// split into its turns): what a chat model sees when it answers.
    Chat,
    /// Strings are tokenized as they are, the completion followed by eos (TRL's standard format).
    Raw,
}

impl Template {
    /// The names `--template` accepts (also how the config records it).
    pub const NAMES: &'static [&'static str] = &["chat", "raw"];
}

impl std::str::FromStr for Template {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Template, DataError> {
        match s {
            "chat" => Ok(Template::Chat),
            "raw" => Ok(Template::Raw),
            _ => Err(unknown_choice("--template", s, Template::NAMES)),
        }
    }
}

/// A preference pair, either as messages (rendered with the chat template) or raw text.
#[derive(Debug, Clone, PartialEq)]
pub enum Pair {
    Chat {
        prompt: Vec<Message>,
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    },
    Raw {
        prompt: String,
        chosen: String,
        rejected: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Text(String),
    Chat(Vec<Message>),
    Pair { id: Option<String>, pair: Pair },
}

/// Why a row was not turned into a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// Malformed: a missing field, a wrong type, an unknown role. Fatal unless `--skip-bad`.
    Bad(String),
    /// Well-formed but empty (no text, no completion). Counted and skipped unless `--strict`.
    Empty(String),
}

fn field<'a>(row: &'a Value, name: &str) -> Result<&'a Value, Problem> {
    row.get(name)
        .ok_or_else(|| Problem::Bad(format!("missing field `{name}`")))
}

fn string(row: &Value, name: &str) -> Result<String, Problem> {
    match field(row, name)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(Problem::Bad(format!(
            "field `{name}` must be a string, found {}",
            type_name(other)
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parse a list of `{"role", "content"}` messages from field `name`.
pub fn messages(row: &Value, name: &str) -> Result<Vec<Message>, Problem> {
    let list = match field(row, name)? {
        Value::Array(a) => a,
        other => {
            return Err(Problem::Bad(format!(
                "field `{name}` must be a list of messages, found {}",
                type_name(other)
            )))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{name}[{i}]");
            let role = match m.get("role") {
                Some(Value::String(r)) => Role::parse(r).ok_or_else(|| {
                    Problem::Bad(format!("field `{at}.role`: unknown role `{r}` (expected system, user or assistant)"))
                })?,
                Some(other) => return Err(Problem::Bad(format!("field `{at}.role` must be a string, found {}", type_name(other)))),
                None => return Err(Problem::Bad(format!("field `{at}`: missing `role`"))),
            };
            let content = match m.get("content") {
                Some(Value::String(c)) => c.clone(),
                Some(other) => return Err(Problem::Bad(format!("field `{at}.content` must be a string, found {}", type_name(other)))),
                None => return Err(Problem::Bad(format!("field `{at}`: missing `content`"))),
            };
            Ok(Message { role, content })
        })
        .collect()
}

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

/// Split hh-rlhf text into turns.
pub fn hh_turns(text: &str, name: &str) -> Result<Vec<Message>, Problem> {
    let mut marks: Vec<(usize, Role, usize)> = Vec::new();
    for (marker, role) in [(HUMAN, Role::User), (ASSISTANT, Role::Assistant)] {
        marks.extend(
            text.match_indices(marker)
                .map(|(p, _)| (p, role, marker.len())),
        );
    }
    marks.sort_by_key(|m| m.0);
    let Some(&(first, _, _)) = marks.first() else {
        return Err(Problem::Bad(format!(
            "field `{name}` has no `\\n\\nHuman:` / `\\n\\nAssistant:` turns"
        )));
    };
    if !text[..first].trim().is_empty() {
        return Err(Problem::Bad(format!(
            "field `{name}` has text before its first `\\n\\nHuman:` turn"
        )));
    }
    Ok(marks
        .iter()
        .enumerate()
        .map(|(i, &(pos, role, len))| {
            let end = marks.get(i + 1).map_or(text.len(), |m| m.0);
            let body = &text[pos + len..end];
            Message {
                role,
                content: body.strip_prefix(' ').unwrap_or(body).to_string(),
            }
        })
        .collect())
}

/// hh-rlhf as turns: the prompt is every turn before the last assistant turn, which both must share.
fn hh_chat_pair(mut chosen: Vec<Message>, mut rejected: Vec<Message>) -> Result<Pair, Problem> {
    let (Some(c), Some(r)) = (chosen.pop(), rejected.pop()) else {
        return Err(Problem::Bad("empty hh-rlhf conversation".into()));
    };
    if c.role != Role::Assistant || r.role != Role::Assistant {
        return Err(Problem::Bad(
            "`chosen` and `rejected` must end with an `\\n\\nAssistant:` turn".into(),
        ));
    }
    if chosen != rejected {
        return Err(Problem::Bad(
            "`chosen` and `rejected` do not share the prompt up to the last `\\n\\nAssistant:`"
                .into(),
        ));
    }
    Ok(Pair::Chat {
        prompt: chosen,
        chosen: vec![c],
        rejected: vec![r],
    })
}

/// Split two conversations into their shared leading messages and the two continuations.
fn shared_prefix(chosen: Vec<Message>, rejected: Vec<Message>) -> Result<Pair, Problem> {
    let n = chosen
        .iter()
        .zip(&rejected)
        .take_while(|(a, b)| a == b)
        .count();
    if n == chosen.len() || n == rejected.len() {
        return Err(Problem::Empty(
            "chosen and rejected have no differing completion".into(),
        ));
    }
    for (name, m) in [("chosen", &chosen), ("rejected", &rejected)] {
        if m[n].role != Role::Assistant {
            return Err(Problem::Bad(format!(
                "`chosen` and `rejected` first differ at message {n}, which in `{name}` is a {:?} turn, \
                 not an assistant answer; the shared prompt must end right before the answers",
                m[n].role
            )));
        }
    }
    Ok(Pair::Chat {
        prompt: chosen[..n].to_vec(),
        chosen: chosen[n..].to_vec(),
        rejected: rejected[n..].to_vec(),
    })
}

fn user_assistant(prompt: String, chosen: String, rejected: String) -> Pair {
    Pair::Chat {
        prompt: vec![Message::new(Role::User, prompt)],
        chosen: vec![Message::new(Role::Assistant, chosen)],
        rejected: vec![Message::new(Role::Assistant, rejected)],
    }
}

fn id_of(row: &Value) -> Result<Option<String>, Problem> {
    match row.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(Problem::Bad(format!(
            "field `id` must be a string or number, found {}",
            type_name(other)
        ))),
    }
}

/// Turn one row into a record of `format`.
pub fn normalize(
    format: Format,
    row: &Value,
    text_field: &str,
    template: Template,
) -> Result<Record, Problem> {
    if !row.is_object() {
        return Err(Problem::Bad(format!(
            "a row must be a JSON object, found {}",
            type_name(row)
        )));
    }
    let record = match format {
        Format::Text => Record::Text(string(row, text_field)?),
        Format::Conversations => Record::Chat(messages(row, "conversations")?),
        Format::Messages => Record::Chat(messages(row, "messages")?),
        Format::Article | Format::TrlStandard => with_id(row, string_pair(row, template)?)?,
        Format::TrlConversational => with_id(row, trl_conversational_pair(row)?)?,
        Format::ImplicitConversational => Record::Pair {
            id: id_of(row)?,
            pair: shared_prefix(messages(row, "chosen")?, messages(row, "rejected")?)?,
        },
        Format::HhRlhf => with_id(row, hh_pair(row, template)?)?,
    };
    check_not_empty(&record)?;
    Ok(record)
}

/// A pair record with the row's `id`, if it has one.
fn with_id(row: &Value, pair: Pair) -> Result<Record, Problem> {
    Ok(Record::Pair {
        id: id_of(row)?,
        pair,
    })
}

/// `prompt`, `chosen` and `rejected` strings: chat turns or raw text.
fn string_pair(row: &Value, template: Template) -> Result<Pair, Problem> {
    let (p, c, r) = (
        string(row, "prompt")?,
        string(row, "chosen")?,
        string(row, "rejected")?,
    );
    Ok(match template {
        Template::Chat => user_assistant(p, c, r),
        Template::Raw => Pair::Raw {
            prompt: p,
            chosen: c,
            rejected: r,
        },
    })
}

/// `prompt`, `chosen` and `rejected` message lists; the completions must start with the assistant.
fn trl_conversational_pair(row: &Value) -> Result<Pair, Problem> {
    for name in ["chosen", "rejected"] {
        if let Some(m) = messages(row, name)?
            .first()
            .filter(|m| m.role != Role::Assistant)
        {
            return Err(Problem::Bad(format!(
                "field `{name}[0].role` must be `assistant` (the completion), found {:?}",
                m.role
            )));
        }
    }
    Ok(Pair::Chat {
        prompt: messages(row, "prompt")?,
        chosen: messages(row, "chosen")?,
        rejected: messages(row, "rejected")?,
    })
}

/// hh-rlhf `chosen` and `rejected` texts: split into turns, or cut as text after the last assistant mark.
fn hh_pair(row: &Value, template: Template) -> Result<Pair, Problem> {
    let (c, r) = (string(row, "chosen")?, string(row, "rejected")?);
    match template {
        Template::Chat => hh_chat_pair(hh_turns(&c, "chosen")?, hh_turns(&r, "rejected")?),
        Template::Raw => hh_raw_pair(&c, &r),
    }
}

/// hh-rlhf as text: the prompt is `chosen` through its last `\n\nAssistant:`, which `rejected` must share.
fn hh_raw_pair(c: &str, r: &str) -> Result<Pair, Problem> {
    let cut = c
        .rfind(ASSISTANT)
        .ok_or_else(|| Problem::Bad("field `chosen` has no `\\n\\nAssistant:`".into()))?
        + ASSISTANT.len();
    if !r.starts_with(&c[..cut]) {
        return Err(Problem::Bad(
            "`chosen` and `rejected` do not share the prompt up to the last `\\n\\nAssistant:`"
                .into(),
        ));
    }
    Ok(Pair::Raw {
        prompt: c[..cut].to_string(),
        chosen: c[cut..].to_string(),
        rejected: r[cut..].to_string(),
    })
}

fn check_not_empty(record: &Record) -> Result<(), Problem> {
    let blank = |s: &str| s.trim().is_empty();
    let no_answer = |m: &[Message]| {
        !m.iter()
            .any(|m| m.role == Role::Assistant && !blank(&m.content))
    };
    match record {
        Record::Text(t) if blank(t) => Err(Problem::Empty("empty text".into())),
        Record::Chat(m) if no_answer(m) => Err(Problem::Empty(
            "no non-empty assistant message to train on".into(),
        )),
        Record::Pair {
            pair: Pair::Chat {
                chosen, rejected, ..
            },
            ..
        } if no_answer(chosen) || no_answer(rejected) => {
            Err(Problem::Empty("empty chosen or rejected completion".into()))
        }
        Record::Pair {
            pair: Pair::Chat {
                chosen, rejected, ..
            },
            ..
        } if chosen == rejected => Err(Problem::Empty("chosen and rejected are identical".into())),
        Record::Pair {
            pair: Pair::Raw {
                chosen, rejected, ..
            },
            ..
        } if chosen == rejected => Err(Problem::Empty("chosen and rejected are identical".into())),
        Record::Pair {
            pair: Pair::Raw {
                chosen, rejected, ..
            },
            ..
        } if blank(chosen) || blank(rejected) => {
            Err(Problem::Empty("empty chosen or rejected completion".into()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detects_every_format_from_its_fields() {
        let cases = [
            (Kind::Pretrain, json!({"text": "a"}), Format::Text),
            (
                Kind::Sft,
                json!({"conversations": []}),
                Format::Conversations,
            ),
            (Kind::Sft, json!({"messages": []}), Format::Messages),
            (
                Kind::Dpo,
                json!({"id": "1", "prompt": "q", "chosen": "a", "rejected": "b"}),
                Format::Article,
            ),
            (
                Kind::Dpo,
                json!({"prompt": "q", "chosen": "a", "rejected": "b"}),
                Format::TrlStandard,
            ),
            (
                Kind::Dpo,
                json!({"prompt": [], "chosen": [], "rejected": []}),
                Format::TrlConversational,
            ),
            (
                Kind::Dpo,
                json!({"chosen": [], "rejected": []}),
                Format::ImplicitConversational,
            ),
            (
                Kind::Dpo,
                json!({"chosen": "x", "rejected": "y"}),
                Format::HhRlhf,
            ),
        ];
        for (kind, row, want) in cases {
            assert_eq!(Format::detect(kind, &row, "text"), Ok(want), "{row}");
        }
        assert!(Format::detect(Kind::Sft, &json!({"text": "a"}), "text")
            .unwrap_err()
            .contains("conversations"));
    }

    #[test]
    fn hh_prompt_is_everything_up_to_the_last_assistant_turn() {
        let row = json!({
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant: 4",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant: five"
        });
        let Record::Pair {
            pair:
                Pair::Raw {
                    prompt,
                    chosen,
                    rejected,
                },
            ..
        } = normalize(Format::HhRlhf, &row, "text", Template::Raw).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            prompt,
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant:"
        );
        assert_eq!((chosen.as_str(), rejected.as_str()), (" 4", " five"));
        let Record::Pair {
            pair: Pair::Chat { prompt, chosen, .. },
            ..
        } = normalize(Format::HhRlhf, &row, "text", Template::Chat).unwrap()
        else {
            panic!()
        };
        assert_eq!(prompt.len(), 3);
        assert_eq!(chosen, vec![Message::new(Role::Assistant, "4")]);
    }

    #[test]
    fn template_parses_its_names_and_rejects_others_naming_the_choices() {
        for name in Template::NAMES {
            let t: Template = name.parse().unwrap();
            assert_eq!(serde_json::to_value(t).unwrap(), json!(name));
        }
        assert_eq!("raw".parse::<Template>().unwrap(), Template::Raw);
        let err = "fancy".parse::<Template>().unwrap_err().to_string();
        assert!(
            err.contains("`fancy`") && err.contains("chat, raw"),
            "{err}"
        );
    }

    #[test]
    fn bad_rows_name_the_field() {
        let bad = |row: Value, f: Format| match normalize(f, &row, "text", Template::Chat) {
            Err(Problem::Bad(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(bad(
            json!({"conversations": [{"role": "bot", "content": "x"}]}),
            Format::Conversations
        )
        .contains("conversations[0].role"));
        assert!(bad(json!({"text": 3}), Format::Text).contains("`text` must be a string"));
        assert!(
            bad(json!({"prompt": "q", "chosen": "a"}), Format::TrlStandard)
                .contains("missing field `rejected`")
        );
        assert!(matches!(
            normalize(Format::Text, &json!({"text": "  "}), "text", Template::Chat),
            Err(Problem::Empty(_))
        ));
    }
}
