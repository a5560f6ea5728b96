//! `ref-logprobs`: cache a reference model's summed completion log-probs for every DPO pair (Parquet),
//! so `dpo` never runs the reference model. Resumable. All logic lives in `zerolm-stages`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_cli::threads::ComputeArgs;
use zerolm_stages::ref_logprobs::{self, RefArgs};

#[derive(Parser)]
#[command(
    about = "Compute and cache reference log-probs of DPO pairs (forward only)",
    version
)]
struct Cli {
    /// DPO token file(s) from `tokenize dpo`. Repeatable.
    #[arg(long, required = true)]
    input: Vec<PathBuf>,
    /// The reference model directory (usually the SFT output's model/).
    #[arg(long)]
    model: PathBuf,
    /// Tokenizer directory (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output Parquet file.
    #[arg(long)]
    out: PathBuf,
    /// Longest prompt + completion, in tokens (use the same value for `dpo`).
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    compute: ComputeArgs,
    #[arg(long)]
    no_progress: bool,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.compute.apply()?;
    let r = ref_logprobs::run(RefArgs {
        inputs: cli.input,
        model: cli.model,
        tokenizer: cli.tokenizer,
        out: cli.out.clone(),
        max_len: cli.max_len,
        batch_size: cli.batch_size,
        threads,
        progress: !cli.no_progress,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        precision: cli.compute.precision,
    })?;
    eprintln!("{}", r.summary(&cli.out));
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main_ranks(run)
}
