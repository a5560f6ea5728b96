//! Next-token log-probs: `log softmax(logits)[target]` per row, with the log-sum-exp kept for the
//! backward.

use super::simd::{exp, fold3, max_of, multiversion};
use super::storage::{slice, values};
use candle_core::{CpuStorage, CustomOp2, Error, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `log softmax(logits)[target]` per row: logits [N, V] f32, targets [N] u32 → [N]. The forward keeps
/// each row's log-sum-exp for the backward.
#[derive(Default)]
pub struct TokenLogprobs {
    lse: std::sync::Mutex<Option<Vec<f32>>>,
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

/// `Σ e^(row[i] − shift)`.
#[inline(always)]
fn exp_sum(row: &[f32], shift: f32) -> f32 {
    fold3(row, row, row, 0.0, |x, _, _| exp(x - shift), |x, y| x + y)
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

#[cfg(test)]
mod tests {
    use crate::fused::tests_support::{check, randn};
    use crate::ops;
    use crate::SplitMix64;
    use candle_core::{Device, Tensor};

    #[test]
    fn token_logprobs_match_composed() {
        let mut rng = SplitMix64::new(5);
        let logits = randn(&mut rng, &[10, 33], 3.0);
        let t = Tensor::new(&[0u32, 5, 32, 7, 7, 1, 2, 3, 31, 16], &Device::Cpu).unwrap();
        check(
            "token_logprobs",
            &[logits],
            |x| ops::token_logprobs(&x[0], &t),
            |x| ops::token_logprobs_composed(&x[0], &t),
        );
    }
}
