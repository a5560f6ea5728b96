//! What a run records: a metrics row per logged step, eval rows (`eval_`-prefixed) and probe rows
//! (`probe_`-prefixed), each also shown on the live display.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::run::Run;
use super::step::StepReport;
use super::task::EvalResult;
use crate::TrainError;

impl Run<'_> {
    /// Writes the step's metrics row when it is due (the first step, every `log_every`, the last) and
    /// updates the display.
    pub fn log_step(&mut self, s: &StepReport) -> Result<(), TrainError> {
        let (step, total) = (self.state.step, self.total);
        let log_every = self.spec.cfg.log_every;
        let due = step == 1 || step == total || (log_every > 0 && step.is_multiple_of(log_every));
        if !due {
            let line = format!("step {step}/{total} loss {:.4}", s.loss);
            self.display.step(step, line, false);
            return Ok(());
        }
        let secs = self.window.0.elapsed().as_secs_f64().max(1e-9);
        let tps = self.window.1 as f64 / secs;
        self.window = (Instant::now(), 0);
        let epoch = self.state.cursor.micro_batches as f64 / self.batches_per_epoch as f64;
        let mut row = Map::new();
        row.insert("step".into(), json!(step));
        row.insert("epoch".into(), json!(round(epoch, 4)));
        row.insert("loss".into(), json!(s.loss));
        row.insert("lr".into(), json!(s.lr));
        row.insert("learning_rate".into(), json!(s.lr));
        row.insert("grad_norm".into(), json!(s.grad_norm));
        row.insert("tokens".into(), json!(self.state.tokens_seen));
        row.insert("tokens_per_s".into(), json!(round(tps, 1)));
        row.insert("elapsed_s".into(), json!(round(self.elapsed(), 3)));
        for (k, v) in &s.metrics {
            row.insert(k.clone(), json!(v));
        }
        if self.world.size() > 1 {
            row.insert("ranks".into(), json!(self.world.size()));
            row.insert("allreduce_s".into(), json!(round(s.comm_s, 4)));
        }
        self.metrics.write(&row)?;
        let line = format!(
            "step {step}/{total} loss {:.4} lr {:.2e} grad {:.3} {tps:.0} tok/s",
            s.loss, s.lr, s.grad_norm
        );
        self.display.step(step, line, true);
        Ok(())
    }

    /// Writes an eval row (`eval_`-prefixed keys) and shows it.
    pub fn log_eval(&mut self, step: usize, ev: &EvalResult) -> Result<(), TrainError> {
        let mut row = Map::new();
        row.insert("step".into(), json!(step));
        row.insert("eval_loss".into(), json!(ev.loss));
        if ev.perplexity {
            row.insert("eval_ppl".into(), json!(ev.loss.exp()));
        }
        for (k, v) in &ev.metrics {
            row.insert(format!("eval_{k}"), json!(v));
        }
        row.insert("eval_tokens".into(), json!(ev.tokens));
        row.insert("eval_rows".into(), json!(ev.rows));
        self.metrics.write(&row)?;
        self.display.println(eval_line(step, ev));
        Ok(())
    }

    /// Writes a probe row: `step` plus the task's keys, each prefixed `probe_`.
    pub fn log_probe(&mut self, step: usize, row: Map<String, Value>) -> Result<(), TrainError> {
        let mut out = Map::new();
        out.insert("step".into(), json!(step));
        let mut shown = Vec::new();
        for (k, v) in row {
            shown.push(format!("{k} {v}"));
            out.insert(format!("probe_{k}"), v);
        }
        self.metrics.write(&out)?;
        self.display
            .println(format!("step {step}: {}", shown.join(", ")));
        Ok(())
    }

    /// Whether the metrics log already holds a probe row of the current step (a run resumed after
    /// its end-of-run probe was written).
    pub fn probed_now(&self) -> bool {
        let step = self.state.step as u64;
        zerolm_io::read_rows(&self.metrics_path).iter().any(|r| {
            r.get("step").and_then(Value::as_u64) == Some(step)
                && r.keys().any(|k| k.starts_with("probe_"))
        })
    }
}

fn eval_line(step: usize, ev: &EvalResult) -> String {
    let extra: Vec<String> = ev
        .metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    format!(
        "step {step}: eval loss {:.4}{} on {} tokens{}{}",
        ev.loss,
        if ev.perplexity {
            format!(" (ppl {:.2})", ev.loss.exp())
        } else {
            String::new()
        },
        ev.tokens,
        if extra.is_empty() { "" } else { "; " },
        extra.join(", ")
    )
}

fn round(x: f64, digits: i32) -> f64 {
    let s = 10f64.powi(digits);
    (x * s).round() / s
}
