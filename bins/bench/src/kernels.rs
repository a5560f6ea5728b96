//! `bench --kernels`: the matrix products of a training step, f32 (the gemm kernel the model uses today)
//! against bf16 with f32 accumulation ([`zerolm_model::fused::gemm16`], its AVX512_BF16 kernel and its
//! portable one), in GFLOP/s, on the shapes of the preset's linear layers.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;
use zerolm_model::fused::gemm16::{self, Packed, MR, NR};
use zerolm_model::ModelConfig;

/// One product `[m, k] · [k, n]`, and how fast each path computed it.
pub struct Row {
    pub name: &'static str,
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

/// The linear layers' products for `tokens` rows of `cfg`.
fn shapes(cfg: &ModelConfig, tokens: usize) -> Vec<(&'static str, usize, usize, usize)> {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let kv = cfg.num_key_value_heads * (h / cfg.num_attention_heads);
    vec![
        ("q/o projection", tokens, h, h),
        ("k/v projection", tokens, kv, h),
        ("gate/up", tokens, f, h),
        ("down", tokens, h, f),
        ("lm head", tokens, v, h),
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

/// Every shape of `cfg` at `tokens` rows, each path timed `reps` times.
pub fn measure(cfg: &ModelConfig, tokens: usize, reps: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, m, n, k) in shapes(cfg, tokens) {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)?;
        let (xv, wv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
        );
        let gflops = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        let f32_s = median_secs(reps, || {
            let _ = zerolm_model::ops::linear(&x, &w).expect("f32 linear");
        });
        let mut c = vec![0f32; m * n];
        let bf16_s = median_secs(reps, || {
            let a = Packed::new(&xv, (m, k), (k, 1), MR);
            let b = Packed::new(&wv, (n, k), (k, 1), NR);
            gemm16::gemm(&a, &b, &mut c, n);
        });
        let (a, b) = (
            Packed::new(&xv, (m, k), (k, 1), MR),
            Packed::new(&wv, (n, k), (k, 1), NR),
        );
        let kernel_s = median_secs(reps, || gemm16::gemm(&a, &b, &mut c, n));
        gemm16::force_portable(true);
        let portable_s = median_secs(reps, || gemm16::gemm(&a, &b, &mut c, n));
        gemm16::force_portable(false);
        rows.push(Row {
            name,
            m,
            n,
            k,
            f32_gflops: gflops(f32_s),
            bf16_gflops: gflops(bf16_s),
            bf16_kernel_gflops: gflops(kernel_s),
            portable_gflops: gflops(portable_s),
        });
    }
    Ok(rows)
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
