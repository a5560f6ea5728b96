//! The GGUF container, version 3 (little-endian): a header, key/value metadata, tensor descriptions,
//! then the tensors' data, each at an offset aligned to [`ALIGNMENT`].

use std::io::{self, Write};

/// Alignment of the data section and of each tensor in it (llama.cpp's default, `general.alignment`).
pub const ALIGNMENT: usize = 32;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
}

impl Value {
    /// GGUF's type code.
    fn code(&self) -> u32 {
        match self {
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Strings(_) | Value::I32s(_) => 9,
        }
    }

    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Value::U32(v) => w.write_all(&v.to_le_bytes()),
            Value::I32(v) => w.write_all(&v.to_le_bytes()),
            Value::F32(v) => w.write_all(&v.to_le_bytes()),
            Value::Bool(v) => w.write_all(&[*v as u8]),
            Value::Str(s) => write_str(w, s),
            Value::Strings(list) => {
                w.write_all(&8u32.to_le_bytes())?;
                w.write_all(&(list.len() as u64).to_le_bytes())?;
                list.iter().try_for_each(|s| write_str(w, s))
            }
            Value::I32s(list) => {
                w.write_all(&5u32.to_le_bytes())?;
                w.write_all(&(list.len() as u64).to_le_bytes())?;
                list.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
            }
        }
    }
}

/// ggml's element types that the exporter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q8_0,
}

impl GgmlType {
    fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 8,
        }
    }
}

/// A tensor ready to write: its ggml name, its shape as PyTorch orders it (outermost first), and its
/// encoded bytes.
#[derive(Debug, Clone)]
pub struct TensorData {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: GgmlType,
    pub bytes: Vec<u8>,
}

/// Writes a whole GGUF file.
pub fn write(
    w: &mut impl Write,
    metadata: &[(String, Value)],
    tensors: &[TensorData],
) -> io::Result<()> {
    let mut head = Vec::new();
    head.write_all(MAGIC)?;
    head.write_all(&VERSION.to_le_bytes())?;
    head.write_all(&(tensors.len() as u64).to_le_bytes())?;
    head.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        write_str(&mut head, key)?;
        head.write_all(&value.code().to_le_bytes())?;
        value.write(&mut head)?;
    }
    let mut offset = 0usize;
    for t in tensors {
        write_str(&mut head, &t.name)?;
        head.write_all(&(t.shape.len() as u32).to_le_bytes())?;
        // ggml lists dimensions innermost first.
        for &d in t.shape.iter().rev() {
            head.write_all(&(d as u64).to_le_bytes())?;
        }
        head.write_all(&t.kind.code().to_le_bytes())?;
        head.write_all(&(offset as u64).to_le_bytes())?;
        offset += padded(t.bytes.len());
    }
    head.resize(padded(head.len()), 0);
    w.write_all(&head)?;
    for t in tensors {
        w.write_all(&t.bytes)?;
        w.write_all(&vec![0u8; padded(t.bytes.len()) - t.bytes.len()])?;
    }
    Ok(())
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_gguf_v3_with_aligned_data() {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::Str("llama".into()),
            ),
            ("n".to_string(), Value::U32(7)),
            (
                "list".to_string(),
                Value::Strings(vec!["a".into(), "bc".into()]),
            ),
        ];
        let tensors = vec![
            TensorData {
                name: "x".into(),
                shape: vec![2, 3],
                kind: GgmlType::F32,
                bytes: vec![1; 24],
            },
            TensorData {
                name: "y".into(),
                shape: vec![1],
                kind: GgmlType::F32,
                bytes: vec![2; 4],
            },
        ];
        let mut out = Vec::new();
        write(&mut out, &meta, &tensors).unwrap();
        assert_eq!(&out[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(out[16..24].try_into().unwrap()), 3);
        // The data section starts aligned: x's 24 bytes padded to 32, then y's 4 padded to 32.
        assert_eq!(out.len() % ALIGNMENT, 0);
        let data = out.len() - 64;
        assert_eq!(&out[data..data + 24], &[1; 24]);
        assert_eq!(&out[data + 32..data + 36], &[2; 4]);
        // x's dims are written innermost first: 3, then 2.
        let x = out.windows(1).position(|w| w == b"x").unwrap();
        let dims = &out[x + 1 + 4..x + 1 + 4 + 16];
        assert_eq!(u64::from_le_bytes(dims[..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(dims[8..].try_into().unwrap()), 2);
    }
}
