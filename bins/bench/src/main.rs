//! `bench`: zerolm's training step and forward pass against PyTorch's, side by side, in interleaved
//! rounds (each measurement in its own process, for its own peak RSS). The PyTorch side is
//! `benches/pretrain_py.py`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bench::measure;
use bench::rounds::Bench;
use clap::Parser;
use zerolm_cli::UsageError;

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
    /// Precision of zerolm's matrix products: f32, or bf16 operands with f32 sums.
    #[arg(long, default_value = "f32")]
    precision: zerolm_model::Precision,
    /// Time the matrix-product kernels alone (f32 and bf16) on the preset's linear layers and exit (CPU).
    #[arg(long)]
    kernels: bool,
    /// Where both sides run: cpu, or cuda / cuda:N (zerolm needs the `cuda` build, see docs/training.md).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The hardware's peak in TFLOP/s that model FLOPs utilisation (MFU) is reported against (a GPU's
    /// dense bf16 figure, e.g. 989 for an H100 or H200 SXM); on a CPU with AVX512_BF16 the `vdpbf16ps`
    /// peak of `--threads` threads is measured when this is not given.
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Internal: measure one side (`train` or `forward`) in this process and print JSON.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

/// The preset's shape with `--vocab-size`.
fn config(cli: &Cli) -> Result<zerolm_model::ModelConfig> {
    let mut cfg = zerolm_model::ModelConfig::preset(&cli.preset)?;
    cfg.vocab_size = cli.vocab_size;
    Ok(cfg)
}

/// Measures one side in this process and prints it as a JSON line.
fn worker(cli: &Cli, what: &str) -> Result<()> {
    zerolm_cli::threads::set_device_and_threads(Some(&cli.device), Some(cli.threads))?;
    let dev = zerolm_model::device::current();
    let cfg = config(cli)?;
    let (b, t, w, s) = (cli.batch_size, cli.seq_len, cli.warmup, cli.steps);
    let on = (cli.precision, &dev);
    let m = match what {
        "train" => measure::train_steps(&cfg, on, b, t, w, s)?,
        "forward" => measure::forward_steps(&cfg, on, b, t, w, s)?,
        other => return Err(UsageError(format!("unknown worker `{other}`")).into()),
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// The peak MFU is reported against: `--peak-tflops`, else on the CPU the measured `vdpbf16ps` peak of
/// the pool's threads (none on a CPU without AVX512_BF16 or on a GPU).
fn peak(cli: &Cli) -> Result<Option<(f64, String)>> {
    if let Some(p) = cli.peak_tflops {
        if !(p.is_finite() && p > 0.0) {
            return Err(
                UsageError(format!("--peak-tflops {p}: expected a positive number")).into(),
            );
        }
        return Ok(Some((p * 1e12, "--peak-tflops".into())));
    }
    if !zerolm_model::device::current().is_cpu() {
        return Ok(None);
    }
    Ok(bench::kernels::measured_peak().map(|(_, all)| {
        let from = format!("vdpbf16ps measured on {} threads", cli.threads);
        (all * 1e9, from)
    }))
}

fn run(cli: Cli) -> Result<()> {
    if let Some(w) = &cli.worker {
        return worker(&cli, w);
    }
    if cli.kernels {
        zerolm_cli::threads::set_threads(Some(cli.threads))?;
        let cfg = config(&cli)?;
        let rows = bench::kernels::measure(&cfg, cli.batch_size * cli.seq_len, cli.steps.max(3))?;
        print!("{}", bench::kernels::peak_line(cli.threads));
        print!("{}", bench::kernels::table(&rows, cli.threads));
        return Ok(());
    }
    zerolm_cli::threads::set_device_and_threads(Some(&cli.device), Some(cli.threads))?;
    let cfg = config(&cli)?;
    let (flops, peak) = (
        bench::flops::per_step(&cfg, cli.batch_size, cli.seq_len),
        peak(&cli)?,
    );
    let python = (cli.python.clone())
        .or_else(|| std::env::var("PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let mut bench = Bench {
        preset: cli.preset,
        vocab_size: cli.vocab_size,
        batch_size: cli.batch_size,
        seq_len: cli.seq_len,
        threads: cli.threads,
        steps: cli.steps,
        warmup: cli.warmup,
        rounds: cli.rounds,
        python: None,
        script: cli.script,
        device: cli.device,
        flops,
        peak,
    };
    if bench.torch_available(&python) {
        bench.python = Some(python);
    } else {
        eprintln!(
            "(PyTorch side skipped: no {python} with torch + transformers, or no {}; set --python)",
            bench.script.display()
        );
    }
    bench.run()
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
