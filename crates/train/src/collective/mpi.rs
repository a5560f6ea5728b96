//! The ranks of a run as an MPI world (Open MPI through the `mpi` crate). Started only when a launcher
//! (`mpirun`, `srun --mpi=pmix`) made this process one of several ranks; every call comes from the
//! thread that started it (MPI's `FUNNELED` level: rayon's workers never talk MPI).

#![allow(unsafe_code)]

use std::sync::Mutex;
use std::thread::ThreadId;

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use super::Collective;
use crate::TrainError;

/// An MPI world; see the module doc.
pub struct MpiWorld {
    universe: Mutex<Option<Universe>>,
    comm: SimpleCommunicator,
    thread: ThreadId,
    rank: usize,
    size: usize,
}

// SAFETY: MPI is initialised at the FUNNELED level and `MpiWorld` refuses (see `same_thread`) calls
// from any thread but the one that initialised it, so the communicator is never used concurrently.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

impl MpiWorld {
    /// Initialises MPI; an error when it cannot (then no MPI call was made).
    pub fn start() -> Result<MpiWorld, TrainError> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| TrainError::Internal("MPI was initialised twice".into()))?;
        if level < Threading::Funneled {
            return Err(TrainError::Config(format!(
                "this MPI library offers thread level {level:?}; zerolm needs FUNNELED (rebuild Open MPI with \
                 thread support)"
            )));
        }
        let comm = universe.world();
        Ok(MpiWorld {
            rank: comm.rank() as usize,
            size: comm.size() as usize,
            comm,
            universe: Mutex::new(Some(universe)),
            thread: std::thread::current().id(),
        })
    }

    fn same_thread(&self) -> Result<(), TrainError> {
        if std::thread::current().id() == self.thread {
            Ok(())
        } else {
            Err(TrainError::Internal(
                "an MPI call came from a thread that did not initialise MPI".into(),
            ))
        }
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn engine(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<(), TrainError> {
        self.same_thread()?;
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        self.same_thread()?;
        let len = i32::try_from(mine.len())
            .map_err(|_| TrainError::Internal("an all-gather of more than 2 GiB".into()))?;
        let mut counts = vec![0i32; self.size];
        self.comm.all_gather_into(&len, &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.comm.all_gather_varcount_into(mine, &mut part);
        }
        Ok(counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
            .collect())
    }

    fn broadcast(&self, buf: &mut Vec<u8>) -> Result<(), TrainError> {
        self.same_thread()?;
        let root = self.comm.process_at_rank(0);
        let mut len = buf.len() as u64;
        root.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        root.broadcast_into(&mut buf[..]);
        Ok(())
    }

    fn barrier(&self) -> Result<(), TrainError> {
        self.same_thread()?;
        self.comm.barrier();
        Ok(())
    }

    /// `MPI_Finalize` (by dropping the universe).
    fn finish(&self) {
        if let Ok(mut u) = self.universe.lock() {
            drop(u.take());
        }
    }

    /// `MPI_Abort` on the world: the launcher ends every rank.
    fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }
}
