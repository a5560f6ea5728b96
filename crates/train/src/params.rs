//! The weights a run trains and their gradients: which parameters are trainable (`train_only`) and
//! which frozen, gradient collection from candle's `GradStore`, accumulation over micro-batches, and
//! global-norm clipping.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use rayon::prelude::*;

use crate::TrainError;

/// `train_only` as a regex (searched in each parameter name), or a config error naming it.
pub fn compile_train_only(pattern: &str) -> Result<regex::Regex, TrainError> {
    regex::Regex::new(pattern).map_err(|e| {
        TrainError::Config(format!("train_only `{pattern}` is not a valid regex: {e}"))
    })
}

/// The model's weights: the trainable parameters, by HF name, in name order, and the frozen rest.
pub struct Params {
    pub vars: Vec<(String, Var)>,
    /// Weights that are not trained (see [`Params::select`]): constants for autograd, no optimizer state.
    pub frozen: BTreeMap<String, Tensor>,
}

impl Params {
    /// Every tensor trainable.
    pub fn new(tensors: &BTreeMap<String, Tensor>) -> Result<Params, TrainError> {
        Params::select(tensors, None)
    }

    /// Trainable: the tensors whose name `train_only` (a regex) matches, or all when `None`; the rest
    /// are frozen. A pattern that matches nothing is an error that lists the names.
    pub fn select(
        tensors: &BTreeMap<String, Tensor>,
        train_only: Option<&str>,
    ) -> Result<Params, TrainError> {
        let pattern = train_only.map(compile_train_only).transpose()?;
        let mut vars = Vec::new();
        let mut frozen = BTreeMap::new();
        for (n, t) in tensors {
            if pattern.as_ref().is_none_or(|p| p.is_match(n)) {
                vars.push((n.clone(), Var::from_tensor(t)?));
            } else {
                frozen.insert(n.clone(), t.clone());
            }
        }
        if vars.is_empty() {
            let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
            return Err(TrainError::Config(format!(
                "train_only `{}` matches none of the model's parameters: {}",
                train_only.unwrap_or_default(),
                names.join(", ")
            )));
        }
        Ok(Params { vars, frozen })
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Number of frozen scalars.
    pub fn frozen_count(&self) -> usize {
        self.frozen.values().map(Tensor::elem_count).sum()
    }

    /// All weights as tensors (the trainable ones tracked by autograd) for building a model.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.with_frozen(|v| v.as_tensor().clone())
    }

    /// Untracked views of all current values (for eval, export and checkpoints).
    pub fn detached(&self) -> BTreeMap<String, Tensor> {
        self.with_frozen(|v| v.as_tensor().detach())
    }

    fn with_frozen(&self, view: impl Fn(&Var) -> Tensor) -> BTreeMap<String, Tensor> {
        let mut all = self.frozen.clone();
        all.extend(self.vars.iter().map(|(n, v)| (n.clone(), view(v))));
        all
    }

    /// blake3 of every weight's value (trainable and frozen), in name order.
    pub fn fingerprint(&self) -> Result<String, TrainError> {
        let mut h = blake3::Hasher::new();
        for (name, t) in self.detached() {
            h.update(name.as_bytes());
            for x in t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?
            {
                h.update(&x.to_le_bytes());
            }
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// Overwrites every parameter with `values` (same names and shapes).
    pub fn load(&self, values: &BTreeMap<String, Tensor>, source: &str) -> Result<(), TrainError> {
        for (name, var) in &self.vars {
            let t = values
                .get(name)
                .ok_or_else(|| TrainError::Resume(format!("{source}: missing tensor `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(TrainError::Resume(format!(
                    "{source}: tensor `{name}` has shape {:?}, the model has {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(t)?;
        }
        Ok(())
    }
}

/// Gradients as flat f32 buffers in parameter order.
pub struct Grads {
    pub values: Vec<Vec<f32>>,
}

impl Grads {
    /// Copies each parameter's gradient out of `store`. A parameter without one is a bug in the model
    /// (a graph cut), so it is an error rather than a silent zero.
    pub fn collect(params: &Params, store: &GradStore) -> Result<Grads, TrainError> {
        let values = params
            .vars
            .iter()
            .map(|(name, var)| {
                let g = store.get(var.as_tensor()).ok_or_else(|| {
                    TrainError::Internal(format!(
                        "parameter `{name}` received no gradient (graph cut)"
                    ))
                })?;
                Ok(g.flatten_all()?.to_vec1::<f32>()?)
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Grads { values })
    }

    /// Adds another micro-batch's gradients.
    pub fn add(&mut self, other: &Grads) {
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            a.par_iter_mut()
                .zip(b.par_iter())
                .for_each(|(x, y)| *x += *y);
        }
    }

    /// The global L2 norm over all parameters (accumulated in f64, in a fixed order).
    pub fn norm(&self) -> f64 {
        self.values
            .iter()
            .map(|g| {
                g.par_chunks(1 << 16)
                    .map(sum_of_squares)
                    .collect::<Vec<_>>()
                    .iter()
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    /// Each parameter's own L2 norm, by name.
    pub fn norms(&self, params: &Params) -> BTreeMap<String, f64> {
        params
            .vars
            .iter()
            .zip(&self.values)
            .map(|((n, _), g)| {
                (
                    n.clone(),
                    g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt(),
                )
            })
            .collect()
    }

    /// Scales gradients so the global norm is at most `max_norm` (torch's `clip_grad_norm_` rule:
    /// coefficient `max_norm / (norm + 1e-6)`, capped at 1). Returns the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> f64 {
        let norm = self.norm();
        if max_norm > 0.0 {
            let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
            if coef < 1.0 {
                self.values
                    .iter_mut()
                    .for_each(|g| g.par_iter_mut().for_each(|x| *x *= coef));
            }
        }
        norm
    }

    pub fn is_finite(&self) -> bool {
        self.values
            .iter()
            .all(|g| g.par_iter().all(|x| x.is_finite()))
    }
}

/// Σ x² in f64 over eight interleaved partial sums (element i into sum i mod 8, the sums then added in
/// order): a fixed order, so the same for any thread count, with eight independent chains of additions
/// instead of one (the one chain made the norm a few percent of a training step).
fn sum_of_squares(values: &[f32]) -> f64 {
    let mut sums = [0f64; 8];
    let mut eights = values.chunks_exact(8);
    for c in &mut eights {
        for (s, x) in sums.iter_mut().zip(c) {
            *s += f64::from(*x) * f64::from(*x);
        }
    }
    for (s, x) in sums.iter_mut().zip(eights.remainder()) {
        *s += f64::from(*x) * f64::from(*x);
    }
    sums.iter().sum()
}
