//! `export --format gguf` judged by llama.cpp itself: llama-cpp-python (which builds llama.cpp) loads
//! the file, its logits for the same token ids match zerolm's, its greedy tokens are zerolm's, its own
//! tokenizer splits a text into zerolm's ids, and the file's chat template renders zerolm's prompt, whose
//! greedy answer is zerolm's;
//! the `gguf` package reads every key back. Llama (tied, q/k rows reordered for llama.cpp's rotary
//! layout) and Qwen3 (untied, q/k norms, head_dim ≠ hidden/heads). Needs `tools/install-clients.sh`
//! (`.ci/run` calls it); without the venv the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use zerolm_model::infer::Generator;
use zerolm_model::sample::{self, Sampler, SamplingConfig};
use zerolm_model::{ModelType, Precision};

fn python() -> PathBuf {
    let p = zerolm_testkit::repo().join(".venv-clients/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run tools/install-clients.sh",
        p.display()
    );
    p
}

fn export(args: &[&str]) -> zerolm_testkit::Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_export"), args)
}

/// An untrained micro model of `kind`: Llama as the preset makes it, or Qwen3 untied with head_dim 12.
fn model(name: &str, kind: ModelType) -> PathBuf {
    let dir = zerolm_testkit::workdir("export-gguf", name).join("model");
    let mut cfg = zerolm_model::ModelConfig::preset("micro").unwrap();
    if kind == ModelType::Qwen3 {
        cfg.model_type = ModelType::Qwen3;
        cfg.head_dim = Some(12);
        cfg.tie_word_embeddings = false;
    }
    zerolm_testkit::untrained_model_of(&dir, cfg, 3)
}

/// Runs `tests/clients/llama_check.py` on `gguf`.
fn llama_check(gguf: &Path, request: &Value) -> Value {
    let req = gguf.with_extension("request.json");
    std::fs::write(&req, request.to_string()).unwrap();
    let script = zerolm_testkit::repo().join("tests/clients/llama_check.py");
    let out = Command::new(python())
        .arg(script)
        .arg(gguf)
        .arg(&req)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "llama_check.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// Largest |a − b| over the largest |a|.
fn relative_diff(a: &[Vec<f32>], b: &Value) -> f64 {
    let b: Vec<Vec<f64>> = serde_json::from_value(b.clone()).unwrap();
    assert_eq!(a.len(), b.len());
    let (mut diff, mut scale) = (0f64, 0f64);
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra.len(), rb.len());
        for (&x, &y) in ra.iter().zip(rb) {
            diff = diff.max((x as f64 - y).abs());
            scale = scale.max((x as f64).abs());
        }
    }
    diff / scale
}

const TEXT: &str =
    "Hello world, 12345 numbers!  Elena Moreau lives in 北京市 (Beijing).\n<|im_end|>";

fn check(name: &str, kind: ModelType) {
    let dir = model(name, kind);
    let g = Generator::load(&dir, Precision::F32).unwrap();
    let ids = g.tokenizer.encode("The capital of the world is").unwrap();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits: Vec<Vec<f32>> = g
        .model
        .forward(&x)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mut greedy = Sampler::new(SamplingConfig {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    })
    .unwrap();
    let want_greedy = sample::generate(&g.model, &ids, 12, &[], &mut greedy).unwrap();
    let prompt = g.chat_prompt(None, "Hi there").unwrap();
    let want_chat = g
        .complete(
            &prompt,
            8,
            SamplingConfig {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0,
            },
        )
        .unwrap();
    let request =
        json!({"ids": ids, "greedy": 12, "text": TEXT, "chat": "Hi there", "chat_tokens": 8});
    let arch = if kind == ModelType::Qwen3 {
        "qwen3"
    } else {
        "llama"
    };
    let mut sizes = Vec::new();
    for dtype in ["f32", "f16", "q8_0"] {
        let out = dir.parent().unwrap().join(format!("model-{dtype}.gguf"));
        export(&[
            "--model",
            dir.to_str().unwrap(),
            "--format",
            "gguf",
            "--dtype",
            dtype,
            "--out",
            out.to_str().unwrap(),
        ])
        .assert_ok();
        sizes.push(std::fs::metadata(&out).unwrap().len());
        let seen = llama_check(&out, &request);
        let f = &seen["fields"];
        assert_eq!(f["general.architecture"], arch);
        assert_eq!(f[format!("{arch}.block_count")], 2);
        assert_eq!(f[format!("{arch}.attention.head_count_kv")], 2);
        assert_eq!(
            f[format!("{arch}.rope.dimension_count")],
            g.model.config().head_dim()
        );
        assert_eq!(f["tokenizer.ggml.model"], "gpt2");
        assert_eq!(
            f["tokenizer.ggml.tokens"]["len"],
            g.model.config().vocab_size
        );
        assert_eq!(f["tokenizer.ggml.eos_token_id"], g.tokenizer.eos_id);
        assert!(f["tokenizer.chat_template"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>"));
        assert!(f["zerolm.source_weights_blake3"].is_string(), "{f}");
        let rel = relative_diff(&logits, &seen["logits"]);
        let tolerance = match dtype {
            "f32" => 1e-3,
            "f16" => 2e-2,
            _ => 5e-2,
        };
        eprintln!(
            "{arch} {dtype}: {} bytes, types {}, logits max relative difference {rel:.2e}, greedy {}, chat {}",
            sizes.last().unwrap(), seen["tensor_types"], seen["greedy"], seen["chat_ids"]
        );
        assert!(
            rel < tolerance,
            "{arch} {dtype}: logits differ by {rel:e} relative"
        );
        if dtype == "f32" {
            assert_eq!(seen["greedy"], json!(want_greedy), "greedy tokens");
            assert_eq!(
                seen["tokenized"],
                json!(g.tokenizer.encode(TEXT).unwrap()),
                "llama.cpp's tokenizer"
            );
            assert_eq!(seen["chat_prompt"], prompt.as_str(), "the chat template");
            assert_eq!(
                seen["chat_ids"],
                json!(want_chat.new_ids),
                "the chat answer"
            );
        }
    }
    assert!(sizes[2] < sizes[1] && sizes[1] < sizes[0], "{sizes:?}");
}

#[test]
fn llama_cpp_runs_an_exported_llama_model_as_zerolm_does() {
    check("llama", ModelType::Llama);
}

#[test]
fn llama_cpp_runs_an_exported_qwen3_model_as_zerolm_does() {
    check("qwen3", ModelType::Qwen3);
}
