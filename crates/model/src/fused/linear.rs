//! Linear layers: one gemm node per projection, forward and backward on all of rayon's threads, in f32
//! or with bf16 operands; a weight's bf16 operands are packed once per optimizer step ([`WeightPacks`]).

use super::gemm16::{self, Packed, NR};
use super::storage::{gemm_raw, grads2, slice, values};
use candle_core::{CpuStorage, CustomOp2, Error, Layout, Result, Shape, Tensor};
use std::sync::{Arc, OnceLock};

/// `x · wᵀ` for x [.., in] and a Linear weight w [out, in]: one graph node instead of candle's
/// reshape → transpose → matmul → reshape, each of which costs a zero-filled gradient and an add in
/// backward. The products run on rayon's threads inside the gemm kernel. With `transposed` the weight is
/// given as wᵀ [in, out] row-major instead, the layout the f32 kernel reads fastest (10–25% faster on
/// these shapes): inference keeps such a copy of each weight. With `bf16` every product (forward and both
/// of the backward) takes bf16-rounded operands and sums in f32 ([`gemm16`]), as under PyTorch's bf16
/// autocast; inputs, outputs and gradients stay f32. The weight's operands come from its [`WeightPacks`].
pub struct Linear {
    pub transposed: bool,
    pub bf16: Option<Arc<WeightPacks>>,
}

/// A Linear weight rounded to bf16 and packed for the forward product and for the backward one (dx),
/// each made on first use and then shared by every product that reads the weight (all the micro-batches
/// of an optimizer step, every forward of an inference model), as autocast caches its weight casts. The
/// owner replaces it when the weight changes; a few sampled values recorded at packing time catch a
/// weight that changed under it (an internal error, never silently stale numbers).
#[derive(Default)]
pub struct WeightPacks {
    fwd: OnceLock<Packed>,
    bwd: OnceLock<Packed>,
    stamp: OnceLock<[u32; STAMP]>,
    /// The weight as a bf16 tensor, for devices without the packed kernel (see `ops::linear_in`).
    pub cast: OnceLock<Tensor>,
}

const STAMP: usize = 8;

impl WeightPacks {
    /// Packing `which` (made by `pack` on first use), after checking the weight still is what was packed.
    fn get<'a>(
        &'a self,
        which: &'a OnceLock<Packed>,
        w: &[f32],
        pack: impl FnOnce() -> Packed,
    ) -> Result<&'a Packed> {
        let now = stamp(w);
        if *self.stamp.get_or_init(|| now) != now {
            return Err(Error::Msg(
                "internal: a weight changed after its bf16 copy was made (the model's weight packs \
                 were not renewed after an update)"
                    .into(),
            ));
        }
        if let Some(p) = which.get() {
            return Ok(p);
        }
        // Packed outside the lock: packing runs on rayon, and a thread that waits inside
        // `get_or_init` may steal a task that wants the same lock (a deadlock). Two threads may
        // both pack; one result is kept.
        let packed = pack();
        Ok(which.get_or_init(|| packed))
    }

    /// The weight `w` packed for the forward product (made by `pack` on first use).
    pub(super) fn forward(&self, w: &[f32], pack: impl FnOnce() -> Packed) -> Result<&Packed> {
        self.get(&self.fwd, w, pack)
    }

    /// The weight `w` packed for the backward product dx (made by `pack` on first use).
    pub(super) fn backward(&self, w: &[f32], pack: impl FnOnce() -> Packed) -> Result<&Packed> {
        self.get(&self.bwd, w, pack)
    }
}

/// The bits of [`STAMP`] values spread over `w`.
fn stamp(w: &[f32]) -> [u32; STAMP] {
    std::array::from_fn(|i| w.get(i * w.len() / STAMP).map_or(0, |x| x.to_bits()))
}

/// A new row-major [m, n] matrix `a · b` for a [m, k] and b [k, n] given by (row, column) strides, on
/// rayon's threads: in f32, or with `bf16` operands rounded to bf16 and f32 sums ([`gemm16`]).
pub fn matmul(
    bf16: bool,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) -> Vec<f32> {
    if !bf16 {
        return par_gemm((m, n, k), a, (a_rs, a_cs), b, (b_rs, b_cs));
    }
    // Column j of b, element kk: b[kk · b_rs + j · b_cs].
    let pb = Packed::new(b, (n, k), (b_cs, b_rs), NR);
    matmul_packed(a, m, (a_rs, a_cs), &pb)
}

/// `a · b` in bf16 for a of `rows` rows given by strides and b already packed (which sets k).
pub(super) fn matmul_packed(
    a: &[f32],
    rows: usize,
    strides: (usize, usize),
    pb: &Packed,
) -> Vec<f32> {
    gemm16::product(
        gemm16::Left::Raw {
            src: a,
            rows,
            strides,
        },
        pb,
    )
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

/// For an input x [.., in] to a layer of `out` outputs: its row count and the output's shape [.., out].
pub(super) fn output_shape(x: &Layout, inp: usize, out: usize) -> Result<(usize, Shape)> {
    let dims = x.shape().dims();
    if dims.last() != Some(&inp) {
        return Err(Error::Msg(format!(
            "linear: input {dims:?} does not end in the weight's input size {inp}"
        )));
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("non-empty") = out;
    Ok((x.shape().elem_count() / inp.max(1), Shape::from(shape)))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        match (self.transposed, self.bf16.is_some()) {
            (false, false) => "zerolm-linear",
            (true, false) => "zerolm-linear-t",
            (false, true) => "zerolm-linear-bf16",
            (true, true) => "zerolm-linear-t-bf16",
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
        let (rows, shape) = output_shape(l1, inp, out)?;
        // y[rows, out] = x[rows, in] · W[in, out]
        let y = match &self.bf16 {
            None => matmul(false, (rows, out, inp), x, (inp, 1), w, ws),
            Some(packs) => {
                let pw = packs.forward(w, || Packed::new(w, (out, inp), (ws.1, ws.0), NR))?;
                matmul_packed(x, rows, (inp, 1), pw)
            }
        };
        Ok((CpuStorage::F32(y), shape))
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
        let dx = match &self.bf16 {
            None => matmul(false, (rows, inp, out), &dy, (out, 1), &wv, (w_cs, w_rs)),
            Some(packs) => {
                let pw = packs.backward(&wv, || Packed::new(&wv, (inp, out), (w_rs, w_cs), NR))?;
                matmul_packed(&dy, rows, (out, 1), pw)
            }
        };
        let bf16 = self.bf16.is_some();
        let dw = if self.transposed {
            // dwt[in, out] = xᵀ[in, rows] · dy[rows, out]
            matmul(bf16, (inp, out, rows), &xv, (1, inp), &dy, (out, 1))
        } else {
            // dw[out, in] = dyᵀ[out, rows] · x[rows, in]
            matmul(bf16, (out, inp, rows), &dy, (1, out), &xv, (inp, 1))
        };
        grads2(x, dx, w, dw)
    }
}

#[cfg(test)]
mod tests {
    use crate::fused::tests_support::{check, check_within, randn};
    use crate::ops;
    use crate::SplitMix64;

    #[test]
    fn linear_and_transposed_linear_match_composed() {
        let mut rng = SplitMix64::new(4);
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
    }

    /// x rounded to bf16 and back, as autocast's cast of an operand.
    fn bf16(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        x.to_dtype(candle_core::DType::BF16)?
            .to_dtype(candle_core::DType::F32)
    }

    #[test]
    fn bf16_linear_is_the_product_of_bf16_rounded_operands() {
        let mut rng = SplitMix64::new(5);
        for transposed in [false, true] {
            let x = randn(&mut rng, &[3, 70, 40], 1.0);
            let w = randn(
                &mut rng,
                if transposed { &[40, 50] } else { &[50, 40] },
                0.3,
            );
            // Values: the rounded operands' product (f32 sums in another order: 1e-5). Gradients: also
            // from rounded operands, where the composed version rounds the output gradient a little
            // differently (bf16's 2⁻⁸ relative step bounds the difference).
            check_within(
                "linear bf16",
                &[x, w],
                |x| {
                    let op = super::Linear {
                        transposed,
                        bf16: Some(Default::default()),
                    };
                    x[0].apply_op2(&x[1], op)
                },
                |x| {
                    let w = if transposed { x[1].t()? } else { x[1].clone() };
                    ops::linear_composed(&bf16(&x[0])?, &bf16(&w)?)
                },
                (1e-5, 1e-2),
            );
        }
    }

    #[test]
    fn weight_packs_are_reused_and_a_changed_weight_is_refused() {
        let mut rng = SplitMix64::new(6);
        let x = randn(&mut rng, &[4, 30, 40], 1.0);
        let w = randn(&mut rng, &[50, 40], 0.3);
        let packs = std::sync::Arc::new(super::WeightPacks::default());
        let op = || super::Linear {
            transposed: false,
            bf16: Some(packs.clone()),
        };
        let fresh = x
            .apply_op2(
                &w,
                super::Linear {
                    transposed: false,
                    bf16: Some(Default::default()),
                },
            )
            .unwrap();
        for _ in 0..2 {
            let y = x.apply_op2(&w, op()).unwrap();
            let d = (y - &fresh).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
        let changed = (w + 0.5).unwrap();
        let e = x.apply_op2(&changed, op()).unwrap_err().to_string();
        assert!(e.contains("weight changed after its bf16 copy"), "{e}");
    }
}
