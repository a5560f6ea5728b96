//! Weights and configs on disk: safetensors with Hugging Face tensor names, `config.json`,
//! `generation_config.json`. This module produces and parses bytes; callers write them atomically.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::{ModelConfig, ModelError};

/// Serialises f32 tensors to safetensors bytes. `metadata` lands in the header; `format: pt` is always
/// added because transformers refuses archives without it.
///
/// Written here rather than with `safetensors::serialize`, whose header lists metadata in `HashMap`
/// order: the same weights would give different bytes from run to run. Here the header is sorted and
/// tensors are laid out in name order, so equal weights give equal files.
pub fn safetensors_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, ModelError> {
    safetensors_bytes_in(tensors, metadata, DType::F32)
}

/// [`safetensors_bytes`] with every tensor stored as `dtype` (F32, F16 or BF16; rounded to nearest).
pub fn safetensors_bytes_in(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    dtype: DType,
) -> Result<Vec<u8>, ModelError> {
    let mut header = serde_json::Map::new();
    let mut meta: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    meta.insert("format".into(), "pt".into());
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu)?.to_dtype(dtype)?.flatten_all()?;
        let start = data.len();
        let (tag, bytes): (&str, Vec<u8>) = match dtype {
            DType::F32 => ("F32", le_bytes(t.to_vec1::<f32>()?, f32::to_le_bytes)),
            DType::F16 => (
                "F16",
                le_bytes(t.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
            ),
            DType::BF16 => (
                "BF16",
                le_bytes(t.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
            ),
            other => {
                return Err(ModelError::Input(format!(
                    "safetensors in {other:?} is not supported; use f32, f16 or bf16"
                )))
            }
        };
        data.extend(bytes);
        let shape = tensors[name].dims();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": tag, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head =
        serde_json::to_vec(&serde_json::Value::Object(header)).expect("header serialises");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&data);
    Ok(out)
}

fn le_bytes<T: Copy, const N: usize>(values: Vec<T>, bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(bytes).collect()
}

/// Tensors by name, and a file's string metadata.
pub type Loaded = (BTreeMap<String, Tensor>, BTreeMap<String, String>);

/// Reads a safetensors file into f32 tensors on `device` (f16/bf16/f64 are converted), with its metadata.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<Loaded, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let bad = |e: String| ModelError::Weights(format!("{}: {e}", path.display()));
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {other:?}; expected a float type"
                )))
            }
        };
        out.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok((out, metadata))
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Parses a model directory's `config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    // transformers 5 may keep rope_theta only inside rope_parameters.
    if let Some(o) = value.as_object_mut() {
        if !o.contains_key("rope_theta") {
            if let Some(theta) = o
                .get("rope_parameters")
                .and_then(|r| r.get("rope_theta"))
                .cloned()
            {
                o.insert("rope_theta".into(), theta);
            }
        }
        let scaled = o.get("rope_scaling").is_some_and(|v| !v.is_null())
            || o.get("rope_parameters")
                .and_then(|r| r.get("rope_type"))
                .and_then(|t| t.as_str())
                .is_some_and(|t| t != "default");
        if scaled {
            return Err(ModelError::Config(format!(
                "{}: RoPE scaling (rope_scaling / a non-default rope_type) is not supported; only plain RoPE models load",
                path.display()
            )));
        }
        // Some configs list several eos ids; the first is the one generation stops at here.
        if let Some(first) = o
            .get("eos_token_id")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .cloned()
        {
            o.insert("eos_token_id".into(), first);
        }
        for (key, default) in [
            ("tie_word_embeddings", serde_json::json!(false)),
            ("rms_norm_eps", serde_json::json!(1e-6)),
        ] {
            o.entry(key).or_insert(default);
        }
    }
    let cfg: ModelConfig = serde_json::from_value(value)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    cfg.validate()
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    Ok(cfg)
}

/// `generation_config.json` for a model with these special ids.
pub fn generation_config_json(cfg: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "do_sample": false,
    })
}

/// The files of an HF model directory (without the tokenizer): name → bytes.
pub fn model_dir_files(
    cfg: &ModelConfig,
    params: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<(&'static str, Vec<u8>)>, ModelError> {
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    Ok(vec![
        ("config.json", pretty(&cfg.to_hf_json())),
        (
            "generation_config.json",
            pretty(&generation_config_json(cfg)),
        ),
        ("model.safetensors", safetensors_bytes(params, metadata)?),
    ])
}

/// A model directory's name: its folder's, or its parent's for the stages' `…/model` folders
/// (`runs/dpo/model` is `dpo`). What `serve` lists and `export` writes as the model's name.
pub fn model_name(dir: &Path) -> String {
    let full = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(&full) {
        Some(n) if n == "model" => full.parent().and_then(name).unwrap_or(n),
        Some(n) => n,
        None => "zerolm".into(),
    }
}

/// Loads a model directory (config.json + model.safetensors) onto `device`.
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<crate::Model, ModelError> {
    let cfg = read_config(dir)?;
    let (params, _) = load_safetensors(&dir.join("model.safetensors"), device)?;
    crate::Model::new(cfg, params).map_err(|e| match e {
        ModelError::Weights(m) => {
            ModelError::Weights(format!("{}: {m}", dir.join("model.safetensors").display()))
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion_covers_normal_subnormal_and_special() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert!(half_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn safetensors_round_trip_keeps_values_and_metadata() {
        let mut t = BTreeMap::new();
        t.insert(
            "a".to_string(),
            Tensor::new(&[[1f32, 2.0], [3.0, -4.5]], &Device::Cpu).unwrap(),
        );
        let mut meta = BTreeMap::new();
        meta.insert("zerolm.step".to_string(), "7".to_string());
        let bytes = safetensors_bytes(&t, &meta).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, bytes).unwrap();
        let (back, m) = load_safetensors(&p, &Device::Cpu).unwrap();
        assert_eq!(
            back["a"].to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, -4.5]]
        );
        assert_eq!(m["zerolm.step"], "7");
        assert_eq!(m["format"], "pt");
        let again = safetensors_bytes(&t, &meta).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            again,
            "same tensors, same bytes"
        );
    }
}
