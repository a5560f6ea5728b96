//! The one error of file primitives: which path, reading or writing, and the OS's cause.

use std::io::ErrorKind;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

pub type Result<T, E = IoError> = std::result::Result<T, E>;

impl IoError {
    pub fn read(path: impl Into<PathBuf>, cause: std::io::Error) -> IoError {
        IoError::Read {
            path: path.into(),
            cause,
        }
    }

    pub fn write(path: impl Into<PathBuf>, cause: std::io::Error) -> IoError {
        IoError::Write {
            path: path.into(),
            cause,
        }
    }

    /// A missing or unreadable input is the user's to fix; so is a write refused because of the path
    /// they gave (see [`is_user_fixable`]).
    pub fn is_user_error(&self) -> bool {
        match self {
            IoError::Read { .. } => true,
            IoError::Write { cause, .. } => is_user_fixable(cause),
        }
    }
}

/// Whether a failed write is the user's to fix — a path through a file, a directory where a file
/// should go, no permission, a read-only or full disk — rather than a fault of the program.
pub fn is_user_fixable(cause: &std::io::Error) -> bool {
    matches!(
        cause.kind(),
        ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::AlreadyExists
            | ErrorKind::NotFound
            | ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::StorageFull
            | ErrorKind::InvalidFilename
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_through_a_file_is_the_users_mistake_an_interrupted_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let cause = std::fs::create_dir_all(file.join("tok")).unwrap_err();
        assert!(IoError::write(file.join("tok"), cause).is_user_error());
        let other = std::io::Error::from(ErrorKind::Interrupted);
        assert!(!IoError::write("x", other).is_user_error());
        let missing = std::io::Error::from(ErrorKind::NotFound);
        assert!(IoError::read("x", missing).is_user_error());
    }
}
