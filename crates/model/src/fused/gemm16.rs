//! Matrix products with bf16 operands and f32 accumulation, as PyTorch's bf16 autocast computes linear
//! layers and attention products. Operands arrive as f32 (weights, activations, gradients) and are
//! rounded to bf16 (to nearest, ties to even, as `tensor.to(torch.bfloat16)` does) while they are packed
//! into the kernel's layout: panels of [`MR`] rows of A or [`NR`] columns of B, holding for each pair of
//! k indices the two bf16 values of every row (column) side by side in one `u32`.
//!
//! The kernel keeps an MR × NR tile of f32 sums in registers. On a CPU with AVX512_BF16 each step is one
//! `vdpbf16ps` per 16 columns (two bf16 products and their sum into each f32 lane); elsewhere the pairs
//! are widened to f32 and multiplied and added in plain arithmetic that the compiler vectorises for the
//! widest unit the CPU has (AVX-512F, AVX2, SSE2), chosen at run time. [`force_portable`] selects the
//! second path on any CPU, to measure and test it.
//!
//! Deterministic for any thread count: every output tile is computed by one task, over the whole k range,
//! in order. The two kernels give the same bits: a product of two bf16 values is exact in f32, and the
//! portable kernel adds each pair's two products in `vdpbf16ps`'s order (odd k first), so only inputs or
//! sums below f32's normal range (which `vdpbf16ps` flushes to zero) can differ.

use rayon::prelude::*;
use std::mem::MaybeUninit;

pub use super::pack16::{from_bf16, to_bf16};
use super::pack16::{pack_k_major, pack_row_major, pack_strided};
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows of A per panel and per tile.
pub const MR: usize = 12;
/// Columns of B per panel and per tile.
pub const NR: usize = 32;
/// Bytes of B a thread works through before moving to the next row panel (about half of a Zen 4 L2).
const B_BLOCK_BYTES: usize = 256 << 10;

static PORTABLE: AtomicBool = AtomicBool::new(false);

/// The environment variable that selects the kernel: `portable` forces the portable one on any CPU (to
/// measure the speed a CPU without AVX512_BF16 gets); unset or `auto`, the fastest this CPU has. Both give
/// the same bits (see the module notes), so the choice is not part of any run's settings.
pub const KERNEL_ENV: &str = "ZEROLM_BF16_KERNEL";

/// Uses the portable kernel even where AVX512_BF16 is available (to measure and test it).
pub fn force_portable(on: bool) {
    PORTABLE.store(on, Ordering::Relaxed);
}

/// Applies [`KERNEL_ENV`]; an unknown value is an error naming the variable.
pub fn kernel_from_env() -> Result<(), String> {
    match std::env::var(KERNEL_ENV).as_deref() {
        Err(_) | Ok("auto") | Ok("") => Ok(()),
        Ok("portable") => {
            force_portable(true);
            Ok(())
        }
        Ok(other) => Err(format!(
            "{KERNEL_ENV}={other}: use `auto` (the fastest bf16 kernel this CPU has) or `portable`"
        )),
    }
}

/// Which kernel [`gemm`] runs on this CPU now.
pub fn kernel_name() -> &'static str {
    if has_bf16_dot() {
        "avx512_bf16"
    } else {
        "portable (bf16 widened to f32)"
    }
}

/// The rate of `vdpbf16ps` on this thread, in GFLOP/s: twelve independent accumulator chains (enough to
/// cover the instruction's latency) run for `steps` steps of sixteen rounds (fewer than 2^19 steps, so
/// that the sums stay exact and can be checked), nothing else in the loop, so the figure is the core's
/// bf16 peak. `None` on a CPU without AVX512_BF16.
pub fn bf16_peak_gflops(steps: usize) -> Option<f64> {
    assert!(steps < (1 << 19) - 8, "bf16_peak_gflops: too many steps");
    #[cfg(target_arch = "x86_64")]
    if has_bf16_dot() {
        let t = std::time::Instant::now();
        // SAFETY: the CPU has AVX512_BF16 and AVX-512F (checked above).
        let ends = unsafe { avx512::dot_chains(steps) };
        let secs = t.elapsed().as_secs_f64();
        // Each chain adds 1·1 + 1·1 per lane and round, exactly (integers below 2^24).
        let rounds = avx512::ROUNDS * steps;
        for (i, end) in ends.iter().enumerate() {
            assert_eq!(
                *end as usize,
                i + 2 * rounds,
                "the vdpbf16ps probe skipped steps"
            );
        }
        return Some((avx512::CHAINS * rounds * 64) as f64 / secs / 1e9);
    }
    let _ = steps;
    None
}

fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if PORTABLE.load(Ordering::Relaxed) {
            return false;
        }
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A matrix operand rounded to bf16 and packed for the kernel: `len` rows (of A) or columns (of B), each
/// of length `k`, in panels of `width` (= [`MR`] or [`NR`]); a panel holds, for each k pair, `width`
/// `u32`s (low half: the even k, high half: the odd one). Padding rows/columns and the odd k are zero.
#[derive(Clone, Debug)]
pub struct Packed {
    len: usize,
    k: usize,
    width: usize,
    data: Vec<u32>,
}

impl Packed {
    /// Packs the `len` × `k` matrix whose element (i, kk) is `src[i * strides.0 + kk * strides.1]`.
    pub fn new(
        src: &[f32],
        (len, k): (usize, usize),
        strides: (usize, usize),
        width: usize,
    ) -> Packed {
        let kp = k.div_ceil(2);
        let panels = len.div_ceil(width);
        let size = panels * kp * width;
        let mut data = Vec::with_capacity(size);
        if kp > 0 {
            let group = panels_per_task(panels, width);
            data.spare_capacity_mut()[..size]
                .par_chunks_mut(group * kp * width)
                .enumerate()
                .for_each(|(t, out)| pack_panels(src, (len, k), strides, width, t * group, out));
        }
        // SAFETY: the packers wrote every element of every panel (padding included).
        unsafe { data.set_len(size) };
        Packed {
            len,
            k,
            width,
            data,
        }
    }

    fn kp(&self) -> usize {
        self.k.div_ceil(2)
    }

    fn panel(&self, p: usize) -> &[u32] {
        let size = self.kp() * self.width;
        &self.data[p * size..(p + 1) * size]
    }
}

/// Panels whose first rows of the matrix start at panel `p0` (as many as `out` holds), by the fastest
/// loop for the layout.
fn pack_panels(
    src: &[f32],
    (len, k): (usize, usize),
    (s_row, s_k): (usize, usize),
    width: usize,
    p0: usize,
    out: &mut [MaybeUninit<u32>],
) {
    let first = p0 * width;
    let rows = (out.len() / (k.div_ceil(2) * width) * width).min(len - first);
    if s_row == 1 {
        return pack_k_major(&src[first..], rows, k, s_k, width, out);
    }
    for (j, panel) in out.chunks_mut(k.div_ceil(2) * width).enumerate() {
        let (at, rows) = (j * width, width.min(rows.saturating_sub(j * width)));
        if s_k == 1 {
            pack_row_major(&src[(first + at) * s_row..], rows, k, s_row, width, panel)
        } else {
            pack_strided(
                &src[(first + at) * s_row..],
                (rows, k),
                (s_row, s_k),
                width,
                panel,
            )
        }
    }
}

/// Panels a task packs (or multiplies) at a time: about 128 adjacent rows of a k-major operand, so that
/// each of its k rows is read as one run of ≥ 512 bytes.
fn panels_per_task(panels: usize, width: usize) -> usize {
    (128 / width).clamp(1, panels.max(1))
}

/// Writes rows `range` of a [`Left::Made`] operand into the buffer (every element).
pub type MakeRows<'a> = dyn Fn(std::ops::Range<usize>, &mut [MaybeUninit<f32>]) + Sync + 'a;

/// The left operand of a product: packed beforehand, or f32 values (element (i, kk) at
/// `src[i·strides.0 + kk·strides.1]`) that each task rounds and packs for its own rows, in the task that
/// multiplies them (no pass over A of its own, and its panels are in cache when used).
#[derive(Clone, Copy)]
pub enum Left<'a> {
    Packed(&'a Packed),
    Raw {
        src: &'a [f32],
        rows: usize,
        strides: (usize, usize),
    },
    /// Row-major rows of k values made on demand: `make(range, out)` writes rows `range` into `out`
    /// (every element), each task making only its own rows just before it packs them.
    Made {
        rows: usize,
        make: &'a MakeRows<'a>,
    },
}

impl Left<'_> {
    fn rows(&self) -> usize {
        match self {
            Left::Packed(p) => p.len,
            Left::Raw { rows, .. } | Left::Made { rows, .. } => *rows,
        }
    }

    /// Row panels `panels` (consecutive) of A as packed data, borrowed or packed now.
    fn panels(&self, panels: std::ops::Range<usize>, k: usize) -> std::borrow::Cow<'_, [u32]> {
        let size = k.div_ceil(2) * MR;
        match self {
            Left::Packed(p) => p.data[panels.start * size..panels.end * size].into(),
            Left::Raw { src, rows, strides } => {
                let len = panels.len() * size;
                let mut out = Vec::with_capacity(len);
                if size > 0 {
                    let buf = &mut out.spare_capacity_mut()[..len];
                    pack_panels(src, (*rows, k), *strides, MR, panels.start, buf);
                }
                // SAFETY: the packers wrote every element of these panels (padding included).
                unsafe { out.set_len(len) };
                out.into()
            }
            Left::Made { rows, make } => {
                let range = panels.start * MR..(panels.end * MR).min(*rows);
                let mut src = Vec::with_capacity(range.len() * k);
                make(
                    range.clone(),
                    &mut src.spare_capacity_mut()[..range.len() * k],
                );
                // SAFETY: `make` wrote every element of its rows (its contract).
                unsafe { src.set_len(range.len() * k) };
                let made = Left::Raw {
                    src: &src,
                    rows: range.len(),
                    strides: (k, 1),
                };
                made.panels(0..panels.len(), k).into_owned().into()
            }
        }
    }
}

/// `c[m, n] = a · b` (row stride `ldc`; every element written, none read) for `a` packed with width
/// [`MR`] (its `len` is m) and `b` with width [`NR`] (its `len` is n), over the same k.
pub fn gemm(a: &Packed, b: &Packed, c: &mut [f32], ldc: usize) {
    assert!(a.width == MR && a.k == b.k, "gemm16: operands do not fit");
    product_into(Left::Packed(a), b, c, ldc)
}

/// `c[m, n] = a · b` (row stride `ldc`; every element of the product written, the rest of each row
/// untouched) for A of m rows over B's k: [`gemm`] with a left operand that may be raw.
pub fn product_into(a: Left, b: &Packed, c: &mut [f32], ldc: usize) {
    // SAFETY: f32 and MaybeUninit<f32> have the same layout, and the kernel only writes through it.
    let c = unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) };
    gemm_on(has_bf16_dot(), a, vec![(b, c, ldc)])
}

/// A new row-major [m, n] matrix `a · b` for A of m rows over B's k (see [`gemm`]), never zero-filled:
/// the kernel writes every element.
pub fn product(a: Left, b: &Packed) -> Vec<f32> {
    product_many(a, &[b]).pop().expect("one product")
}

/// [`product`] of one left operand with each of `bs` (all over the same k): A is rounded and packed once
/// for all of them (the layers that read one input: q, k and v; gate and up).
pub fn product_many(a: Left, bs: &[&Packed]) -> Vec<Vec<f32>> {
    let m = a.rows();
    let mut outs: Vec<Vec<f32>> = bs.iter().map(|b| Vec::with_capacity(m * b.len)).collect();
    let jobs = (bs.iter().zip(outs.iter_mut()))
        .map(|(b, c)| (*b, &mut c.spare_capacity_mut()[..m * b.len], b.len))
        .collect();
    gemm_on(has_bf16_dot(), a, jobs);
    for (c, b) in outs.iter_mut().zip(bs) {
        // SAFETY: `gemm_on` wrote all m·n elements of each [m, n] output (row stride n).
        unsafe { c.set_len(m * b.len) };
    }
    outs
}

/// An output of [`gemm_on`]: the right operand, and the rows it is written into with their stride.
type Job<'a> = (&'a Packed, &'a mut [MaybeUninit<f32>], usize);

/// [`gemm`] through `vdpbf16ps` (`bf16_dot`, on a CPU that has it) or the portable kernel, for each
/// `(b, c, ldc)` of `jobs`: one task per group of row panels, which packs its A rows (when raw) once and
/// walks each B block by block (each block stays in cache while every row panel of the group uses it).
fn gemm_on(bf16_dot: bool, a: Left, jobs: Vec<Job>) {
    let m = a.rows();
    let k = jobs.first().map_or(0, |j| j.0.k);
    for (b, c, ldc) in &jobs {
        assert!(b.width == NR && b.k == k, "gemm16: operands do not fit");
        assert!(
            *ldc >= b.len && c.len() >= m.saturating_sub(1) * ldc + b.len,
            "gemm16: output too small"
        );
    }
    if m == 0 {
        return;
    }
    let kernel = if bf16_dot && has_bf16_dot() {
        tile_bf16_dot
    } else {
        tile_portable
    };
    let row_panels = m.div_ceil(MR);
    // Two tasks per thread (enough to balance, few enough that B is read only a few times), their
    // panel counts differing by at most one.
    let tasks = (2 * rayon::current_num_threads()).min(row_panels);
    let first_panel = |t: usize| t * row_panels / tasks;
    // Each task's rows of every output.
    let mut per_task: Vec<Vec<Job>> = (0..tasks).map(|_| Vec::new()).collect();
    for (b, mut c, ldc) in jobs.into_iter().filter(|j| j.0.len > 0) {
        for (t, outs) in per_task.iter_mut().enumerate() {
            let len = (first_panel(t + 1) - first_panel(t)) * MR * ldc;
            let (rows, rest) = c.split_at_mut(len.min(c.len()));
            outs.push((b, rows, ldc));
            c = rest;
        }
    }
    per_task.into_par_iter().enumerate().for_each(|(t, outs)| {
        let panels = first_panel(t)..first_panel(t + 1);
        let packed = a.panels(panels.clone(), k);
        for (b, rows, ldc) in outs {
            multiply_panels(kernel, (&packed, panels.clone(), m), b, rows, ldc);
        }
    });
}

/// A tile kernel: the MR × NR product of an A panel and a B panel over `kp` k pairs, its `rows` × `cols`
/// valid part written into `out` (rows `ldc` apart).
type Kernel = fn(usize, &[u32], &[u32], Out);

/// Where a tile's valid `rows` × `cols` go: `out`, rows `ldc` apart.
struct Out<'a> {
    out: &'a mut [MaybeUninit<f32>],
    ldc: usize,
    rows: usize,
    cols: usize,
}

/// The rows of `c` that A's row panels `panels` (packed in `a`; m rows in all) give with B.
fn multiply_panels(
    kernel: Kernel,
    (a, panels, m): (&[u32], std::ops::Range<usize>, usize),
    b: &Packed,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
) {
    let (n, kp, col_panels) = (b.len, b.kp(), b.len.div_ceil(NR));
    let per_block = (B_BLOCK_BYTES / (kp.max(1) * NR * 4)).max(1);
    for first in (0..col_panels).step_by(per_block) {
        for (j, rp) in panels.clone().enumerate() {
            let a_panel = &a[j * kp * MR..(j + 1) * kp * MR];
            let rows = (m - rp * MR).min(MR);
            for cp in first..(first + per_block).min(col_panels) {
                let out = &mut c[j * MR * ldc + cp * NR..];
                let cols = (n - cp * NR).min(NR);
                kernel(
                    kp,
                    a_panel,
                    b.panel(cp),
                    Out {
                        out,
                        ldc,
                        rows,
                        cols,
                    },
                );
            }
        }
    }
}

/// Writes the valid part of a tile of sums.
fn store(tile: &[f32; MR * NR], o: Out) {
    for r in 0..o.rows {
        let dst = &mut o.out[r * o.ldc..r * o.ldc + o.cols];
        for (d, &v) in dst.iter_mut().zip(&tile[r * NR..r * NR + o.cols]) {
            d.write(v);
        }
    }
}

/// The tile through `vdpbf16ps`, on a CPU that has it (or the portable kernel otherwise).
fn tile_bf16_dot(kp: usize, a: &[u32], b: &[u32], out: Out) {
    #[cfg(target_arch = "x86_64")]
    if has_bf16_dot() {
        assert!(
            a.len() >= kp * MR && b.len() >= kp * NR,
            "gemm16: panels too short"
        );
        assert!(
            out.rows <= MR
                && out.cols <= NR
                && (out.rows == 0 || out.out.len() >= (out.rows - 1) * out.ldc + out.cols),
            "gemm16: tile output too small"
        );
        // SAFETY: the CPU has AVX512_BF16 and AVX-512F (checked above); the panels hold kp·MR and kp·NR
        // values and the output holds the tile's valid part (asserted), which is all the kernel touches.
        unsafe { avx512::tile(kp, a, b, out) };
        return;
    }
    tile_portable(kp, a, b, out)
}

super::simd::multiversion! {
    /// The tile in plain arithmetic: each pair widened to two f32 products, added in the order
    /// `vdpbf16ps` adds them.
    fn tile_portable(kp: usize, a: &[u32], b: &[u32], out: Out) {
        let mut acc = [[0f32; NR]; MR];
        for q in 0..kp {
            let bq = &b[q * NR..(q + 1) * NR];
            let mut b_lo = [0f32; NR];
            let mut b_hi = [0f32; NR];
            for c in 0..NR {
                b_lo[c] = f32::from_bits(bq[c] << 16);
                b_hi[c] = f32::from_bits(bq[c] & 0xffff_0000);
            }
            for r in 0..MR {
                let x = a[q * MR + r];
                let (x_lo, x_hi) = (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000));
                for c in 0..NR {
                    acc[r][c] = (acc[r][c] + x_hi * b_hi[c]) + x_lo * b_lo[c];
                }
            }
        }
        let mut tile = [0f32; MR * NR];
        for r in 0..MR {
            tile[r * NR..(r + 1) * NR].copy_from_slice(&acc[r]);
        }
        store(&tile, out);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Out, MR, NR};
    use std::arch::x86_64::*;

    /// MR × NR sums in 2·MR registers; per k pair: two loads of B, MR broadcasts of A, 2·MR `vdpbf16ps`.
    /// A whole tile is stored from the registers into the output; a partial one through a buffer.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `a` and `b` hold at least kp·MR and kp·NR values; `out`
    /// holds the tile's valid part.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(kp: usize, a: &[u32], b: &[u32], out: Out) {
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
        for _ in 0..kp {
            // SAFETY: pa and pb stay within the panels (kp steps of MR and NR values).
            let (b0, b1) = unsafe {
                (
                    as_bh(_mm512_loadu_si512(pb.cast())),
                    as_bh(_mm512_loadu_si512(pb.add(16).cast())),
                )
            };
            for r in 0..MR {
                // SAFETY: as above.
                let x = as_bh(_mm512_set1_epi32(unsafe { *pa.add(r) } as i32));
                acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], x, b0);
                acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], x, b1);
            }
            // SAFETY: one step further within (or just past the end of) the panels.
            unsafe {
                pa = pa.add(MR);
                pb = pb.add(NR);
            }
        }
        if out.rows == MR && out.cols == NR {
            let dst = out.out.as_mut_ptr().cast::<f32>();
            for r in 0..MR {
                // SAFETY: the output holds MR rows of NR floats, rows ldc apart (the caller's contract).
                unsafe {
                    _mm512_storeu_ps(dst.add(r * out.ldc), acc[2 * r]);
                    _mm512_storeu_ps(dst.add(r * out.ldc + 16), acc[2 * r + 1]);
                }
            }
            return;
        }
        let mut tile = [0f32; MR * NR];
        for r in 0..MR {
            // SAFETY: the buffer holds MR rows of NR floats.
            unsafe {
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), acc[2 * r]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16), acc[2 * r + 1]);
            }
        }
        super::store(&tile, out);
    }

    /// Independent accumulator chains of [`dot_chains`](self::dot_chains).
    pub(super) const CHAINS: usize = 12;
    /// `vdpbf16ps` rounds over the chains per step of [`dot_chains`](self::dot_chains).
    pub(super) const ROUNDS: usize = 16;

    /// `steps` × [`ROUNDS`] rounds of one `vdpbf16ps` on each of [`CHAINS`] accumulators (chain i
    /// starts at i and adds 2 per round); returns each one's lane 0.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dot_chains(steps: usize) -> [f32; CHAINS] {
        let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        let ones = as_bh(_mm512_set1_epi32(0x3f80_3f80));
        for _ in 0..steps {
            // Opaque to the optimiser, so every step's products are really done.
            let x = std::hint::black_box(ones);
            for _ in 0..ROUNDS {
                for a in &mut acc {
                    *a = _mm512_dpbf16_ps(*a, x, x);
                }
            }
        }
        acc.map(|a| _mm512_cvtss_f32(a))
    }

    #[inline(always)]
    fn as_bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitMix64;

    #[test]
    fn the_peak_probe_does_its_steps_where_the_cpu_has_the_instruction() {
        match bf16_peak_gflops(20_000) {
            // The probe checked its own sums; a rate is positive and finite.
            Some(rate) => assert!(has_bf16_dot() && rate.is_finite() && rate > 0.0, "{rate}"),
            None => assert!(!has_bf16_dot()),
        }
    }

    fn random(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// The product of the bf16-rounded operands, summed in f64: what the kernel approximates.
    fn reference(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|kk| r(a[i * k + kk]) * r(b[kk * n + j])).sum();
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn both_kernels_match_the_rounded_product_for_ragged_shapes_and_strides() {
        let mut rng = SplitMix64::new(16);
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (25, 70, 64),
            (12, 32, 129),
            (40, 100, 300),
        ] {
            let a = random(&mut rng, m * k);
            let b = random(&mut rng, k * n);
            let want = reference(&a, &b, (m, n, k));
            // A row-major [m, k]; B given as [k, n] row-major, so its column j has stride 1 per j, n per k.
            let pa = Packed::new(&a, (m, k), (k, 1), MR);
            let pb = Packed::new(&b, (n, k), (1, n), NR);
            for portable in [false, true] {
                let mut c = vec![MaybeUninit::new(f32::NAN); m * (n + 3)];
                gemm_on(!portable, Left::Packed(&pa), vec![(&pb, &mut c[..], n + 3)]);
                // SAFETY: initialised above.
                let c: Vec<f32> = c.iter().map(|x| unsafe { x.assume_init() }).collect();
                for i in 0..m {
                    for j in 0..n {
                        let (got, w) = (c[i * (n + 3) + j], want[i * n + j]);
                        assert!(
                            (got - w).abs() <= 1e-5 * (1.0 + w.abs()) * (k as f32).sqrt(),
                            "{m}×{n}×{k} portable={portable} ({i},{j}): {got} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_raw_left_operand_gives_the_packed_ones_product() {
        let mut rng = SplitMix64::new(20);
        for &(m, n, k) in &[(1, 5, 3), (40, 70, 129), (300, 33, 64)] {
            let a = random(&mut rng, m * k);
            let at: Vec<f32> = (0..k * m).map(|j| a[(j % m) * k + j / m]).collect();
            let b = random(&mut rng, k * n);
            let pb = Packed::new(&b, (n, k), (1, n), NR);
            let mut want = vec![0f32; m * n];
            gemm(&Packed::new(&a, (m, k), (k, 1), MR), &pb, &mut want, n);
            for (src, strides) in [(&a, (k, 1)), (&at, (1, m))] {
                let got = product(
                    Left::Raw {
                        src,
                        rows: m,
                        strides,
                    },
                    &pb,
                );
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}×{n}×{k} {strides:?}"
                );
            }
        }
    }

    #[test]
    fn one_left_operand_with_several_right_ones_gives_each_product() {
        let mut rng = SplitMix64::new(21);
        let (m, k) = (70, 96);
        let a = random(&mut rng, m * k);
        let bs: Vec<Packed> = [64, 0, 16, 45]
            .iter()
            .map(|&n| Packed::new(&random(&mut rng, k * n), (n, k), (1, n), NR))
            .collect();
        let left = Left::Raw {
            src: &a,
            rows: m,
            strides: (k, 1),
        };
        let many = product_many(left, &bs.iter().collect::<Vec<_>>());
        assert_eq!(many.len(), 4);
        for (got, b) in many.iter().zip(&bs) {
            let want = product(left, b);
            assert_eq!(got.len(), m * b.len);
            assert!(got
                .iter()
                .zip(&want)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn both_kernels_give_the_same_bits() {
        let mut rng = SplitMix64::new(19);
        let (m, n, k) = (30, 70, 301);
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let pa = Packed::new(&a, (m, k), (k, 1), MR);
        let pb = Packed::new(&b, (n, k), (1, n), NR);
        let run = |portable: bool| {
            let mut c = vec![MaybeUninit::new(0f32); m * n];
            gemm_on(!portable, Left::Packed(&pa), vec![(&pb, &mut c[..], n)]);
            // SAFETY: initialised above.
            c.iter()
                .map(|x| unsafe { x.assume_init() }.to_bits())
                .collect::<Vec<u32>>()
        };
        let (fast, portable) = (run(false), run(true));
        let same = fast.iter().zip(&portable).filter(|(x, y)| x == y).count();
        assert_eq!(same, m * n, "{same} of {} equal", m * n);
    }

    #[test]
    fn every_layout_packs_to_the_same_panels() {
        let mut rng = SplitMix64::new(18);
        // Row-major blocks of 16 rows × 32 k (transposed in registers) with ragged rows and k tails.
        let special = [
            f32::NAN,
            -f32::INFINITY,
            1.0 + 1.0 / 256.0,
            1e-40,
            -0.0,
            f32::MAX,
        ];
        for &(len, k) in &[(1, 1), (13, 7), (40, 64), (33, 129), (45, 70), (16, 32)] {
            let mut m = random(&mut rng, len * k); // row-major: (i, kk) at i·k + kk
            for (j, x) in special.iter().enumerate() {
                m[(j * 7919) % (len * k)] = *x;
            }
            let t: Vec<f32> = (0..k * len).map(|j| m[(j % len) * k + j / len]).collect(); // (i, kk) at kk·len + i
            let mut s = vec![f32::NAN; len * k * 3]; // (i, kk) at 3·(i·k + kk)
            for (j, x) in m.iter().enumerate() {
                s[3 * j] = *x;
            }
            for width in [MR, NR] {
                let row = Packed::new(&m, (len, k), (k, 1), width);
                let kmajor = Packed::new(&t, (len, k), (1, len), width);
                let strided = Packed::new(&s, (len, k), (3 * k, 3), width);
                assert_eq!(row.data, kmajor.data, "{len}×{k} width {width}");
                assert_eq!(row.data, strided.data, "{len}×{k} width {width}");
                let first = row.data[0];
                assert_eq!(first & 0xffff, to_bf16(m[0]) as u32);
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_the_thread_count() {
        let mut rng = SplitMix64::new(17);
        let (m, n, k) = (50, 90, 80);
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let pa = Packed::new(&a, (m, k), (k, 1), MR);
                let pb = Packed::new(&b, (n, k), (1, n), NR);
                let mut c = vec![0f32; m * n];
                gemm(&pa, &pb, &mut c, n);
                c
            })
        };
        let one = run(1);
        assert!(one
            .iter()
            .zip(run(3))
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
