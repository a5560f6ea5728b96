//! `export`: a model directory as one GGUF file (llama.cpp, Ollama, LM Studio) or as a half-precision
//! Hugging Face directory. All logic lives in `zerolm-export`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use candle_core::DType;
use clap::{Parser, ValueEnum};
use zerolm_cli::UsageError;
use zerolm_export::{GgufDtype, Source};

#[derive(Parser)]
#[command(
    about = "Export a zerolm model directory as GGUF (llama.cpp, Ollama) or as bf16/f16 safetensors",
    version
)]
struct Cli {
    /// Model directory (config.json, model.safetensors, tokenizer files), e.g. runs/dpo/model.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// The GGUF file, or the directory of the safetensors export.
    #[arg(long)]
    out: PathBuf,
    /// gguf: f32 (default), f16 or q8_0 (vectors stay f32); safetensors: bf16 or f16.
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Gguf,
    Safetensors,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Dtype {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

fn run(cli: Cli) -> Result<()> {
    let src = Source::load(&cli.model)?;
    let (written, what) = match (cli.format, cli.dtype) {
        (Format::Gguf, dtype) => {
            let dtype = match dtype.unwrap_or(Dtype::F32) {
                Dtype::F32 => GgufDtype::F32,
                Dtype::F16 => GgufDtype::F16,
                Dtype::Q8_0 => GgufDtype::Q8_0,
                Dtype::Bf16 => return Err(usage("--format gguf takes --dtype f32, f16 or q8_0")),
            };
            (
                zerolm_export::to_gguf(&src, &cli.out, dtype)?,
                format!("GGUF {}, {}", arch(&src), dtype.name()),
            )
        }
        (Format::Safetensors, Some(Dtype::Bf16)) => {
            let w = zerolm_export::hf::to_half_dir(&src, &cli.out, DType::BF16)?;
            (w, "safetensors bf16".to_string())
        }
        (Format::Safetensors, Some(Dtype::F16)) => {
            let w = zerolm_export::hf::to_half_dir(&src, &cli.out, DType::F16)?;
            (w, "safetensors f16".to_string())
        }
        (Format::Safetensors, _) => return Err(usage(
            "--format safetensors takes --dtype bf16 or f16 (the model directory is already f32)",
        )),
    };
    eprintln!(
        "export: {} ({what}, {} tensors, {:.1} MB) from {}",
        written.path.display(),
        written.tensors,
        written.bytes as f64 / 1e6,
        cli.model.display()
    );
    Ok(())
}

fn arch(src: &Source) -> &'static str {
    match src.cfg.model_type {
        zerolm_model::ModelType::Llama => "llama",
        zerolm_model::ModelType::Qwen3 => "qwen3",
    }
}

fn usage(message: &str) -> anyhow::Error {
    UsageError(message.to_string()).into()
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
