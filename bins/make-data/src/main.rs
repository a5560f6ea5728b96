//! `make-data`: regenerate zerolm's shipped dataset (`data/`) or a large benchmark corpus.
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use zerolm_datagen::{generate, write_corpus, GenConfig};

#[derive(Parser)]
#[command(about = "Generate zerolm's deterministic bilingual dataset")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write every split (pretrain, SFT, DPO, evals) into a directory. Defaults reproduce data/.
    Shipped {
        #[arg(long, default_value = "data")]
        out: PathBuf,
        #[arg(long, default_value_t = GenConfig::default().seed)]
        seed: u64,
    },
    /// Write a pretraining JSONL corpus of at least --mb megabytes (for tokenizer benchmarks).
    Corpus {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        mb: u64,
        #[arg(long, default_value_t = GenConfig::default().seed)]
        seed: u64,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Shipped { out, seed } => {
            let cfg = GenConfig {
                seed,
                ..GenConfig::default()
            };
            for f in generate(&cfg, &out)? {
                println!("{:<28} {:>7} rows {:>10} bytes", f.name, f.rows, f.bytes);
            }
        }
        Cmd::Corpus { out, mb, seed } => {
            let cfg = GenConfig {
                seed,
                ..GenConfig::default()
            };
            let f = write_corpus(&cfg, &out, mb * 1_000_000)?;
            println!("{}: {} rows, {} bytes", f.name, f.rows, f.bytes);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
