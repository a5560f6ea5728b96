//! Fused CPU kernels for the training forward, each a candle custom op **with a backward**: causal
//! grouped-query attention, SwiGLU, RMSNorm, RoPE and next-token log-probs. The composed versions in
//! `ops` build many full-size temporaries per op (and as many more in backward); these make one pass
//! (two for attention) over the data, parallel over independent rows or heads with rayon.
//!
//! Every kernel is deterministic for any thread count: work is split into independent pieces (rows,
//! (batch, KV head) groups) and every reduction runs in a fixed order. `ops` dispatches here on the CPU
//! and keeps the composed ops for other devices; tests check both agree in value and gradient.
//!
//! One file per op family, each with its op, its row kernels and its tests: `linear` (and
//! `shared_input`, the layers that read one input), `attention`, `rowwise` (RMSNorm, RoPE, SwiGLU) and
//! `logprobs`. `simd` holds the vectorised helpers that several families share, `storage` what every
//! family uses (storage access, gradients as candle wants them, outputs written without zero-filling,
//! the one call into the gemm kernel); `gemm16` is the bf16 matrix product and `pack16` the rounding and
//! packing of its operands; this file declares them and holds the switch between the fused and the
//! composed ops.

#![allow(unsafe_code)]

mod attention;
pub mod gemm16;
mod linear;
mod logprobs;
mod pack16;
mod rowwise;
mod shared_input;
mod simd;
mod storage;
mod swiglu_input;
#[cfg(test)]
mod tests_support;

pub use attention::CausalAttention;
pub use linear::{matmul, Linear, WeightPacks};
pub use logprobs::TokenLogprobs;
pub use rowwise::{Add, RmsNorm, Rope, SwiGlu};
pub use shared_input::{normed_linears, shared_linears, SharedLinear};
pub use swiglu_input::SwiGluLinear;

use candle_core::{DType, Tensor};

/// Whether the fused kernels run for `t`: on the CPU, in f32, unless [`with_composed_ops`] is active.
pub fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !COMPOSED_ONLY.with(std::cell::Cell::get)
}

thread_local! {
    static COMPOSED_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the fused kernels switched off on this thread: every op takes its composed version, the
/// path a GPU runs, so that path can be checked on a CPU.
pub fn with_composed_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = COMPOSED_ONLY.with(|c| c.replace(true));
    let out = f();
    COMPOSED_ONLY.with(|c| c.set(before));
    out
}
