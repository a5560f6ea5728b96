//! The data crate's one error type: every variant says what went wrong and where.

use std::path::{Path, PathBuf};

/// Where in an input a problem is: a file and a 1-based line (JSONL, text) or 0-based row (JSON array,
/// Parquet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub row: Option<u64>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(r) = self.row {
            write!(f, " (row {r})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{at}: {msg}")]
    BadRow { at: Location, msg: String },
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    #[error("{0}")]
    Usage(String),
    /// A file that cannot be read, or written (names the path).
    #[error(transparent)]
    Io(#[from] zerolm_io::IoError),
    #[error("{path}: parquet error: {msg}")]
    Parquet { path: PathBuf, msg: String },
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("{what} in {path} does not match: {msg}")]
    Mismatch {
        what: String,
        path: PathBuf,
        msg: String,
    },
}

impl DataError {
    /// True for problems the user can fix in their input or flags (exit code 1); false for internal
    /// failures such as a write error (exit code 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            DataError::Io(e) => e.is_user_error(),
            _ => true,
        }
    }
}

/// Maps a Parquet, Arrow or JSON error met in `path` to [`DataError::Parquet`].
pub(crate) fn parquet_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> DataError + '_ {
    move |e| DataError::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// A flag value that is not one of `names`.
pub(crate) fn unknown_choice(flag: &str, value: &str, names: &[&str]) -> DataError {
    DataError::Usage(format!(
        "{flag}: unknown value `{value}` (expected one of: {})",
        names.join(", ")
    ))
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
