//! Helpers the kernel tests share: random inputs, and the comparisons of a fused op with its composed
//! version and of runs on different thread counts.

use crate::SplitMix64;
use candle_core::{Device, Tensor, Var};

pub(super) fn randn(rng: &mut SplitMix64, dims: &[usize], scale: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The bit patterns of every element of `t`, for exact comparisons.
pub(super) fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

pub(super) fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let (a, b): (Vec<f32>, Vec<f32>) = (
        a.flatten_all().unwrap().to_vec1().unwrap(),
        b.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        worst / scale < tol,
        "{what}: max |Δ| {worst} vs scale {scale}"
    );
    assert!(b.iter().any(|x| *x != 0.0), "{what}: all zero");
}

/// Runs `f` on vars made of `inputs` with the fused and the composed op; compares the outputs and
/// the gradient of Σ out · R for every input.
pub(super) fn check(
    name: &str,
    inputs: &[Tensor],
    fast: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    slow: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    check_within(name, inputs, fast, slow, (1e-5, 1e-4))
}

/// [`check`] with the tolerances (relative to the largest element) of the values and the gradients.
pub(super) fn check_within(
    name: &str,
    inputs: &[Tensor],
    fast: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    slow: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    (value_tol, grad_tol): (f32, f32),
) {
    let mut rng = SplitMix64::new(99);
    let run = |f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        (vars, out)
    };
    let (fv, fo) = run(&fast);
    let (sv, so) = run(&slow);
    close(&fo, &so, value_tol, &format!("{name} value"));
    let r = randn(&mut rng, fo.dims(), 1.0);
    let fg = (&fo * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let sg = (&so * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, (a, b)) in fv.iter().zip(&sv).enumerate() {
        let ga = fg.get(a.as_tensor()).expect("fused gradient");
        let gb = sg.get(b.as_tensor()).expect("composed gradient");
        close(ga, gb, grad_tol, &format!("{name} gradient of input {i}"));
    }
}

/// The gradients of Σ f(inputs)² for every input, flattened, computed on a pool of `threads` threads
/// (the kernels must give the same bits for any count).
pub(super) fn grads_on_threads(
    threads: usize,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor> + Sync,
) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = f(&ts).unwrap().sqr().unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        vars.iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    })
}
