//! Linear layers that read the same input (q, k and v of attention; gate and up of the MLP) in bf16:
//! the input is rounded and packed once for all of their forward products, and once (as the right
//! operand of the weight gradients) for all of their backward ones, instead of once per layer. Each
//! layer stays its own graph node with its own weight gradient; the numbers are the bits that separate
//! [`Linear`](super::Linear) ops give.

use super::gemm16::{self, Packed, NR};
use super::linear::{matmul_packed, output_shape, WeightPacks};
use super::rowwise::rms_norm_into;
use super::storage::{grads2, slice, values};
use candle_core::{CpuStorage, CustomOp2, Error, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, OnceLock};

/// What the layers of one input share for one forward (and its backward): their weights, the outputs
/// the first of them computes for all, and the input packed for the weight gradients.
pub struct SharedInput {
    weights: Vec<(Tensor, Arc<WeightPacks>)>,
    /// RMSNorm weight and eps the input is normalised with first, row panel by row panel as it is
    /// packed (forward only: such a group has no backward).
    norm: Option<(Vec<f32>, f32)>,
    outputs: Mutex<Option<Vec<Option<Vec<f32>>>>>,
    x_for_dw: OnceLock<Packed>,
}

/// Layer `index` of a [`SharedInput`] group, applied as `x.apply_op2(weight, op)`.
pub struct SharedLinear {
    group: Arc<SharedInput>,
    index: usize,
}

/// One op per weight of `weights` (each [out, in], with its bf16 packs), to be applied to one input in
/// this order.
pub fn shared_linears(weights: Vec<(Tensor, Arc<WeightPacks>)>) -> Vec<SharedLinear> {
    group_of(weights, None)
}

/// [`shared_linears`] of `rms_norm(x, norm_weight, eps)`, applied to x itself: the normalised rows are
/// made by each product task for its own rows as it packs them, never stored whole. Forward only (for
/// inputs and weights that need no gradient); the outputs are the bits of `rms_norm` followed by
/// [`shared_linears`].
pub fn normed_linears(
    weights: Vec<(Tensor, Arc<WeightPacks>)>,
    norm_weight: Vec<f32>,
    eps: f32,
) -> Vec<SharedLinear> {
    group_of(weights, Some((norm_weight, eps)))
}

fn group_of(
    weights: Vec<(Tensor, Arc<WeightPacks>)>,
    norm: Option<(Vec<f32>, f32)>,
) -> Vec<SharedLinear> {
    let group = Arc::new(SharedInput {
        weights,
        norm,
        outputs: Mutex::new(None),
        x_for_dw: OnceLock::new(),
    });
    (0..group.weights.len())
        .map(|index| SharedLinear {
            group: group.clone(),
            index,
        })
        .collect()
}

impl SharedInput {
    /// Layer `index`'s output for input `x` (`rows` rows of `inp`): computed with every other layer's
    /// on the first call, taken from those on the next ones.
    fn output(&self, index: usize, x: &[f32], rows: usize, inp: usize) -> Result<Vec<f32>> {
        let mut outputs = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        if outputs.is_none() {
            *outputs = Some(self.compute(x, rows, inp)?.into_iter().map(Some).collect());
        }
        let slot = &mut outputs.as_mut().expect("set above")[index];
        match slot.take() {
            Some(y) if y.len() == rows * self.weights[index].0.dim(0)? => Ok(y),
            _ => Err(Error::Msg(format!(
                "internal: layer {index} of a shared-input group applied twice or to another input"
            ))),
        }
    }

    /// Every layer's product with `x`, A packed once.
    fn compute(&self, x: &[f32], rows: usize, inp: usize) -> Result<Vec<Vec<f32>>> {
        let ws = (self.weights.iter())
            .map(|(w, _)| values(w))
            .collect::<Result<Vec<_>>>()?;
        let mut packed = Vec::with_capacity(ws.len());
        for ((w, packs), wv) in self.weights.iter().zip(&ws) {
            let (out, w_in) = w.dims2()?;
            if w_in != inp {
                return Err(Error::Msg(format!(
                    "linear: input size {inp} does not match the weight's {w_in}"
                )));
            }
            packed.push(packs.forward(wv, || Packed::new(wv, (out, inp), (inp, 1), NR))?);
        }
        let raw = gemm16::Left::Raw {
            src: x,
            rows,
            strides: (inp, 1),
        };
        let Some((w, eps)) = &self.norm else {
            return Ok(gemm16::product_many(raw, &packed));
        };
        if w.len() != inp {
            return Err(Error::Msg(format!(
                "rms_norm: weight of {} does not match the input size {inp}",
                w.len()
            )));
        }
        let make = |range: std::ops::Range<usize>, out: &mut [MaybeUninit<f32>]| {
            rms_norm_into(out, &x[range.start * inp..range.end * inp], w, *eps)
        };
        let left = gemm16::Left::Made { rows, make: &make };
        Ok(gemm16::product_many(left, &packed))
    }
}

impl CustomOp2 for SharedLinear {
    fn name(&self) -> &'static str {
        "zerolm-linear-bf16-shared-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "linear x")?;
        let (out, inp) = l2.shape().dims2()?;
        let (rows, shape) = output_shape(l1, inp, out)?;
        let y = self.group.output(self.index, x, rows, inp)?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.group.norm.is_some() {
            return Err(Error::Msg(
                "internal: a product of normalised rows was asked for a gradient".into(),
            ));
        }
        let (out, inp) = w.dims2()?;
        let (xv, wv, dy) = (values(x)?, values(w)?, values(grad)?);
        let rows = xv.len() / inp.max(1);
        let packs = &self.group.weights[self.index].1;
        // dx[rows, in] = dy[rows, out] · W[out, in]
        let pw = packs.backward(&wv, || Packed::new(&wv, (inp, out), (1, inp), NR))?;
        let dx = matmul_packed(&dy, rows, (out, 1), pw);
        // dw[out, in] = dyᵀ[out, rows] · x[rows, in], x packed once for the group.
        let px = match self.group.x_for_dw.get() {
            Some(p) => p,
            None => {
                let p = Packed::new(&xv, (inp, rows), (1, inp), NR);
                self.group.x_for_dw.get_or_init(|| p)
            }
        };
        let dw = matmul_packed(&dy, out, (1, out), px);
        grads2(x, dx, w, dw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests_support::{bits, randn};
    use crate::fused::Linear;
    use crate::SplitMix64;
    use candle_core::Var;

    /// Outputs and gradients of q/k/v-like layers over one input, through separate ops or shared.
    fn run(shared: bool, x: &Tensor, ws: &[Tensor]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let x = Var::from_tensor(x).unwrap();
        let vars: Vec<Var> = ws.iter().map(|w| Var::from_tensor(w).unwrap()).collect();
        let packs: Vec<Arc<WeightPacks>> = vars.iter().map(|_| Arc::default()).collect();
        let ys: Vec<Tensor> = if shared {
            let group = (vars.iter().zip(&packs))
                .map(|(w, p)| (w.as_tensor().clone(), p.clone()))
                .collect();
            (vars.iter().zip(shared_linears(group)))
                .map(|(w, op)| x.apply_op2(w, op).unwrap())
                .collect()
        } else {
            (vars.iter().zip(&packs))
                .map(|(w, p)| {
                    let op = Linear {
                        transposed: false,
                        bf16: Some(p.clone()),
                    };
                    x.apply_op2(w, op).unwrap()
                })
                .collect()
        };
        // A loss that weighs every output differently.
        let mut loss = Tensor::zeros((), candle_core::DType::F32, x.device()).unwrap();
        for (i, y) in ys.iter().enumerate() {
            let s = (y.sqr().unwrap().sum_all().unwrap() * (i as f64 + 1.0)).unwrap();
            loss = (loss + s).unwrap();
        }
        let grads = loss.backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut g = vec![flat(grads.get(x.as_tensor()).unwrap())];
        g.extend(vars.iter().map(|w| flat(grads.get(w.as_tensor()).unwrap())));
        (ys.iter().map(flat).collect(), g)
    }

    #[test]
    fn layers_sharing_an_input_give_the_separate_layers_bits() {
        let mut rng = SplitMix64::new(8);
        let x = randn(&mut rng, &[2, 37, 40], 1.0);
        let ws: Vec<Tensor> = [48, 16, 16]
            .iter()
            .map(|&o| randn(&mut rng, &[o, 40], 0.3))
            .collect();
        let (ys_a, g_a) = run(false, &x, &ws);
        let (ys_b, g_b) = run(true, &x, &ws);
        let bits = |v: &Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            v.iter()
                .map(|r| r.iter().map(|f| f.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&ys_a), bits(&ys_b));
        // Candle sums the three dx contributions in the same order both ways.
        assert_eq!(bits(&g_a), bits(&g_b));
    }

    #[test]
    fn products_of_rows_normalised_while_packed_give_the_bits_of_norm_then_products() {
        let mut rng = SplitMix64::new(10);
        // 75 rows: several row panels per task and a ragged last panel.
        // An eps that matters against the rows' mean square, so a wrong one shows.
        let x = randn(&mut rng, &[3, 25, 40], 1.0);
        let norm = randn(&mut rng, &[40], 1.0);
        let ws: Vec<Tensor> = [48, 16]
            .iter()
            .map(|&o| randn(&mut rng, &[o, 40], 0.3))
            .collect();
        let group = |ws: &[Tensor]| -> Vec<(Tensor, Arc<WeightPacks>)> {
            ws.iter().map(|w| (w.clone(), Arc::default())).collect()
        };
        let h = crate::ops::rms_norm(&x, &norm, 0.3).unwrap();
        let want: Vec<Tensor> = (ws.iter().zip(shared_linears(group(&ws))))
            .map(|(w, op)| h.apply_op2(w, op).unwrap())
            .collect();
        let nv: Vec<f32> = norm.to_vec1().unwrap();
        let ops = normed_linears(group(&ws), nv, 0.3);
        let got: Vec<Tensor> = (ws.iter().zip(ops))
            .map(|(w, op)| x.apply_op2(w, op).unwrap())
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.dims(), w.dims());
            assert_eq!(bits(g), bits(w));
        }
        // Asked for a gradient, such a product refuses instead of giving a wrong one.
        let xv = Var::from_tensor(&x).unwrap();
        let op = normed_linears(group(&ws[..1]), norm.to_vec1().unwrap(), 1e-5).pop();
        let y = xv.apply_op2(&ws[0], op.unwrap()).unwrap();
        let e = y.sum_all().unwrap().backward().unwrap_err().to_string();
        assert!(e.contains("normalised rows"), "{e}");
    }

    #[test]
    fn a_layer_applied_twice_is_an_internal_error() {
        let mut rng = SplitMix64::new(9);
        let x = randn(&mut rng, &[3, 8], 1.0);
        let w = randn(&mut rng, &[5, 8], 0.3);
        let mut ops = shared_linears(vec![(w.clone(), Arc::default())]);
        let op = ops.pop().unwrap();
        let group = op.group.clone();
        x.apply_op2(&w, op).unwrap();
        let again = SharedLinear { group, index: 0 };
        let e = x.apply_op2(&w, again).unwrap_err().to_string();
        assert!(e.contains("applied twice"), "{e}");
    }
}
