//! zerolm's training layer: the one loop pretrain/SFT/DPO share (AdamW with saveable state, warmup +
//! cosine schedule, clipping, accumulation, atomic checkpoints with bit-identical resume, metrics) and
//! the stages built on it.

pub mod adamw;
pub mod alloc;
pub mod answers;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod device;
pub mod dpo;
pub mod error;
pub mod infer;
pub mod metrics;
pub mod pairs;
pub mod preference;
pub mod pretrain;
pub mod ref_logprobs;
pub mod schedule;
pub mod settings;
pub mod sft;
pub mod stage;
pub mod trainer;

pub use error::TrainError;
pub use settings::TrainConfig;
