//! Fused CPU kernels for the training forward, each a candle custom op **with a backward**: causal
//! grouped-query attention, SwiGLU, RMSNorm, RoPE and next-token log-probs. The composed versions in
//! `ops` build many full-size temporaries per op (and as many more in backward); these make one pass
//! (two for attention) over the data, parallel over independent rows or heads with rayon.
//!
//! Every kernel is deterministic for any thread count: work is split into independent pieces (rows,
//! (batch, KV head) groups) and every reduction runs in a fixed order. `ops` dispatches here on the CPU
//! and keeps the composed ops for other devices; tests check both agree in value and gradient.

#![allow(unsafe_code)]

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Error, Layout,
    Result, Shape, Storage, StorageRef, Tensor,
};
use rayon::prelude::*;

/// The contiguous f32 slice a layout describes.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(Error::Msg(format!(
            "{what}: expected f32, got {:?}",
            s.dtype()
        )));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(Error::Msg(format!("{what}: input must be contiguous"))),
    }
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        return Err(Error::Msg(format!("{what}: expected u32 targets")));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(Error::Msg(format!("{what}: targets must be contiguous"))),
    }
}

/// `e^x` to within 2 ulp on [-87, 88] (inputs outside are clamped), in plain arithmetic that the
/// compiler vectorises, unlike the libm call: range reduction x = n·ln2 + r, a degree-6 polynomial for
/// e^r, and 2^n put into the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `shifted` is 1.5·2^23 + n, whose low mantissa bits hold n + 2^22: integer arithmetic on its bits
    // gives n without a float → int conversion (which does not vectorise).
    let n_int = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    p * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// Defines `fn $name` that runs its body compiled for the widest vector unit this CPU has (AVX-512,
/// else AVX2 + FMA, else the SSE2 baseline the crate is built for), chosen at run time, so the row
/// loops below vectorise. The body is inlined into each version. The kernels never ask for fused
/// multiply-adds and reduce in a fixed lane order, so every version gives the same bits.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// Lanes of the reductions below: partial results kept in a fixed-size array that the compiler maps
/// onto vector registers, combined in a fixed order at the end.
const LANES: usize = 16;

/// `op`-fold of `item(a[i], b[i], c[i])` over the common length, in [`LANES`] interleaved partial
/// results (combined in a fixed order at the end), so the loop vectorises without reassociating.
#[inline(always)]
fn fold3(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    init: f32,
    item: impl Fn(f32, f32, f32) -> f32,
    op: impl Fn(f32, f32) -> f32,
) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [init; LANES];
    let (mut ca, mut cb, mut cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    for ((x, y), z) in (&mut ca).zip(&mut cb).zip(&mut cc) {
        let (x, y, z): (&[f32; LANES], &[f32; LANES], &[f32; LANES]) = (
            x.try_into().expect("exact chunk"),
            y.try_into().expect("exact chunk"),
            z.try_into().expect("exact chunk"),
        );
        for l in 0..LANES {
            acc[l] = op(acc[l], item(x[l], y[l], z[l]));
        }
    }
    let mut tail = init;
    for ((&x, &y), &z) in ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
    {
        tail = op(tail, item(x, y, z));
    }
    acc.iter().fold(tail, |t, &v| op(t, v))
}

/// The largest value of `row` (−∞ when empty).
#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    fold3(row, row, row, f32::NEG_INFINITY, |x, _, _| x, f32::max)
}

/// `Σ row[i]`.
#[inline(always)]
fn sum_of(row: &[f32]) -> f32 {
    fold3(row, row, row, 0.0, |x, _, _| x, |x, y| x + y)
}

/// `Σ a[i]·b[i]`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    fold3(a, b, b, 0.0, |x, y, _| x * y, |x, y| x + y)
}

/// `Σ e^(row[i] − shift)`.
#[inline(always)]
fn exp_sum(row: &[f32], shift: f32) -> f32 {
    fold3(row, row, row, 0.0, |x, _, _| exp(x - shift), |x, y| x + y)
}

multiversion! {
    /// Softmax of each row of `p` (rows `tk` apart) over its first `first_live + i / per_position`
    /// entries (row `i`; `per_position` consecutive rows share a query position); the rest of the row,
    /// the masked keys, is set to 0.
    fn softmax_rows(p: &mut [f32], tk: usize, first_live: usize, per_position: usize) {
        for (i, row) in p.chunks_mut(tk).enumerate() {
            let live = first_live + i / per_position;
            let max = max_of(&row[..live]);
            for x in &mut row[..live] {
                *x = exp(*x - max);
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

multiversion! {
    fn swiglu_fwd(o: &mut [f32], g: &[f32], u: &[f32]) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
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

multiversion! {
    fn rms_norm_rows(o: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let h = w.len();
        for (o, x) in o.chunks_mut(h).zip(x.chunks(h)) {
            let r = RmsNorm::inv_rms(x, eps);
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * r * w;
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

multiversion! {
    /// Rotates each `d`-vector of `x` (one position, all heads) by the angles in `c`, `s` (`sign` −1:
    /// the inverse rotation).
    fn rope_rows(o: &mut [f32], x: &[f32], c: &[f32], s: &[f32], sign: f32) {
        let d = c.len();
        let half = d / 2;
        for (or, xr) in o.chunks_mut(d).zip(x.chunks(d)) {
            let (or, xr, s) = (&mut or[..d], &xr[..d], &s[..d]);
            for j in 0..half {
                let (a, b) = (xr[j], xr[j + half]);
                or[j] = a * c[j] - sign * b * s[j];
                or[j + half] = b * c[j + half] + sign * a * s[j + half];
            }
        }
    }
}

/// A tensor's values as a contiguous f32 slice (for the backward passes): borrowed from its storage
/// when it is contiguous f32 on the CPU, copied otherwise.
enum Values<'a> {
    Borrowed(StorageRef<'a>, usize, usize),
    Owned(Vec<f32>),
}

impl std::ops::Deref for Values<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Values::Borrowed(guard, a, b) => match &**guard {
                Storage::Cpu(CpuStorage::F32(v)) => &v[*a..*b],
                _ => unreachable!("checked when borrowed"),
            },
            Values::Owned(v) => v,
        }
    }
}

fn values(t: &Tensor) -> Result<Values<'_>> {
    let (guard, layout) = t.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) = (&*guard, layout.contiguous_offsets())
    {
        return Ok(Values::Borrowed(guard, a, b));
    }
    drop(guard);
    Ok(Values::Owned(t.flatten_all()?.to_vec1::<f32>()?))
}

/// The gradients of a two-input op as candle's backward wants them, shaped like the inputs.
fn grads2(
    a: &Tensor,
    da: Vec<f32>,
    b: &Tensor,
    db: Vec<f32>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dev = a.device();
    Ok((
        Some(Tensor::from_vec(da, a.shape(), dev)?),
        Some(Tensor::from_vec(db, b.shape(), dev)?),
    ))
}

// ---------------------------------------------------------------------------------------------
// Linear layers.

/// `x · wᵀ` for x [.., in] and a Linear weight w [out, in]: one graph node instead of candle's
/// reshape → transpose → matmul → reshape, each of which costs a zero-filled gradient and an add in
/// backward. The products run on rayon's threads inside the gemm kernel. With `transposed` the weight is
/// given as wᵀ [in, out] row-major instead, the layout the kernel reads fastest (10–25% faster on these
/// shapes): inference keeps such a copy of each weight.
pub struct Linear {
    pub transposed: bool,
}

/// A new row-major [m, n] matrix `a · b`, computed on all of rayon's threads when it is big enough.
/// The product overwrites every element, so the buffer is not zero-filled first.
fn par_gemm(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
) -> Vec<f32> {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    if k == 0 {
        return vec![0f32; m * n];
    }
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    let spare = c.spare_capacity_mut();
    // SAFETY: `spare` holds m·n floats; with `accumulate` false the kernel writes every element of
    // the [m, n] output (row stride n) without reading it, so all m·n are initialised afterwards.
    unsafe {
        gemm_raw(
            spare.as_mut_ptr().cast(),
            spare.len(),
            n,
            (m, n, k),
            a,
            a_strides,
            b,
            b_strides,
            false,
            1.0,
            par,
        );
        c.set_len(m * n);
    }
    c
}

impl Linear {
    /// (in, out) and the (row, column) strides of the weight read as the [in, out] matrix it multiplies by.
    fn weight(&self, shape: &Shape) -> Result<(usize, usize, (usize, usize))> {
        let (a, b) = shape.dims2()?;
        Ok(if self.transposed {
            (a, b, (b, 1))
        } else {
            (b, a, (1, b))
        })
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        if self.transposed {
            "zerolm-linear-t"
        } else {
            "zerolm-linear"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, "linear x")?, slice(s2, l2, "linear weight")?);
        let (inp, out, ws) = self.weight(l2.shape())?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&inp) {
            return Err(Error::Msg(format!(
                "linear: input {dims:?} does not end in the weight's input size {inp}"
            )));
        }
        let rows = x.len() / inp.max(1);
        // y[rows, out] = x[rows, in] · W[in, out]
        let y = par_gemm((rows, out, inp), x, (inp, 1), w, ws);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty") = out;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (inp, out, (w_rs, w_cs)) = self.weight(w.shape())?;
        let (xv, wv, dy) = (values(x)?, values(w)?, values(grad)?);
        let rows = xv.len() / inp.max(1);
        // dx[rows, in] = dy[rows, out] · Wᵀ[out, in]
        let dx = par_gemm((rows, inp, out), &dy, (out, 1), &wv, (w_cs, w_rs));
        let dw = if self.transposed {
            // dwt[in, out] = xᵀ[in, rows] · dy[rows, out]
            par_gemm((inp, out, rows), &xv, (1, inp), &dy, (out, 1))
        } else {
            // dw[out, in] = dyᵀ[out, rows] · x[rows, in]
            par_gemm((out, inp, rows), &dy, (1, out), &xv, (inp, 1))
        };
        grads2(x, dx, w, dw)
    }
}

// ---------------------------------------------------------------------------------------------
// Causal grouped-query attention.

/// `softmax(Q Kᵀ · scale + causal mask) V` for q [B, Tq, NH, D], k and v [B, Tk, NKV, D] (the layout
/// the projections produce, so no transposes are needed); query head h reads KV head h / (NH / NKV),
/// query i attends to keys 0..=i + (Tk − Tq), and the output is [B, Tq, NH, D].
///
/// Rows are processed in blocks of [`ROW_BLOCK`] queries, each against only the keys it may see, so the
/// masked half of the score matrix is never computed. The forward keeps the probabilities (B·NH·Tq·Tk
/// floats) for the backward.
pub struct CausalAttention {
    pub scale: f32,
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

const ROW_BLOCK: usize = 64;

impl CausalAttention {
    pub fn new(scale: f32) -> Self {
        CausalAttention {
            scale,
            probs: std::sync::Mutex::new(None),
        }
    }
}

struct Dims {
    b: usize,
    nh: usize,
    nkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
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
}

/// `c[i·c_rs + j] (+)= scale · Σ_l a[i, l] b[l, j]` with `c` rows `c_rs` apart, single-threaded
/// (the attention kernels parallelise over heads).
#[allow(clippy::too_many_arguments)]
fn gemm_rs(
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

/// The one call into the gemm kernel: `c[i·c_rs + j] (+)= scale · Σ_l a[i, l] b[l, j]`, a [m×k] and
/// b [k×n] given by (row stride, column stride).
///
/// # Safety
/// `c` must be valid for writes of `c_len` floats, and initialised when `accumulate` is set.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    c: *mut f32,
    c_len: usize,
    c_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
    scale: f32,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= c_rs && c_len >= (m - 1) * c_rs + n);
    assert!(k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above keep every index the kernel touches inside `a`, `b` and the
    // `c_len` floats at `c`, which the caller vouches for.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        );
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
            gemm_rs(
                pb,
                dm.tk,
                (rows * rep, keys, dm.d),
                &qg[r0 * rep * dm.d..],
                (dm.d, 1),
                &k[kv0..],
                (1, dm.kv_rs()),
                false,
                self.scale,
            );
            softmax_rows(pb, dm.tk, r0 + shift + 1, rep);
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
        let dm = Dims::of(l1, l2, l3)?;
        let (q, k, v) = (
            slice(s1, l1, "attention q")?,
            slice(s2, l2, "attention k")?,
            slice(s3, l3, "attention v")?,
        );
        let rep = dm.rep();
        let mut out = vec![0f32; dm.b * dm.tq * dm.nh * dm.d];
        let mut probs = vec![0f32; dm.b * dm.nh * dm.tq * dm.tk];
        // One task per (batch, KV head) group, each filling its probabilities and returning its
        // heads' outputs as [Tq · rep, D] rows, scattered into the [B, Tq, NH, D] output afterwards.
        let groups: Vec<Vec<f32>> = probs
            .par_chunks_mut(dm.group_probs_len())
            .enumerate()
            .map(|(gi, p)| {
                let (bi, g) = (gi / dm.nkv, gi % dm.nkv);
                let kv0 = dm.kv_group_at(bi, g);
                let qg = dm.gather_group(q, bi, g);
                self.group_probs(&qg, k, &dm, bi, g, p);
                let mut o = vec![0f32; dm.tq * rep * dm.d];
                for (r0, rows, keys) in dm.blocks() {
                    gemm_rs(
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
            })
            .collect();
        for (gi, o) in groups.iter().enumerate() {
            dm.scatter_group(&mut out, o, gi / dm.nkv, gi % dm.nkv);
        }
        *self.probs.lock().expect("attention cache") = Some(probs);
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
        let dm = Dims::of(q.layout(), k.layout(), v.layout())?;
        let (qv, kv, vv, go) = (values(q)?, values(k)?, values(v)?, values(grad)?);
        let (rep, kn, gn) = (dm.rep(), dm.tk * dm.d, dm.group_probs_len());
        let cached = self
            .probs
            .lock()
            .expect("attention cache")
            .take()
            .filter(|p| p.len() == dm.b * dm.nkv * gn);
        // One task per (batch, KV head) group: its query heads stacked as in the forward; it owns
        // that head's dK, dV and its query heads' dQ, scattered into place afterwards.
        let groups: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..dm.b * dm.nkv)
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
                let mut dqg = vec![0f32; dm.tq * rep * dm.d];
                let mut dk_g = vec![0f32; kn];
                let mut dv_g = vec![0f32; kn];
                let mut dp = vec![0f32; gn];
                for (r0, rows, keys) in dm.blocks() {
                    let n = rows * rep;
                    let pb = &p[r0 * rep * dm.tk..];
                    let dob = &dog[r0 * rep * dm.d..];
                    // dV += Pᵀ dO
                    gemm_rs(
                        &mut dv_g,
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
                    let dpb = &mut dp[r0 * rep * dm.tk..][..n * dm.tk];
                    gemm_rs(
                        dpb,
                        dm.tk,
                        (n, keys, dm.d),
                        dob,
                        (dm.d, 1),
                        &vv[kv0..],
                        (1, dm.kv_rs()),
                        false,
                        1.0,
                    );
                    // dS = P ⊙ (dP − Σ_j dP·P), with the scale folded in for dQ and dK.
                    softmax_grad_rows(pb, dpb, dm.tk, keys, self.scale);
                    // dQ = dS K, dK += dSᵀ Q
                    gemm_rs(
                        &mut dqg[r0 * rep * dm.d..],
                        dm.d,
                        (n, dm.d, keys),
                        dpb,
                        (dm.tk, 1),
                        &kv[kv0..],
                        (dm.kv_rs(), 1),
                        false,
                        1.0,
                    );
                    gemm_rs(
                        &mut dk_g,
                        dm.d,
                        (keys, dm.d, n),
                        dpb,
                        (1, dm.tk),
                        &qg[r0 * rep * dm.d..],
                        (dm.d, 1),
                        true,
                        1.0,
                    );
                }
                (dqg, dk_g, dv_g)
            })
            .collect();
        let mut dq = vec![0f32; qv.len()];
        let mut dk = vec![0f32; kv.len()];
        let mut dv = vec![0f32; vv.len()];
        for (gi, (dqg, dk_g, dv_g)) in groups.iter().enumerate() {
            let (bi, g) = (gi / dm.nkv, gi % dm.nkv);
            dm.scatter_group(&mut dq, dqg, bi, g);
            let at = dm.kv_group_at(bi, g);
            for (i, (a, b)) in dk_g.chunks(dm.d).zip(dv_g.chunks(dm.d)).enumerate() {
                dk[at + i * dm.kv_rs()..][..dm.d].copy_from_slice(a);
                dv[at + i * dm.kv_rs()..][..dm.d].copy_from_slice(b);
            }
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise and row-wise kernels.

/// Rows per parallel task: fixed, so results never depend on the thread count.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `silu(gate) · up`.
pub struct SwiGlu;

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
        if l1.shape() != l2.shape() {
            return Err(Error::Msg("swiglu: gate and up differ in shape".into()));
        }
        let (g, u) = (slice(s1, l1, "swiglu gate")?, slice(s2, l2, "swiglu up")?);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| swiglu_fwd(o, g, u));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
        let mut out = vec![0f32; x.len()];
        let rows = (CHUNK / h).max(1);
        out.par_chunks_mut(rows * h)
            .zip(x.par_chunks(rows * h))
            .for_each(|(o, x)| rms_norm_rows(o, x, w, self.eps));
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

impl Rope {
    /// `inverse = false`: the rotation; `true`: its transpose (the backward). `heads` per position.
    fn apply(&self, x: &[f32], heads: usize, inverse: bool) -> Vec<f32> {
        let (t, d) = (self.t, self.d);
        let sign = if inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        // One task per (batch, position): `heads` vectors of `d` rotated by the same angles.
        out.par_chunks_mut(heads * d)
            .zip(x.par_chunks(heads * d))
            .enumerate()
            .for_each(|(bp, (o, x))| {
                let p = bp % t;
                let (c, s) = (&self.cos[p * d..][..d], &self.sin[p * d..][..d]);
                rope_rows(o, x, c, s, sign);
            });
        out
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

/// `log softmax(logits)[target]` per row: logits [N, V] f32, targets [N] u32 → [N]. The forward keeps
/// each row's log-sum-exp for the backward.
#[derive(Default)]
pub struct TokenLogprobs {
    lse: std::sync::Mutex<Option<Vec<f32>>>,
}

multiversion! {
    fn log_sum_exp(row: &[f32]) -> f32 {
        let max = max_of(row);
        max + exp_sum(row, max).ln()
    }
}

multiversion! {
    /// `d = −dy · softmax(row)`, with the log-sum-exp given.
    fn logprob_grad_row(d: &mut [f32], row: &[f32], lse: f32, dy: f32) {
        for (d, &x) in d.iter_mut().zip(row) {
            *d = -dy * exp(x - lse);
        }
    }
}

impl CustomOp2 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "zerolm-token-logprobs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let logits = slice(s1, l1, "token_logprobs logits")?;
        let targets = u32_slice(s2, l2, "token_logprobs")?;
        if targets.len() != n {
            return Err(Error::Msg("token_logprobs: one target per row".into()));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Msg(format!(
                "token_logprobs: target {bad} ≥ vocabulary {v}"
            )));
        }
        let lse: Vec<f32> = logits.par_chunks(v).map(log_sum_exp).collect();
        let out: Vec<f32> = logits
            .par_chunks(v)
            .zip(targets.par_iter().zip(lse.par_iter()))
            .map(|(row, (&t, &lse))| row[t as usize] - lse)
            .collect();
        *self.lse.lock().expect("lse cache") = Some(lse);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let (lv, dy) = (values(logits)?, values(grad)?);
        let tv = targets.to_vec1::<u32>()?;
        let cached = self
            .lse
            .lock()
            .expect("lse cache")
            .take()
            .filter(|l| l.len() == n);
        let mut dl = vec![0f32; lv.len()];
        dl.par_chunks_mut(v)
            .zip(lv.par_chunks(v))
            .enumerate()
            .for_each(|(i, (d, row))| {
                let lse = cached.as_ref().map_or_else(|| log_sum_exp(row), |l| l[i]);
                logprob_grad_row(d, row, lse, dy[i]);
                d[tv[i] as usize] += dy[i];
            });
        Ok((
            Some(Tensor::from_vec(dl, logits.shape(), logits.device())?),
            None,
        ))
    }
}

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

#[cfg(test)]
mod tests {
    use crate::ops;
    use crate::SplitMix64;
    use candle_core::{Device, Tensor, Var};

    fn randn(rng: &mut SplitMix64, dims: &[usize], scale: f64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst / scale < tol,
            "{what}: max |Δ| {worst} vs scale {scale}"
        );
        assert!(b.iter().any(|x| *x != 0.0), "{what}: all zero");
    }

    /// Runs `f` on vars made of `inputs` with the fused and the composed op; compares the outputs and
    /// the gradient of Σ out · R for every input.
    fn check(
        name: &str,
        inputs: &[Tensor],
        fast: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
        slow: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    ) {
        let mut rng = SplitMix64::new(99);
        let run = |f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>| {
            let vars: Vec<Var> = inputs
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let out = f(&ts).unwrap();
            (vars, out)
        };
        let (fv, fo) = run(&fast);
        let (sv, so) = run(&slow);
        close(&fo, &so, 1e-5, &format!("{name} value"));
        let r = randn(&mut rng, fo.dims(), 1.0);
        let fg = (&fo * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let sg = (&so * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, (a, b)) in fv.iter().zip(&sv).enumerate() {
            let ga = fg.get(a.as_tensor()).expect("fused gradient");
            let gb = sg.get(b.as_tensor()).expect("composed gradient");
            close(ga, gb, 1e-4, &format!("{name} gradient of input {i}"));
        }
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        let tiny = super::exp(-1000.0);
        assert!(tiny > 0.0 && ((tiny - (-87f32).exp()) / tiny).abs() < 1e-6);
        assert!(super::exp(0.0) == 1.0);
    }

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
    fn swiglu_rms_norm_rope_and_logprobs_match_composed() {
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
        let x = randn(&mut rng, &[3, 70, 40], 1.0);
        let w = randn(&mut rng, &[50, 40], 0.3);
        check(
            "linear",
            &[x, w],
            |x| ops::linear(&x[0], &x[1]),
            |x| ops::linear_composed(&x[0], &x[1]),
        );
        // The transposed-weight linear of inference: the same function of x and of wt = wᵀ.
        let x = randn(&mut rng, &[3, 70, 40], 1.0);
        let wt = randn(&mut rng, &[40, 50], 0.3);
        check(
            "linear_t",
            &[x, wt],
            |x| ops::linear_t(&x[0], &x[1]),
            |x| ops::linear_composed(&x[0], &x[1].t()?),
        );
        let logits = randn(&mut rng, &[10, 33], 3.0);
        let t = Tensor::new(&[0u32, 5, 32, 7, 7, 1, 2, 3, 31, 16], &Device::Cpu).unwrap();
        check(
            "token_logprobs",
            &[logits],
            |x| ops::token_logprobs(&x[0], &t),
            |x| ops::token_logprobs_composed(&x[0], &t),
        );
    }

    #[test]
    fn kernels_give_the_same_bits_for_any_thread_count() {
        let mut rng = SplitMix64::new(3);
        let q = randn(&mut rng, &[2, 100, 4, 16], 1.0);
        let k = randn(&mut rng, &[2, 100, 2, 16], 1.0);
        let v = randn(&mut rng, &[2, 100, 2, 16], 1.0);
        let x = randn(&mut rng, &[70, 300], 1.0);
        let w = randn(&mut rng, &[300], 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (qv, kv, vv) = (
                    Var::from_tensor(&q).unwrap(),
                    Var::from_tensor(&k).unwrap(),
                    Var::from_tensor(&v).unwrap(),
                );
                let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
                let a = ops::causal_attention(&qv, &kv, &vv, 0.25).unwrap();
                let n = ops::rms_norm(&xv, &wv, 1e-5).unwrap();
                let loss = (a.sqr().unwrap().sum_all().unwrap()
                    + n.sqr().unwrap().sum_all().unwrap())
                .unwrap();
                let g = loss.backward().unwrap();
                [
                    qv.as_tensor(),
                    kv.as_tensor(),
                    vv.as_tensor(),
                    wv.as_tensor(),
                ]
                .iter()
                .map(|t| {
                    g.get(t)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect::<Vec<_>>()
            })
        };
        assert_eq!(run(1), run(3));
    }
}
