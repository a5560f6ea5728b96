//! The model crate's error type: what went wrong and where.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A config that cannot describe a model (names the field).
    #[error("model config: {0}")]
    Config(String),
    /// Weights that do not fit the config (names the tensor).
    #[error("model weights: {0}")]
    Weights(String),
    /// Input the model cannot take (ids out of range, too long).
    #[error("model input: {0}")]
    Input(String),
    /// A device that cannot be used (`--device`).
    #[error("{0}")]
    Device(String),
    /// A tokenizer or template problem of a model directory.
    #[error(transparent)]
    Data(#[from] zerolm_data::DataError),
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, cause: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }

    /// Whether the user can fix this (bad file or setting) rather than it being a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            ModelError::Data(e) => e.is_user_error(),
            ModelError::Candle(_) => false,
            _ => true,
        }
    }
}
