//! AdamW with state we own (candle's keeps its moments private, so they could not be checkpointed).
//!
//! The update follows `torch.optim.AdamW` step for step, in f32, with `g` the gradient times its clipping
//! coefficient ([`Grads::scale`], the f32 product torch's in-place clipping stores):
//! `p ← p·(1 − lr·wd)`, `m ← m + (1−β1)(g − m)`, `v ← β2·v + (1−β2)·g²`,
//! `p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)`.
//! Weight decay skips 1-D parameters (the RMSNorm weights), as nanoGPT and most recipes do.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::params::{Grads, Params};
use crate::settings::TrainConfig;
use crate::TrainError;

/// AdamW hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The optimizer settings of a run.
    pub fn of(cfg: &TrainConfig) -> AdamWConfig {
        AdamWConfig {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        }
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    /// Steps taken so far (the `t` of the bias corrections).
    pub step: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    decay: Vec<bool>,
}

impl AdamW {
    pub fn new(params: &Params, cfg: AdamWConfig) -> AdamW {
        let sizes: Vec<usize> = params.vars.iter().map(|(_, v)| v.elem_count()).collect();
        AdamW {
            cfg,
            step: 0,
            m: sizes.iter().map(|n| vec![0.0; *n]).collect(),
            v: sizes.iter().map(|n| vec![0.0; *n]).collect(),
            decay: params.vars.iter().map(|(_, v)| v.rank() >= 2).collect(),
        }
    }

    /// One update of every parameter with `grads` at learning rate `lr`.
    pub fn update(&mut self, params: &Params, grads: &Grads, lr: f64) -> Result<(), TrainError> {
        self.update_with(params, grads, lr, false)
    }

    /// [`AdamW::update`]; `copy` takes the path a GPU parameter takes (to the host and back) on the CPU
    /// too, so a test can check it against the in-place one.
    fn update_with(
        &mut self,
        params: &Params,
        grads: &Grads,
        lr: f64,
        copy: bool,
    ) -> Result<(), TrainError> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt() as f32;
        let step_size = (lr / bc1) as f32;
        let eps = self.cfg.eps as f32;
        let (one_m_b1, b2f, one_m_b2) = ((1.0 - b1) as f32, b2 as f32, (1.0 - b2) as f32);
        for (i, (_, var)) in params.vars.iter().enumerate() {
            let shrink = if self.decay[i] {
                (1.0 - lr * self.cfg.weight_decay) as f32
            } else {
                1.0
            };
            let step = Step {
                m: std::cell::RefCell::new(&mut self.m[i]),
                v: std::cell::RefCell::new(&mut self.v[i]),
                g: &grads.values()[i],
                k: StepConsts {
                    scale: grads.scale(),
                    shrink,
                    one_m_b1,
                    b2f,
                    one_m_b2,
                    bc2_sqrt,
                    eps,
                    step_size,
                },
            };
            if var.device().is_cpu() && !copy {
                // In place in the parameter's own storage: no copy out and back.
                var.as_tensor().inplace_op1(&step)?;
            } else {
                let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
                step.apply(&mut p);
                var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
            }
        }
        Ok(())
    }

    /// The moments keyed `<param>.exp_avg` / `<param>.exp_avg_sq`, for `optimizer.safetensors`.
    /// blake3 of the optimizer's state (step and moments), to compare ranks' states.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&self.step.to_le_bytes());
        for m in self.m.iter().chain(&self.v) {
            for x in m {
                h.update(&x.to_le_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    }

    pub fn state_tensors(&self, params: &Params) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let mut out = BTreeMap::new();
        for (i, (name, var)) in params.vars.iter().enumerate() {
            out.insert(
                format!("{name}.exp_avg"),
                Tensor::from_slice(&self.m[i], var.shape(), &Device::Cpu)?,
            );
            out.insert(
                format!("{name}.exp_avg_sq"),
                Tensor::from_slice(&self.v[i], var.shape(), &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(
        &mut self,
        params: &Params,
        state: &BTreeMap<String, Tensor>,
        step: u64,
        source: &str,
    ) -> Result<(), TrainError> {
        for (i, (name, var)) in params.vars.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let key = format!("{name}.{suffix}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| TrainError::Resume(format!("{source}: missing `{key}`")))?;
                if t.dims() != var.dims() {
                    return Err(TrainError::Resume(format!(
                        "{source}: `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *slot = t.flatten_all()?.to_vec1()?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct StepConsts {
    scale: f32,
    shrink: f32,
    one_m_b1: f32,
    b2f: f32,
    one_m_b2: f32,
    bc2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

/// One parameter's AdamW update (torch's operation order), applied to the parameter in place.
struct Step<'a> {
    m: std::cell::RefCell<&'a mut Vec<f32>>,
    v: std::cell::RefCell<&'a mut Vec<f32>>,
    g: &'a [f32],
    k: StepConsts,
}

impl Step<'_> {
    fn apply(&self, p: &mut [f32]) {
        let k = self.k;
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        p.par_iter_mut()
            .zip(m.par_iter_mut())
            .zip(v.par_iter_mut())
            .zip(self.g.par_iter())
            .for_each(|(((p, m), v), g)| {
                let g = *g * k.scale;
                *p *= k.shrink;
                *m += (g - *m) * k.one_m_b1;
                *v = *v * k.b2f + k.one_m_b2 * g * g;
                let denom = v.sqrt() / k.bc2_sqrt + k.eps;
                *p += -k.step_size * *m / denom;
            });
    }
}

impl candle_core::InplaceOp1 for Step<'_> {
    fn name(&self) -> &'static str {
        "zerolm-adamw-step"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(data) = storage else {
            return Err(candle_core::Error::Msg(
                "AdamW: parameters must be f32".into(),
            ));
        };
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("AdamW: parameter not contiguous".into()))?;
        self.apply(&mut data[a..b]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> Params {
        let mut rng = zerolm_model::params::SplitMix64::new(seed);
        let mut t = BTreeMap::new();
        for (name, shape) in [("a.weight", vec![5, 3]), ("a.norm", vec![3])] {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| rng.below(2001) as f32 / 1000.0 - 1.0)
                .collect();
            t.insert(
                name.to_string(),
                Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
            );
        }
        Params::new(&t).unwrap()
    }

    fn values(p: &Params) -> Vec<Vec<f32>> {
        p.vars
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    fn config() -> AdamWConfig {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }

    #[test]
    fn the_copying_update_a_gpu_takes_equals_the_in_place_one_bit_for_bit() {
        let cfg = config();
        let (pa, pb) = (params(7), params(7));
        let (mut a, mut b) = (AdamW::new(&pa, cfg.clone()), AdamW::new(&pb, cfg));
        let start = values(&pa);
        let mut rng = zerolm_model::params::SplitMix64::new(11);
        for _ in 0..3 {
            let mut grads = Grads::from_values(
                start
                    .iter()
                    .map(|p| {
                        p.iter()
                            .map(|_| rng.below(1001) as f32 / 500.0 - 1.0)
                            .collect()
                    })
                    .collect(),
            );
            grads.clip(0.5);
            a.update(&pa, &grads, 1e-2).unwrap();
            b.update_with(&pb, &grads, 1e-2, true).unwrap();
        }
        let (va, vb) = (values(&pa), values(&pb));
        assert_ne!(va, start, "the update moved nothing");
        assert_eq!(va, vb);
        assert_eq!((a.m.clone(), a.v.clone()), (b.m.clone(), b.v.clone()));
    }

    #[test]
    fn clipping_through_the_scale_equals_rewriting_the_gradients_bit_for_bit() {
        let cfg = config();
        let (pa, pb) = (params(3), params(3));
        let (mut a, mut b) = (AdamW::new(&pa, cfg.clone()), AdamW::new(&pb, cfg));
        let mut rng = zerolm_model::params::SplitMix64::new(5);
        for _ in 0..3 {
            let raw: Vec<Vec<f32>> = (values(&pa).iter())
                .map(|p| {
                    p.iter()
                        .map(|_| rng.below(1001) as f32 / 50.0 - 10.0)
                        .collect()
                })
                .collect();
            let mut lazy = Grads::from_values(raw.clone());
            let norm = lazy.clip(1.0);
            let coef = (1.0 / (norm + 1e-6)).min(1.0) as f32;
            assert!(coef < 1.0 && lazy.scale() == coef, "{norm} {coef}");
            let scaled = (raw.iter())
                .map(|g| g.iter().map(|x| x * coef).collect())
                .collect();
            a.update(&pa, &lazy, 1e-2).unwrap();
            b.update(&pb, &Grads::from_values(scaled), 1e-2).unwrap();
        }
        assert_eq!(values(&pa), values(&pb));
        assert_eq!((a.m.clone(), a.v.clone()), (b.m.clone(), b.v.clone()));
    }
}
