//! Resuming: a run picks up its newest checkpoint only when it is the same run — the same stage,
//! tokenizer, input data and settings (those in `RESUMABLE_KEYS` may differ) — and otherwise says how
//! to start over.

use std::path::Path;

use candle_core::Device;

use crate::adamw::AdamW;
use crate::checkpoint::{self, InputFingerprint, TrainerState};
use crate::params::Params;
use crate::settings::RESUMABLE_KEYS;
use crate::TrainError;

/// Loads the newest checkpoint under `root` into `params`, `opt` and `state`, if there is one; returns
/// the step it resumed from.
pub fn resume(
    root: &Path,
    device: &Device,
    params: &Params,
    opt: &mut AdamW,
    state: &mut TrainerState,
) -> Result<Option<usize>, TrainError> {
    let Some((_, dir)) = checkpoint::list(root)?.pop() else {
        return Ok(None);
    };
    let ck = checkpoint::load(&dir, device)?;
    check_resumable(&ck.state, state, &dir)?;
    params.load(
        &ck.model,
        &dir.join("model.safetensors").display().to_string(),
    )?;
    opt.load_state(
        params,
        &ck.optimizer,
        ck.state.step as u64,
        &dir.join("optimizer.safetensors").display().to_string(),
    )?;
    state.step = ck.state.step;
    state.cursor = ck.state.cursor;
    state.tokens_seen = ck.state.tokens_seen;
    state.elapsed_s = ck.state.elapsed_s;
    if ck.state.threads != state.threads {
        eprintln!(
            "warning: the checkpoint was written with {} threads, this run uses {}; results stay valid but are \
             no longer bit-identical to an uninterrupted run",
            ck.state.threads, state.threads
        );
    }
    eprintln!(
        "resuming from {} (step {}/{})",
        dir.display(),
        state.step,
        state.total_steps
    );
    Ok(Some(ck.state.step))
}

fn check_resumable(saved: &TrainerState, now: &TrainerState, dir: &Path) -> Result<(), TrainError> {
    let hint = "rerun the original command, or pass --no-resume to start over";
    let refuse = |what: String| TrainError::Resume(format!("{}{what}; {hint}", dir.display()));
    if saved.stage != now.stage {
        return Err(refuse(format!(
            " is a `{}` checkpoint, this is `{}`",
            saved.stage, now.stage
        )));
    }
    if saved.tokenizer_fingerprint != now.tokenizer_fingerprint {
        return Err(refuse(
            ": the tokenizer differs from the checkpoint's".into(),
        ));
    }
    if saved.inputs != now.inputs {
        return Err(refuse(format!(
            ": the input data differ from the checkpoint's (checkpoint: {}; now: {})",
            describe(&saved.inputs),
            describe(&now.inputs)
        )));
    }
    let mut allowed = RESUMABLE_KEYS.to_vec();
    if saved.ranks != now.ranks {
        check_global_batch(saved, now).map_err(refuse)?;
        allowed.push("grad_accum");
    }
    if let Some(d) = checkpoint::config_difference(&saved.config, &now.config, &allowed) {
        return Err(refuse(format!(
            ": settings differ from the checkpoint's: {d}"
        )));
    }
    Ok(())
}

/// A checkpoint of another rank count resumes when a step still covers the same micro-batches
/// (`ranks × grad_accum`): the data order and the global batch are then the same, the sums of gradients
/// only grouped differently (equal up to float rounding, not bit for bit).
fn check_global_batch(saved: &TrainerState, now: &TrainerState) -> Result<(), String> {
    let accum = |s: &TrainerState| {
        (s.config.get("grad_accum"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1) as usize
    };
    let (a, b) = (accum(saved), accum(now));
    if a * saved.ranks != b * now.ranks {
        return Err(format!(
            ": it was written by {} ranks × grad_accum {a} = {} micro-batches a step, this run has {} ranks × \
             grad_accum {b} = {}; keep ranks × grad_accum the same (set --grad-accum) to resume with another \
             rank count",
            saved.ranks,
            a * saved.ranks,
            now.ranks,
            b * now.ranks
        ));
    }
    eprintln!(
        "note: resuming a checkpoint of {} ranks × grad_accum {a} on {} ranks × grad_accum {b}: the same global \
         batch and data order; the result equals an uninterrupted run up to float rounding, not bit for bit",
        saved.ranks, now.ranks
    );
    Ok(())
}

pub(super) fn describe(inputs: &[InputFingerprint]) -> String {
    inputs
        .iter()
        .map(|i| {
            format!(
                "{} {} ({})",
                i.role,
                i.path,
                &i.blake3[..12.min(i.blake3.len())]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error of a run whose loss or gradients stopped being finite, saying what is kept and what to do.
pub fn diverged(root: &Path, step: usize, what: String) -> TrainError {
    let kept = match checkpoint::list(root).ok().and_then(|mut l| l.pop()) {
        Some((s, dir)) => format!(
            "The last good checkpoint (step {s}) is kept at {}. Rerunning the same command resumes from it (and will \
             likely diverge again); to change lr or warmup_steps, rerun with --no-resume, which deletes the checkpoints \
             and starts over",
            dir.display()
        ),
        None => "No checkpoint was written yet; lower --lr or raise warmup_steps and rerun".to_string(),
    };
    TrainError::Diverged { step, what, kept }
}
