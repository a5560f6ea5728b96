//! The eval crate's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A task file that cannot be read as any task kind, or is empty (names the file).
    #[error("{path}: {msg}")]
    BadTask { path: PathBuf, msg: String },
    /// One item of a task file (names the file and its line or row).
    #[error("{at}: {msg}")]
    BadItem { at: String, msg: String },
    /// A flag or setting that cannot work.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Data(#[from] zerolm_data::DataError),
    #[error("{0}")]
    Model(#[from] zerolm_model::ModelError),
    #[error(transparent)]
    Io(#[from] zerolm_io::IoError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
    /// Whether the user can fix this (a task file, a flag, the model directory) rather than a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            EvalError::BadTask { .. } | EvalError::BadItem { .. } | EvalError::Usage(_) => true,
            EvalError::Data(e) => e.is_user_error(),
            EvalError::Model(e) => e.is_user_error(),
            EvalError::Io(e) => e.is_user_error(),
            EvalError::Candle(_) => false,
        }
    }

    pub(crate) fn item(at: impl std::fmt::Display, msg: impl Into<String>) -> EvalError {
        EvalError::BadItem {
            at: at.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn task(path: &std::path::Path, msg: impl Into<String>) -> EvalError {
        EvalError::BadTask {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
