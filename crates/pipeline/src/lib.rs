//! zerolm's pipeline runner: YAML pipelines of stage binaries, run in dependency order, skipped when
//! their fingerprint (binary, arguments, dep contents) matches the last successful run, resumed after a
//! kill, and reported on. See `spec` for the file format.

pub mod books;
pub mod error;
pub mod evals;
pub mod exec;
pub mod graph;
pub mod hashing;
pub mod judge;
pub mod lockfile;
pub mod makefile;
pub mod report;
pub mod resources;
pub mod runner;
pub mod schedule;
pub mod shell;
pub mod signals;
pub mod spec;

pub use error::{PipelineError, Result};
pub use graph::Graph;
pub use judge::{status, Selection, Verdict};
pub use resources::ExecutorKind;
pub use runner::{run, RunOptions};
pub use spec::Pipeline;
