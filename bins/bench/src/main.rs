//! `bench`: zerolm's training step and forward pass against PyTorch's, side by side, in interleaved
//! rounds (each measurement in its own process, for its own peak RSS). Logic lives in
//! `zerolm_train::bench`; the PyTorch side is `benches/pretrain_py.py`.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::Parser;
use zerolm_train::bench::{self, median, Measured};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
#[command(
    about = "Time zerolm's training step and forward pass against PyTorch's on this machine",
    version
)]
struct Cli {
    #[arg(long, default_value = "minimind2")]
    preset: String,
    #[arg(long, default_value_t = 6400)]
    vocab_size: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured steps per round (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Python with torch + transformers (default: $PYTHON, else python3); `none` skips PyTorch.
    #[arg(long)]
    python: Option<String>,
    /// The PyTorch side.
    #[arg(long, default_value = "benches/pretrain_py.py")]
    script: PathBuf,
    /// Internal: measure one side in this process and print JSON.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn worker(cli: &Cli, what: &str) -> Result<()> {
    zerolm_train::alloc::keep_freed_memory();
    zerolm_train::cli::set_threads(Some(cli.threads))?;
    let mut cfg = zerolm_model::ModelConfig::preset(&cli.preset)?;
    cfg.vocab_size = cli.vocab_size;
    let m = match what {
        "train" => bench::train_steps(&cfg, cli.batch_size, cli.seq_len, cli.warmup, cli.steps)?,
        "forward" => {
            bench::forward_steps(&cfg, cli.batch_size, cli.seq_len, cli.warmup, cli.steps)?
        }
        other => bail!("unknown worker `{other}`"),
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

fn measure(mut cmd: Command, what: &str) -> Result<Measured> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting the {what} measurement"))?;
    if !out.status.success() {
        bail!("the {what} measurement failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("the {what} measurement printed no JSON: {text}"))?;
    Ok(serde_json::from_str(line)?)
}

fn run(cli: Cli) -> Result<()> {
    if let Some(w) = &cli.worker {
        return worker(&cli, w);
    }
    let me = std::env::current_exe()?;
    let python = cli
        .python
        .clone()
        .or_else(|| std::env::var("PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let torch = python != "none"
        && cli.script.is_file()
        && Command::new(&python)
            .args(["-c", "import torch, transformers"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !torch {
        eprintln!(
            "(PyTorch side skipped: no {} with torch + transformers, or no {}; set --python)",
            python,
            cli.script.display()
        );
    }
    let common = |c: &mut Command| {
        c.args([
            "--preset",
            &cli.preset,
            "--vocab-size",
            &cli.vocab_size.to_string(),
            "--batch-size",
            &cli.batch_size.to_string(),
            "--threads",
            &cli.threads.to_string(),
            "--steps",
            &cli.steps.to_string(),
            "--warmup",
            &cli.warmup.to_string(),
        ]);
    };
    println!(
        "{} (vocab {}), batch {}×{}, f32, {} threads; median of {} steps after {} warm-up, {} rounds",
        cli.preset, cli.vocab_size, cli.batch_size, cli.seq_len, cli.threads, cli.steps, cli.warmup, cli.rounds
    );
    let mut rows: Vec<[Option<Measured>; 4]> = Vec::new();
    for round in 1..=cli.rounds {
        let mut row: [Option<Measured>; 4] = Default::default();
        for (k, what) in ["train", "forward"].iter().enumerate() {
            let mut c = Command::new(&me);
            common(&mut c);
            c.args(["--seq-len", &cli.seq_len.to_string(), "--worker", what]);
            row[k] = Some(measure(c, &format!("zerolm {what}"))?);
            if torch {
                let mut c = Command::new(&python);
                c.arg(&cli.script);
                common(&mut c);
                c.args(["--seq-len", &cli.seq_len.to_string(), "--json"]);
                if *what == "forward" {
                    c.arg("--forward-only");
                }
                row[k + 2] = Some(measure(c, &format!("PyTorch {what}"))?);
            }
        }
        let show = |m: &Option<Measured>| {
            m.as_ref().map_or("-".to_string(), |m| {
                format!(
                    "{:>6.0} tok/s ({:.3} s, {:.0} MB)",
                    m.tokens_per_s(),
                    m.median_s(),
                    m.peak_rss_mb
                )
            })
        };
        println!(
            "round {round}: train   zerolm {}   PyTorch {}",
            show(&row[0]),
            show(&row[2])
        );
        println!(
            "         forward zerolm {}   PyTorch {}",
            show(&row[1]),
            show(&row[3])
        );
        if let Some(m) = &row[0] {
            let phases: Vec<String> = m
                .phases
                .iter()
                .map(|(n, s)| format!("{n} {s:.3}s"))
                .collect();
            println!("         zerolm train step: {}", phases.join(", "));
        }
        rows.push(row);
    }
    let med = |k: usize| -> Option<(f64, f64)> {
        let v: Vec<&Measured> = rows.iter().filter_map(|r| r[k].as_ref()).collect();
        (!v.is_empty()).then(|| {
            (
                median(&v.iter().map(|m| m.tokens_per_s()).collect::<Vec<_>>()),
                v.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max),
            )
        })
    };
    println!("\n| | zerolm tokens/s | PyTorch tokens/s | ratio | zerolm peak RSS | PyTorch peak RSS |\n|---|---:|---:|---:|---:|---:|");
    for (name, z, p) in [("train step", 0, 2), ("forward only", 1, 3)] {
        let (zt, zr) = med(z).expect("zerolm measured");
        match med(p) {
            Some((pt, pr)) => println!(
                "| {name} | {zt:.0} | {pt:.0} | {:.2}× | {zr:.0} MB | {pr:.0} MB |",
                zt / pt
            ),
            None => println!("| {name} | {zt:.0} | - | - | {zr:.0} MB | - |"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
