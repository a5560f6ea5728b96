//! zerolm's data layer: input readers for every supported format, chat-template rendering, byte-level
//! BPE tokenizer training, and the tokenized Parquet artifacts the training stages read.

pub mod artifact;
pub mod chat;
pub mod encode;
pub mod error;
pub mod formats;
pub mod input;
pub mod output;
pub mod progress;
pub mod stream;
pub mod tokenizer;

pub use error::{DataError, Result};
