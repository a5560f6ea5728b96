//! The comparison: interleaved rounds of zerolm train, PyTorch train, zerolm forward, PyTorch forward,
//! each measured in a process of its own (this binary in worker mode, or `benches/pretrain_py.py`), then
//! the median over rounds as a Markdown table.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::measure::{median, Measured};

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
}

/// One round: zerolm train, zerolm forward, PyTorch train, PyTorch forward.
type Round = [Option<Measured>; 4];

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

    /// Runs every round, printing each, then the summary table.
    pub fn run(&self) -> Result<()> {
        println!(
            "{} (vocab {}), batch {}×{}, f32, {} threads; median of {} steps after {} warm-up, {} rounds",
            self.preset, self.vocab_size, self.batch_size, self.seq_len, self.threads, self.steps,
            self.warmup, self.rounds
        );
        let mut rows = Vec::new();
        for round in 1..=self.rounds {
            let row = self.round()?;
            print_round(round, &row);
            rows.push(row);
        }
        print_table(&rows);
        Ok(())
    }

    fn round(&self) -> Result<Round> {
        let me = std::env::current_exe()?;
        let mut row: Round = Default::default();
        for (k, what) in ["train", "forward"].iter().enumerate() {
            let mut c = Command::new(&me);
            self.common_args(&mut c);
            c.args(["--worker", what]);
            row[k] = Some(measure(c, &format!("zerolm {what}"))?);
            if let Some(python) = &self.python {
                let mut c = Command::new(python);
                c.arg(&self.script);
                self.common_args(&mut c);
                c.arg("--json");
                if *what == "forward" {
                    c.arg("--forward-only");
                }
                row[k + 2] = Some(measure(c, &format!("PyTorch {what}"))?);
            }
        }
        Ok(row)
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
        ]);
    }
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
}

/// Median tokens/s over the rounds and the largest peak RSS of measurement `k`, if it ran.
fn summary(rows: &[Round], k: usize) -> Option<(f64, f64)> {
    let v: Vec<&Measured> = rows.iter().filter_map(|r| r[k].as_ref()).collect();
    (!v.is_empty()).then(|| {
        (
            median(&v.iter().map(|m| m.tokens_per_s()).collect::<Vec<_>>()),
            v.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max),
        )
    })
}

fn print_table(rows: &[Round]) {
    println!("\n| | zerolm tokens/s | PyTorch tokens/s | ratio | zerolm peak RSS | PyTorch peak RSS |\n|---|---:|---:|---:|---:|---:|");
    for (name, z, p) in [("train step", 0, 2), ("forward only", 1, 3)] {
        let Some((zt, zr)) = summary(rows, z) else {
            continue;
        };
        match summary(rows, p) {
            Some((pt, pr)) => println!(
                "| {name} | {zt:.0} | {pt:.0} | {:.2}× | {zr:.0} MB | {pr:.0} MB |",
                zt / pt
            ),
            None => println!("| {name} | {zt:.0} | - | - | {zr:.0} MB | - |"),
        }
    }
}
