//! `bench --kernels`: the matrix products of a training step, f32 (the gemm kernel the model uses today)
//! against bf16 with f32 accumulation ([`zerolm_model::fused::gemm16`], its AVX512_BF16 kernel and its
//! portable one), in GFLOP/s, on the shapes of the preset's linear layers.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;
use zerolm_model::fused::gemm16::{self, Packed, MR, NR};
use zerolm_model::fused::matmul;
use zerolm_model::ModelConfig;

/// One product `[m, k] · [k, n]`, and how fast each path computed it.
pub struct Row {
    pub name: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub f32_gflops: f64,
    /// bf16, including rounding and packing both operands.
    pub bf16_gflops: f64,
    /// bf16, operands packed beforehand (the kernel alone).
    pub bf16_kernel_gflops: f64,
    pub portable_gflops: f64,
}

/// The linear layers of `cfg` as (name, out, in).
fn layers(cfg: &ModelConfig) -> Vec<(&'static str, usize, usize)> {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let kv = cfg.num_key_value_heads * (h / cfg.num_attention_heads);
    vec![
        ("q/o", h, h),
        ("k/v", kv, h),
        ("gate/up", f, h),
        ("down", h, f),
        ("lm head", v, h),
    ]
}

/// A product as a Linear layer computes it: [m, k] · [k, n] over operands read through strides.
struct Product<'a> {
    name: String,
    mnk: (usize, usize, usize),
    a: &'a [f32],
    a_strides: (usize, usize),
    b: &'a [f32],
    b_strides: (usize, usize),
}

/// The three products of a Linear layer w [out, in] over `tokens` rows: the forward y = x·wᵀ and the
/// backward dx = dy·w and dw = dyᵀ·x, over x [tokens, in], w and dy [tokens, out].
fn products<'a>(
    name: &str,
    (tokens, out, inp): (usize, usize, usize),
    (x, w, dy): (&'a [f32], &'a [f32], &'a [f32]),
) -> [Product<'a>; 3] {
    let p = |what: &str, mnk, a, a_strides, b, b_strides| Product {
        name: format!("{name} {what}"),
        mnk,
        a,
        a_strides,
        b,
        b_strides,
    };
    [
        p("y = x·wᵀ", (tokens, out, inp), x, (inp, 1), w, (1, inp)),
        p("dx = dy·w", (tokens, inp, out), dy, (out, 1), w, (inp, 1)),
        p("dw = dyᵀ·x", (out, inp, tokens), dy, (1, out), x, (inp, 1)),
    ]
}

/// The median of `reps` timings of `f`, in seconds (after one warm-up call).
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn random(len: usize, std: f32) -> Result<Vec<f32>> {
    Ok(Tensor::randn(0f32, std, len, &Device::Cpu)?.to_vec1::<f32>()?)
}

/// Every product of every linear layer of `cfg` at `tokens` rows, each path timed `reps` times.
pub fn measure(cfg: &ModelConfig, tokens: usize, reps: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, out, inp) in layers(cfg) {
        let x = random(tokens * inp, 1.0)?;
        let w = random(out * inp, 0.05)?;
        let dy = random(tokens * out, 0.01)?;
        for p in products(name, (tokens, out, inp), (&x, &w, &dy)) {
            rows.push(time(&p, reps));
        }
    }
    Ok(rows)
}

/// Times one product on each path.
fn time(p: &Product, reps: usize) -> Row {
    let (m, n, k) = p.mnk;
    let gflops = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
    let run = |bf16: bool| {
        median_secs(reps, || {
            let c = matmul(bf16, p.mnk, p.a, p.a_strides, p.b, p.b_strides);
            std::hint::black_box(c);
        })
    };
    let (f32_s, bf16_s) = (run(false), run(true));
    let a = Packed::new(p.a, (m, k), p.a_strides, MR);
    let b = Packed::new(p.b, (n, k), (p.b_strides.1, p.b_strides.0), NR);
    let mut c = vec![0f32; m * n];
    let kernel_s = median_secs(reps, || gemm16::gemm(&a, &b, &mut c, n));
    gemm16::force_portable(true);
    let portable_s = median_secs(reps, || gemm16::gemm(&a, &b, &mut c, n));
    gemm16::force_portable(false);
    Row {
        name: p.name.clone(),
        m,
        n,
        k,
        f32_gflops: gflops(f32_s),
        bf16_gflops: gflops(bf16_s),
        bf16_kernel_gflops: gflops(kernel_s),
        portable_gflops: gflops(portable_s),
    }
}

/// The line `bench --kernels` prints before its table: the `vdpbf16ps` rate of one core and of every
/// thread at once (the bf16 peak the products are measured against), or why there is none.
pub fn peak_line(threads: usize) -> String {
    let Some((one, all)) = measured_peak() else {
        return "bf16 peak: this CPU has no AVX512_BF16 (the portable kernel runs)\n".into();
    };
    format!(
        "bf16 peak (12 independent vdpbf16ps chains): {one:.1} GFLOP/s on one thread, {all:.1} on {threads} at once\n"
    )
}

/// The `vdpbf16ps` peak in GFLOP/s of one thread and of every thread of the pool at once (the sum of
/// their rates while all run), each the best of ten runs of ≈ 15 ms; `None` without AVX512_BF16.
pub fn measured_peak() -> Option<(f64, f64)> {
    let best = || {
        (0..10)
            .filter_map(|_| gemm16::bf16_peak_gflops(250_000))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let one = best()?;
    let all: Vec<f64> = rayon::broadcast(|_| best().unwrap_or(0.0));
    Some((one, all.iter().sum()))
}

/// The table `bench --kernels` prints.
pub fn table(rows: &[Row], threads: usize) -> String {
    let mut s = format!(
        "matrix products, {threads} thread(s), GFLOP/s (median); bf16 kernel: {}\n\
         | product | m × n × k | f32 | bf16 (with packing) | bf16 kernel | bf16 portable | bf16/f32 |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
        gemm16::kernel_name()
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} × {} × {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |\n",
            r.name,
            r.m,
            r.n,
            r.k,
            r.f32_gflops,
            r.bf16_gflops,
            r.bf16_kernel_gflops,
            r.portable_gflops,
            r.bf16_gflops / r.f32_gflops
        ));
    }
    s
}
