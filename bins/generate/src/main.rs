//! `generate`: complete a raw prompt or answer a chat message with a trained model directory.
//! All logic lives in `zerolm-model` (inference and sampling).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_cli::threads::ComputeArgs;
use zerolm_cli::UsageError;
use zerolm_model::infer::Generator;
use zerolm_model::sample::SamplingConfig;

#[derive(Parser)]
#[command(
    about = "Sample from a zerolm model directory (raw prompt or chat)",
    version
)]
struct Cli {
    /// Model directory (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// Raw text to continue.
    #[arg(long, conflicts_with = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the tokenizer's chat template; the answer is printed.
    #[arg(long)]
    chat: Option<String>,
    /// System prompt for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Keep generating past the end-of-turn token (for timing a fixed number of tokens).
    #[arg(long)]
    ignore_eos: bool,
    /// Print the prompt length, the new tokens and their speed to stderr.
    #[arg(long)]
    stats: bool,
    /// Instead of generating, write the prompt's ids and per-position logits to this safetensors file.
    #[arg(long)]
    logits_out: Option<PathBuf>,
}

fn run(cli: Cli) -> Result<()> {
    cli.compute.apply()?;
    let g = Generator::load(&cli.model, cli.compute.precision)?;
    let text = match (&cli.prompt, &cli.chat) {
        (Some(p), None) => p.clone(),
        (None, Some(c)) => g.chat_prompt(cli.system.as_deref(), c)?,
        _ => {
            return Err(UsageError(
                "give --prompt TEXT (raw continuation) or --chat MESSAGE".into(),
            )
            .into())
        }
    };
    if let Some(path) = &cli.logits_out {
        let tensors = g.prompt_logits(&text)?;
        let bytes = zerolm_model::io::safetensors_bytes(&tensors, &Default::default())?;
        zerolm_io::write_atomically(path, &bytes)?;
        eprintln!(
            "wrote logits of {} positions to {}",
            tensors["ids"].dim(0)?,
            path.display()
        );
        return Ok(());
    }
    let sampling = SamplingConfig {
        temperature: cli.temperature,
        top_k: cli.top_k,
        top_p: cli.top_p,
        seed: cli.seed,
    };
    let started = std::time::Instant::now();
    let c = g.complete_with(&text, cli.max_new_tokens, sampling, !cli.ignore_eos)?;
    if cli.stats {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "prompt {} tokens; {} new tokens in {secs:.2} s: {:.0} tokens/s",
            c.prompt_ids.len(),
            c.new_ids.len(),
            c.new_ids.len() as f64 / secs
        );
    }
    if cli.prompt.is_some() {
        println!("{}{}", cli.prompt.as_deref().unwrap_or_default(), c.text);
    } else {
        println!("{}", c.text);
    }
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
