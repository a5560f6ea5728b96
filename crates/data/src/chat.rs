//! Chat messages and the Jinja chat template (rendered with minijinja exactly as Hugging Face's
//! `apply_chat_template` renders it with jinja2: `trim_blocks` and `lstrip_blocks` on).

use crate::error::{unknown_choice, DataError, Result};
use serde::{Deserialize, Serialize};

/// ChatML, the template zerolm's tokenizers ship (the one MiniMind and Qwen use).
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\n\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n\
{%- endfor %}\n\
{%- if add_generation_prompt %}\n\
{{- '<|im_start|>assistant\\n' }}\n\
{%- endif %}\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        msg,
    ))
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| DataError::Template(format!("cannot compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Render `messages`, appending the assistant generation prompt when asked.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| DataError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| DataError::Template(format!("cannot render: {e}")))
    }

    /// Byte spans of the rendered conversation that the model is trained on: each assistant message's
    /// content through the end of its turn as `end` says — all the template renders for the turn
    /// ([`CompletionEnd::Template`]) or through its end-of-turn token `eos_token` ([`CompletionEnd::Eos`]).
    ///
    /// Found by rendering prefixes: the span of assistant message `i` starts where the rendering of
    /// `messages[..i]` with the generation prompt ends, and ends where the rendering of `messages[..=i]`
    /// ends (or after the last `eos_token` inside it). The template must render prefixes as prefixes
    /// (ChatML does).
    pub fn assistant_spans(
        &self,
        messages: &[Message],
        end: CompletionEnd,
    ) -> Result<(String, Vec<(usize, usize)>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !full.starts_with(&before)
                || !full.starts_with(&through)
                || through.len() < before.len()
            {
                return Err(DataError::Template(
                    "the template does not render a conversation's prefix as a prefix of the whole; \
                     assistant spans cannot be located"
                        .into(),
                ));
            }
            let turn = &through[before.len()..];
            let stop = match (end, turn.rfind(&self.eos_token)) {
                (CompletionEnd::Eos, Some(p)) => before.len() + p + self.eos_token.len(),
                _ => through.len(),
            };
            spans.push((before.len(), stop));
        }
        Ok((full, spans))
    }
}

/// Where a chat completion (DPO) or a supervised assistant turn (SFT) ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompletionEnd {
    /// Through everything the chat template renders for the turn: `<|im_end|>\n` with ChatML. What TRL
    /// (`DPOTrainer`, `SFTTrainer` completion/assistant-only loss) and MiniMind train on.
    Template,
    /// At the end-of-turn token (`<|im_end|>`): the separator after it is neither trained nor scored.
    Eos,
}

impl CompletionEnd {
    /// The names `--completion-end` accepts (also how token files record it).
    pub const NAMES: &'static [&'static str] = &["template", "eos"];

    pub fn name(self) -> &'static str {
        match self {
            CompletionEnd::Template => "template",
            CompletionEnd::Eos => "eos",
        }
    }
}

impl std::str::FromStr for CompletionEnd {
    type Err = DataError;

    fn from_str(s: &str) -> Result<CompletionEnd, DataError> {
        match s {
            "template" => Ok(CompletionEnd::Template),
            "eos" => Ok(CompletionEnd::Eos),
            _ => Err(unknown_choice("--completion-end", s, CompletionEnd::NAMES)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate::new(CHATML_TEMPLATE, "<|im_start|>", "<|im_end|>").unwrap()
    }

    #[test]
    fn chatml_renders_like_hugging_face() {
        let msgs = vec![
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "你好"),
        ];
        assert_eq!(
            chatml().render(&msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            chatml().render(&msgs[..1], false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
        );
    }

    #[test]
    fn assistant_spans_cover_content_through_end_of_turn() {
        let msgs = vec![
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello!"),
            Message::new(Role::User, "2+2?"),
            Message::new(Role::Assistant, "4"),
        ];
        let (full, spans) = chatml().assistant_spans(&msgs, CompletionEnd::Eos).unwrap();
        let texts: Vec<&str> = spans.iter().map(|&(a, b)| &full[a..b]).collect();
        assert_eq!(texts, vec!["Hello!<|im_end|>", "4<|im_end|>"]);
        let (full, spans) = chatml()
            .assistant_spans(&msgs, CompletionEnd::Template)
            .unwrap();
        let texts: Vec<&str> = spans.iter().map(|&(a, b)| &full[a..b]).collect();
        assert_eq!(texts, vec!["Hello!<|im_end|>\n", "4<|im_end|>\n"]);
        for name in CompletionEnd::NAMES {
            assert_eq!(name.parse::<CompletionEnd>().unwrap().name(), *name);
        }
        assert!("turn".parse::<CompletionEnd>().is_err());
    }
}
