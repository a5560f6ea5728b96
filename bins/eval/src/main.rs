//! `eval`: score a model directory on task files — multiple choice, perplexity and bits per byte, the
//! greedy answer check. All logic lives in `zerolm-eval`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use zerolm_cli::threads::ComputeArgs;
use zerolm_cli::UsageError;
use zerolm_eval::results;
use zerolm_eval::{Evaluator, Settings, Task, TaskSpec};
use zerolm_model::infer::Generator;

#[derive(Parser)]
#[command(
    about = "Score a zerolm model directory on task files: multiple choice (acc, acc_norm), \
             perplexity and bits per byte, greedy answer checks",
    version
)]
struct Cli {
    /// Model directory (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// A task file, as FILE or KIND:FILE with KIND mc, ppl or answer (repeat for several). Without a
    /// kind the file tells: a CSV file (C-Eval's columns) or rows with `choices`/`endings` are multiple
    /// choice, rows with `answer` an answer check, rows with `text` or a text file perplexity.
    #[arg(long = "task", required = true, num_args = 1..)]
    tasks: Vec<TaskSpec>,
    /// Write the results (every task's metrics, the model and settings) as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write one JSON line per item here (choices' log-likelihoods, predictions, replies).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Items used per task (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Rows per forward pass of the log-likelihood tasks.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Longest model input in tokens (default: the model's max_position_embeddings); longer inputs lose
    /// their first tokens, perplexity documents are scored in windows of this length.
    #[arg(long)]
    max_length: Option<usize>,
    /// Reply length limit of answer tasks.
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    #[command(flatten)]
    compute: ComputeArgs,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.compute.apply()?;
    if cli.batch_size == 0 || cli.max_length == Some(0) || cli.max_new_tokens == 0 {
        return Err(UsageError(
            "--batch-size, --max-length and --max-new-tokens must be at least 1".into(),
        )
        .into());
    }
    let started = Instant::now();
    let g = Generator::load(&cli.model, cli.compute.precision)?;
    let settings = Settings {
        batch_size: cli.batch_size,
        max_length: (cli.max_length).unwrap_or(g.model.config().max_position_embeddings),
        limit: cli.limit,
        max_new_tokens: cli.max_new_tokens,
        precision: cli.compute.precision.to_string(),
        threads,
    };
    // Every file is read and checked before the first is scored.
    let tasks = (cli.tasks.iter())
        .map(|spec| Task::load(spec, &g.tokenizer, &settings))
        .collect::<Result<Vec<_>, _>>()?;
    let evaluator = Evaluator {
        model: &g.model,
        tokenizer: &g.tokenizer,
        settings: &settings,
        quiet: cli.quiet,
    };
    let model = zerolm_eval::run::model_info(&cli.model, &g.tokenizer)?;
    let (results, samples) = evaluator.score_all(&tasks, model, started, &mut |r| {
        eprintln!(
            "{} ({}): {} items in {:.1} s, {:.1} items/s{}{}",
            r.task,
            r.kind.name(),
            r.items,
            r.seconds,
            r.items_per_s,
            counted(r.skipped, "empty documents skipped"),
            counted(r.truncated, "inputs cut to --max-length"),
        )
    })?;
    print!("{}", results.table());
    // Samples first: a failed write then leaves no results file behind.
    if let Some(path) = &cli.samples {
        zerolm_io::write_atomically(path, &results::jsonl(&samples))?;
        eprintln!("wrote {} samples to {}", samples.len(), path.display());
    }
    if let Some(path) = &cli.out {
        let json = serde_json::to_vec_pretty(&results)?;
        zerolm_io::write_atomically(path, &json)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn counted(n: usize, what: &str) -> String {
    match n {
        0 => String::new(),
        n => format!("; {n} {what}"),
    }
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
