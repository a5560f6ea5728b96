//! Content fingerprints (blake3) and atomic writes: a file or directory appears complete or not at all.

use crate::error::{DataError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Hex blake3 of a byte string.
pub fn bytes(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Hex blake3 of a file's content and its size, read in streaming fashion.
pub fn file(path: &Path) -> Result<(String, u64)> {
    let err = |source| DataError::Read {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// The temporary name a file is written under before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// fsync `tmp`, then rename it to `path`; on failure `tmp` is removed, so nothing half-written stays.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    let done = std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(tmp, path));
    done.map_err(|cause| {
        let _ = std::fs::remove_file(tmp);
        DataError::Write {
            path: path.to_path_buf(),
            cause,
        }
    })
}

/// Write `data` to `path` atomically.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DataError::Write {
            path: parent.into(),
            cause: source,
        })?;
    }
    let tmp = temp_path(path);
    if let Err(cause) = std::fs::write(&tmp, data) {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Write { path: tmp, cause });
    }
    commit(&tmp, path)
}

/// Write a directory of files atomically: into a sibling temp directory, then swapped into place.
/// Files already in `dir` that are not rewritten are kept.
pub fn write_files_atomically(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let tmp = temp_path(dir);
    let result = swap_in_dir(dir, &tmp, files);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn swap_in_dir(dir: &Path, tmp: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DataError::Write {
            path: p,
            cause: source,
        }
    };
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::create_dir_all(tmp).map_err(werr(tmp))?;
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(werr(dir))? {
            let entry = entry.map_err(werr(dir))?;
            if entry.file_type().map_err(werr(dir))?.is_file() {
                std::fs::copy(entry.path(), tmp.join(entry.file_name())).map_err(werr(tmp))?;
            }
        }
    }
    for (name, data) in files {
        let p = tmp.join(name);
        std::fs::write(&p, data).map_err(werr(&p))?;
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(werr(&p))?;
    }
    if dir.exists() {
        let old = dir.with_file_name(format!(
            "{}.{}.old",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(dir, &old).map_err(werr(dir))?;
        std::fs::rename(tmp, dir).map_err(werr(dir))?;
        std::fs::remove_dir_all(&old).map_err(werr(&old))?;
    } else {
        std::fs::rename(tmp, dir).map_err(werr(dir))?;
    }
    Ok(())
}
