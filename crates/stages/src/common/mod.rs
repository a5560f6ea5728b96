//! What every training stage shares around the training loop: its arguments, where it starts, the
//! run set-up, the exported model directory and the closing summary.

pub mod args;
pub mod export;
pub mod setup;
pub mod start;
pub mod summary;

pub use args::StageArgs;
pub use export::{export_model_dir, Provenance};
pub use setup::{StageRun, StreamInputs};
pub use start::StartModel;
pub use summary::closing_line;
