//! The comparison: interleaved rounds in which every configuration — zerolm in f32 and in bf16, PyTorch
//! eager f32, eager under bf16 autocast, and `torch.compile` under bf16 autocast — is measured on the
//! training step and on the forward pass, each in a process of its own (this binary in worker mode, or
//! `benches/pretrain_py.py`); then the medians over rounds, every zerolm/PyTorch ratio, and each
//! configuration's model FLOPs per second and utilisation (MFU, see [`crate::flops`]).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use zerolm_model::Precision;

use crate::flops::Flops;
use crate::measure::{median, Measured};

/// One configuration measured in every round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Zerolm(Precision),
    Torch { autocast: bool, compile: bool },
}

/// Everything a round measures, zerolm first.
pub const SIDES: [Side; 5] = [
    Side::Zerolm(Precision::F32),
    Side::Zerolm(Precision::Bf16),
    Side::Torch {
        autocast: false,
        compile: false,
    },
    Side::Torch {
        autocast: true,
        compile: false,
    },
    Side::Torch {
        autocast: true,
        compile: true,
    },
];

impl Side {
    pub fn name(self) -> String {
        match self {
            Side::Zerolm(p) => format!("zerolm {p}"),
            Side::Torch { autocast, compile } => format!(
                "PyTorch {} {}",
                if compile { "compile" } else { "eager" },
                if autocast { "bf16 autocast" } else { "f32" }
            ),
        }
    }

    fn is_torch(self) -> bool {
        matches!(self, Side::Torch { .. })
    }
}

/// What to measure, and with what.
#[derive(Clone, Debug)]
pub struct Bench {
    pub preset: String,
    pub vocab_size: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub threads: usize,
    pub steps: usize,
    pub warmup: usize,
    pub rounds: usize,
    /// A Python with torch + transformers, or `None` to measure zerolm alone.
    pub python: Option<String>,
    /// The PyTorch side (`benches/pretrain_py.py`).
    pub script: PathBuf,
    /// Where both sides run (`cpu`, `cuda`, `cuda:N`).
    pub device: String,
    /// Model FLOPs of a step of this shape.
    pub flops: Flops,
    /// The peak in FLOP/s that MFU is reported against, and where it comes from.
    pub peak: Option<(f64, String)>,
}

/// One round: per side (in [`SIDES`] order), the training step and the forward pass; `None` where that
/// side did not run (no PyTorch, or a configuration that fails on this machine).
type Round = Vec<[Option<Measured>; 2]>;

const WHAT: [&str; 2] = ["train", "forward"];

impl Bench {
    /// `python` if it can run the PyTorch side (torch and transformers import, the script exists).
    pub fn torch_available(&self, python: &str) -> bool {
        python != "none"
            && self.script.is_file()
            && Command::new(python)
                .args(["-c", "import torch, transformers"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Runs every round, printing each, then the summary tables.
    pub fn run(&self) -> Result<()> {
        println!(
            "{} (vocab {}), batch {}×{}, {} threads, device {}; median of {} steps after {} warm-up, {} rounds",
            self.preset,
            self.vocab_size,
            self.batch_size,
            self.seq_len,
            self.threads,
            self.device,
            self.steps,
            self.warmup,
            self.rounds
        );
        let mut rows = Vec::new();
        for round in 1..=self.rounds {
            let row = self.round()?;
            print_round(round, &row);
            rows.push(row);
        }
        print_tables(&rows);
        self.print_utilisation(&rows);
        Ok(())
    }

    /// Train then forward, each side in turn.
    fn round(&self) -> Result<Round> {
        let mut row: Round = vec![Default::default(); SIDES.len()];
        for (k, what) in WHAT.iter().enumerate() {
            for (i, side) in SIDES.iter().enumerate() {
                row[i][k] = self.measure_side(*side, what)?;
            }
        }
        Ok(row)
    }

    /// One measurement of `side`; a PyTorch configuration that fails is reported and skipped.
    fn measure_side(&self, side: Side, what: &str) -> Result<Option<Measured>> {
        let label = format!("{} {what}", side.name());
        match side {
            Side::Zerolm(p) => {
                let mut c = Command::new(std::env::current_exe()?);
                self.common_args(&mut c);
                c.args(["--worker", what, "--precision", p.name()]);
                measure(c, &label).map(Some)
            }
            Side::Torch { autocast, compile } => {
                let Some(python) = &self.python else {
                    return Ok(None);
                };
                let mut c = Command::new(python);
                c.arg(&self.script);
                self.common_args(&mut c);
                c.arg("--json");
                for (on, flag) in [
                    (what == "forward", "--forward-only"),
                    (autocast, "--autocast"),
                    (compile, "--compile"),
                ] {
                    if on {
                        c.arg(flag);
                    }
                }
                Ok(measure(c, &label)
                    .map_err(|e| eprintln!("({label} skipped: {e:#})"))
                    .ok())
            }
        }
    }

    /// The flags both sides take.
    fn common_args(&self, c: &mut Command) {
        c.args([
            "--preset",
            &self.preset,
            "--vocab-size",
            &self.vocab_size.to_string(),
            "--batch-size",
            &self.batch_size.to_string(),
            "--threads",
            &self.threads.to_string(),
            "--steps",
            &self.steps.to_string(),
            "--warmup",
            &self.warmup.to_string(),
            "--seq-len",
            &self.seq_len.to_string(),
            "--device",
            &self.device,
        ]);
    }

    /// Each configuration's model FLOPs per second (median tokens/s × FLOPs per token) and, with a peak,
    /// its MFU.
    fn print_utilisation(&self, rows: &[Round]) {
        let per_token =
            |k: usize| (self.flops).per_token(WHAT[k] == "train", self.batch_size * self.seq_len);
        println!(
            "\nmodel FLOPs a step (2 per multiply-add of every weight product and of attention over all \
             keys; training 3× the forward): train {} GFLOP, forward {} GFLOP; peak: {}",
            significant(self.flops.train / 1e9),
            significant(self.flops.forward / 1e9),
            self.peak.as_ref().map_or("not known (give --peak-tflops)".into(), |(p, from)| {
                format!("{} TFLOP/s ({from})", significant(p / 1e12))
            })
        );
        println!("\n| configuration | train TFLOP/s | forward TFLOP/s | train MFU | forward MFU |\n|---|---:|---:|---:|---:|");
        for (i, side) in SIDES.iter().enumerate() {
            let rate = |k| summary(rows, i, k).map(|(tps, _)| tps * per_token(k));
            let tflops = |k| rate(k).map_or("-".into(), |r| significant(r / 1e12));
            let mfu = |k| match (rate(k), &self.peak) {
                (Some(r), Some((p, _))) => format!("{}%", significant(100.0 * r / p)),
                _ => "-".into(),
            };
            println!(
                "| {} | {} | {} | {} | {} |",
                side.name(),
                tflops(0),
                tflops(1),
                mfu(0),
                mfu(1)
            );
        }
    }
}

/// `x` to four significant digits (0.3720, 57.18, 1715), so that a small model's figures are not zero.
fn significant(x: f64) -> String {
    let decimals = if x > 0.0 && x.is_finite() {
        (3 - x.log10().floor() as i64).clamp(0, 12) as usize
    } else {
        0
    };
    format!("{x:.decimals$}")
}

/// Runs one measurement process and reads the JSON line it prints last.
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

fn print_round(round: usize, row: &Round) {
    println!("round {round}:");
    for (side, m) in SIDES.iter().zip(row) {
        let show = |m: &Option<Measured>| {
            m.as_ref().map_or("-".to_string(), |m| {
                format!("{:>6.0} tok/s ({:.3} s)", m.tokens_per_s(), m.median_s())
            })
        };
        println!(
            "  {:<28} train {}   forward {}",
            side.name(),
            show(&m[0]),
            show(&m[1])
        );
    }
    let ratios = |k: usize| {
        let best = best_torch(row, k);
        row.iter()
            .zip(SIDES)
            .filter(|(_, s)| !s.is_torch())
            .filter_map(|(m, s)| {
                let (z, (name, t)) = (m[k].as_ref()?.tokens_per_s(), best.as_ref()?);
                Some(format!("{} {:.2}× {name}", s.name(), z / t))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (k, what) in WHAT.iter().enumerate() {
        println!("  {what} against PyTorch's fastest: {}", ratios(k));
    }
}

/// The fastest PyTorch configuration of a round for measurement `k`: its name and tokens/s.
fn best_torch(row: &Round, k: usize) -> Option<(String, f64)> {
    (SIDES.iter().zip(row))
        .filter(|(s, _)| s.is_torch())
        .filter_map(|(s, m)| Some((s.name(), m[k].as_ref()?.tokens_per_s())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Median tokens/s over the rounds and the largest peak RSS of side `i`, measurement `k`, if it ran.
fn summary(rows: &[Round], i: usize, k: usize) -> Option<(f64, f64)> {
    let v: Vec<&Measured> = rows.iter().filter_map(|r| r[i][k].as_ref()).collect();
    (!v.is_empty()).then(|| {
        (
            median(&v.iter().map(|m| m.tokens_per_s()).collect::<Vec<_>>()),
            v.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max),
        )
    })
}

fn print_tables(rows: &[Round]) {
    let cell = |s: Option<(f64, f64)>| {
        s.map_or(("-".into(), "-".into()), |(t, r)| {
            (format!("{t:.0}"), format!("{r:.0} MB"))
        })
    };
    println!("\n| configuration | train tokens/s | forward tokens/s | train peak RSS | forward peak RSS |\n|---|---:|---:|---:|---:|");
    for (i, side) in SIDES.iter().enumerate() {
        let ((tt, tr), (ft, fr)) = (cell(summary(rows, i, 0)), cell(summary(rows, i, 1)));
        println!("| {} | {tt} | {ft} | {tr} | {fr} |", side.name());
    }
    println!("\n| ratio (median tokens/s) | train | forward |\n|---|---:|---:|");
    for (i, z) in SIDES.iter().enumerate().filter(|(_, s)| !s.is_torch()) {
        for (j, t) in SIDES.iter().enumerate().filter(|(_, s)| s.is_torch()) {
            let ratio = |k| match (summary(rows, i, k), summary(rows, j, k)) {
                (Some((a, _)), Some((b, _))) => format!("{:.2}×", a / b),
                _ => "-".into(),
            };
            println!(
                "| {} / {} | {} | {} |",
                z.name(),
                t.name(),
                ratio(0),
                ratio(1)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_keep_four_significant_digits() {
        let s = super::significant;
        assert_eq!(s(0.000912345), "0.0009123");
        assert_eq!(s(0.372), "0.3720");
        assert_eq!(s(57.1798), "57.18");
        assert_eq!(s(1715.4), "1715");
        assert_eq!(s(0.0), "0");
    }
}
