//! The learning-rate schedule: linear warmup to the peak, then cosine decay to a floor.

/// Learning rate for optimizer step `step` (0-based) of `total`.
///
/// Warmup: `lr · (step + 1) / warmup` for the first `warmup` steps. Then cosine from `lr` down to
/// `lr · min_ratio`, reaching the floor on the last step.
pub fn lr_at(step: usize, total: usize, lr: f64, warmup: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let floor = lr * min_ratio;
    let span = total.saturating_sub(warmup).saturating_sub(1);
    if span == 0 {
        return lr;
    }
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    floor + 0.5 * (lr - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let f = |s| lr_at(s, 110, 1e-3, 10, 0.1);
        assert!((f(0) - 1e-4).abs() < 1e-12);
        assert!((f(9) - 1e-3).abs() < 1e-12);
        assert!((f(10) - 1e-3).abs() < 1e-12);
        assert!((f(109) - 1e-4).abs() < 1e-12);
        // halfway through the decay: the mean of peak and floor
        assert!((f(10 + 99 / 2) - 5.5e-4).abs() < 2e-5);
        for s in 10..109 {
            assert!(f(s + 1) <= f(s));
        }
    }

    #[test]
    fn no_warmup_and_single_step_runs_are_defined() {
        assert_eq!(lr_at(0, 1, 1e-3, 0, 0.1), 1e-3);
        assert!(lr_at(5, 3, 1e-3, 0, 0.1).is_finite());
    }
}
