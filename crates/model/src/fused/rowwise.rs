//! Elementwise and row-wise kernels: the residual add, SwiGLU, RMSNorm and RoPE, each parallel over
//! fixed-size pieces of independent rows.

use super::simd::{dot, exp, fold3, multiversion};
use super::storage::{grads2, slice, values, written};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Error, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per parallel task: fixed, so results never depend on the thread count.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The output of an element-wise op of two same-shaped inputs (named `names` in errors): `f` fills each
/// piece of the output from the same pieces of the inputs, every element.
fn elementwise2(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    names: (&str, &str),
    f: impl Fn(&mut [MaybeUninit<f32>], &[f32], &[f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    if l1.shape() != l2.shape() {
        return Err(Error::Msg(format!(
            "{} and {} differ in shape",
            names.0, names.1
        )));
    }
    let (a, b) = (slice(s1, l1, names.0)?, slice(s2, l2, names.1)?);
    // SAFETY: the chunks cover the output, and `f` writes each element of its piece (its contract).
    let out = unsafe {
        written(a.len(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(o, (a, b))| f(o, a, b))
        })
    };
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

/// `a + b` of two same-shaped tensors: the residual stream's add, on the worker threads (candle's
/// own element-wise ops run on the calling thread alone, see `zerolm_cli::threads`).
pub struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "zerolm-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        elementwise2((s1, l1), (s2, l2), ("add lhs", "add rhs"), |o, a, b| {
            for (o, (x, y)) in o.iter_mut().zip(a.iter().zip(b)) {
                o.write(x + y);
            }
        })
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// `silu(gate) · up`.
pub struct SwiGlu;

/// `silu(g) · u` into `o`, every element written: the forward's own arithmetic, for ops that make the
/// activation themselves.
pub(super) fn swiglu_into(o: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
    swiglu_fwd(o, g, u)
}

multiversion! {
    fn swiglu_fwd(o: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            o.write(g * sigmoid(g) * u);
        }
    }
}

multiversion! {
    fn swiglu_bwd(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dy: &[f32]) {
        let n = dg.len().min(du.len()).min(g.len()).min(u.len()).min(dy.len());
        for i in 0..n {
            let (x, y, d) = (g[i], u[i], dy[i]);
            let s = sigmoid(x);
            du[i] = d * x * s;
            dg[i] = d * y * s * (1.0 + x * (1.0 - s));
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "zerolm-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        elementwise2((s1, l1), (s2, l2), ("swiglu gate", "swiglu up"), swiglu_fwd)
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, dy) = (values(gate)?, values(up)?, values(grad)?);
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (dg, du))| {
                let at = c * CHUNK;
                let n = dg.len();
                swiglu_bwd(dg, du, &g[at..at + n], &u[at..at + n], &dy[at..at + n]);
            });
        grads2(gate, dg, up, du)
    }
}

/// RMSNorm over the last dimension, HF order: `x / sqrt(mean(x²) + eps) · w`.
pub struct RmsNorm {
    pub eps: f32,
}

impl RmsNorm {
    #[inline(always)]
    fn inv_rms(row: &[f32], eps: f32) -> f32 {
        let ms = dot(row, row) / row.len() as f32;
        1.0 / (ms + eps).sqrt()
    }
}

/// RMSNorm of whole rows `x` (each `w.len()` long) into `o`, every element written: the forward's
/// own arithmetic, for ops that normalise rows themselves.
pub(super) fn rms_norm_into(o: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], eps: f32) {
    rms_norm_rows(o, x, w, eps)
}

multiversion! {
    fn rms_norm_rows(o: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], eps: f32) {
        let h = w.len();
        for (o, x) in o.chunks_mut(h).zip(x.chunks(h)) {
            let r = RmsNorm::inv_rms(x, eps);
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                o.write(x * r * w);
            }
        }
    }
}

multiversion! {
    /// RMSNorm backward over whole rows: fills `dx` and adds this block's share of dW into `dw`.
    fn rms_norm_grad_rows(dx: &mut [f32], dw: &mut [f32], x: &[f32], dy: &[f32], w: &[f32], eps: f32) {
        let h = w.len();
        for ((dx, x), dy) in dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)) {
            let (dx, x, dy, dw) = (&mut dx[..h], &x[..h], &dy[..h], &mut dw[..h]);
            let r = RmsNorm::inv_rms(x, eps);
            // dot = mean(dy · w · x̂)
            let dot = fold3(dy, w, x, 0.0, |dy, w, x| dy * w * (x * r), |a, b| a + b) / h as f32;
            for j in 0..h {
                dw[j] += dy[j] * (x[j] * r);
                dx[j] = r * (dy[j] * w[j] - x[j] * r * dot);
            }
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "zerolm-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            slice(s1, l1, "rms_norm x")?,
            slice(s2, l2, "rms_norm weight")?,
        );
        let h = w.len();
        if h == 0 || x.len() % h != 0 || l1.shape().dims().last() != Some(&h) {
            return Err(Error::Msg(
                "rms_norm: weight does not match the last dimension".into(),
            ));
        }
        let rows = (CHUNK / h).max(1);
        // SAFETY: the chunks cover the output (whole rows of h), and rms_norm_rows writes each element.
        let out = unsafe {
            written(x.len(), |out| {
                out.par_chunks_mut(rows * h)
                    .zip(x.par_chunks(rows * h))
                    .for_each(|(o, x)| rms_norm_rows(o, x, w, self.eps))
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, dy) = (values(x)?, values(w)?, values(grad)?);
        let h = wv.len();
        let rows = (CHUNK / h).max(1);
        let mut dx = vec![0f32; xv.len()];
        // Each task returns its partial dW; the partials are added in task order.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(rows * h)
            .zip(xv.par_chunks(rows * h).zip(dy.par_chunks(rows * h)))
            .map(|(dx, (x, dy))| {
                let mut dw = vec![0f32; h];
                rms_norm_grad_rows(dx, &mut dw, x, dy, &wv, self.eps);
                dw
            })
            .collect();
        let mut dw = vec![0f32; h];
        for p in partials {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        grads2(x, dx, w, dw)
    }
}

/// RoPE in the Hugging Face `rotate_half` layout on x [B, T, H, D] (positions on axis 1) with tables
/// cos, sin [T, D] whose two halves are equal: `x · cos + rotate_half(x) · sin`.
pub struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub t: usize,
    pub d: usize,
}

multiversion! {
    /// Rotates each `d`-vector of `x` (one position, all heads) by the angles in `c`, `s` (`sign` −1:
    /// the inverse rotation).
    fn rope_rows(o: &mut [MaybeUninit<f32>], x: &[f32], c: &[f32], s: &[f32], sign: f32) {
        let d = c.len();
        let half = d / 2;
        for (or, xr) in o.chunks_mut(d).zip(x.chunks(d)) {
            let (or, xr, s) = (&mut or[..d], &xr[..d], &s[..d]);
            for j in 0..half {
                let (a, b) = (xr[j], xr[j + half]);
                or[j].write(a * c[j] - sign * b * s[j]);
                or[j + half].write(b * c[j + half] + sign * a * s[j + half]);
            }
        }
    }
}

impl Rope {
    /// `inverse = false`: the rotation; `true`: its transpose (the backward). `heads` per position.
    fn apply(&self, x: &[f32], heads: usize, inverse: bool) -> Vec<f32> {
        let (t, d) = (self.t, self.d);
        let sign = if inverse { -1.0 } else { 1.0 };
        assert!(
            d % 2 == 0 && x.len().is_multiple_of((heads * d).max(1)),
            "rope: vectors of odd length {d} or a partial position"
        );
        // One task per (batch, position): `heads` vectors of `d` rotated by the same angles.
        // SAFETY: the chunks cover the output (whole vectors of d, d even: asserted), and rope_rows
        // writes both halves of each.
        unsafe {
            written(x.len(), |out| {
                out.par_chunks_mut(heads * d)
                    .zip(x.par_chunks(heads * d))
                    .enumerate()
                    .for_each(|(bp, (o, x))| {
                        let p = bp % t;
                        let (c, s) = (&self.cos[p * d..][..d], &self.sin[p * d..][..d]);
                        rope_rows(o, x, c, s, sign);
                    })
            })
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "zerolm-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rope x")?;
        let dims = l.shape().dims();
        if dims.len() != 4 || dims[1] != self.t || dims[3] != self.d {
            return Err(Error::Msg(format!(
                "rope: input {dims:?} is not [B, {}, H, {}]",
                self.t, self.d
            )));
        }
        Ok((
            CpuStorage::F32(self.apply(x, dims[2], false)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dy = values(grad)?;
        let heads = x.dim(2)?;
        Ok(Some(Tensor::from_vec(
            self.apply(&dy, heads, true),
            x.shape(),
            x.device(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use crate::fused::tests_support::{bits, check, grads_on_threads, randn};
    use crate::ops;
    use crate::SplitMix64;
    use candle_core::Device;

    #[test]
    fn swiglu_rms_norm_and_rope_match_composed() {
        let mut rng = SplitMix64::new(2);
        let (g, u) = (
            randn(&mut rng, &[3, 5, 40], 2.0),
            randn(&mut rng, &[3, 5, 40], 1.0),
        );
        check(
            "swiglu",
            &[g, u],
            |x| ops::swiglu(&x[0], &x[1]),
            |x| ops::swiglu_composed(&x[0], &x[1]),
        );
        let x = randn(&mut rng, &[4, 3, 24], 1.5);
        let w = randn(&mut rng, &[24], 1.0);
        check(
            "rms_norm",
            &[x, w],
            |x| ops::rms_norm(&x[0], &x[1], 1e-5),
            |x| ops::rms_norm_composed(&x[0], &x[1], 1e-5),
        );
        let (cos, sin) = ops::rope_tables(8, 1e4, 3, 6, &Device::Cpu).unwrap();
        let x = randn(&mut rng, &[2, 6, 3, 8], 1.0);
        check(
            "rope",
            &[x],
            |x| ops::rope(&x[0], &cos, &sin),
            |x| ops::rope_composed(&x[0], &cos, &sin),
        );
    }

    #[test]
    fn the_residual_add_equals_candles_add_bit_for_bit_with_its_gradient() {
        let mut rng = SplitMix64::new(4);
        // Several parallel pieces and a ragged last one.
        let (a, b) = (
            randn(&mut rng, &[3, 70, 301], 1.0),
            randn(&mut rng, &[3, 70, 301], 3.0),
        );
        let fast = ops::add(&a, &b).unwrap();
        let slow = (&a + &b).unwrap();
        assert_eq!(bits(&fast), bits(&slow));
        check(
            "add",
            &[a, b],
            |x| ops::add(&x[0], &x[1]),
            |x| &x[0] + &x[1],
        );
    }

    #[test]
    fn rms_norm_gives_the_same_bits_for_any_thread_count() {
        let mut rng = SplitMix64::new(6);
        let x = randn(&mut rng, &[70, 300], 1.0);
        let w = randn(&mut rng, &[300], 1.0);
        let run = |threads| {
            grads_on_threads(threads, &[x.clone(), w.clone()], |x| {
                ops::rms_norm(&x[0], &x[1], 1e-5)
            })
        };
        assert_eq!(run(1), run(3));
    }
}
