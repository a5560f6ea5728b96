//! The ranks of a run on NVIDIA GPUs: NCCL (through candle's `nccl` feature, cudarc) sums the gradients
//! GPU to GPU, and the MPI world that started the ranks does the rest (gathers, broadcasts, barriers) —
//! and hands NCCL its unique id: rank 0 makes it and broadcasts it over MPI, so NCCL takes rank and world
//! size from the same `mpirun` as every other rank's state. The NCCL communicator is made on the first
//! all-reduce, on the stream of the GPU the run trains on (`--device cuda`: the rank's local GPU), so
//! CPU runs of this build never touch a GPU.

use std::sync::{Arc, OnceLock};

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::Device;

use super::mpi::MpiWorld;
use super::Collective;
use crate::TrainError;

/// MPI for control, NCCL for gradients (when the run is on a GPU).
pub struct NcclWorld {
    mpi: MpiWorld,
    nccl: OnceLock<(Comm, Arc<CudaStream>)>,
}

// SAFETY: as for `MpiWorld`: every call comes from the thread that started MPI (checked by the MPI calls
// each collective makes first), so the NCCL communicator is never used concurrently.
#[allow(unsafe_code)]
unsafe impl Send for NcclWorld {}
#[allow(unsafe_code)]
unsafe impl Sync for NcclWorld {}

impl NcclWorld {
    pub fn new(mpi: MpiWorld) -> NcclWorld {
        NcclWorld {
            mpi,
            nccl: OnceLock::new(),
        }
    }

    /// The NCCL communicator on the run's GPU, made on first use (every rank calls this at the same
    /// all-reduce); `None` when the run is on the CPU.
    fn comm(&self) -> Result<Option<&(Comm, Arc<CudaStream>)>, TrainError> {
        if let Some(c) = self.nccl.get() {
            return Ok(Some(c));
        }
        let Device::Cuda(gpu) = zerolm_model::device::current() else {
            return Ok(None);
        };
        let mut id = Vec::new();
        if self.mpi.rank() == 0 {
            let made = Id::new().map_err(|e| nccl_error("make its unique id", e))?;
            id = made.internal().iter().map(|&c| c as u8).collect();
        }
        self.mpi.broadcast(&mut id)?;
        let internal: [std::ffi::c_char; 128] = (id.iter().map(|&b| b as std::ffi::c_char))
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| TrainError::Internal("the NCCL unique id is not 128 bytes".into()))?;
        let stream = gpu.cuda_stream();
        let comm = Comm::from_rank(
            stream.clone(),
            self.mpi.rank(),
            self.mpi.size(),
            Id::uninit(internal),
        )
        .map_err(|e| nccl_error("start its communicator", e))?;
        Ok(Some(self.nccl.get_or_init(|| (comm, stream))))
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Internal(format!("NCCL could not {what}: {e:?}"))
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn engine(&self) -> &'static str {
        match self.nccl.get() {
            Some(_) => "nccl",
            None => "mpi",
        }
    }

    /// On a GPU: host → GPU, NCCL sum, GPU → host; on the CPU: MPI.
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<(), TrainError> {
        let Some((comm, stream)) = self.comm()? else {
            return self.mpi.all_reduce_f32(buf);
        };
        let cuda = |what: &str, e: candle_core::cuda_backend::cudarc::driver::DriverError| {
            TrainError::Internal(format!("CUDA could not {what}: {e}"))
        };
        let mut dev = stream
            .clone_htod(buf)
            .map_err(|e| cuda("copy gradients to the GPU", e))?;
        comm.all_reduce_in_place(&mut dev, &ReduceOp::Sum)
            .map_err(|e| nccl_error("all-reduce", e))?;
        stream
            .memcpy_dtoh(&dev, buf)
            .map_err(|e| cuda("copy gradients back", e))?;
        stream
            .synchronize()
            .map_err(|e| cuda("finish the all-reduce", e))
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        self.mpi.all_gather(mine)
    }

    fn broadcast(&self, buf: &mut Vec<u8>) -> Result<(), TrainError> {
        self.mpi.broadcast(buf)
    }

    fn barrier(&self) -> Result<(), TrainError> {
        self.mpi.barrier()
    }

    fn finish(&self) {
        self.mpi.finish()
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}
