//! `tokenize`: train the tokenizer, and turn raw pretraining text, SFT conversations and DPO pairs into
//! token files (Parquet). All logic lives in `zerolm-data`.

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zerolm_data::encode::{self, EncodeConfig, Overlong};
use zerolm_data::formats::{Format, Kind, Template, ALL_FORMATS};
use zerolm_data::progress::{peak_rss_mb, Progress};
use zerolm_data::tokenizer::{self, TokenizerDir, TrainConfig};
use zerolm_data::{fingerprint, DataError};

// Encoding allocates many small vectors; glibc malloc took ~45% of the time in a profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    about = "Train zerolm's tokenizer and tokenize raw data into Parquet token files",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Worker threads (default: RAYON_NUM_THREADS, else all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a byte-level BPE tokenizer and write a Hugging Face tokenizer directory.
    TrainTokenizer {
        /// Training text: any pretrain/SFT/DPO input file (every string field is used).
        #[arg(long, required = true)]
        input: Vec<PathBuf>,
        /// Output directory (tokenizer.json, tokenizer_config.json).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 6400)]
        vocab_size: usize,
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        #[arg(long, default_value_t = 32768)]
        model_max_length: usize,
        /// Keep every Han (Chinese) character its own pre-token, so no token spans two of them. For
        /// small, repetitive corpora, where plain byte-level BPE learns whole clauses as tokens.
        #[arg(long)]
        split_han: bool,
    },
    /// Pretraining documents → Parquet `input_ids`.
    Pretrain(EncodeArgs),
    /// Conversations → Parquet `input_ids` + `loss_mask` (1 on assistant content through <|im_end|>).
    Sft(EncodeArgs),
    /// Preference pairs → Parquet `id`, `prompt_ids`, `chosen_ids`, `rejected_ids`.
    Dpo(EncodeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum TemplateArg {
    Chat,
    Raw,
}

#[derive(Clone, Copy, ValueEnum)]
enum OverlongArg {
    Truncate,
    Drop,
    Split,
}

#[derive(Args)]
struct EncodeArgs {
    /// Tokenizer directory (from `tokenize train-tokenizer`).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Input files: JSONL, JSON array, Parquet or text, optionally .gz. Repeatable.
    #[arg(long, required = true)]
    input: Vec<PathBuf>,
    /// Output Parquet file.
    #[arg(long)]
    out: PathBuf,
    /// Force the row format instead of detecting it.
    #[arg(long, value_parser = ALL_FORMATS.iter().map(|(n, _)| *n).collect::<Vec<_>>())]
    format: Option<String>,
    /// Column holding pretraining text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// DPO string formats: render as chat turns (`chat`) or tokenize the strings as they are (`raw`).
    #[arg(long, value_enum, default_value = "chat")]
    template: TemplateArg,
    /// Longest row in tokens (DPO: prompt + the longer completion). No limit by default.
    #[arg(long)]
    max_len: Option<usize>,
    /// Rows over --max-len: keep the head (`truncate`; DPO keeps the prompt's end), `drop` them, or
    /// `split` pretraining documents into pieces.
    #[arg(long, value_enum, default_value = "truncate")]
    overlong: OverlongArg,
    /// Skip malformed rows (counted and reported) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Make empty rows (no text, no completion) fatal instead of counted skips.
    #[arg(long)]
    strict: bool,
}

fn resolved_config_path(out: &Path, is_dir: bool) -> PathBuf {
    if is_dir {
        out.join("resolved_config.json")
    } else {
        out.with_extension("resolved_config.json")
    }
}

fn encode(kind: Kind, a: EncodeArgs, threads: Option<usize>) -> Result<()> {
    let tok = TokenizerDir::load(&a.tokenizer)?;
    let mut cfg = EncodeConfig::new(kind);
    cfg.format = a.format.as_deref().and_then(Format::parse);
    cfg.text_field = a.text_field;
    cfg.template = match a.template {
        TemplateArg::Chat => Template::Chat,
        TemplateArg::Raw => Template::Raw,
    };
    cfg.max_len = a.max_len;
    cfg.overlong = match a.overlong {
        OverlongArg::Truncate => Overlong::Truncate,
        OverlongArg::Drop => Overlong::Drop,
        OverlongArg::Split => Overlong::Split,
    };
    cfg.skip_bad = a.skip_bad;
    cfg.strict = a.strict;
    let total: u64 = a
        .input
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut progress = Progress::new(&format!("tokenize {}", kind.name()), total);
    let command: Vec<String> = std::env::args().collect();
    let start = std::time::Instant::now();
    let result = encode::run(&tok, &a.input, &a.out, &cfg, &command, &mut progress);
    progress.finish();
    let report = result?;
    let secs = start.elapsed().as_secs_f64();
    let c = &report.counts;
    eprintln!(
        "tokenize {}: wrote {} rows ({} tokens) to {} in {secs:.2}s ({:.1} MB/s, peak RSS {:.0} MB)",
        kind.name(),
        c.rows_written,
        c.tokens,
        a.out.display(),
        total as f64 / 1e6 / secs.max(1e-9),
        peak_rss_mb().unwrap_or(f64::NAN)
    );
    eprintln!(
        "  read {} | skipped bad {} | skipped empty {} | truncated {} | dropped too long {} | split {} | prefix mismatch {}{}",
        c.rows_read,
        c.skipped_bad,
        c.skipped_empty,
        c.truncated,
        c.dropped_overlong,
        c.split,
        c.prefix_mismatch,
        if kind == Kind::Sft { format!(" | supervised tokens {}", c.supervised_tokens) } else { String::new() }
    );
    for s in &report.skipped_examples {
        eprintln!("  skipped {s}");
    }
    let resolved = serde_json::json!({
        "stage": format!("tokenize {}", kind.name()),
        "tokenizer": a.tokenizer,
        "tokenizer_fingerprint": tok.fingerprint,
        "inputs": report.inputs.iter().map(|i| serde_json::json!({"path": i.path, "blake3": i.blake3, "format": i.format})).collect::<Vec<_>>(),
        "out": a.out,
        "config": cfg,
        "threads": threads.unwrap_or_else(rayon::current_num_threads),
        "counts": c,
    });
    fingerprint::write_atomically(
        &resolved_config_path(&a.out, false),
        serde_json::to_string_pretty(&resolved)?.as_bytes(),
    )?;
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()?;
    }
    match cli.cmd {
        Cmd::TrainTokenizer {
            input,
            out,
            vocab_size,
            min_frequency,
            model_max_length,
            split_han,
        } => {
            let cfg = TrainConfig {
                vocab_size,
                min_frequency,
                model_max_length,
                split_han,
            };
            let start = std::time::Instant::now();
            let vocab = tokenizer::train(&input, &cfg, &out)?;
            let fp = TokenizerDir::load(&out)?.fingerprint;
            eprintln!(
                "train-tokenizer: vocabulary {vocab} (asked {vocab_size}) written to {} in {:.1}s; fingerprint {}",
                out.display(),
                start.elapsed().as_secs_f64(),
                &fp[..16]
            );
            let resolved = serde_json::json!({
                "stage": "tokenize train-tokenizer", "inputs": input, "out": out, "vocab_size": vocab_size,
                "min_frequency": min_frequency, "model_max_length": model_max_length, "split_han": split_han, "vocab_size_reached": vocab,
                "tokenizer_fingerprint": fp,
            });
            fingerprint::write_atomically(
                &resolved_config_path(&out, true),
                serde_json::to_string_pretty(&resolved)?.as_bytes(),
            )?;
            Ok(())
        }
        Cmd::Pretrain(a) => encode(Kind::Pretrain, a, cli.threads),
        Cmd::Sft(a) => encode(Kind::Sft, a, cli.threads),
        Cmd::Dpo(a) => encode(Kind::Dpo, a, cli.threads),
    }
}

fn main() -> ExitCode {
    // A usage error is a user error: exit 1 (clap's own default is 2); --help/--version exit 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 })
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let user = e
                .downcast_ref::<DataError>()
                .is_some_and(DataError::is_user_error);
            ExitCode::from(if user { 1 } else { 2 })
        }
    }
}
