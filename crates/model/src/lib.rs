//! zerolm's decoder-only transformer (Llama / Qwen3 style) on candle: config and presets, seeded init,
//! a training forward whose every op has a backward, the device it runs on, KV-cache generation and
//! sampling, inference on an exported model directory, and safetensors IO with Hugging Face tensor
//! names.

pub mod config;
pub mod device;
pub mod error;
pub mod fused;
pub mod infer;
pub mod io;
pub mod model;
pub mod ops;
pub mod params;
pub mod precision;
pub mod sample;

pub use config::{ModelConfig, ModelType, PRESETS};
pub use error::ModelError;
pub use model::{KvCache, Model, Segment};
pub use params::{init_parameters, parameter_shapes, SplitMix64};
pub use precision::Precision;
