//! What every zerolm binary shares, so each `bins/*/src/main.rs` is flags and a call into a library:
//! - [`main`]: parse the command line, run, print a failure and map it to the exit code policy
//!   (0 ok, 1 what the user can fix — bad input, flag, setting, usage —, 2 internal);
//! - [`args`]: the training stages' common flags and how they become library types;
//! - [`threads`]: `--threads` and `--device` for rayon, candle and the GPU;
//! - [`alloc`]: mimalloc as the global allocator, tuned to keep freed memory;
//! - [`launch`]: the refusal to run as one of several ranks of a launcher (this build is single-process).
//!
//! Library crates never take these clap types; the binaries convert them.

pub mod alloc;
pub mod args;
pub mod exit;
pub mod launch;
pub mod quiet;
pub mod threads;

pub use exit::{main, main_ranks, UsageError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
