//! How the ranks of a data-parallel run talk: one small interface ([`Collective`]: all-reduce,
//! all-gather, broadcast, barrier) that the training loop uses without knowing the engine behind it —
//! [`Single`] (one process, every call a no-op), Open MPI through the `mpi` crate (feature `mpi`), and
//! NCCL for the gradients of runs on GPUs with MPI for the rest (feature `nccl`).
//!
//! A process holds one world: [`world`] answers [`Single`] until a binary installs another with
//! [`install`] (see `zerolm_cli::main_ranks`, which starts MPI when `mpirun`/`srun` launched it).

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::sync::OnceLock;

use crate::TrainError;

/// The collective operations a data-parallel run needs. Every rank must make the same calls in the same
/// order with buffers of the same length (the training loop does: its control flow depends only on
/// values every rank shares).
pub trait Collective: Send + Sync {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// How many ranks the run has.
    fn size(&self) -> usize;
    /// The engine's name, for logs and errors (`single`, `mpi`).
    fn engine(&self) -> &'static str;
    /// Replaces `buf` on every rank by the element-wise sum over ranks.
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<(), TrainError>;
    /// Every rank's `mine`, in rank order, on every rank (lengths may differ).
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, TrainError>;
    /// Rank 0's `buf` on every rank.
    fn broadcast(&self, buf: &mut Vec<u8>) -> Result<(), TrainError>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), TrainError>;
    /// Ends the engine cleanly; every rank calls it after its last collective.
    fn finish(&self) {}
    /// Ends this rank with `code`, and with it every other (they may be waiting in a collective this
    /// rank will never join).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// One process: the world of a run without a launcher.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn all_reduce_f32(&self, _buf: &mut [f32]) -> Result<(), TrainError> {
        Ok(())
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        Ok(vec![mine.to_vec()])
    }
    fn broadcast(&self, _buf: &mut Vec<u8>) -> Result<(), TrainError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), TrainError> {
        Ok(())
    }
}

static WORLD: OnceLock<Box<dyn Collective>> = OnceLock::new();

/// Whether this build can run as several ranks (the `mpi` feature).
pub const MULTI_RANK_BUILD: bool = cfg!(feature = "mpi");

/// The process's world: the one [`install`]ed, else [`Single`].
pub fn world() -> &'static dyn Collective {
    WORLD.get().map_or(&Single, |w| w.as_ref())
}

/// Makes `w` the process's world; an error if one was installed already.
pub fn install(w: Box<dyn Collective>) -> Result<(), TrainError> {
    WORLD
        .set(w)
        .map_err(|_| TrainError::Internal("the rank world was installed twice".into()))
}

/// Starts the engine for a process that a launcher made one of `ranks` ranks (`launcher` says which,
/// for errors) and installs it as the process's world.
pub fn start_engine(ranks: usize, launcher: &str) -> Result<(), TrainError> {
    #[cfg(feature = "mpi")]
    {
        let w = mpi::MpiWorld::start()?;
        if w.size() != ranks {
            let size = w.size();
            w.finish();
            return Err(TrainError::Config(format!(
                "{launcher} started {ranks} ranks but MPI sees {size}: the launcher and the MPI library do not \
                 talk (under Slurm, use `srun --mpi=pmix`, or start the ranks with Open MPI's own mpirun)"
            )));
        }
        #[cfg(feature = "nccl")]
        let w = nccl::NcclWorld::new(w);
        install(Box::new(w))
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(TrainError::Config(format!(
            "{launcher} started {ranks} ranks, but this build has no MPI: rebuild with \
             `cargo build --release --features zerolm-train/mpi` (needs libopenmpi-dev, openmpi-bin and clang)"
        )))
    }
}

/// Every rank's `mine` (a small value: step sums, eval sums), in rank order, on every rank.
pub fn gather_values<T: serde::Serialize + serde::de::DeserializeOwned>(
    world: &dyn Collective,
    mine: &T,
) -> Result<Vec<T>, TrainError> {
    let bytes = serde_json::to_vec(mine).expect("json");
    (world.all_gather(&bytes)?.iter())
        .map(|part| {
            serde_json::from_slice(part)
                .map_err(|e| TrainError::Internal(format!("a rank sent an unreadable value: {e}")))
        })
        .collect()
}

/// Whether this process is the rank that writes (checkpoints, metrics, exports, the progress bar).
pub fn is_writer() -> bool {
    world().rank() == 0
}
