//! Model behaviour: every parameter learns, the KV-cache path equals the full forward, weights survive
//! a save/load round trip, and bad weights or inputs are refused with the tensor named.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use zerolm_model::io::{load_safetensors, safetensors_bytes};
use zerolm_model::sample::{generate, Sampler, SamplingConfig};
use zerolm_model::{init_parameters, KvCache, Model, ModelConfig, ModelType, Precision, Segment};

fn configs() -> Vec<ModelConfig> {
    let llama = ModelConfig::preset("micro").unwrap();
    let mut qwen = llama.clone();
    qwen.model_type = ModelType::Qwen3;
    qwen.head_dim = Some(12); // ≠ hidden / heads, as MiniMind-3 allows
    qwen.tie_word_embeddings = false;
    qwen.vocab_size = 50;
    let mut llama = llama;
    llama.vocab_size = 50;
    vec![llama, qwen]
}

fn ids(rows: &[&[u32]]) -> Tensor {
    Tensor::new(
        rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
}

/// The weights as autograd variables and a model built on them.
/// The largest |a − b| over two equally long slices.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max)
}

fn trainable(cfg: &ModelConfig, init: &BTreeMap<String, Tensor>) -> (BTreeMap<String, Var>, Model) {
    let vars: BTreeMap<String, Var> = init
        .iter()
        .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let tensors = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    (vars, Model::new(cfg.clone(), tensors).unwrap())
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    for cfg in configs() {
        let (vars, model) = trainable(&cfg, &init_parameters(&cfg, 5, &Device::Cpu).unwrap());
        let x = ids(&[&[1, 5, 9, 13, 2, 7], &[3, 3, 4, 40, 41, 49]]);
        let y = ids(&[&[5, 9, 13, 2, 7, 8], &[3, 4, 40, 41, 49, 0]]);
        let grads = model.loss(&x, &y, None).unwrap().backward().unwrap();
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{:?}: `{name}` has no gradient", cfg.model_type));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt();
            assert!(
                norm.is_finite() && norm > 0.0,
                "{:?}: `{name}` gradient norm {norm}",
                cfg.model_type
            );
        }
    }
}

/// The composed ops (the GPU's path) against the fused CPU kernels, in f32 and in bf16 (where both round
/// the same operands; they differ only in summation order and in how the composed version rounds a few
/// gradients, so within bf16's 2⁻⁸ relative step).
#[test]
fn the_composed_path_a_gpu_runs_gives_the_fused_loss_and_gradients() {
    for (precision, loss_tol, grad_tol) in
        [(Precision::F32, 1e-5, 1e-4), (Precision::Bf16, 1e-2, 3e-2)]
    {
        for cfg in configs() {
            let init = init_parameters(&cfg, 7, &Device::Cpu).unwrap();
            let x = ids(&[&[1, 5, 9, 13, 2, 7, 30], &[3, 3, 4, 40, 41, 49, 6]]);
            let y = ids(&[&[5, 9, 13, 2, 7, 8, 11], &[3, 4, 40, 41, 49, 0, 1]]);
            let run = || {
                let (vars, mut model) = trainable(&cfg, &init);
                model.set_precision(precision);
                let loss = model.loss(&x, &y, None).unwrap();
                let grads = loss.backward().unwrap();
                let g: BTreeMap<String, Vec<f32>> = vars
                    .iter()
                    .map(|(n, v)| {
                        let t = grads.get(v.as_tensor()).expect("gradient");
                        (n.clone(), t.flatten_all().unwrap().to_vec1().unwrap())
                    })
                    .collect();
                (loss.to_scalar::<f32>().unwrap(), g)
            };
            let (fused_loss, fused) = run();
            let probe = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
            assert!(zerolm_model::fused::cpu_f32(&probe));
            let (composed_loss, composed) = zerolm_model::fused::with_composed_ops(|| {
                assert!(
                    !zerolm_model::fused::cpu_f32(&probe),
                    "the fused kernels are still on"
                );
                run()
            });
            assert!(
                zerolm_model::fused::cpu_f32(&probe),
                "switched back on afterwards"
            );
            assert!(
                (fused_loss - composed_loss).abs() < loss_tol * fused_loss.abs(),
                "{precision}: {fused_loss} vs {composed_loss}"
            );
            for (name, a) in &fused {
                let b = &composed[name];
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = max_abs_diff(a, b);
                assert!(
                    scale > 0.0 && worst <= grad_tol * scale,
                    "{precision} {name}: {worst} vs {scale}"
                );
            }
        }
    }
}

#[test]
fn the_inference_model_gives_the_training_models_logits_and_logprobs() {
    for cfg in configs() {
        let params = init_parameters(&cfg, 5, &Device::Cpu).unwrap();
        let train = Model::new(cfg.clone(), params.clone()).unwrap();
        let infer = Model::new(cfg.clone(), params)
            .unwrap()
            .for_inference()
            .unwrap();
        let x = ids(&[&[1, 17, 4, 33, 2, 9], &[3, 3, 48, 0, 7, 21]]);
        let y = ids(&[&[17, 4, 33, 2, 9, 12], &[3, 48, 0, 7, 21, 5]]);
        for (a, b) in [
            (train.forward(&x).unwrap(), infer.forward(&x).unwrap()),
            (
                train.token_logprobs(&x, &y).unwrap(),
                infer.token_logprobs(&x, &y).unwrap(),
            ),
        ] {
            assert_eq!(a.dims(), b.dims());
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            let worst = max_abs_diff(&a, &b);
            assert!(worst < 1e-5, "{:?}: {worst}", cfg.model_type);
            assert!(a.iter().any(|v| v.abs() > 1e-3));
        }
        // The generation path uses the copies too.
        let mut cache = KvCache::new();
        let last = infer.forward_cached(&x, &mut cache).unwrap();
        let full = train.forward(&x).unwrap();
        let want: Vec<f32> = full
            .narrow(1, 5, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got: Vec<f32> = last.flatten_all().unwrap().to_vec1().unwrap();
        assert!(want.iter().zip(&got).all(|(p, q)| (p - q).abs() < 1e-5));
    }
}

#[test]
fn a_bf16_forward_without_gradients_gives_the_training_forwards_bits() {
    // Over plain tensors the bf16 forward normalises each block's input inside the products' packing;
    // over trainable variables it runs RMSNorm as an op of its own (its backward is needed).
    let bits = |t: Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    };
    for cfg in configs() {
        let init = init_parameters(&cfg, 6, &Device::Cpu).unwrap();
        let (_vars, mut train) = trainable(&cfg, &init);
        train.set_precision(Precision::Bf16);
        let mut infer = Model::new(cfg.clone(), init).unwrap();
        infer.set_precision(Precision::Bf16);
        let infer = infer.for_inference().unwrap();
        let x = ids(&[&[1, 17, 4, 33, 2, 9, 5], &[3, 3, 48, 0, 7, 21, 11]]);
        let y = ids(&[&[17, 4, 33, 2, 9, 12, 6], &[3, 48, 0, 7, 21, 5, 1]]);
        let (a, b) = (train.forward(&x).unwrap(), infer.forward(&x).unwrap());
        assert_eq!(bits(a), bits(b), "{:?} logits", cfg.model_type);
        let (a, b) = (
            train.token_logprobs(&x, &y).unwrap(),
            infer.token_logprobs(&x, &y).unwrap(),
        );
        assert_eq!(bits(a), bits(b), "{:?} log-probs", cfg.model_type);
    }
}

#[test]
fn kv_cache_decoding_equals_the_full_forward() {
    for cfg in configs() {
        let model =
            Model::new(cfg.clone(), init_parameters(&cfg, 9, &Device::Cpu).unwrap()).unwrap();
        let seq: Vec<u32> = vec![1, 17, 4, 33, 2, 9, 12, 40];
        let full = model.forward(&ids(&[&seq])).unwrap().squeeze(0).unwrap();
        // prefill 3 tokens, then one at a time
        let mut cache = KvCache::new();
        let mut rows = vec![model
            .forward_cached(&ids(&[&seq[..3]]), &mut cache)
            .unwrap()];
        for t in 3..seq.len() {
            rows.push(
                model
                    .forward_cached(&ids(&[&seq[t..t + 1]]), &mut cache)
                    .unwrap(),
            );
        }
        assert_eq!(cache.len(), seq.len());
        for (k, row) in rows.iter().enumerate() {
            let pos = if k == 0 { 2 } else { k + 2 };
            let want: Vec<f32> = full.get(pos).unwrap().to_vec1().unwrap();
            let got: Vec<f32> = row.squeeze(0).unwrap().to_vec1().unwrap();
            let worst = max_abs_diff(&want, &got);
            assert!(worst < 1e-5, "{:?} position {pos}: {worst}", cfg.model_type);
        }
    }
}

#[test]
fn packed_sequences_decode_as_each_one_alone() {
    for cfg in configs() {
        for precision in [Precision::F32, Precision::Bf16] {
            let mut model =
                Model::new(cfg.clone(), init_parameters(&cfg, 9, &Device::Cpu).unwrap()).unwrap();
            model.set_precision(precision);
            let model = model.for_inference().unwrap();
            let seqs: [&[u32]; 3] = [
                &[1, 17, 4, 33, 2, 9],
                &[40, 3, 11],
                &[7, 7, 8, 21, 49, 0, 5, 6],
            ];
            // Alone: each sequence's prompt, then two tokens one at a time.
            let alone = |seq: &[u32]| {
                let mut cache = KvCache::new();
                let mut rows =
                    vec![model.forward_cached(&ids(&[&seq[..seq.len() - 2]]), &mut cache)];
                for t in seq.len() - 2..seq.len() {
                    rows.push(model.forward_cached(&ids(&[&seq[t..t + 1]]), &mut cache));
                }
                rows.into_iter()
                    .map(|r| r.unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap())
                    .collect::<Vec<_>>()
            };
            let want: Vec<Vec<Vec<f32>>> = seqs.iter().map(|s| alone(s)).collect();
            // Packed: the prompts together, then the three sequences' tokens together; the second
            // sequence joins one round late, as a new request joins a running batch.
            let mut caches: Vec<KvCache> = (0..3).map(|_| KvCache::new()).collect();
            let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
            let rounds: [Vec<(usize, std::ops::Range<usize>)>; 4] = [
                vec![(0, 0..4), (2, 0..6)],
                vec![(0, 4..5), (1, 0..1), (2, 6..7)],
                vec![(0, 5..6), (1, 1..2), (2, 7..8)],
                vec![(1, 2..3)],
            ];
            for round in rounds {
                let mut segments: Vec<Segment> = Vec::new();
                let mut order = Vec::new();
                for (i, cache) in caches.iter_mut().enumerate() {
                    if let Some((_, r)) = round.iter().find(|(s, _)| *s == i) {
                        segments.push(Segment {
                            ids: &seqs[i][r.clone()],
                            cache,
                        });
                        order.push(i);
                    }
                }
                let logits = model.forward_packed(&mut segments).unwrap();
                assert_eq!(logits.dims(), [order.len(), cfg.vocab_size]);
                for (row, i) in logits.to_vec2::<f32>().unwrap().into_iter().zip(order) {
                    got[i].push(row);
                }
            }
            assert_eq!(
                caches.iter().map(|c| c.len()).collect::<Vec<_>>(),
                [6, 3, 8]
            );
            for (s, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(w.len(), g.len());
                // The same bits: each row takes the same path through the kernels, alone or packed.
                for (a, b) in w.iter().zip(g) {
                    let worst = max_abs_diff(a, b);
                    assert!(
                        worst == 0.0,
                        "{:?} {precision:?} sequence {s}: {worst}",
                        cfg.model_type
                    );
                }
            }
        }
    }
}

#[test]
fn packed_input_is_checked() {
    let cfg = configs().remove(0);
    let model = Model::new(cfg.clone(), init_parameters(&cfg, 9, &Device::Cpu).unwrap()).unwrap();
    let mut cache = KvCache::new();
    let err = |ids: &[u32], cache: &mut KvCache| {
        let mut segments = [Segment { ids, cache }];
        model.forward_packed(&mut segments).unwrap_err().to_string()
    };
    assert!(
        err(&[], &mut cache).contains("no ids"),
        "{}",
        err(&[], &mut cache)
    );
    assert!(err(&[3, 50], &mut cache).contains("token id 50"));
    let long = vec![1u32; cfg.max_position_embeddings + 1];
    assert!(err(&long, &mut cache).contains("max_position_embeddings"));
    assert!(model
        .forward_packed(&mut [])
        .unwrap_err()
        .to_string()
        .contains("no segment"));
}

#[test]
fn generation_is_seeded_and_stops_at_eos() {
    let cfg = configs().remove(0);
    let model = Model::new(cfg.clone(), init_parameters(&cfg, 3, &Device::Cpu).unwrap()).unwrap();
    let sampling = SamplingConfig {
        temperature: 1.0,
        top_k: 20,
        top_p: 0.9,
        seed: 11,
    };
    let a = generate(
        &model,
        &[1, 2, 3],
        12,
        &[],
        &mut Sampler::new(sampling.clone()).unwrap(),
    )
    .unwrap();
    let b = generate(
        &model,
        &[1, 2, 3],
        12,
        &[],
        &mut Sampler::new(sampling).unwrap(),
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 12);
    let stop = a[4];
    let c = generate(
        &model,
        &[1, 2, 3],
        12,
        &[stop],
        &mut Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 20,
            top_p: 0.9,
            seed: 11,
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(c.last(), Some(&stop));
    assert!(c.len() <= 5);
    let greedy = generate(
        &model,
        &[1, 2, 3],
        5,
        &[],
        &mut Sampler::new(SamplingConfig::default()).unwrap(),
    )
    .unwrap();
    let first = model
        .forward(&ids(&[&[1, 2, 3]]))
        .unwrap()
        .squeeze(0)
        .unwrap()
        .get(2)
        .unwrap();
    assert_eq!(greedy[0], zerolm_model::model::argmax(&first).unwrap());
}

#[test]
fn weights_round_trip_through_safetensors_exactly() {
    let cfg = configs().remove(1);
    let params = init_parameters(&cfg, 1, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, safetensors_bytes(&params, &BTreeMap::new()).unwrap()).unwrap();
    let (back, meta) = load_safetensors(&path, &Device::Cpu).unwrap();
    assert_eq!(meta["format"], "pt");
    for (name, t) in &params {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = back[name].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn bad_weights_and_inputs_name_the_problem() {
    let cfg = configs().remove(0);
    let mut params = init_parameters(&cfg, 1, &Device::Cpu).unwrap();
    let mut missing = params.clone();
    missing.remove("model.layers.1.mlp.up_proj.weight");
    let e = Model::new(cfg.clone(), missing).err().unwrap().to_string();
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );
    let mut wrong = params.clone();
    wrong.insert(
        "model.norm.weight".into(),
        Tensor::ones(7, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Model::new(cfg.clone(), wrong).err().unwrap().to_string();
    assert!(e.contains("`model.norm.weight` has shape [7]"), "{e}");
    params.insert(
        "model.layers.9.extra".into(),
        Tensor::ones(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Model::new(cfg.clone(), params).err().unwrap().to_string();
    assert!(e.contains("model.layers.9.extra"), "{e}");
    let model = Model::new(cfg.clone(), init_parameters(&cfg, 1, &Device::Cpu).unwrap()).unwrap();
    let e = model.forward(&ids(&[&[1, 50]])).err().unwrap().to_string();
    assert!(
        e.contains("token id 50") && e.contains("vocab_size 50"),
        "{e}"
    );
}
