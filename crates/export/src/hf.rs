//! A half-precision copy of a model directory in Hugging Face's layout: `config.json` saying its
//! `torch_dtype`, the weights in bf16 or f16, the tokenizer files, and `zerolm.json` naming the source.

use std::path::Path;

use candle_core::DType;
use serde_json::json;

use crate::{ExportError, Source, Written};

/// Writes `src` to the directory `out` with every weight stored as `dtype` (bf16 or f16).
pub fn to_half_dir(src: &Source, out: &Path, dtype: DType) -> Result<Written, ExportError> {
    let name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => {
            return Err(ExportError::Invalid(format!(
                "a Hugging Face export is bf16 or f16, not {other:?}"
            )))
        }
    };
    let mut meta = std::collections::BTreeMap::new();
    meta.extend((src.provenance.iter()).map(|(k, v)| (format!("zerolm.{k}"), v.clone())));
    let weights = zerolm_model::io::safetensors_bytes_in(&src.params, &meta, dtype)?;
    let mut config = src.cfg.to_hf_json();
    config["torch_dtype"] = json!(name);
    config["dtype"] = json!(name); // transformers 5 reads `dtype`
    let provenance: serde_json::Map<String, serde_json::Value> = (src.provenance.iter())
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let zerolm = json!({
        "stage": "export",
        "dtype": name,
        "weights_blake3": zerolm_io::hash_bytes(&weights),
        "source": src.dir.display().to_string(),
        "source_provenance": provenance,
    });
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("config.json", pretty(&config)),
        (
            "generation_config.json",
            pretty(&zerolm_model::io::generation_config_json(&src.cfg)),
        ),
        ("model.safetensors", weights),
        ("zerolm.json", pretty(&zerolm)),
    ];
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let path = src.tokenizer.dir.join(file);
        files.push((
            file,
            std::fs::read(&path).map_err(|e| zerolm_io::IoError::read(&path, e))?,
        ));
    }
    let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    zerolm_io::write_files_atomically(out, &refs)?;
    Ok(Written {
        path: out.to_path_buf(),
        bytes,
        tensors: src.params.len(),
    })
}
