//! zerolm's training loop, shared by every stage and knowing none of them: AdamW with saveable state,
//! the warmup + cosine schedule, clipping and accumulation, atomic checkpoints with bit-identical
//! resume, metrics, and the layered settings. The stages live in `zerolm-stages`.

pub mod adamw;
pub mod checkpoint;
pub mod collective;
pub mod error;
pub mod metrics;
pub mod params;
pub mod schedule;
pub mod settings;
pub mod trainer;

pub use error::TrainError;
pub use settings::TrainConfig;
