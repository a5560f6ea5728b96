//! Linear layers: one gemm node per projection, forward and backward on all of rayon's threads.

use super::gemm16::{self, Packed, MR, NR};
use super::storage::{gemm_raw, grads2, slice, values};
use candle_core::{CpuStorage, CustomOp2, Error, Layout, Result, Shape, Tensor};

/// `x · wᵀ` for x [.., in] and a Linear weight w [out, in]: one graph node instead of candle's
/// reshape → transpose → matmul → reshape, each of which costs a zero-filled gradient and an add in
/// backward. The products run on rayon's threads inside the gemm kernel. With `transposed` the weight is
/// given as wᵀ [in, out] row-major instead, the layout the kernel reads fastest (10–25% faster on these
/// shapes): inference keeps such a copy of each weight. With `bf16` every product (forward and both
/// of the backward) takes bf16-rounded operands and sums in f32 ([`gemm16`]), as under PyTorch's bf16
/// autocast; inputs, outputs and gradients stay f32.
pub struct Linear {
    pub transposed: bool,
    pub bf16: bool,
}

/// `a · b` for a [m, k] and b [k, n] given by strides (as for [`par_gemm`]), in f32 or bf16.
fn product(
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
    let pa = Packed::new(a, (m, k), (a_rs, a_cs), MR);
    // Column j of b, element kk: b[kk · b_rs + j · b_cs].
    let pb = Packed::new(b, (n, k), (b_cs, b_rs), NR);
    let mut c = vec![0f32; m * n];
    gemm16::gemm(&pa, &pb, &mut c, n);
    c
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
        match (self.transposed, self.bf16) {
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
        let dims = l1.shape().dims();
        if dims.last() != Some(&inp) {
            return Err(Error::Msg(format!(
                "linear: input {dims:?} does not end in the weight's input size {inp}"
            )));
        }
        let rows = x.len() / inp.max(1);
        // y[rows, out] = x[rows, in] · W[in, out]
        let y = product(self.bf16, (rows, out, inp), x, (inp, 1), w, ws);
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
        let dx = product(
            self.bf16,
            (rows, inp, out),
            &dy,
            (out, 1),
            &wv,
            (w_cs, w_rs),
        );
        let dw = if self.transposed {
            // dwt[in, out] = xᵀ[in, rows] · dy[rows, out]
            product(self.bf16, (inp, out, rows), &xv, (1, inp), &dy, (out, 1))
        } else {
            // dw[out, in] = dyᵀ[out, rows] · x[rows, in]
            product(self.bf16, (out, inp, rows), &dy, (1, out), &xv, (inp, 1))
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
            let op = super::Linear {
                transposed,
                bf16: true,
            };
            // Values: the rounded operands' product (f32 sums in another order: 1e-5). Gradients: also
            // from rounded operands, where the composed version rounds the output gradient a little
            // differently (bf16's 2⁻⁸ relative step bounds the difference).
            check_within(
                "linear bf16",
                &[x, w],
                |x| x[0].apply_op2(&x[1], super::Linear { ..op }),
                |x| {
                    let w = if transposed { x[1].t()? } else { x[1].clone() };
                    ops::linear_composed(&bf16(&x[0])?, &bf16(&w)?)
                },
                (1e-5, 1e-2),
            );
        }
    }
}
