//! Causal grouped-query attention: per (batch, KV head) group, its query heads stacked into one
//! matrix, in row blocks that see only the keys they may.

use super::gemm16::{self, Packed, NR};
use super::simd::{dot, exp, fold3, max_of, multiversion};
use super::storage::{gemm_raw, slice, values, written};
use candle_core::{CpuStorage, CustomOp3, Error, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `softmax(Q Kᵀ · scale + causal mask) V` for q [B, Tq, NH, D], k and v [B, Tk, NKV, D] (the layout
/// the projections produce, so no transposes are needed); query head h reads KV head h / (NH / NKV),
/// query i attends to keys 0..=i + (Tk − Tq), and the output is [B, Tq, NH, D].
///
/// Rows are processed in blocks of [`ROW_BLOCK`] queries, each against only the keys it may see, so the
/// masked half of the score matrix is never computed. The forward keeps the probabilities (B·NH·Tq·Tk
/// floats) for the backward, unless made [`for_inference`](CausalAttention::for_inference).
///
/// With `bf16` every product (Q Kᵀ, P V and the four of the backward) takes operands rounded to bf16 and
/// sums in f32, as under PyTorch's bf16 autocast; the softmax and its backward stay in f32.
pub struct CausalAttention {
    pub scale: f32,
    pub bf16: bool,
    keep_probs: bool,
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

const ROW_BLOCK: usize = 64;

impl CausalAttention {
    pub fn new(scale: f32, bf16: bool) -> Self {
        CausalAttention {
            scale,
            bf16,
            keep_probs: true,
            probs: std::sync::Mutex::new(None),
        }
    }

    /// Not keeping the probabilities (no gradient will be asked for; a backward would recompute them):
    /// each group works in a reused scratch buffer instead of a fresh B·NH·Tq·Tk one.
    pub fn for_inference(mut self) -> Self {
        self.keep_probs = false;
        self
    }
}

/// Probability buffers of forwards that do not keep them, reused from call to call.
static SCRATCH: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// `f` on a buffer of `len` floats of unspecified content (every user overwrites all of it).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let taken = SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut buf = taken.unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    out
}

struct Dims {
    /// Products with bf16 operands (see [`CausalAttention`]).
    bf16: bool,
    b: usize,
    nh: usize,
    nkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn of(bf16: bool, q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
        let (b, tq, nh, d) = q.shape().dims4()?;
        let (b2, tk, nkv, d2) = k.shape().dims4()?;
        if b2 != b || d2 != d || v.shape() != k.shape() || nkv == 0 || nh % nkv != 0 || tk < tq {
            return Err(Error::Msg(format!(
                "attention: q {:?}, k {:?}, v {:?} do not fit together",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        Ok(Dims {
            bf16,
            b,
            nh,
            nkv,
            tq,
            tk,
            d,
        })
    }

    /// Row blocks: (first row, rows, keys visible to the block's last row).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.tq).step_by(ROW_BLOCK).map(move |r0| {
            let rows = ROW_BLOCK.min(self.tq - r0);
            (r0, rows, r0 + rows + self.tk - self.tq)
        })
    }

    /// Offset of query (or output) head `h`, row 0, of batch `bi`; rows are `q_rs` apart.
    fn q_at(&self, bi: usize, h: usize) -> usize {
        bi * self.tq * self.nh * self.d + h * self.d
    }

    fn q_rs(&self) -> usize {
        self.nh * self.d
    }

    /// Distance between consecutive positions' rows in k and v.
    fn kv_rs(&self) -> usize {
        self.nkv * self.d
    }

    /// Query heads per KV head.
    fn rep(&self) -> usize {
        self.nh / self.nkv
    }

    /// Offset of KV head `g`'s first row in batch `bi` (k, v).
    fn kv_group_at(&self, bi: usize, g: usize) -> usize {
        bi * self.tk * self.nkv * self.d + g * self.d
    }

    /// Floats of one group's probabilities: its `rep` query heads × Tq × Tk.
    fn group_probs_len(&self) -> usize {
        self.rep() * self.tq * self.tk
    }

    /// The rows of KV group `g`'s query heads in batch `bi` of a [B, Tq, NH, D] tensor, as one
    /// contiguous [Tq · rep, D] matrix, position-major (row t·rep + r is head g·rep + r at position t).
    /// In the input those `rep` heads are already adjacent at each position.
    fn gather_group(&self, src: &[f32], bi: usize, g: usize) -> Vec<f32> {
        let w = self.rep() * self.d;
        let at = self.q_at(bi, g * self.rep());
        let mut out = Vec::with_capacity(self.tq * w);
        for t in 0..self.tq {
            out.extend_from_slice(&src[at + t * self.q_rs()..][..w]);
        }
        out
    }

    /// The inverse of [`Dims::gather_group`]: writes a group's [Tq · rep, D] rows into `dst`.
    fn scatter_group(&self, dst: &mut [f32], rows: &[f32], bi: usize, g: usize) {
        let w = self.rep() * self.d;
        let at = self.q_at(bi, g * self.rep());
        for (t, row) in rows.chunks(w).enumerate() {
            dst[at + t * self.q_rs()..][..w].copy_from_slice(row);
        }
    }

    /// A batch's [Tq, NH, D] output from its groups' rows (group g: [Tq · rep, D], see
    /// [`Dims::gather_group`]), every element of `dst` written.
    fn scatter_batch(&self, dst: &mut [MaybeUninit<f32>], groups: &[Vec<f32>]) {
        let w = self.rep() * self.d;
        for (g, rows) in groups.iter().enumerate() {
            for (t, row) in rows.chunks(w).enumerate() {
                let at = t * self.q_rs() + g * w;
                for (d, &x) in dst[at..at + w].iter_mut().zip(row) {
                    d.write(x);
                }
            }
        }
    }

    /// Writes KV group `g`'s [Tk, D] rows (its dK or dV) into that head of batch `bi` of a
    /// [B, Tk, NKV, D] tensor.
    fn scatter_kv_group(&self, dst: &mut [f32], rows: &[f32], bi: usize, g: usize) {
        let at = self.kv_group_at(bi, g);
        for (i, row) in rows.chunks(self.d).enumerate() {
            dst[at + i * self.kv_rs()..][..self.d].copy_from_slice(row);
        }
    }
}

/// `c[i·c_rs + j] (+)= scale · Σ_l a[i, l] b[l, j]` with `c` rows `c_rs` apart, in f32 on this thread
/// (the attention kernels parallelise over heads), or with `bf16` operands ([`gemm16`]).
#[allow(clippy::too_many_arguments)]
fn gemm_rs(
    bf16: bool,
    c: &mut [f32],
    c_rs: usize,
    mnk: (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    accumulate: bool,
    scale: f32,
) {
    if bf16 {
        return gemm_rs16(
            c,
            c_rs,
            mnk,
            (a, a_strides),
            (b, b_strides),
            (accumulate, scale),
        );
    }
    // SAFETY: `c` is an initialised slice of `c.len()` floats.
    unsafe {
        gemm_raw(
            c.as_mut_ptr(),
            c.len(),
            c_rs,
            mnk,
            a,
            a_strides,
            b,
            b_strides,
            accumulate,
            scale,
            gemm::Parallelism::None,
        )
    }
}

/// [`gemm_rs`] with bf16 operands: both packed (rounded), multiplied, and the [m, n] product written or
/// added into `c`.
fn gemm_rs16(
    c: &mut [f32],
    c_rs: usize,
    (m, n, k): (usize, usize, usize),
    (a, (a_rs, a_cs)): (&[f32], (usize, usize)),
    (b, (b_rs, b_cs)): (&[f32], (usize, usize)),
    (accumulate, scale): (bool, f32),
) {
    let pb = Packed::new(b, (n, k), (b_cs, b_rs), NR);
    let a = gemm16::Left::Raw {
        src: a,
        rows: m,
        strides: (a_rs, a_cs),
    };
    if !accumulate && scale == 1.0 {
        return gemm16::product_into(a, &pb, c, c_rs);
    }
    let prod = gemm16::product(a, &pb);
    for (row, p) in c.chunks_mut(c_rs).zip(prod.chunks(n.max(1))).take(m) {
        for (x, &y) in row[..n].iter_mut().zip(p) {
            *x = if accumulate {
                *x + scale * y
            } else {
                scale * y
            };
        }
    }
}

/// `Σ row[i]`.
#[inline(always)]
fn sum_of(row: &[f32]) -> f32 {
    fold3(row, row, row, 0.0, |x, _, _| x, |x, y| x + y)
}

multiversion! {
    /// Softmax of each row of `p` (rows `tk` apart) times `scale` over its first
    /// `first_live + i / per_position` entries (row `i`; `per_position` consecutive rows share a query
    /// position); the rest of the row, the masked keys, is set to 0.
    fn softmax_rows(p: &mut [f32], tk: usize, first_live: usize, per_position: usize, scale: f32) {
        for (i, row) in p.chunks_mut(tk).enumerate() {
            let live = first_live + i / per_position;
            // max(x · scale) = max(x) · scale: rounding is monotonic and the scale positive.
            let max = max_of(&row[..live]) * scale;
            for x in &mut row[..live] {
                *x = exp(*x * scale - max);
            }
            let inv = 1.0 / sum_of(&row[..live]);
            for x in &mut row[..live] {
                *x *= inv;
            }
            row[live..].fill(0.0);
        }
    }
}

multiversion! {
    /// Softmax backward in place over the first `keys` entries of each row: `dP ← P ⊙ (dP − Σ dP·P) · scale`.
    fn softmax_grad_rows(p: &[f32], dp: &mut [f32], tk: usize, keys: usize, scale: f32) {
        for (prow, dprow) in p.chunks(tk).zip(dp.chunks_mut(tk)) {
            let (prow, dprow) = (&prow[..keys], &mut dprow[..keys]);
            let dot = dot(prow, dprow);
            for (x, pv) in dprow.iter_mut().zip(prow) {
                *x = pv * (*x - dot) * scale;
            }
        }
    }
}

impl CausalAttention {
    /// Probabilities of KV group `g` of batch `bi` into `p` [Tq · rep, Tk] (row t·rep + r: query head
    /// g·rep + r at position t; masked entries 0), from the group's gathered queries `qg`. The `rep`
    /// heads that read the same keys are stacked, so each block is one matrix product `rep` times taller.
    fn group_probs(&self, qg: &[f32], k: &[f32], dm: &Dims, bi: usize, g: usize, p: &mut [f32]) {
        let (rep, kv0) = (dm.rep(), dm.kv_group_at(bi, g));
        let shift = dm.tk - dm.tq;
        for (r0, rows, keys) in dm.blocks() {
            let pb = &mut p[r0 * rep * dm.tk..][..rows * rep * dm.tk];
            // S = Q Kᵀ over the visible keys: Kᵀ is k read with row stride 1, column stride kv_rs.
            // The bf16 product is written straight into the block and scaled by the softmax (the same
            // bits as scaling it on the way).
            let (gemm_scale, softmax_scale) = match dm.bf16 {
                true => (1.0, self.scale),
                false => (self.scale, 1.0),
            };
            gemm_rs(
                dm.bf16,
                pb,
                dm.tk,
                (rows * rep, keys, dm.d),
                &qg[r0 * rep * dm.d..],
                (dm.d, 1),
                &k[kv0..],
                (1, dm.kv_rs()),
                false,
                gemm_scale,
            );
            softmax_rows(pb, dm.tk, r0 + shift + 1, rep, softmax_scale);
        }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "zerolm-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(self.bf16, l1, l2, l3)?;
        let (q, k, v) = (
            slice(s1, l1, "attention q")?,
            slice(s2, l2, "attention k")?,
            slice(s3, l3, "attention v")?,
        );
        let rep = dm.rep();
        // One task per (batch, KV head) group, each filling its probabilities (every entry) and
        // returning its heads' outputs as [Tq · rep, D] rows, scattered into the [B, Tq, NH, D] output
        // afterwards.
        let group = |gi: usize, p: &mut [f32]| {
            let (bi, g) = (gi / dm.nkv, gi % dm.nkv);
            let kv0 = dm.kv_group_at(bi, g);
            let qg = dm.gather_group(q, bi, g);
            self.group_probs(&qg, k, &dm, bi, g, p);
            let mut o = vec![0f32; dm.tq * rep * dm.d];
            for (r0, rows, keys) in dm.blocks() {
                gemm_rs(
                    dm.bf16,
                    &mut o[r0 * rep * dm.d..],
                    dm.d,
                    (rows * rep, dm.d, keys),
                    &p[r0 * rep * dm.tk..],
                    (dm.tk, 1),
                    &v[kv0..],
                    (dm.kv_rs(), 1),
                    false,
                    1.0,
                );
            }
            o
        };
        let (len, count) = (dm.group_probs_len(), dm.b * dm.nkv);
        let groups: Vec<Vec<f32>> = if self.keep_probs {
            let mut probs = vec![0f32; count * len];
            let groups = (probs.par_chunks_mut(len).enumerate())
                .map(|(gi, p)| group(gi, p))
                .collect();
            *self.probs.lock().expect("attention cache") = Some(probs);
            groups
        } else {
            (0..count)
                .into_par_iter()
                .map(|gi| with_scratch(len, |p| group(gi, p)))
                .collect()
        };
        let per_batch = dm.tq * dm.q_rs();
        // SAFETY: each batch's chunk is written whole: its nkv groups cover all NH heads of every row.
        let out = unsafe {
            written(dm.b * per_batch, |out| {
                (out.par_chunks_mut(per_batch).zip(groups.par_chunks(dm.nkv)))
                    .for_each(|(dst, groups)| dm.scatter_batch(dst, groups))
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(self.bf16, q.layout(), k.layout(), v.layout())?;
        let (qv, kv, vv, go) = (values(q)?, values(k)?, values(v)?, values(grad)?);
        let gn = dm.group_probs_len();
        let cached = self
            .probs
            .lock()
            .expect("attention cache")
            .take()
            .filter(|p| p.len() == dm.b * dm.nkv * gn);
        // One task per (batch, KV head) group: its query heads stacked as in the forward; it owns
        // that head's dK, dV and its query heads' dQ, scattered into place afterwards.
        let groups: Vec<GroupGrads> = (0..dm.b * dm.nkv)
            .into_par_iter()
            .map(|gi| {
                let (bi, g) = (gi / dm.nkv, gi % dm.nkv);
                let kv0 = dm.kv_group_at(bi, g);
                let qg = dm.gather_group(&qv, bi, g);
                let dog = dm.gather_group(&go, bi, g);
                let own;
                let p: &[f32] = match &cached {
                    Some(all) => &all[gi * gn..][..gn],
                    None => {
                        let mut p = vec![0f32; gn];
                        self.group_probs(&qg, &kv, &dm, bi, g, &mut p);
                        own = p;
                        &own
                    }
                };
                let group = GroupInputs {
                    dm: &dm,
                    kv0,
                    qg: &qg,
                    dog: &dog,
                    k: &kv,
                    v: &vv,
                    p,
                };
                self.group_grads(&group)
            })
            .collect();
        let mut dq = vec![0f32; qv.len()];
        let mut dk = vec![0f32; kv.len()];
        let mut dv = vec![0f32; vv.len()];
        for (gi, grads) in groups.iter().enumerate() {
            let (bi, g) = (gi / dm.nkv, gi % dm.nkv);
            dm.scatter_group(&mut dq, &grads.dq, bi, g);
            dm.scatter_kv_group(&mut dk, &grads.dk, bi, g);
            dm.scatter_kv_group(&mut dv, &grads.dv, bi, g);
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// What the backward of one (batch, KV head) group reads: its query heads' rows and their output
/// gradient gathered as in the forward ([Tq · rep, D]), its probabilities `p` [Tq · rep, Tk], and k, v
/// with its KV head at `kv0`.
struct GroupInputs<'a> {
    dm: &'a Dims,
    kv0: usize,
    qg: &'a [f32],
    dog: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    p: &'a [f32],
}

/// The gradients one (batch, KV head) group owns: its query heads' dQ as gathered rows [Tq · rep, D],
/// and its KV head's dK and dV [Tk, D].
struct GroupGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl CausalAttention {
    /// The backward of one group, row block by row block: through V (dV, dP), through the softmax (dS),
    /// through the scores (dQ, dK).
    fn group_grads(&self, x: &GroupInputs) -> GroupGrads {
        let (dm, rep) = (x.dm, x.dm.rep());
        let kn = dm.tk * dm.d;
        let mut grads = GroupGrads {
            dq: vec![0f32; dm.tq * rep * dm.d],
            dk: vec![0f32; kn],
            dv: vec![0f32; kn],
        };
        let mut dp = vec![0f32; dm.group_probs_len()];
        for block in dm.blocks() {
            let (r0, rows, keys) = block;
            let dpb = &mut dp[r0 * rep * dm.tk..][..rows * rep * dm.tk];
            x.value_grads(block, &mut grads.dv, dpb);
            // dS = P ⊙ (dP − Σ_j dP·P), with the scale folded in for dQ and dK.
            softmax_grad_rows(&x.p[r0 * rep * dm.tk..], dpb, dm.tk, keys, self.scale);
            x.score_grads(block, dpb, &mut grads.dq, &mut grads.dk);
        }
        grads
    }
}

impl GroupInputs<'_> {
    /// Row block `(r0, rows, keys)` through V: dV += Pᵀ dO, and the block's dP = dO Vᵀ into `dpb`.
    fn value_grads(
        &self,
        (r0, rows, keys): (usize, usize, usize),
        dv: &mut [f32],
        dpb: &mut [f32],
    ) {
        let (dm, rep) = (self.dm, self.dm.rep());
        let n = rows * rep;
        let pb = &self.p[r0 * rep * dm.tk..];
        let dob = &self.dog[r0 * rep * dm.d..];
        // dV += Pᵀ dO
        gemm_rs(
            dm.bf16,
            dv,
            dm.d,
            (keys, dm.d, n),
            pb,
            (1, dm.tk),
            dob,
            (dm.d, 1),
            true,
            1.0,
        );
        // dP = dO Vᵀ
        gemm_rs(
            dm.bf16,
            dpb,
            dm.tk,
            (n, keys, dm.d),
            dob,
            (dm.d, 1),
            &self.v[self.kv0..],
            (1, dm.kv_rs()),
            false,
            1.0,
        );
    }

    /// Row block `(r0, rows, keys)` through the scores, from its dS in `dsb`: dQ = dS K, dK += dSᵀ Q.
    fn score_grads(
        &self,
        (r0, rows, keys): (usize, usize, usize),
        dsb: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
    ) {
        let (dm, rep) = (self.dm, self.dm.rep());
        let n = rows * rep;
        // dQ = dS K, dK += dSᵀ Q
        gemm_rs(
            dm.bf16,
            &mut dq[r0 * rep * dm.d..],
            dm.d,
            (n, dm.d, keys),
            dsb,
            (dm.tk, 1),
            &self.k[self.kv0..],
            (dm.kv_rs(), 1),
            false,
            1.0,
        );
        gemm_rs(
            dm.bf16,
            dk,
            dm.d,
            (keys, dm.d, n),
            dsb,
            (1, dm.tk),
            &self.qg[r0 * rep * dm.d..],
            (dm.d, 1),
            true,
            1.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::fused::tests_support::{check, check_within, close, grads_on_threads, randn};
    use crate::ops;
    use crate::SplitMix64;
    use candle_core::Var;

    #[test]
    fn attention_matches_composed_including_gqa_and_an_offset() {
        let mut rng = SplitMix64::new(1);
        for (b, nh, nkv, tq, tk, d) in [
            (2, 4, 2, 7, 7, 8),
            (1, 2, 2, 3, 5, 4),
            (2, 6, 1, 9, 9, 16),
            (1, 4, 2, 130, 141, 8),
        ] {
            let q = randn(&mut rng, &[b, tq, nh, d], 1.0);
            let k = randn(&mut rng, &[b, tk, nkv, d], 1.0);
            let v = randn(&mut rng, &[b, tk, nkv, d], 1.0);
            let scale = 1.0 / (d as f64).sqrt();
            check(
                "attention",
                &[q, k, v],
                |x| ops::causal_attention(&x[0], &x[1], &x[2], scale),
                |x| ops::causal_attention_composed(&x[0], &x[1], &x[2], scale),
            );
        }
        // A second backward finds the forward's probabilities already used and recomputes them.
        let q = Var::from_tensor(&randn(&mut rng, &[2, 33, 4, 8], 1.0)).unwrap();
        let k = randn(&mut rng, &[2, 40, 2, 8], 1.0);
        let v = randn(&mut rng, &[2, 40, 2, 8], 1.0);
        let y = ops::causal_attention(q.as_tensor(), &k, &v, 0.3).unwrap();
        let loss = (&y * &randn(&mut rng, y.dims(), 1.0))
            .unwrap()
            .sum_all()
            .unwrap();
        let first = loss.backward().unwrap();
        let second = loss.backward().unwrap();
        close(
            first.get(q.as_tensor()).unwrap(),
            second.get(q.as_tensor()).unwrap(),
            1e-7,
            "recomputed attention gradient",
        );
    }

    #[test]
    fn bf16_attention_matches_the_composed_product_of_bf16_operands() {
        let mut rng = SplitMix64::new(2);
        for (b, nh, nkv, tq, tk, d) in [(2, 4, 2, 7, 7, 8), (1, 4, 2, 130, 141, 16)] {
            let q = randn(&mut rng, &[b, tq, nh, d], 1.0);
            let k = randn(&mut rng, &[b, tk, nkv, d], 1.0);
            let v = randn(&mut rng, &[b, tk, nkv, d], 1.0);
            let scale = 1.0 / (d as f64).sqrt();
            let bf16 = |x: &[candle_core::Tensor]| {
                ops::causal_attention_in(&x[0], &x[1], &x[2], scale, true)
            };
            // The composed version rounds the same operands (and, in backward, its gradients a little
            // differently): both within bf16's 2⁻⁸ relative step.
            check_within(
                "attention bf16",
                &[q.clone(), k.clone(), v.clone()],
                bf16,
                |x| crate::fused::with_composed_ops(|| bf16(x)),
                (1e-2, 3e-2),
            );
            // And it is not the f32 attention: the rounding shows.
            let (f, h) = (
                ops::causal_attention(&q, &k, &v, scale).unwrap(),
                bf16(&[q, k, v]).unwrap(),
            );
            let d = (f - h).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() > 1e-4);
        }
    }

    #[test]
    fn attention_gives_the_same_bits_for_any_thread_count() {
        let mut rng = SplitMix64::new(3);
        let q = randn(&mut rng, &[2, 100, 4, 16], 1.0);
        let k = randn(&mut rng, &[2, 100, 2, 16], 1.0);
        let v = randn(&mut rng, &[2, 100, 2, 16], 1.0);
        for bf16 in [false, true] {
            let run = |threads| {
                grads_on_threads(threads, &[q.clone(), k.clone(), v.clone()], |x| {
                    ops::causal_attention_in(&x[0], &x[1], &x[2], 0.25, bf16)
                })
            };
            assert_eq!(run(1), run(3), "bf16 {bf16}");
        }
    }

    #[test]
    fn an_inference_forward_gives_the_training_forwards_bits() {
        let mut rng = SplitMix64::new(4);
        let bits = |t: candle_core::Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        // Shapes that shrink and grow, so scratch buffers are reused with stale contents.
        for (tq, tk) in [(70, 70), (5, 9), (1, 40), (100, 100)] {
            let q = randn(&mut rng, &[2, tq, 4, 16], 1.0);
            let k = randn(&mut rng, &[2, tk, 2, 16], 1.0);
            let v = randn(&mut rng, &[2, tk, 2, 16], 1.0);
            for bf16 in [false, true] {
                let op = || super::CausalAttention::new(0.25, bf16);
                let kept = q.apply_op3(&k, &v, op()).unwrap();
                let scratch = q.apply_op3(&k, &v, op().for_inference()).unwrap();
                assert_eq!(bits(kept), bits(scratch), "{tq}×{tk} bf16 {bf16}");
            }
        }
    }
}
