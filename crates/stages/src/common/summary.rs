//! The line a training stage ends with: steps, what it trained on, time, losses, stage details and
//! where the model went.

use std::path::Path;

use zerolm_train::trainer::Outcome;

/// `<stage>: N steps (<trained>) in Ts[, resumed from step S]; train loss L; <details…>; model → DIR`.
pub fn closing_line(
    stage: &str,
    outcome: &Outcome,
    trained: &str,
    details: &[String],
    model_dir: &Path,
) -> String {
    let mut parts = vec![
        format!(
            "{stage}: {} steps ({trained}) in {:.1}s{}",
            outcome.step,
            outcome.elapsed_s,
            outcome.resumed_note()
        ),
        format!("train loss {}", show(outcome.final_loss, 4)),
    ];
    parts.extend(details.iter().cloned());
    parts.push(format!("model → {}", model_dir.display()));
    parts.join("; ")
}

/// A value with `digits` decimals, or `-` when there is none.
pub fn show(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}
