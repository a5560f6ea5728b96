//! `tokenize`: train the tokenizer, and turn raw pretraining text, SFT conversations and DPO pairs into
//! token files (Parquet). All logic lives in `zerolm-data`.

use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zerolm_cli::alloc::peak_rss_mb;
use zerolm_data::chat::CompletionEnd;
use zerolm_data::encode::{self, EncodeConfig, Overlong, Report};
use zerolm_data::formats::{Format, Kind, Template, ALL_FORMATS};
use zerolm_data::output::ShardSize;
use zerolm_data::progress::Progress;
use zerolm_data::tokenizer::{self, TokenizerDir, TrainConfig};

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
    #[arg(
        long,
        default_value = "chat",
        value_parser = PossibleValuesParser::new(Template::NAMES).try_map(|s| s.parse::<Template>())
    )]
    template: Template,
    /// SFT and DPO chat data: where an assistant turn / completion ends — through all the template renders
    /// for it (`template`: `<|im_end|>\n`, as TRL and MiniMind train) or at the end-of-turn token (`eos`).
    #[arg(
        long,
        default_value = "template",
        value_parser = PossibleValuesParser::new(CompletionEnd::NAMES).try_map(|s| s.parse::<CompletionEnd>())
    )]
    completion_end: CompletionEnd,
    /// Longest row in tokens (DPO: prompt + the longer completion). No limit by default.
    #[arg(long)]
    max_len: Option<usize>,
    /// Rows over --max-len: keep the head (`truncate`; DPO keeps the prompt's end), `drop` them, or
    /// `split` pretraining documents into pieces.
    #[arg(
        long,
        default_value = "truncate",
        value_parser = PossibleValuesParser::new(Overlong::NAMES).try_map(|s| s.parse::<Overlong>())
    )]
    overlong: Overlong,
    /// Write --out as a directory of token files (`part-00000.parquet`, …) of at most this many rows each.
    #[arg(long)]
    shard_rows: Option<u64>,
    /// Write --out as a directory of token files of about this many MB of token ids (4 bytes a token) each.
    #[arg(long)]
    shard_mb: Option<u64>,
    /// Skip malformed rows (counted and reported) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Make empty rows (no text, no completion) fatal instead of counted skips.
    #[arg(long)]
    strict: bool,
}

fn encode(kind: Kind, a: EncodeArgs) -> Result<()> {
    let tok = TokenizerDir::load(&a.tokenizer)?;
    let mut cfg = EncodeConfig::new(kind);
    cfg.format = a.format.as_deref().and_then(Format::parse);
    cfg.text_field = a.text_field;
    cfg.template = a.template;
    cfg.completion_end = a.completion_end;
    cfg.max_len = a.max_len;
    cfg.overlong = a.overlong;
    cfg.shard = ShardSize {
        rows: a.shard_rows,
        bytes: a.shard_mb.map(|mb| mb.saturating_mul(1_000_000)),
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
    print_summary(kind, &report, &a.out, total, start.elapsed().as_secs_f64());
    Ok(())
}

/// What was written, how fast, and every count; then the first skipped rows.
fn print_summary(kind: Kind, report: &Report, out: &Path, total_bytes: u64, secs: f64) {
    let c = &report.counts;
    let shards = match report.files.len() {
        1 => String::new(),
        n => format!(" ({n} shards)"),
    };
    eprintln!(
        "tokenize {}: wrote {} rows ({} tokens) to {}{shards} in {secs:.2}s ({:.1} MB/s, peak RSS {:.0} MB)",
        kind.name(),
        c.rows_written,
        c.tokens,
        out.display(),
        total_bytes as f64 / 1e6 / secs.max(1e-9),
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
            let trained = tokenizer::train(&input, &cfg, &out)?;
            eprintln!(
                "train-tokenizer: vocabulary {} (asked {vocab_size}) written to {} in {:.1}s; fingerprint {}",
                trained.vocab_size,
                out.display(),
                start.elapsed().as_secs_f64(),
                &trained.fingerprint[..16]
            );
            Ok(())
        }
        Cmd::Pretrain(a) => encode(Kind::Pretrain, a),
        Cmd::Sft(a) => encode(Kind::Sft, a),
        Cmd::Dpo(a) => encode(Kind::Dpo, a),
    }
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
