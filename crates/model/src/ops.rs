//! The model's building-block ops. On the CPU (f32) the heavy ones — RMSNorm, RoPE, causal attention,
//! SwiGLU, next-token log-probs — run as fused kernels with their own backward (`fused`); elsewhere, and
//! in the tests that check the kernels, the `*_composed` versions build the same function from candle
//! primitives that all have a backward.
//!
//! candle_nn's `rms_norm`, `softmax_last_dim` and `rotary_emb::rope*` are fused kernels without a
//! backward: gradients stop there silently, so they are not used.

use crate::fused::{self, cpu_f32};
use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::Arc;

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight` (HF Llama/Qwen3 order).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if cpu_f32(x) {
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, fused::RmsNorm { eps: eps as f32 });
    }
    rms_norm_composed(x, weight, eps)
}

/// `a + b` (same shapes): the residual stream's add.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_f32(a) && cpu_f32(b) && a.shape() == b.shape() {
        return a.contiguous()?.apply_op2(&b.contiguous()?, fused::Add);
    }
    a + b
}

/// `silu(gate) * up`, the SwiGLU MLP's activation.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if cpu_f32(gate) {
        return gate
            .contiguous()?
            .apply_op2(&up.contiguous()?, fused::SwiGlu);
    }
    swiglu_composed(gate, up)
}

pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `log p(target)` for each row of `logits` ([N, V]) and `targets` ([N], u32): [N].
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if cpu_f32(logits) {
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, fused::TokenLogprobs::default());
    }
    token_logprobs_composed(logits, targets)
}

/// Applies RoPE to `x` ([B, T, H, head_dim]) with tables [T, head_dim]:
/// `x * cos + rotate_half(x) * sin`, where `rotate_half([a, b]) = [-b, a]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        let (t, d) = cos.dims2()?;
        return x.contiguous()?.apply_op1(fused::Rope {
            cos: cos.flatten_all()?.to_vec1()?,
            sin: sin.flatten_all()?.to_vec1()?,
            t,
            d,
        });
    }
    rope_composed(x, cos, sin)
}

/// Causal attention `softmax(q kᵀ · scale + mask) v` for q [B, Tq, NH, D] and k, v [B, Tk, NKV, D]
/// (grouped-query: query head h reads KV head h / (NH / NKV)); query i sees keys 0..=i + Tk − Tq.
/// Returns [B, Tq, NH, D]. In f32; see [`causal_attention_in`] for bf16 products.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    causal_attention_in(q, k, v, scale, false)
}

/// [`causal_attention`], with `bf16` products (bf16 operands, f32 sums; the softmax in f32).
pub fn causal_attention_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bf16: bool,
) -> Result<Tensor> {
    if cpu_f32(q) {
        let mut op = fused::CausalAttention::new(scale as f32, bf16);
        if ![q, k, v].iter().any(|t| t.track_op()) {
            op = op.for_inference();
        }
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    attention_composed(q, k, v, scale, bf16)
}

/// [`causal_attention`] from candle primitives.
pub fn causal_attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention_composed(q, k, v, scale, false)
}

/// The composed attention (heads moved to axis 1 and back), its two products in bf16 when asked.
fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bf16: bool,
) -> Result<Tensor> {
    let (q, k, v) = (
        q.transpose(1, 2)?.contiguous()?,
        k.transpose(1, 2)?.contiguous()?,
        v.transpose(1, 2)?.contiguous()?,
    );
    let (nh, tq) = (q.dim(1)?, q.dim(2)?);
    let (nkv, tk) = (k.dim(1)?, k.dim(2)?);
    let k = repeat_kv(&k, nh / nkv)?.contiguous()?;
    let v = repeat_kv(&v, nh / nkv)?.contiguous()?;
    let mm = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
        if !bf16 {
            return a.matmul(b);
        }
        (a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?))?.to_dtype(DType::F32)
    };
    let scores = (mm(&q, &k.t()?)? * scale)?.broadcast_add(&causal_mask(tq, tk, q.device())?)?;
    mm(&softmax_last_dim(&scores)?, &v)?
        .transpose(1, 2)?
        .contiguous()
}

/// [`rms_norm`] from candle primitives.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = x
        .sqr()?
        .mean_keepdim(D::Minus1)?
        .affine(1.0, eps)?
        .sqrt()?
        .recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(weight)
}

/// Softmax over the last dimension. The max is subtracted for range only (softmax is shift
/// invariant), so it is detached from the graph.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Log-softmax over the last dimension, same construction as [`softmax_last_dim`].
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// [`token_logprobs`] from candle primitives.
pub fn token_logprobs_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    (picked - lse)?.squeeze(1)
}

/// Rotary tables for positions `offset..offset + len`: (cos, sin), each [len, head_dim], in the
/// Hugging Face layout (the half-dimension frequencies repeated twice, for `rotate_half`).
pub fn rope_tables(
    head_dim: usize,
    theta: f64,
    offset: usize,
    len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    // transformers computes inv_freq and the angles in f32; doing the same keeps logits within 1e-6.
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for p in offset..offset + len {
        for _half in 0..2 {
            for f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (len, head_dim), device)?,
        Tensor::from_vec(sin, (len, head_dim), device)?,
    ))
}

/// [`rope`] from candle primitives (on x [B, T, H, D]).
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.transpose(1, 2)?;
    let d = x.dim(D::Minus1)?;
    let a = x.narrow(D::Minus1, 0, d / 2)?;
    let b = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&b.neg()?, &a], D::Minus1)?;
    (x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?
        .transpose(1, 2)?
        .contiguous()
}

/// An additive causal mask [q_len, k_len] for queries at positions `k_len - q_len ..`: 0 where a
/// query may attend, -inf where the key lies in its future.
pub fn causal_mask(q_len: usize, k_len: usize, device: &Device) -> Result<Tensor> {
    let start = k_len - q_len;
    let mask: Vec<f32> = (0..q_len)
        .flat_map(|i| {
            (0..k_len).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (q_len, k_len), device)?.to_dtype(DType::F32)
}

/// Repeats each KV head `n_rep` times along dim 1: [B, KVH, T, D] → [B, KVH·n_rep, T, D].
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, t, d) = x.dims4()?;
    Tensor::cat(&vec![x; n_rep], 2)?.reshape((b, kvh * n_rep, t, d))
}

/// `x @ wᵀ` for x [.., in] and a Linear weight w [out, in], in f32.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_in(x, w, false, None)
}

/// `x @ wt` for x [.., in] and a Linear weight given transposed, wt [in, out] (see [`transposed`]).
pub fn linear_t(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    linear_in(x, wt, true, None)
}

/// [`linear`] (or [`linear_t`] when `transposed`), in f32, or with `bf16` in mixed precision: operands
/// rounded to bf16, sums and result in f32, the weight's bf16 copy taken from (and kept in) the packs.
pub fn linear_in(
    x: &Tensor,
    w: &Tensor,
    transposed: bool,
    bf16: Option<&Arc<fused::WeightPacks>>,
) -> Result<Tensor> {
    if cpu_f32(x) {
        let op = fused::Linear {
            transposed,
            bf16: bf16.cloned(),
        };
        return x.contiguous()?.apply_op2(&w.contiguous()?, op);
    }
    let w = if transposed { w.t()? } else { w.clone() };
    match bf16 {
        None => linear_composed(x, &w),
        Some(packs) => linear_bf16_composed(x, &w, packs),
    }
}

/// [`linear_in`] in bf16 for several weights applied to the same `x` (q, k and v; gate and up): on the
/// CPU `x` is rounded and packed once for all of them ([`fused::shared_linears`]); the same numbers.
pub fn linears_bf16(
    x: &Tensor,
    weights: &[(&Tensor, &Arc<fused::WeightPacks>)],
) -> Result<Vec<Tensor>> {
    if !cpu_f32(x) || weights.len() < 2 {
        return (weights.iter())
            .map(|(w, packs)| linear_in(x, w, false, Some(packs)))
            .collect();
    }
    apply_group(x, weights, fused::shared_linears)
}

/// One op per weight of `weights`, made by `group` over them all, each applied to `x`.
fn apply_group(
    x: &Tensor,
    weights: &[(&Tensor, &Arc<fused::WeightPacks>)],
    group: impl FnOnce(Vec<(Tensor, Arc<fused::WeightPacks>)>) -> Vec<fused::SharedLinear>,
) -> Result<Vec<Tensor>> {
    let x = x.contiguous()?;
    let ws = (weights.iter())
        .map(|(w, packs)| Ok((w.contiguous()?, (*packs).clone())))
        .collect::<Result<Vec<_>>>()?;
    let ops = group(ws.clone());
    (ws.iter().zip(ops))
        .map(|((w, _), op)| x.apply_op2(w, op))
        .collect()
}

/// `w` applied in bf16 to `swiglu(gate, up)` without storing the activation (each product task makes
/// its own rows as it packs them; the same bits), when nothing needs a gradient on the CPU; `None`
/// otherwise.
pub fn swiglu_linear_bf16(
    gate: &Tensor,
    up: &Tensor,
    w: &Tensor,
    packs: &Arc<fused::WeightPacks>,
) -> Result<Option<Tensor>> {
    let tracked = gate.track_op() || up.track_op() || w.track_op();
    let cpu = cpu_f32(gate) && cpu_f32(up) && cpu_f32(w);
    if tracked || !cpu || gate.shape() != up.shape() {
        return Ok(None);
    }
    let op = fused::SwiGluLinear {
        packs: packs.clone(),
    };
    let y = gate
        .contiguous()?
        .apply_op3(&up.contiguous()?, &w.contiguous()?, op)?;
    Ok(Some(y))
}

/// Each of `weights` applied in bf16 to `rms_norm(x, norm_weight, eps)` without storing the normalised
/// input (each product task normalises its own rows as it packs them; the same bits), when nothing
/// needs a gradient on the CPU; `None` otherwise, for the caller to normalise and apply them itself.
pub fn normed_linears_bf16(
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f64,
    weights: &[(&Tensor, &Arc<fused::WeightPacks>)],
) -> Result<Option<Vec<Tensor>>> {
    let tracked =
        x.track_op() || norm_weight.track_op() || weights.iter().any(|(w, _)| w.track_op());
    if tracked || !cpu_f32(x) || !cpu_f32(norm_weight) {
        return Ok(None);
    }
    let norm: Vec<f32> = norm_weight.flatten_all()?.to_vec1()?;
    let group = |ws| fused::normed_linears(ws, norm, eps as f32);
    Ok(Some(apply_group(x, weights, group)?))
}

/// [`linear_composed`] with bf16 operands: x and w cast to bf16 (w once, kept in `packs`), the product
/// in bf16 on the device (which sums in f32), the result cast back to f32.
fn linear_bf16_composed(x: &Tensor, w: &Tensor, packs: &fused::WeightPacks) -> Result<Tensor> {
    let wb = match packs.cast.get() {
        Some(t) => t.clone(),
        None => {
            let t = w.to_dtype(DType::BF16)?;
            packs.cast.get_or_init(|| t).clone()
        }
    };
    linear_composed(&x.to_dtype(DType::BF16)?, &wb)?.to_dtype(DType::F32)
}

/// A Linear weight w [out, in] stored transposed, [in, out] row-major, for [`linear_t`].
pub fn transposed(w: &Tensor) -> Result<Tensor> {
    w.t()?.contiguous()
}

/// [`linear`] from candle primitives.
pub fn linear_composed(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = *dims.last().expect("linear input has a last dim");
    let rows = x.elem_count() / inner;
    let out = x.reshape((rows, inner))?.matmul(&w.t()?)?;
    let mut shape = dims;
    *shape.last_mut().expect("non-empty") = w.dim(0)?;
    out.reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn rms_norm_matches_scalar_and_passes_gradient() {
        let x = Var::from_vec(vec![1f32, -2.0, 3.0, 0.5, 0.0, 4.0], (2, 3), &Device::Cpu).unwrap();
        let w = Var::from_vec(vec![1f32, 2.0, 0.5], 3, &Device::Cpu).unwrap();
        let y = rms_norm(&x, &w, 1e-5).unwrap();
        let xs = vals(&x);
        for r in 0..2 {
            let row = &xs[r * 3..r * 3 + 3];
            let ms = row.iter().map(|v| v * v).sum::<f32>() / 3.0;
            for (c, wv) in [1f32, 2.0, 0.5].iter().enumerate() {
                let want = row[c] / (ms + 1e-5).sqrt() * wv;
                assert!((vals(&y)[r * 3 + c] - want).abs() < 1e-5);
            }
        }
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(vals(g.get(&x).unwrap()).iter().any(|v| v.abs() > 1e-6));
        assert!(vals(g.get(&w).unwrap()).iter().all(|v| v.abs() > 1e-6));
    }

    #[test]
    fn softmax_and_log_softmax_agree() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [-1.0, 0.0, 1000.0]], &Device::Cpu).unwrap();
        let s = vals(&softmax_last_dim(&x).unwrap());
        let l = vals(&log_softmax_last_dim(&x).unwrap());
        for (a, b) in s.iter().zip(&l) {
            assert!((a - b.exp()).abs() < 1e-6);
        }
        assert!((s[0] + s[1] + s[2] - 1.0).abs() < 1e-6);
        assert!((s[5] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        // One head, dim 4, position 1, theta 100: pairs (0,2) and (1,3) rotate by 1 and 0.1 rad.
        let (cos, sin) = rope_tables(4, 100.0, 1, 1, &Device::Cpu).unwrap();
        let x = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let y = vals(&rope(&x, &cos, &sin).unwrap());
        let (c0, s0, c1, s1) = (1f32.cos(), 1f32.sin(), 0.1f32.cos(), 0.1f32.sin());
        let want = [
            1.0 * c0 - 3.0 * s0,
            2.0 * c1 - 4.0 * s1,
            3.0 * c0 + 1.0 * s0,
            4.0 * c1 + 2.0 * s1,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn causal_mask_with_offset_hides_only_the_future() {
        let m = vals(&causal_mask(2, 4, &Device::Cpu).unwrap());
        let hidden: Vec<bool> = m.iter().map(|v| v.is_infinite()).collect();
        assert_eq!(
            hidden,
            [false, false, false, true, false, false, false, false]
        );
    }

    #[test]
    fn token_logprobs_picks_targets() {
        let logits = Tensor::new(&[[0f32, 0.0], [0.0, 2f32.ln()]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[1u32, 1], &Device::Cpu).unwrap();
        let lp = vals(&token_logprobs(&logits, &t).unwrap());
        assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
        assert!((lp[1] - (2.0f32 / 3.0).ln()).abs() < 1e-6);
    }
}
