//! `--threads` and `--device`, applied once at the start of a process that runs the model.

use zerolm_train::TrainError;

/// `--threads`, `--device` and `--precision`: how a command that runs a trained model computes
/// (`generate`, `ref-logprobs`, `serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu (default), cuda or cuda:N (needs a build with `--features zerolm-train/cuda`).
    #[arg(long)]
    pub device: Option<String>,
    /// Precision of the matrix products: f32, or bf16 operands with f32 sums (see `pretrain --help`).
    #[arg(long, default_value = "f32")]
    pub precision: zerolm_model::Precision,
}

impl ComputeArgs {
    /// Applies `--device` and `--threads`; returns the thread count.
    pub fn apply(&self) -> Result<usize, TrainError> {
        set_device_and_threads(self.device.as_deref(), self.threads)
    }
}

/// `--device` then `--threads`, as every stage that runs the model applies them; returns the thread
/// count.
pub fn set_device_and_threads(
    device: Option<&str>,
    threads: Option<usize>,
) -> Result<usize, TrainError> {
    zerolm_model::device::select(device)?;
    zerolm_model::fused::gemm16::kernel_from_env().map_err(TrainError::Config)?;
    set_threads(threads)
}

/// Applies `--threads` (or the environment's default) to rayon and candle; returns the count in use.
pub fn set_threads(threads: Option<usize>) -> Result<usize, TrainError> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(TrainError::Config("--threads must be at least 1".into()));
        }
        // candle's CPU kernels size their pools from this variable; set it before any tensor work.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| TrainError::Internal(format!("thread pool: {e}")))?;
    }
    let n = rayon::current_num_threads();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // candle runs its remaining element-wise ops on a pool of its own whose workers spin while the
    // matrix products run on rayon's threads, taking a core from them: the heavy element-wise work is
    // in zerolm's fused kernels (on rayon), so candle's pool is kept to the calling thread (measured:
    // 741 → 798 tokens/s on the MiniMind2 step). An explicit CANDLE_NUM_THREADS is respected.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    Ok(n)
}
