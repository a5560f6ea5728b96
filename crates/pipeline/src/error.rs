//! The pipeline crate's error type: every message names the file (and line, stage) it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline file is invalid: `file:line: stage `x`: what`.
    #[error("{0}")]
    Invalid(String),
    /// A flag or override that cannot work.
    #[error("{0}")]
    Usage(String),
    /// A stage exited with a failure.
    #[error("{0}")]
    StageFailed(String),
    /// Another run holds the pipeline's lock.
    #[error("{0}")]
    Locked(String),
    /// A file that cannot be read or written (names the path).
    #[error(transparent)]
    Io(#[from] zerolm_io::IoError),
    /// The run was stopped by SIGINT or SIGTERM (what it cancelled).
    #[error("{0}")]
    Interrupted(String),
    /// A bug rather than bad input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// Whether the user can fix this (a file, a flag, a stage's input) rather than it being a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            PipelineError::Internal(_) => false,
            PipelineError::Io(e) => e.is_user_error(),
            _ => true,
        }
    }

    pub(crate) fn read(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        PipelineError::Io(zerolm_io::IoError::read(path, cause))
    }

    pub(crate) fn write(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        PipelineError::Io(zerolm_io::IoError::write(path, cause))
    }
}

pub type Result<T> = std::result::Result<T, PipelineError>;
