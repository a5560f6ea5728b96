//! Using an exported model directory: complete a raw prompt or a chat turn, and dump a prompt's
//! logits (the check against transformers uses it).

use std::collections::BTreeMap;
use std::path::Path;

use crate::sample::{self, Sampler, SamplingConfig};
use crate::{Model, ModelError};
use candle_core::{Device, Tensor};
use zerolm_data::chat::{Message, Role};
use zerolm_data::tokenizer::TokenizerDir;

/// A model directory loaded with its tokenizer.
pub struct Generator {
    pub model: Model,
    pub tokenizer: TokenizerDir,
}

/// A completion: the prompt's ids, the new ids and their text.
pub struct Completion {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    pub text: String,
    pub stopped_at_eos: bool,
}

impl Generator {
    /// Loads `dir` to compute in `precision` (see [`crate::Precision`]).
    pub fn load(dir: &Path, precision: crate::Precision) -> Result<Generator, ModelError> {
        let mut model = crate::io::load_model_dir(dir, &crate::device::current())?;
        model.set_precision(precision);
        let model = model.for_inference()?;
        let tokenizer = TokenizerDir::load(dir)?;
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(ModelError::Config(format!(
                "{}: the tokenizer has {} tokens but the model's vocab_size is {}",
                dir.display(),
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        Ok(Generator { model, tokenizer })
    }

    /// The ids of a chat prompt: `system` (optional) and one user turn, ready for the assistant.
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String, ModelError> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message::new(Role::System, s));
        }
        messages.push(Message::new(Role::User, user));
        Ok(self.tokenizer.template.render(&messages, true)?)
    }

    /// Continues `text` (already rendered; special-token strings become their ids) until the end-of-turn
    /// token or `max_new_tokens`.
    pub fn complete(
        &self,
        text: &str,
        max_new_tokens: usize,
        sampling: SamplingConfig,
    ) -> Result<Completion, ModelError> {
        self.complete_with(text, max_new_tokens, sampling, true)
    }

    /// [`Generator::complete`], stopping at the end-of-turn token only when `stop_at_eos`.
    pub fn complete_with(
        &self,
        text: &str,
        max_new_tokens: usize,
        sampling: SamplingConfig,
        stop_at_eos: bool,
    ) -> Result<Completion, ModelError> {
        let prompt_ids = self.tokenizer.encode(text)?;
        if prompt_ids.is_empty() {
            return Err(ModelError::Input("the prompt is empty".into()));
        }
        let mut sampler = Sampler::new(sampling)?;
        let eos = self.tokenizer.eos_id;
        let stop: &[u32] = if stop_at_eos { &[eos] } else { &[] };
        let new_ids =
            sample::generate(&self.model, &prompt_ids, max_new_tokens, stop, &mut sampler)?;
        let stopped_at_eos = new_ids.last() == Some(&eos);
        let visible = if stopped_at_eos {
            &new_ids[..new_ids.len() - 1]
        } else {
            &new_ids[..]
        };
        let text = self.tokenizer.decode(visible)?;
        Ok(Completion {
            prompt_ids,
            new_ids,
            text,
            stopped_at_eos,
        })
    }

    /// The ids of `text` and the logits at every position ([T, vocab]): tensors `ids` (stored as f32
    /// when saved, exact below 2²⁴) and `logits`.
    pub fn prompt_logits(&self, text: &str) -> Result<BTreeMap<String, Tensor>, ModelError> {
        let ids = self.tokenizer.encode(text)?;
        let x = Tensor::new(ids.as_slice(), self.model.device())?.unsqueeze(0)?;
        let logits = self.model.forward(&x)?.squeeze(0)?;
        let mut out = BTreeMap::new();
        out.insert("logits".to_string(), logits);
        out.insert(
            "ids".to_string(),
            Tensor::new(ids.as_slice(), &Device::Cpu)?,
        );
        Ok(out)
    }
}
