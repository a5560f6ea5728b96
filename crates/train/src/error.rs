//! The training crate's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting that cannot work (names the key).
    #[error("config: {0}")]
    Config(String),
    /// Input data that cannot be trained on (names the file).
    #[error("{0}")]
    Data(#[from] zerolm_data::DataError),
    #[error("{0}")]
    Model(#[from] zerolm_model::ModelError),
    /// A checkpoint that cannot be resumed with this command.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// Loss or gradients became NaN/Inf.
    #[error("training diverged at step {step}: {what}. {kept}")]
    Diverged {
        step: usize,
        what: String,
        kept: String,
    },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A bug rather than bad input.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Io(#[from] zerolm_io::IoError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    /// Whether the user can fix this (input, setting, checkpoint) rather than it being a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            TrainError::Config(_) | TrainError::Resume(_) | TrainError::Diverged { .. } => true,
            TrainError::Data(e) => e.is_user_error(),
            TrainError::Model(e) => e.is_user_error(),
            TrainError::Io(e) => e.is_user_error(),
            TrainError::Write { .. } | TrainError::Internal(_) | TrainError::Candle(_) => false,
        }
    }
}
