//! The vectorised helpers several kernel families share: a fast `exp`, the `multiversion!` wrapper
//! that compiles a row kernel for the CPU's widest vector unit, and reductions in a fixed lane order.

/// `e^x` to within 2 ulp on [-87, 88] (inputs outside are clamped), in plain arithmetic that the
/// compiler vectorises, unlike the libm call: range reduction x = n·ln2 + r, a degree-6 polynomial for
/// e^r, and 2^n put into the exponent bits.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
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
/// loops of the op kernels vectorise. The body is inlined into each version. The kernels never ask
/// for fused multiply-adds and reduce in a fixed lane order, so every version gives the same bits.
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
pub(super) use multiversion;

/// Lanes of the reductions below: partial results kept in a fixed-size array that the compiler maps
/// onto vector registers, combined in a fixed order at the end.
const LANES: usize = 16;

/// `op`-fold of `item(a[i], b[i], c[i])` over the common length, in [`LANES`] interleaved partial
/// results (combined in a fixed order at the end), so the loop vectorises without reassociating.
#[inline(always)]
pub(super) fn fold3(
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
pub(super) fn max_of(row: &[f32]) -> f32 {
    fold3(row, row, row, f32::NEG_INFINITY, |x, _, _| x, f32::max)
}

/// `Σ a[i]·b[i]`.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    fold3(a, b, b, 0.0, |x, y, _| x * y, |x, y| x + y)
}

#[cfg(test)]
mod tests {
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
}
