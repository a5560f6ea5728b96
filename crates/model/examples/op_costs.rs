//! Forward + backward time of the model's building blocks at MiniMind2 training shapes (batch 4 × 256,
//! hidden 512, 8 heads / 2 KV heads of 64, FFN 1408, vocab 6400), to see where a training step goes.
//! `cargo run --release -p zerolm-model --example op_costs` (RAYON_NUM_THREADS=2 to match the bench).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use zerolm_model::ops;

fn time(name: &str, reps: usize, f: impl Fn() -> candle_core::Result<()>) {
    f().unwrap();
    let t = Instant::now();
    for _ in 0..reps {
        f().unwrap();
    }
    println!(
        "{name:<28} {:>8.2} ms",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (b, t, h, nh, nkv, hd, ffn, v) = (4, 256, 512, 8, 2, 64, 1408, 6400);
    let n = b * t;
    let x = Var::randn(0f32, 1.0, (b, t, h), &dev)?;
    let w = Var::ones(h, DType::F32, &dev)?;
    time("rms_norm composed fwd+bwd", 20, || {
        let y = ops::rms_norm_composed(x.as_tensor(), w.as_tensor(), 1e-5)?;
        y.sum_all()?.backward()?;
        Ok(())
    });
    time("rms_norm fused fwd+bwd", 20, || {
        let y = ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)?;
        y.sum_all()?.backward()?;
        Ok(())
    });
    // The model's layout: [B, T, heads, head_dim].
    let q = Var::randn(0f32, 1.0, (b, t, nh, hd), &dev)?;
    let k = Var::randn(0f32, 1.0, (b, t, nkv, hd), &dev)?;
    let vv = Var::randn(0f32, 1.0, (b, t, nkv, hd), &dev)?;
    let (cos, sin) = ops::rope_tables(hd, 1e6, 0, t, &dev)?;
    time("rope tables", 20, || {
        ops::rope_tables(hd, 1e6, 0, t, &dev).map(|_| ())
    });
    time("rope composed fwd+bwd", 20, || {
        ops::rope_composed(q.as_tensor(), &cos, &sin)?
            .sum_all()?
            .backward()?;
        Ok(())
    });
    time("rope fused fwd+bwd", 20, || {
        ops::rope(q.as_tensor(), &cos, &sin)?
            .sum_all()?
            .backward()?;
        Ok(())
    });
    let (qs, ks, vs) = (q.as_tensor(), k.as_tensor(), vv.as_tensor());
    time("attention fused fwd+bwd", 10, || {
        ops::causal_attention(qs, ks, vs, 0.125)?
            .sum_all()?
            .backward()?;
        Ok(())
    });
    time("attention fused fwd", 10, || {
        ops::causal_attention(qs, ks, vs, 0.125)?.sum_all()?;
        Ok(())
    });
    time("attention composed fwd+bwd", 10, || {
        ops::causal_attention_composed(qs, ks, vs, 0.125)?
            .sum_all()?
            .backward()?;
        Ok(())
    });
    time("attention composed fwd", 10, || {
        ops::causal_attention_composed(qs, ks, vs, 0.125)?.sum_all()?;
        Ok(())
    });
    let g = Var::randn(0f32, 1.0, (n, ffn), &dev)?;
    let u = Var::randn(0f32, 1.0, (n, ffn), &dev)?;
    time("swiglu fused fwd+bwd", 20, || {
        ops::swiglu(g.as_tensor(), u.as_tensor())?
            .sum_all()?
            .backward()?;
        Ok(())
    });
    time("swiglu composed fwd+bwd", 20, || {
        ops::swiglu_composed(g.as_tensor(), u.as_tensor())?
            .sum_all()?
            .backward()?;
        Ok(())
    });
    let wu = Var::randn(0f32, 0.02, (ffn, h), &dev)?;
    let x2 = x.as_tensor().reshape((n, h))?;
    time("linear 512→1408 fwd+bwd", 10, || {
        ops::linear(&x2, wu.as_tensor())?.sum_all()?.backward()?;
        Ok(())
    });
    let logits = Var::randn(0f32, 1.0, (n, v), &dev)?;
    let tg = Tensor::arange(0u32, n as u32, &dev)?;
    time("token_logprobs composed f+b", 10, || {
        ops::token_logprobs_composed(logits.as_tensor(), &tg)?
            .mean_all()?
            .backward()?;
        Ok(())
    });
    time("token_logprobs fused fwd+bwd", 10, || {
        ops::token_logprobs(logits.as_tensor(), &tg)?
            .mean_all()?
            .backward()?;
        Ok(())
    });
    let emb = Var::randn(0f32, 0.02, (v, h), &dev)?;
    time("lm head 512→6400 fwd+bwd", 5, || {
        ops::linear(&x2, emb.as_tensor())?.sum_all()?.backward()?;
        Ok(())
    });
    Ok(())
}
