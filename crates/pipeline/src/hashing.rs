//! Content hashes (blake3) of files and directories, memoised by path + size + mtime + inode so that an
//! unchanged file is never re-read: an up-to-date check costs one `stat` per file.

use crate::error::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Entry {
    size: u64,
    mtime_ns: i64,
    inode: u64,
    hash: String,
}

/// The memo: absolute path → the stat it was hashed under and the hash.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct HashCache {
    entries: BTreeMap<String, Entry>,
    #[serde(skip)]
    used: HashSet<String>,
    /// Files actually read (not answered from the memo) since load: for tests and `--verbose`.
    #[serde(skip)]
    pub files_read: usize,
}

impl HashCache {
    /// The hash of a file or directory, or `None` if it does not exist.
    pub fn hash(&mut self, path: &Path) -> Result<Option<String>> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PipelineError::read(path, e)),
        };
        if meta.is_dir() {
            let mut files = Vec::new();
            list_files(path, path, &mut files)?;
            let mut h = blake3::Hasher::new();
            h.update(b"dir\n");
            for rel in files {
                let fh = self.file_hash(&path.join(&rel))?;
                h.update(rel.as_bytes());
                h.update(b"\0");
                h.update(fh.as_bytes());
                h.update(b"\n");
            }
            Ok(Some(h.finalize().to_hex().to_string()))
        } else {
            self.file_hash(path).map(Some)
        }
    }

    fn file_hash(&mut self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).map_err(|e| PipelineError::read(path, e))?;
        let key = path.to_string_lossy().into_owned();
        let stat = (
            meta.len(),
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.ino(),
        );
        self.used.insert(key.clone());
        if let Some(e) = self.entries.get(&key) {
            if (e.size, e.mtime_ns, e.inode) == stat {
                return Ok(e.hash.clone());
            }
        }
        let hash = hash_file(path)?;
        self.files_read += 1;
        self.entries.insert(
            key,
            Entry {
                size: stat.0,
                mtime_ns: stat.1,
                inode: stat.2,
                hash: hash.clone(),
            },
        );
        Ok(hash)
    }

    /// Drops entries of files that no longer exist (old checkpoints, removed outputs).
    pub fn prune(&mut self) {
        let used = &self.used;
        self.entries
            .retain(|k, _| used.contains(k) || Path::new(k).exists());
    }
}

/// Relative paths of every file under `dir`, sorted, with `/` separators.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| PipelineError::read(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| PipelineError::read(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            list_files(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Hex blake3 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| PipelineError::read(path, e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| PipelineError::read(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_reread_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a"), "one").unwrap();
        std::fs::write(d.join("sub/b"), "two").unwrap();
        let mut c = HashCache::default();
        let h1 = c.hash(&d).unwrap().unwrap();
        assert_eq!(c.files_read, 2);
        assert_eq!(c.hash(&d).unwrap().unwrap(), h1);
        assert_eq!(c.files_read, 2, "the memo answered");
        // Same content rewritten: re-read (new mtime), same hash.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("a"), "one").unwrap();
        assert_eq!(c.hash(&d).unwrap().unwrap(), h1);
        assert_eq!(c.files_read, 3);
        std::fs::write(d.join("sub/b"), "TWO").unwrap();
        assert_ne!(c.hash(&d).unwrap().unwrap(), h1);
        // A renamed file changes the directory hash.
        std::fs::write(d.join("sub/b"), "two").unwrap();
        std::fs::rename(d.join("a"), d.join("a2")).unwrap();
        assert_ne!(c.hash(&d).unwrap().unwrap(), h1);
        assert_eq!(c.hash(&dir.path().join("none")).unwrap(), None);
        // The memo survives a save and load.
        let json = serde_json::to_string(&c).unwrap();
        let mut c2: HashCache = serde_json::from_str(&json).unwrap();
        c2.hash(&d).unwrap();
        assert_eq!(c2.files_read, 0);
    }
}
