//! The weights a run trains and their gradients: which parameters are trainable (`train_only`) and
//! which frozen, gradient collection from candle's `GradStore`, accumulation over micro-batches, and
//! global-norm clipping.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, CpuStorage, Storage, Tensor, Var};
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

/// Gradients as flat f32 buffers in parameter order, with the clipping coefficient that scales them.
///
/// Clipping does not rewrite the values: it sets [`Grads::scale`], which AdamW applies as it reads each
/// gradient (the same f32 product a scaling pass would store). The squares behind the global norm are
/// summed while collecting, as each chunk is copied; changing the values drops them, and the norm is then
/// summed again from the values, in the same chunks and order, so the result is the same either way.
pub struct Grads {
    values: Vec<Vec<f32>>,
    scale: f32,
    /// Σ x² of each parameter's values (its chunks' sums added in order), while known.
    squares: Option<Vec<f64>>,
}

/// Values per chunk of the parallel passes over gradients (the norm's fixed summation order).
const CHUNK: usize = 1 << 16;

impl Grads {
    /// Gradients given as values (scale 1).
    pub fn from_values(values: Vec<Vec<f32>>) -> Grads {
        Grads {
            values,
            scale: 1.0,
            squares: None,
        }
    }

    /// Copies each parameter's gradient out of `store`. A parameter without one is a bug in the model
    /// (a graph cut), so it is an error rather than a silent zero.
    pub fn collect(params: &Params, store: &GradStore) -> Result<Grads, TrainError> {
        let (values, squares) = params
            .vars
            .iter()
            .map(|(name, var)| {
                let g = store.get(var.as_tensor()).ok_or_else(|| {
                    TrainError::Internal(format!(
                        "parameter `{name}` received no gradient (graph cut)"
                    ))
                })?;
                copy_out(g)
            })
            .collect::<Result<(Vec<_>, Vec<Option<f64>>), TrainError>>()?;
        Ok(Grads {
            values,
            scale: 1.0,
            squares: squares.into_iter().collect(),
        })
    }

    /// The values as collected, summed and reduced (before [`Grads::scale`] applies).
    pub fn values(&self) -> &[Vec<f32>] {
        &self.values
    }

    /// The values, to change in place (the stored squares are dropped).
    pub fn values_mut(&mut self) -> &mut [Vec<f32>] {
        self.squares = None;
        &mut self.values
    }

    /// The factor clipping left for the update to apply (1 when the norm was within bounds).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Adds another micro-batch's gradients.
    pub fn add(&mut self, other: &Grads) {
        for (a, b) in self.values_mut().iter_mut().zip(&other.values) {
            a.par_iter_mut()
                .zip(b.par_iter())
                .for_each(|(x, y)| *x += *y);
        }
    }

    /// The global L2 norm of the values (accumulated in f64, in a fixed order); NaN or infinite exactly
    /// when a value is.
    pub fn norm(&self) -> f64 {
        let total: f64 = match &self.squares {
            Some(s) => s.iter().sum(),
            None => self.values.iter().map(|g| squares(g)).sum(),
        };
        total.sqrt()
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

    /// Clips to a global norm of at most `max_norm` (torch's `clip_grad_norm_` rule: coefficient
    /// `max_norm / (norm + 1e-6)`, capped at 1) by setting [`Grads::scale`]. Returns the norm before
    /// clipping.
    pub fn clip(&mut self, max_norm: f64) -> f64 {
        let norm = self.norm();
        if max_norm > 0.0 {
            self.scale = (max_norm / (norm + 1e-6)).min(1.0) as f32;
        }
        norm
    }
}

/// A gradient's values on the host, and for a CPU tensor their Σ x²: it is copied in parallel chunks,
/// each chunk's squares summed while it is in cache. A GPU one is copied to the host, and its squares
/// are left for [`Grads::norm`] (accumulation or an all-reduce may change the values first).
fn copy_out(g: &Tensor) -> Result<(Vec<f32>, Option<f64>), TrainError> {
    let (storage, layout) = g.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
        (&*storage, layout.contiguous_offsets())
    {
        let (values, s) = copy_with_squares(&data[a..b]);
        return Ok((values, Some(s)));
    }
    drop(storage);
    Ok((g.flatten_all()?.to_vec1::<f32>()?, None))
}

/// `src` copied, and Σ x² over it in [`squares`]' order.
#[allow(unsafe_code)]
fn copy_with_squares(src: &[f32]) -> (Vec<f32>, f64) {
    let mut out = Vec::with_capacity(src.len());
    let sums: Vec<f64> = out.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .map(|(to, from)| {
            for (t, f) in to.iter_mut().zip(from) {
                t.write(*f);
            }
            sum_of_squares(from)
        })
        .collect();
    // SAFETY: the chunks above wrote every one of the first `src.len()` elements.
    unsafe { out.set_len(src.len()) };
    (out, sums.iter().sum::<f64>())
}

/// Σ x² of one parameter's values: its chunks' sums (in parallel), added in order.
fn squares(values: &[f32]) -> f64 {
    values
        .par_chunks(CHUNK)
        .map(sum_of_squares)
        .collect::<Vec<_>>()
        .iter()
        .sum::<f64>()
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Gradients of Σ wᵢ² (2·wᵢ) for two weights, one long enough to span several chunks.
    fn collected() -> Grads {
        collected_from(&[("a", 3 * CHUNK + 17, None), ("b", 5, None)])
    }

    /// Gradients of Σ wᵢ² for weights of the given names and lengths, with random values, and the value
    /// at index 1 replaced where one is given.
    fn collected_from(weights: &[(&str, usize, Option<f32>)]) -> Grads {
        let mut rng = zerolm_model::params::SplitMix64::new(9);
        let mut tensors = BTreeMap::new();
        for &(name, n, odd) in weights {
            let mut v: Vec<f32> = (0..n)
                .map(|_| rng.below(2001) as f32 / 7.0 - 140.0)
                .collect();
            if let Some(x) = odd {
                v[1] = x;
            }
            tensors.insert(
                name.to_string(),
                Tensor::from_vec(v, n, &Device::Cpu).unwrap(),
            );
        }
        let params = Params::new(&tensors).unwrap();
        let loss = (params.vars.iter())
            .map(|(_, v)| v.as_tensor().sqr().unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        Grads::collect(&params, &loss.backward().unwrap()).unwrap()
    }

    #[test]
    fn the_norm_summed_while_collecting_equals_the_one_summed_from_the_values() {
        let grads = collected();
        let again = Grads::from_values(grads.values().to_vec());
        assert!(grads.squares.is_some() && again.squares.is_none());
        assert_eq!(grads.norm().to_bits(), again.norm().to_bits());
        let plain = (grads.values().iter().flatten())
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((grads.norm() - plain).abs() < 1e-9 * plain, "{plain}");
    }

    #[test]
    fn changing_the_values_drops_the_collected_squares() {
        let mut grads = collected();
        let before = grads.norm();
        grads.values_mut()[0][CHUNK + 1] += 1000.0;
        assert!(grads.norm() > before);
        let mut twice = collected();
        twice.add(&collected());
        assert_eq!(twice.norm(), 2.0 * before);
    }

    #[test]
    fn a_non_finite_gradient_makes_the_norm_non_finite_and_clipping_sets_only_the_scale() {
        let mut grads = Grads::from_values(vec![vec![3.0, 4.0], vec![0.0; 3]]);
        assert_eq!(grads.clip(1.0), 5.0);
        assert_eq!(grads.scale(), (1.0 / (5.0 + 1e-6)) as f32);
        assert_eq!(grads.values()[0], [3.0, 4.0]);
        assert!(Grads::from_values(vec![vec![1.0, f32::INFINITY]])
            .norm()
            .is_infinite());
        assert!(Grads::from_values(vec![vec![f32::NAN], vec![1.0]])
            .norm()
            .is_nan());
        // The same through the squares summed while collecting (the trainer's path).
        let inf = collected_from(&[("a", CHUNK + 3, Some(f32::INFINITY)), ("b", 4, None)]);
        assert!(inf.squares.is_some() && inf.norm().is_infinite());
        let nan = collected_from(&[("a", 4, None), ("b", 2 * CHUNK, Some(f32::NAN))]);
        assert!(nan.squares.is_some() && nan.norm().is_nan());
        let mut within = Grads::from_values(vec![vec![0.3, 0.4]]);
        within.clip(1.0);
        assert_eq!(within.scale(), 1.0);
    }
}
