//! Atomic writes: a file or a directory of files is written under a temporary name, synced, then
//! renamed into place, so a reader (or a kill at any moment) sees the old content or the new, never
//! half of it.

use std::path::{Path, PathBuf};

use crate::error::{IoError, Result};

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
        IoError::write(path, cause)
    })
}

/// Write `data` to `path` atomically (creating its parent directories).
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|cause| IoError::write(parent, cause))?;
    }
    let tmp = temp_path(path);
    if let Err(cause) = std::fs::write(&tmp, data) {
        let _ = std::fs::remove_file(&tmp);
        return Err(IoError::write(tmp, cause));
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
        move |cause| IoError::write(p, cause)
    };
    let _ = std::fs::remove_dir_all(tmp);
    // Named as the directory the caller asked for: the temporary name means nothing to a user.
    std::fs::create_dir_all(tmp).map_err(werr(dir))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_land_whole_and_leave_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sub/a.json");
        write_atomically(&f, b"1").unwrap();
        write_atomically(&f, b"2").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"2");
        let m = d.path().join("model");
        write_files_atomically(&m, &[("x", b"1"), ("y", b"2")]).unwrap();
        write_files_atomically(&m, &[("y", b"3")]).unwrap();
        assert_eq!(std::fs::read(m.join("x")).unwrap(), b"1", "kept");
        assert_eq!(std::fs::read(m.join("y")).unwrap(), b"3", "rewritten");
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_failed_write_names_the_path_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("file"), b"").unwrap();
        let e = write_atomically(&d.path().join("file/x.json"), b"1").unwrap_err();
        assert!(e.to_string().contains("file"), "{e}");
        assert!(
            e.is_user_error(),
            "a path through a file is the user's to fix"
        );
    }
}
