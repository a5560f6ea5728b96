//! Content fingerprints: hex blake3 of bytes or of a file read in a streaming fashion.

use std::io::Read;
use std::path::Path;

use crate::error::{IoError, Result};

/// Hex blake3 of a byte string.
pub fn bytes(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Hex blake3 of a file's content and its size.
pub fn file(path: &Path) -> Result<(String, u64)> {
    let err = |cause| IoError::read(path, cause);
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_hashes_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"zerolm").unwrap();
        assert_eq!(super::file(&p).unwrap(), (super::bytes(b"zerolm"), 6));
        let e = super::file(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read"), "{e}");
    }
}
