//! File primitives every zerolm crate shares: atomic writes (a file or a directory of files appears
//! complete or not at all), blake3 content fingerprints, and reading the rows of a JSON-lines file.

mod atomic;
mod error;
mod hash;
mod jsonl;

pub use atomic::{commit, temp_path, write_atomically, write_files_atomically};
pub use error::{is_user_fixable, IoError, Result};
pub use hash::{bytes as hash_bytes, file as hash_file};
pub use jsonl::read_rows;
