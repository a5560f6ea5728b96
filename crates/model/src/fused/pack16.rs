//! Rounding f32 operands to bf16 and packing them into [`super::gemm16`]'s panels: for each pair of k
//! indices, the two bf16 values of every row (column) of a panel side by side in one `u32`, the even k
//! in the low half. One packer per source layout — k-major (rows adjacent for each k), row-major (each
//! row contiguous along k) and any other stride — all giving the same bits; the row-major one transposes
//! 16 × 16 blocks in AVX-512 registers where the CPU has them.

use std::mem::MaybeUninit;

/// The bf16 bits nearest to `x` (ties to even); NaN stays NaN. Branch-free, so loops of it vectorise.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

/// Two values rounded to bf16 and paired in one `u32` (`lo` in the low half).
#[inline(always)]
pub(super) fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | ((to_bf16(hi) as u32) << 16)
}

/// The f32 value of bf16 bits `h`.
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Consecutive panels (as many as `out` holds) of an operand whose rows are adjacent in memory for each
/// k (element (i, kk) at `src[i + kk·s_k]`), `rows` rows in all.
pub(super) fn pack_k_major(
    src: &[f32],
    rows: usize,
    k: usize,
    s_k: usize,
    width: usize,
    out: &mut [MaybeUninit<u32>],
) {
    let mut pairs = vec![0u32; rows];
    k_major(src, rows, k, s_k, width, out, &mut pairs)
}

super::simd::multiversion! {
    /// Each k pair: the two rows' runs rounded and interleaved into `pairs` in one vector loop over all
    /// `rows`, then each panel's run copied into place (a whole panel's run as one fixed-size copy).
    fn k_major(src: &[f32], rows: usize, k: usize, s_k: usize, width: usize, out: &mut [MaybeUninit<u32>], pairs: &mut [u32]) {
        let kp = k.div_ceil(2);
        for q in 0..kp {
            // Each pair's runs start a new stretch of memory, which the hardware prefetcher finds late.
            if 2 * q + 2 * AHEAD + 1 < k {
                prefetch_run(&src[(2 * q + 2 * AHEAD) * s_k..][..rows]);
                prefetch_run(&src[(2 * q + 2 * AHEAD + 1) * s_k..][..rows]);
            }
            let lo = &src[2 * q * s_k..][..rows];
            match (2 * q + 1 < k).then(|| &src[(2 * q + 1) * s_k..][..rows]) {
                Some(hi) => {
                    for ((p, &l), &h) in pairs.iter_mut().zip(lo).zip(hi) {
                        *p = pair(l, h);
                    }
                }
                None => {
                    for (p, &l) in pairs.iter_mut().zip(lo) {
                        *p = pair(l, 0.0);
                    }
                }
            }
            for (j, panel) in out.chunks_mut(kp * width).enumerate() {
                let at = j * width;
                let n = width.min(rows.saturating_sub(at));
                let dst = &mut panel[q * width..(q + 1) * width];
                match (n == width, width) {
                    (true, 12) => copy_run::<12>(dst, &pairs[at..at + n]),
                    (true, 32) => copy_run::<32>(dst, &pairs[at..at + n]),
                    _ => {
                        for (o, &p) in dst.iter_mut().zip(&pairs[at..at + n]) {
                            o.write(p);
                        }
                        for o in &mut dst[n..] {
                            o.write(0);
                        }
                    }
                }
            }
        }
    }
}

/// How many k pairs ahead [`k_major`] asks for its rows.
const AHEAD: usize = 2;

/// Asks for the cache lines of `run` ahead of use (a hint; nothing on other architectures).
#[inline(always)]
fn prefetch_run(run: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in run.chunks(16) {
        // SAFETY: a prefetch reads nothing architecturally; the address is within `run`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
}

/// Copies `W` values (a length the compiler knows, so the copy is a few vector moves).
#[inline(always)]
fn copy_run<const W: usize>(dst: &mut [MaybeUninit<u32>], src: &[u32]) {
    let (dst, src): (&mut [MaybeUninit<u32>; W], &[u32; W]) = (
        dst.try_into().expect("a panel's run"),
        src.try_into().expect("a panel's run"),
    );
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// A panel whose rows are contiguous along k (element (i, kk) at `src[i·s_row + kk]`), `rows` valid rows:
/// blocks of 16 rows × 16 k pairs are transposed in AVX-512 registers where the CPU has AVX-512F, the
/// rest goes through the portable loop.
pub(super) fn pack_row_major(
    src: &[f32],
    rows: usize,
    k: usize,
    s_row: usize,
    width: usize,
    panel: &mut [MaybeUninit<u32>],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let done = avx512::blocks(src, rows, k, s_row, width, panel);
        return row_major_tail(src, (rows, k), s_row, width, done, panel);
    }
    row_major(src, rows, k, s_row, width, panel)
}

/// k pairs per block of [`row_major`]'s rows.
const PAIR_BLOCK: usize = 32;

super::simd::multiversion! {
    /// The portable row-major packer: each row is rounded into pairs a block at a time in a vector loop,
    /// then the pairs are spread over the panel.
    fn row_major(src: &[f32], rows: usize, k: usize, s_row: usize, width: usize, panel: &mut [MaybeUninit<u32>]) {
        let full = k / 2;
        let mut block = [0u32; PAIR_BLOCK];
        for w in 0..rows {
            let row = &src[w * s_row..][..k];
            for q0 in (0..full).step_by(PAIR_BLOCK) {
                let n = PAIR_BLOCK.min(full - q0);
                for (o, two) in block[..n].iter_mut().zip(row[2 * q0..].chunks_exact(2)) {
                    *o = pair(two[0], two[1]);
                }
                for (j, &v) in block[..n].iter().enumerate() {
                    panel[(q0 + j) * width + w].write(v);
                }
            }
            if k % 2 == 1 {
                panel[full * width + w].write(pair(row[k - 1], 0.0));
            }
        }
        zero_padding(panel, rows, width);
    }
}

/// The k pairs from `done` on (every row of the panel, padding rows zero), after the transposed blocks.
fn row_major_tail(
    src: &[f32],
    (rows, k): (usize, usize),
    s_row: usize,
    width: usize,
    done: usize,
    panel: &mut [MaybeUninit<u32>],
) {
    for q in done..k.div_ceil(2) {
        for w in 0..width {
            let v = match w < rows {
                true => {
                    let lo = src[w * s_row + 2 * q];
                    pair(
                        lo,
                        if 2 * q + 1 < k {
                            src[w * s_row + 2 * q + 1]
                        } else {
                            0.0
                        },
                    )
                }
                false => 0,
            };
            panel[q * width + w].write(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Writes the panel's k pairs `0..16·⌊k/32⌋` — for every group of 16 panel rows, blocks of 16 rows ×
    /// 16 pairs rounded, paired, transposed in registers and stored as 16 runs (rows past `rows` are
    /// zero); returns how many pairs it wrote.
    pub(super) fn blocks(
        src: &[f32],
        rows: usize,
        k: usize,
        s_row: usize,
        width: usize,
        panel: &mut [MaybeUninit<u32>],
    ) -> usize {
        let blocks = k / 32;
        assert!(
            rows <= width
                && (rows == 0 || src.len() >= (rows - 1) * s_row + k)
                && panel.len() >= k.div_ceil(2) * width,
            "pack16: operand or panel too small"
        );
        for w0 in (0..width).step_by(16) {
            let valid = rows.saturating_sub(w0).min(16);
            let lanes = (width - w0).min(16);
            for b in 0..blocks {
                // SAFETY: the CPU has AVX-512F (the caller checked); the block reads 32 floats of each of
                // `valid` rows starting at k index 32·b < k, and writes `lanes` values at 16 k pairs of
                // the panel, all within the bounds asserted above.
                unsafe { block(src, (w0, valid, lanes), s_row, b, width, panel) };
            }
        }
        blocks * 16
    }

    /// One 16 × 16 block: rows `w0..w0 + valid` (of 16; the rest zero), k pairs `16·b..16·b + 16`.
    #[target_feature(enable = "avx512f")]
    unsafe fn block(
        src: &[f32],
        (w0, valid, lanes): (usize, usize, usize),
        s_row: usize,
        b: usize,
        width: usize,
        panel: &mut [MaybeUninit<u32>],
    ) {
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, reg) in r.iter_mut().enumerate().take(valid) {
            let at = (w0 + i) * s_row + 32 * b;
            // SAFETY: 32 floats from `at` lie within the row (the caller's bounds).
            *reg = unsafe { pairs16(src.as_ptr().add(at)) };
        }
        transpose16(&mut r);
        let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
        let out = panel.as_mut_ptr().cast::<u32>();
        for (j, reg) in r.iter().enumerate() {
            // SAFETY: `lanes` values at k pair 16·b + j, rows w0.., inside the panel (caller's bounds).
            unsafe {
                _mm512_mask_storeu_epi32(out.add((16 * b + j) * width + w0).cast(), mask, *reg)
            };
        }
    }

    /// 32 consecutive floats rounded to bf16 and paired: lane i holds floats 2i (low half) and 2i + 1.
    #[target_feature(enable = "avx512f")]
    unsafe fn pairs16(p: *const f32) -> __m512i {
        // SAFETY: the caller hands 32 readable floats.
        let (a, b) = unsafe { (round(_mm512_loadu_ps(p)), round(_mm512_loadu_ps(p.add(16)))) };
        // Keeping each lane's low 16 bits puts float 2i's bf16 in the low half of pair i and 2i + 1's above.
        let (lo, hi) = (_mm512_cvtepi32_epi16(a), _mm512_cvtepi32_epi16(b));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }

    /// Each lane's bf16 bits (in its low 16 bits), rounded as [`super::to_bf16`] rounds.
    #[target_feature(enable = "avx512f")]
    fn round(v: __m512) -> __m512i {
        let b = _mm512_castps_si512(v);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        let bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, bias));
        let magnitude = _mm512_and_si512(b, _mm512_set1_epi32(0x7fff_ffff));
        let nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
        _mm512_mask_blend_epi32(nan, rounded, quiet)
    }

    /// Transposes 16 × 16 32-bit values in place: `r[j]` lane `i` becomes old `r[i]` lane `j`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(r: &mut [__m512i; 16]) {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for g in 0..4 {
            let (a, b) = (4 * g, 4 * g + 2);
            r[4 * g] = _mm512_unpacklo_epi64(t[a], t[b]);
            r[4 * g + 1] = _mm512_unpackhi_epi64(t[a], t[b]);
            r[4 * g + 2] = _mm512_unpacklo_epi64(t[a + 1], t[b + 1]);
            r[4 * g + 3] = _mm512_unpackhi_epi64(t[a + 1], t[b + 1]);
        }
        for h in 0..2 {
            for i in 0..4 {
                let (a, b) = (8 * h + i, 8 * h + 4 + i);
                t[8 * h + i] = _mm512_shuffle_i32x4::<0x88>(r[a], r[b]);
                t[8 * h + 4 + i] = _mm512_shuffle_i32x4::<0xdd>(r[a], r[b]);
            }
        }
        for i in 0..8 {
            r[i] = _mm512_shuffle_i32x4::<0x88>(t[i], t[8 + i]);
            r[8 + i] = _mm512_shuffle_i32x4::<0xdd>(t[i], t[8 + i]);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn transpose16_transposes() {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                return;
            }
            let mut m = [0u32; 256];
            for (i, v) in m.iter_mut().enumerate() {
                *v = i as u32;
            }
            // SAFETY: the CPU has AVX-512F (checked above); the array holds 16 rows of 16 values.
            let mut r: [__m512i; 16] = std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(m.as_ptr().add(16 * i).cast())
            });
            // SAFETY: as above.
            unsafe { transpose16(&mut r) };
            let mut out = [0u32; 256];
            for (i, reg) in r.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(16 * i).cast(), *reg) };
            }
            for i in 0..16 {
                for j in 0..16 {
                    assert_eq!(out[16 * j + i], m[16 * i + j], "({i}, {j})");
                }
            }
        }
    }
}

/// Zeroes the padding rows `rows..width` of every k pair of a panel.
fn zero_padding(panel: &mut [MaybeUninit<u32>], rows: usize, width: usize) {
    if rows < width {
        for pairs in panel.chunks_mut(width) {
            for o in &mut pairs[rows..] {
                o.write(0);
            }
        }
    }
}

/// Any other layout, element by element.
pub(super) fn pack_strided(
    src: &[f32],
    (rows, k): (usize, usize),
    (s_row, s_k): (usize, usize),
    width: usize,
    panel: &mut [MaybeUninit<u32>],
) {
    for w in 0..rows {
        for q in 0..k.div_ceil(2) {
            let lo = src[w * s_row + 2 * q * s_k];
            let hi = if 2 * q + 1 < k {
                src[w * s_row + (2 * q + 1) * s_k]
            } else {
                0.0
            };
            panel[q * width + w].write(pair(lo, hi));
        }
    }
    zero_padding(panel, rows, width);
}
