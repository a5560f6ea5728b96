//! Before a data-parallel run's first step every rank states what it is about to run — its binary, its
//! data, its settings, where it starts and the state it starts from — and a rank that differs from rank
//! 0 stops the run, naming the difference: ranks that train different things would average gradients
//! of different models.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::resume::describe;
use crate::adamw::AdamW;
use crate::checkpoint::{self, DataCursor, InputFingerprint, TrainerState};
use crate::collective::Collective;
use crate::params::Params;
use crate::TrainError;

/// What a rank is about to run.
#[derive(Serialize, Deserialize)]
struct Identity {
    binary: String,
    stage: String,
    tokenizer: String,
    inputs: Vec<InputFingerprint>,
    settings: Value,
    step: usize,
    cursor: DataCursor,
    weights: String,
    optimizer: String,
}

impl Identity {
    fn of(state: &TrainerState, params: &Params, opt: &AdamW) -> Result<Identity, TrainError> {
        let exe = std::env::current_exe()
            .map_err(|e| TrainError::Internal(format!("cannot find this binary: {e}")))?;
        Ok(Identity {
            binary: zerolm_io::hash_file(&exe)?.0,
            stage: state.stage.clone(),
            tokenizer: state.tokenizer_fingerprint.clone(),
            inputs: state.inputs.clone(),
            settings: state.config.clone(),
            step: state.step,
            cursor: state.cursor.clone(),
            weights: params.fingerprint()?,
            optimizer: opt.fingerprint(),
        })
    }
}

/// Refuses to start unless every rank is about to run the same thing from the same state (a no-op on
/// one rank).
pub fn agree_at_start(
    world: &dyn Collective,
    state: &TrainerState,
    params: &Params,
    opt: &AdamW,
) -> Result<(), TrainError> {
    if world.size() == 1 {
        return Ok(());
    }
    let me = serde_json::to_vec(&Identity::of(state, params, opt)?).expect("json");
    let all = world.all_gather(&me)?;
    let parse = |bytes: &[u8]| -> Result<Identity, TrainError> {
        serde_json::from_slice(bytes)
            .map_err(|e| TrainError::Internal(format!("a rank sent an unreadable identity: {e}")))
    };
    let first = parse(&all[0])?;
    for (rank, bytes) in all.iter().enumerate().skip(1) {
        if let Some(d) = difference(&first, &parse(bytes)?, rank) {
            return Err(TrainError::Config(format!(
                "rank {rank} differs from rank 0: {d}. Every rank must run the same binary on the same data \
                 and settings"
            )));
        }
    }
    Ok(())
}

/// How `other` differs from rank 0's `first`, the first difference found, or `None`.
fn difference(first: &Identity, other: &Identity, rank: usize) -> Option<String> {
    let short = |h: &str| h[..12.min(h.len())].to_string();
    if first.binary != other.binary {
        return Some(format!(
            "its binary (blake3 {}) is not rank 0's ({}); install the same build on every host",
            short(&other.binary),
            short(&first.binary)
        ));
    }
    if first.stage != other.stage {
        return Some(format!(
            "it runs `{}`, rank 0 runs `{}`",
            other.stage, first.stage
        ));
    }
    if first.tokenizer != other.tokenizer {
        return Some("its tokenizer differs".into());
    }
    if first.inputs != other.inputs {
        return Some(format!(
            "its input data differ: {} vs rank 0's {}",
            describe(&other.inputs),
            describe(&first.inputs)
        ));
    }
    if let Some(d) = checkpoint::config_difference(&first.settings, &other.settings, &[]) {
        return Some(format!(
            "its settings differ ({})",
            d.replace("checkpoint", "rank 0")
                .replace("vs now", &format!("vs rank {rank}"))
        ));
    }
    if first.step != other.step || first.cursor != other.cursor {
        return Some(format!(
            "it starts at step {}, rank 0 at step {} (all ranks must see the same checkpoints directory: \
             a shared filesystem)",
            other.step, first.step
        ));
    }
    if first.weights != other.weights || first.optimizer != other.optimizer {
        return Some("its starting weights or optimizer state differ from rank 0's".into());
    }
    None
}
