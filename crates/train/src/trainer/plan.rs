//! How a run walks its data: the batch it draws, the shuffled order of each epoch, and how many
//! optimizer steps it takes.

use zerolm_model::SplitMix64;

use crate::settings::TrainConfig;
use crate::TrainError;

/// The rows a micro-batch holds: `batch_size`, or all `num_samples` rows when there are fewer (one
/// partial batch, as Hugging Face's Trainer runs it).
pub fn batch_rows(cfg: &TrainConfig, num_samples: usize) -> Result<usize, TrainError> {
    if num_samples == 0 {
        return Err(TrainError::Config(
            "there are no training rows to train on; check the --input files".into(),
        ));
    }
    if u32::try_from(num_samples).is_err() {
        return Err(TrainError::Config(format!(
            "{num_samples} training rows are more than one run can order ({}); split the data into runs",
            u32::MAX
        )));
    }
    Ok(cfg.batch_size.min(num_samples))
}

/// A line for the log when the data is smaller than one batch; `None` otherwise.
pub fn partial_batch_note(cfg: &TrainConfig, num_samples: usize) -> Option<String> {
    (num_samples > 0 && num_samples < cfg.batch_size).then(|| {
        format!(
            "note: {num_samples} training rows are fewer than one batch (batch_size {}); every step trains on \
             one partial batch of {num_samples}",
            cfg.batch_size
        )
    })
}

/// Optimizer steps a run takes on this process's ranks (see [`crate::collective::world`]).
pub fn total_steps(cfg: &TrainConfig, num_samples: usize) -> Result<usize, TrainError> {
    total_steps_on(cfg, num_samples, crate::collective::world().size())
}

/// Optimizer steps a run takes on `ranks` ranks: each step consumes `grad_accum × ranks` micro-batches.
pub fn total_steps_on(
    cfg: &TrainConfig,
    num_samples: usize,
    ranks: usize,
) -> Result<usize, TrainError> {
    if cfg.max_steps > 0 {
        return Ok(cfg.max_steps);
    }
    let per_epoch = num_samples / batch_rows(cfg, num_samples)? / (cfg.grad_accum * ranks);
    if per_epoch == 0 {
        let ranks_note = if ranks > 1 {
            format!(" × {ranks} ranks")
        } else {
            String::new()
        };
        return Err(TrainError::Config(format!(
            "{num_samples} training rows are fewer than one optimizer step needs (batch_size {} × grad_accum \
             {}{ranks_note}); lower them or add data",
            cfg.batch_size, cfg.grad_accum
        )));
    }
    Ok(per_epoch * cfg.epochs)
}

/// The shuffled sample order of `epoch`: a pure function of (seed, epoch). Stored as `u32` (4 bytes a
/// sample: the one thing a run holds per row of its data); [`batch_rows`] refuses more samples.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch_size: usize, grad_accum: usize) -> TrainConfig {
        let mut c = TrainConfig::pretrain_defaults("micro").unwrap();
        (c.batch_size, c.grad_accum, c.epochs) = (batch_size, grad_accum, 3);
        c
    }

    #[test]
    fn data_smaller_than_a_batch_is_one_partial_batch() {
        assert_eq!(batch_rows(&cfg(8, 1), 3).unwrap(), 3);
        assert_eq!(batch_rows(&cfg(8, 1), 20).unwrap(), 8);
        assert_eq!(total_steps(&cfg(8, 1), 3).unwrap(), 3, "one step per epoch");
        assert_eq!(total_steps(&cfg(8, 1), 20).unwrap(), 6, "full batches only");
        assert!(partial_batch_note(&cfg(8, 1), 3)
            .unwrap()
            .contains("partial batch of 3"));
        assert!(partial_batch_note(&cfg(8, 1), 8).is_none());
        assert!(batch_rows(&cfg(8, 1), 0).unwrap_err().is_user_error());
        let e = total_steps(&cfg(4, 4), 6).unwrap_err().to_string();
        assert!(e.contains("grad_accum 4"), "{e}");
        assert_eq!(
            total_steps_on(&cfg(2, 1), 20, 2).unwrap(),
            15,
            "5 steps an epoch"
        );
        let e = total_steps_on(&cfg(4, 1), 6, 2).unwrap_err().to_string();
        assert!(e.contains("× 2 ranks"), "{e}");
    }

    #[test]
    fn epoch_orders_are_permutations_fixed_by_seed_and_epoch() {
        let a = epoch_order(50, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<u32>>());
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1));
        assert_ne!(a, epoch_order(50, 8, 0));
    }
}
