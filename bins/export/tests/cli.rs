//! `export` as a user calls it: a half-precision Hugging Face directory that zerolm loads back with the
//! same logits within the format's rounding, provenance recorded, and bad calls exit 1 naming the
//! problem with nothing written.

use candle_core::{Device, Tensor};
use serde_json::Value;
use zerolm_model::io::{load_model_dir, load_safetensors};

fn export(args: &[&str]) -> zerolm_testkit::Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_export"), args)
}

fn logits(dir: &std::path::Path) -> Vec<f32> {
    let model = load_model_dir(dir, &Device::Cpu).unwrap();
    let x = Tensor::new(&[[5u32, 9, 13, 2, 7]], &Device::Cpu).unwrap();
    model
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_half_precision_directory_loads_back_with_the_same_logits() {
    let work = zerolm_testkit::workdir("export-cli", "half");
    let src = zerolm_testkit::micro_model(&work.join("model"), 4);
    let want = logits(&src);
    for (dtype, name, tolerance) in [("bf16", "bfloat16", 2e-2f32), ("f16", "float16", 2e-3)] {
        let out = work.join(dtype);
        let args = [
            "--model",
            src.to_str().unwrap(),
            "--format",
            "safetensors",
            "--dtype",
            dtype,
        ];
        export(&[&args[..], &["--out", out.to_str().unwrap()]].concat()).assert_ok();
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["torch_dtype"], name);
        let size = |d: &std::path::Path| {
            std::fs::metadata(d.join("model.safetensors"))
                .unwrap()
                .len()
        };
        assert!(
            size(&out) * 2 < size(&src) + 4096,
            "{} vs {}",
            size(&out),
            size(&src)
        );
        let (_, meta) = load_safetensors(&out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert!(
            meta.contains_key("zerolm.source_weights_blake3"),
            "{meta:?}"
        );
        let z: Value =
            serde_json::from_slice(&std::fs::read(out.join("zerolm.json")).unwrap()).unwrap();
        assert_eq!(z["stage"], "export");
        let got = logits(&out);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tolerance * scale, "{dtype}: {worst} of {scale}");
        assert!(out.join("tokenizer.json").exists() && out.join("tokenizer_config.json").exists());
    }
}

#[test]
fn bad_calls_exit_1_naming_the_problem_and_write_nothing() {
    let work = zerolm_testkit::workdir("export-cli", "bad");
    let src = zerolm_testkit::micro_model(&work.join("model"), 4);
    let src = src.to_str().unwrap();
    let out = work.join("out.gguf");
    let out = out.to_str().unwrap();
    export(&[
        "--model",
        "/nonexistent/m",
        "--format",
        "gguf",
        "--out",
        out,
    ])
    .assert_user_error("/nonexistent/m");
    export(&[
        "--model", src, "--format", "gguf", "--dtype", "bf16", "--out", out,
    ])
    .assert_user_error("f32, f16 or q8_0");
    export(&["--model", src, "--format", "safetensors", "--out", out])
        .assert_user_error("bf16 or f16");
    export(&["--model", src, "--format", "onnx", "--out", out]).assert_user_error("onnx");
    assert!(!std::path::Path::new(out).exists());
    // Weights that do not fit the config are refused, naming the tensor.
    let broken = work.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(work.join("model").join(f), broken.join(f)).unwrap();
    }
    let mut t = std::collections::BTreeMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    std::fs::write(
        broken.join("model.safetensors"),
        zerolm_model::io::safetensors_bytes(&t, &Default::default()).unwrap(),
    )
    .unwrap();
    export(&[
        "--model",
        broken.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        out,
    ])
    .assert_user_error("embed_tokens");
    assert!(!std::path::Path::new(out).exists());
}
