//! The one training loop every stage shares. A stage supplies a [`Task`] (how a micro-batch of samples
//! becomes a loss; how its eval split is scored) and the initial weights; the loop owns the rest: data
//! order, schedule, accumulation, clipping, AdamW, metrics, checkpoints and resume.
//!
//! [`train`] reads top to bottom: start (or resume), step until the budget is spent — logging,
//! evaluating and checkpointing at step boundaries, so a resumed run replays exactly what the
//! uninterrupted one would have done — then finish.

mod agree;
mod log;
mod plan;
mod resume;
mod run;
mod spec;
mod step;
mod task;

use std::collections::BTreeMap;

use candle_core::Tensor;

pub use plan::{batch_rows, epoch_order, partial_batch_note, total_steps, total_steps_on};
pub use spec::{Outcome, RunSpec};
pub use task::{evaluate, BatchLoss, EvalBatch, EvalResult, Task};

use crate::checkpoint;
use crate::TrainError;
use run::Run;

/// Trains `init` (ignored when resuming) on `task`.
pub fn train(
    task: &dyn Task,
    init: BTreeMap<String, Tensor>,
    spec: &RunSpec,
) -> Result<Outcome, TrainError> {
    let mut run = Run::start(task, init, spec)?;
    if run.resumed_from.is_none() {
        measure_start(&mut run, task)?;
    }
    run.start_clock();
    while run.state.step < run.total {
        let report = run.step(task)?;
        run.log_step(&report)?;
        eval_and_save(&mut run, task)?;
    }
    finish(run, task)
}

/// Where the curves start: the eval split and the probe (rank 0's) on the initial weights (step 0).
fn measure_start(run: &mut Run, task: &dyn Task) -> Result<(), TrainError> {
    let model = run.snapshot()?;
    let cfg = run.spec.cfg;
    if let Some(ev) = evaluate(task, &model, cfg.batch_size, cfg.eval_batches)? {
        run.log_eval(0, &ev)?;
    }
    if run.world.rank() == 0 {
        if let Some(row) = task.probe(&model)? {
            run.log_probe(0, row)?;
        }
    }
    Ok(())
}

/// Evaluates every `eval_every` steps and checkpoints every `save_every` (rank 0), and both after the
/// last step.
fn eval_and_save(run: &mut Run, task: &dyn Task) -> Result<(), TrainError> {
    let cfg = run.spec.cfg;
    let step = run.state.step;
    let last = step == run.total;
    if last || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) {
        let model = run.snapshot()?;
        if let Some(ev) = evaluate(task, &model, cfg.batch_size, cfg.eval_batches)? {
            run.log_eval(step, &ev)?;
            run.last_eval = Some(ev);
        }
    }
    let due = last || (cfg.save_every > 0 && step.is_multiple_of(cfg.save_every));
    if due && run.world.rank() == 0 {
        run.state.elapsed_s = run.elapsed();
        checkpoint::save(
            &run.root,
            &run.state,
            &run.params.detached(),
            &run.opt.state_tensors(&run.params)?,
            cfg.keep_checkpoints,
        )?;
    }
    Ok(())
}

/// The end-of-run probe (unless a resumed run already wrote it) and the final eval, then the outcome.
fn finish(mut run: Run, task: &dyn Task) -> Result<Outcome, TrainError> {
    run.display.finish();
    if run.world.rank() == 0 && !run.probed_now() {
        let model = run.snapshot()?;
        if let Some(row) = task.probe(&model)? {
            run.log_probe(run.state.step, row)?;
        }
    }
    if run.last_eval.is_none() {
        // Resumed at the very end: report the eval of the final weights anyway.
        let model = run.snapshot()?;
        let cfg = run.spec.cfg;
        run.last_eval = evaluate(task, &model, cfg.batch_size, cfg.eval_batches)?;
    }
    let elapsed_s = run.elapsed();
    Ok(Outcome {
        params: run.params.detached(),
        step: run.state.step,
        resumed_from: run.resumed_from,
        final_loss: run.last_loss,
        eval: run.last_eval,
        tokens_seen: run.state.tokens_seen,
        elapsed_s,
        metrics_path: run.metrics_path,
    })
}
