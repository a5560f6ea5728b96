//! A bf16 Linear layer over the SwiGLU of two tensors (the MLP's down projection over `silu(gate) ·
//! up`) that never stores the activation: each product task makes its own rows of it just before it
//! rounds and packs them. Forward only, for inference; the bits are those of the SwiGLU op followed by
//! a bf16 [`Linear`](super::Linear).

use super::gemm16::{self, Packed, NR};
use super::linear::{output_shape, WeightPacks};
use super::rowwise::swiglu_into;
use super::storage::slice;
use candle_core::{CpuStorage, CustomOp3, Error, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;
use std::sync::Arc;

/// `silu(gate) · up` through the weight [out, in], applied as `gate.apply_op3(up, weight, op)`.
pub struct SwiGluLinear {
    pub packs: Arc<WeightPacks>,
}

impl CustomOp3 for SwiGluLinear {
    fn name(&self) -> &'static str {
        "zerolm-swiglu-linear-bf16"
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
        if l1.shape() != l2.shape() {
            return Err(Error::Msg("swiglu: gate and up differ in shape".into()));
        }
        let (g, u) = (slice(s1, l1, "swiglu gate")?, slice(s2, l2, "swiglu up")?);
        let w = slice(s3, l3, "linear weight")?;
        let (out, inp) = l3.shape().dims2()?;
        let (rows, shape) = output_shape(l1, inp, out)?;
        let pw = self
            .packs
            .forward(w, || Packed::new(w, (out, inp), (inp, 1), NR))?;
        let make = |range: std::ops::Range<usize>, o: &mut [MaybeUninit<f32>]| {
            let at = range.start * inp..range.end * inp;
            swiglu_into(o, &g[at.clone()], &u[at])
        };
        let left = gemm16::Left::Made { rows, make: &make };
        Ok((CpuStorage::F32(gemm16::product(left, pw)), shape))
    }

    fn bwd(
        &self,
        _gate: &Tensor,
        _up: &Tensor,
        _weight: &Tensor,
        _res: &Tensor,
        _grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Err(Error::Msg(
            "internal: a product of SwiGLU rows made while packed was asked for a gradient".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests_support::{bits, randn};
    use crate::fused::Linear;
    use crate::SplitMix64;
    use candle_core::Var;

    #[test]
    fn the_product_of_swiglu_rows_made_while_packed_gives_the_bits_of_swiglu_then_linear() {
        let mut rng = SplitMix64::new(11);
        // 75 rows: several row panels per task and a ragged last panel.
        let (g, u) = (
            randn(&mut rng, &[3, 25, 40], 2.0),
            randn(&mut rng, &[3, 25, 40], 1.0),
        );
        let w = randn(&mut rng, &[24, 40], 0.3);
        let linear = Linear {
            transposed: false,
            bf16: Some(Arc::default()),
        };
        let want = crate::ops::swiglu(&g, &u).unwrap();
        let want = want.apply_op2(&w, linear).unwrap();
        let op = SwiGluLinear {
            packs: Arc::default(),
        };
        let got = g.apply_op3(&u, &w, op).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_eq!(bits(&got), bits(&want));
        // Asked for a gradient, it refuses instead of giving a wrong one.
        let gv = Var::from_tensor(&g).unwrap();
        let op = SwiGluLinear {
            packs: Arc::default(),
        };
        let y = gv.apply_op3(&u, &w, op).unwrap();
        let e = y.sum_all().unwrap().backward().unwrap_err().to_string();
        assert!(e.contains("SwiGLU rows"), "{e}");
    }
}
