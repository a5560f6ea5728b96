//! zerolm's pipeline runner: YAML pipelines of stage binaries, run in dependency order, skipped when
//! their fingerprint (binary, arguments, dep contents) matches the last successful run, resumed after a
//! kill, and reported on. See `spec` for the file format.

pub mod error;
pub mod graph;
pub mod hashing;
pub mod lockfile;
pub mod makefile;
pub mod report;
pub mod runner;
pub mod spec;

pub use error::{PipelineError, Result};
pub use graph::Graph;
pub use runner::{run, status, RunOptions, Selection, Verdict};
pub use spec::Pipeline;
