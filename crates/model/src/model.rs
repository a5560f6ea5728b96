//! The decoder: a training forward over every position (logits, per-token log-probs, loss) and a
//! generation forward that extends a KV cache one chunk at a time.
//!
//! Both paths run the same code (`Block::forward` with an optional cache), so what is trained is what
//! generates. Weights are plain `Tensor`s; a trainer passes tensors that belong to candle `Var`s, so
//! autograd reaches every parameter.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, D};

use crate::fused::WeightPacks;
use crate::Precision;

use crate::ops::{self, linear, rms_norm};
use crate::params::parameter_shapes;
use crate::{ModelConfig, ModelError};

/// A Linear weight w [out, in] and, once [`Model::for_inference`] has run on the CPU in f32, a transposed
/// copy [in, out] that the matmul reads faster. Training uses `w` itself, so autograd reaches it. In bf16
/// the weight's bf16 copies live in `packs`, renewed by [`Model::weights_changed`].
struct Proj {
    w: Tensor,
    t: Option<Tensor>,
    packs: Option<Mutex<Arc<WeightPacks>>>,
}

impl Proj {
    fn new(w: Tensor) -> Proj {
        Proj {
            w,
            t: None,
            packs: None,
        }
    }

    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(packs) = &self.packs {
            let packs = packs.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return ops::linear_in(x, &self.w, false, Some(&packs));
        }
        match &self.t {
            Some(t) => ops::linear_t(x, t),
            None => linear(x, &self.w),
        }
    }

    /// This layer applied to `swiglu(gate, up)`: in bf16 inference without storing the activation (see
    /// [`ops::swiglu_linear_bf16`]), else through the SwiGLU op.
    fn apply_to_swiglu(&self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(packs) = &self.packs {
            let packs = packs.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(y) = ops::swiglu_linear_bf16(gate, up, &self.w, &packs)? {
                return Ok(y);
            }
        }
        self.apply(&ops::swiglu(gate, up)?)
    }

    /// The bf16 packs of every one of `projs`, or `None` when any of them computes in f32.
    fn bf16_packs(projs: &[&Proj]) -> Option<Vec<Arc<WeightPacks>>> {
        (projs.iter())
            .map(|p| {
                let m = p.packs.as_ref()?;
                Some(m.lock().unwrap_or_else(|e| e.into_inner()).clone())
            })
            .collect()
    }

    /// Each of `projs` applied to `x`: in bf16 with `x` packed once for all of them.
    fn apply_all<const N: usize>(
        projs: [&Proj; N],
        x: &Tensor,
    ) -> candle_core::Result<[Tensor; N]> {
        let ys = if let Some(packs) = Self::bf16_packs(&projs) {
            let ws: Vec<_> = projs.iter().map(|p| &p.w).zip(&packs).collect();
            ops::linears_bf16(x, &ws)?
        } else {
            projs
                .iter()
                .map(|p| p.apply(x))
                .collect::<candle_core::Result<_>>()?
        };
        ys.try_into()
            .map_err(|_| candle_core::Error::Msg("internal: projection count".into()))
    }

    /// Each of `projs` applied to `rms_norm(x, norm, eps)`: in bf16 inference without storing the
    /// normalised input (see [`ops::normed_linears_bf16`]), else normalised first.
    fn apply_all_normed<const N: usize>(
        projs: [&Proj; N],
        x: &Tensor,
        norm: &Tensor,
        eps: f64,
    ) -> candle_core::Result<[Tensor; N]> {
        if let Some(packs) = Self::bf16_packs(&projs) {
            let ws: Vec<_> = projs.iter().map(|p| &p.w).zip(&packs).collect();
            if let Some(ys) = ops::normed_linears_bf16(x, norm, eps, &ws)? {
                return ys
                    .try_into()
                    .map_err(|_| candle_core::Error::Msg("internal: projection count".into()));
            }
        }
        Self::apply_all(projs, &rms_norm(x, norm, eps)?)
    }

    fn prepare(&mut self) -> candle_core::Result<()> {
        if self.packs.is_none() && crate::fused::cpu_f32(&self.w) {
            self.t = Some(ops::transposed(&self.w)?);
        }
        Ok(())
    }

    fn set_precision(&mut self, p: Precision) {
        self.packs = p.is_bf16().then(|| Mutex::new(Arc::default()));
        if p.is_bf16() {
            self.t = None; // the packed copies serve inference too
        }
    }

    fn renew(&self) {
        if let Some(packs) = &self.packs {
            *packs.lock().unwrap_or_else(|e| e.into_inner()) = Arc::default();
        }
    }
}

struct Attention {
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

struct Block {
    input_norm: Tensor,
    attn: Attention,
    post_norm: Tensor,
    gate: Proj,
    up: Proj,
    down: Proj,
}

/// Keys and values seen so far, one (k, v) pair per layer, each [B, T, KVH, head_dim].
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(1).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A decoder with its weights. Cheap to build: it holds references to the given tensors.
pub struct Model {
    cfg: ModelConfig,
    params: BTreeMap<String, Tensor>,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Proj,
    device: Device,
    precision: Precision,
}

impl Model {
    /// Builds the model over `params`, which must hold exactly the parameters [`parameter_shapes`] names,
    /// with those shapes, in f32. A tied model may also carry a `lm_head.weight` (some exporters write
    /// it); it is ignored.
    pub fn new(
        cfg: ModelConfig,
        mut params: BTreeMap<String, Tensor>,
    ) -> Result<Model, ModelError> {
        cfg.validate()?;
        if cfg.tie_word_embeddings {
            params.remove("lm_head.weight");
        }
        let expected = parameter_shapes(&cfg);
        for (name, shape) in &expected {
            let t = params.get(name).ok_or_else(|| {
                ModelError::Weights(format!(
                    "missing tensor `{name}` (expected shape {shape:?})"
                ))
            })?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::Weights(format!(
                    "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                    t.dims()
                )));
            }
            if t.dtype() != DType::F32 {
                return Err(ModelError::Weights(format!(
                    "tensor `{name}` is {:?}, expected f32",
                    t.dtype()
                )));
            }
        }
        if params.len() != expected.len() {
            let known: std::collections::BTreeSet<&str> =
                expected.iter().map(|(n, _)| n.as_str()).collect();
            let extra: Vec<&str> = params
                .keys()
                .map(String::as_str)
                .filter(|n| !known.contains(n))
                .collect();
            return Err(ModelError::Weights(format!(
                "unexpected tensors for this config: {} (is config.json from the same model?)",
                extra.join(", ")
            )));
        }
        let get = |n: &str| params[n].clone();
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Block {
                    input_norm: get(&format!("{p}.input_layernorm.weight")),
                    attn: Attention {
                        q: Proj::new(get(&format!("{p}.self_attn.q_proj.weight"))),
                        k: Proj::new(get(&format!("{p}.self_attn.k_proj.weight"))),
                        v: Proj::new(get(&format!("{p}.self_attn.v_proj.weight"))),
                        o: Proj::new(get(&format!("{p}.self_attn.o_proj.weight"))),
                        q_norm: cfg
                            .qk_norm()
                            .then(|| get(&format!("{p}.self_attn.q_norm.weight"))),
                        k_norm: cfg
                            .qk_norm()
                            .then(|| get(&format!("{p}.self_attn.k_norm.weight"))),
                    },
                    post_norm: get(&format!("{p}.post_attention_layernorm.weight")),
                    gate: Proj::new(get(&format!("{p}.mlp.gate_proj.weight"))),
                    up: Proj::new(get(&format!("{p}.mlp.up_proj.weight"))),
                    down: Proj::new(get(&format!("{p}.mlp.down_proj.weight"))),
                }
            })
            .collect();
        let embed = get("model.embed_tokens.weight");
        let lm_head = Proj::new(if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            get("lm_head.weight")
        });
        let device = embed.device().clone();
        Ok(Model {
            norm: get("model.norm.weight"),
            cfg,
            params,
            embed,
            blocks,
            lm_head,
            device,
            precision: Precision::F32,
        })
    }

    /// The same model set up for forward passes only (scoring, generation, evaluation): on the CPU
    /// each Linear weight also gets a transposed copy, which makes the matmuls 10–25% faster for
    /// ≈ 1× the weights' size in extra memory. Gradients still flow, but to the copies, so a model
    /// being trained must not be built this way.
    pub fn for_inference(mut self) -> Result<Model, ModelError> {
        for p in self.projs_mut() {
            p.prepare()?;
        }
        Ok(self)
    }

    /// Computes in `p` from now on (see [`Precision`]).
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
        for proj in self.projs_mut() {
            proj.set_precision(p);
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Tells the model its weights were changed in place (an optimizer step): the bf16 copies made from
    /// the old values are dropped and made again on next use. Without this call a bf16 forward refuses
    /// to run on a changed weight.
    pub fn weights_changed(&self) {
        for p in self.projs() {
            p.renew();
        }
    }

    fn projs(&self) -> impl Iterator<Item = &Proj> {
        (self.blocks.iter())
            .flat_map(|b| b.projs())
            .chain(std::iter::once(&self.lm_head))
    }

    fn projs_mut(&mut self) -> impl Iterator<Item = &mut Proj> {
        (self.blocks.iter_mut())
            .flat_map(|b| b.projs_mut())
            .chain(std::iter::once(&mut self.lm_head))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The weights by HF name (tied models have no `lm_head.weight`).
    pub fn parameters(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final hidden states [B, T, hidden] for `ids` [B, T] (u32), continuing `cache` when given.
    fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor, ModelError> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        self.check_length(offset + t)?;
        let max_id = ids.max_keepdim(1)?.max(0)?.squeeze(0)?.to_scalar::<u32>()?;
        self.check_id(max_id)?;
        let (cos, sin) = self.rope(offset, t)?;
        let x = self.embed_rows(&ids.flatten_all()?, (b, t))?;
        let mut caches: Vec<&mut KvCache> = cache.into_iter().collect();
        self.through_blocks(x, (&cos, &sin), &[(0, t)], &mut caches)
    }

    /// Runs `x` [B, T, hidden] through every block (the final norm is the caller's). `spans` (start,
    /// length) cut the T axis into sequences that attend only within themselves, the i-th continuing
    /// `caches[i]` when there is one.
    fn through_blocks(
        &self,
        mut x: Tensor,
        rope: (&Tensor, &Tensor),
        spans: &[(usize, usize)],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor, ModelError> {
        for c in caches.iter_mut() {
            c.layers.resize_with(self.blocks.len(), || None);
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let slots = (caches.iter_mut().map(|c| Some(&mut c.layers[i])))
                .chain(std::iter::repeat_with(|| None));
            let mut pieces: Vec<Piece> = (spans.iter().zip(slots))
                .map(|(&(start, len), slot)| Piece { start, len, slot })
                .collect();
            x = block.forward(&x, &self.cfg, rope, self.precision, &mut pieces)?;
        }
        Ok(x)
    }

    /// The final norm of rows of the last block's output.
    fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm(x, &self.norm, self.cfg.rms_norm_eps)
    }

    fn check_length(&self, positions: usize) -> Result<(), ModelError> {
        if positions > self.cfg.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "sequence of {positions} positions exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    fn check_id(&self, max_id: u32) -> Result<(), ModelError> {
        if max_id as usize >= self.cfg.vocab_size {
            return Err(ModelError::Input(format!(
                "token id {max_id} is outside the vocabulary (vocab_size {})",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    fn rope(&self, offset: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim();
        ops::rope_tables(hd, self.cfg.rope_theta, offset, len, &self.device)
    }

    /// The embeddings of `ids` (u32, flat), shaped [B, T, hidden].
    fn embed_rows(&self, ids: &Tensor, (b, t): (usize, usize)) -> candle_core::Result<Tensor> {
        (self.embed.index_select(ids, 0)?).reshape((b, t, self.cfg.hidden_size))
    }

    /// Logits for every position: [B, T, vocab].
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.hidden(ids, None)?;
        let eps = self.cfg.rms_norm_eps;
        let [logits] = Proj::apply_all_normed([&self.lm_head], &h, &self.norm, eps)?;
        Ok(logits)
    }

    /// `log p(targets[b, t] | ids[b, ..=t])` for every position: [B, T]. `targets` is u32 [B, T].
    pub fn token_logprobs(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor, ModelError> {
        let (b, t) = ids.dims2()?;
        if targets.dims() != [b, t] {
            return Err(ModelError::Input(format!(
                "targets {:?} do not match ids {:?}",
                targets.dims(),
                ids.dims()
            )));
        }
        let logits = self.forward(ids)?.reshape((b * t, self.cfg.vocab_size))?;
        Ok(ops::token_logprobs(&logits, &targets.flatten_all()?)?.reshape((b, t))?)
    }

    /// Mean next-token cross-entropy over the positions where `weights` ([B, T], f32) is non-zero
    /// (all positions when `None`): the scalar training loss.
    pub fn loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        weights: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let lp = self.token_logprobs(ids, targets)?;
        Ok(match weights {
            None => lp.mean_all()?.neg()?,
            Some(w) => {
                let count = w.sum_all()?.to_scalar::<f32>()?;
                if count <= 0.0 {
                    return Err(ModelError::Input(
                        "loss weights are all zero: no token to learn from".into(),
                    ));
                }
                (lp * w)?.sum_all()?.affine(-1.0 / count as f64, 0.0)?
            }
        })
    }

    /// Feeds `ids` [B, T] after what `cache` holds and returns the logits of the last position [B, vocab].
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let t = ids.dim(1)?;
        let h = self.hidden(ids, Some(cache))?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
        Ok(self.lm_head.apply(&self.final_norm(&last)?)?)
    }

    /// Feeds several sequences at once, each `ids` after what its own cache holds, and returns the
    /// logits of each one's last position [S, vocab]. Their rows share every matrix product (one per
    /// layer for all of them, which is what makes batched decoding fast); attention stays within each
    /// sequence. One segment gives the same numbers as [`Model::forward_cached`].
    pub fn forward_packed(&self, segments: &mut [Segment]) -> Result<Tensor, ModelError> {
        let mut ids: Vec<u32> = Vec::new();
        let (mut spans, mut cos, mut sin) = (Vec::new(), Vec::new(), Vec::new());
        for s in segments.iter() {
            if s.ids.is_empty() {
                return Err(ModelError::Input("a packed segment has no ids".into()));
            }
            let offset = s.cache.len();
            self.check_length(offset + s.ids.len())?;
            let (c, si) = self.rope(offset, s.ids.len())?;
            spans.push((ids.len(), s.ids.len()));
            cos.push(c);
            sin.push(si);
            ids.extend_from_slice(s.ids);
        }
        let Some(&max_id) = ids.iter().max() else {
            return Err(ModelError::Input("no segment to feed".into()));
        };
        self.check_id(max_id)?;
        let (cos, sin) = (Tensor::cat(&cos, 0)?, Tensor::cat(&sin, 0)?);
        let n = ids.len();
        let x = self.embed_rows(&Tensor::new(ids, &self.device)?, (1, n))?;
        let mut caches: Vec<&mut KvCache> = segments.iter_mut().map(|s| &mut *s.cache).collect();
        let h = self.through_blocks(x, (&cos, &sin), &spans, &mut caches)?;
        let last: Vec<u32> = spans.iter().map(|&(s, l)| (s + l - 1) as u32).collect();
        let rows = h
            .squeeze(0)?
            .index_select(&Tensor::new(last, &self.device)?, 0)?;
        Ok(self.lm_head.apply(&self.final_norm(&rows)?)?)
    }
}

impl Block {
    fn projs(&self) -> [&Proj; 7] {
        let a = &self.attn;
        [&a.q, &a.k, &a.v, &a.o, &self.gate, &self.up, &self.down]
    }

    fn projs_mut(&mut self) -> [&mut Proj; 7] {
        let a = &mut self.attn;
        [
            &mut a.q,
            &mut a.k,
            &mut a.v,
            &mut a.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }

    fn forward(
        &self,
        x: &Tensor,
        cfg: &ModelConfig,
        rope: (&Tensor, &Tensor),
        precision: Precision,
        pieces: &mut [Piece],
    ) -> candle_core::Result<Tensor> {
        let eps = cfg.rms_norm_eps;
        let a = &self.attn;
        let qkv = Proj::apply_all_normed([&a.q, &a.k, &a.v], x, &self.input_norm, eps)?;
        let x = ops::add(x, &self.attn.forward(qkv, cfg, rope, precision, pieces)?)?;
        let [gate, up] = Proj::apply_all_normed([&self.gate, &self.up], &x, &self.post_norm, eps)?;
        let mlp = self.down.apply_to_swiglu(&gate, &up)?;
        ops::add(&x, &mlp)
    }
}

impl Attention {
    /// Attention over the q, k and v projections of the block's normalised input.
    fn forward(
        &self,
        [q, k, v]: [Tensor; 3],
        cfg: &ModelConfig,
        (cos, sin): (&Tensor, &Tensor),
        precision: Precision,
        pieces: &mut [Piece],
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        // Everything stays in the projections' [B, T, heads, head_dim] layout: no transposes.
        let mut q = q.reshape((b, t, nh, hd))?;
        let mut k = k.reshape((b, t, nkv, hd))?;
        let v = v.reshape((b, t, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm(&q, qn, cfg.rms_norm_eps)?;
            k = rms_norm(&k, kn, cfg.rms_norm_eps)?;
        }
        let q = ops::rope(&q, cos, sin)?;
        let k = ops::rope(&k, cos, sin)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let outs = (pieces.iter_mut())
            .map(|p| p.attend((&q, &k, &v), scale, precision.is_bf16()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let out = Tensor::cat(&outs, 1)?.reshape((b, t, nh * hd))?;
        self.o.apply(&out)
    }
}

/// One sequence of a packed forward, as [`Model::forward_packed`] takes it: its new ids, fed after
/// what its cache holds.
pub struct Segment<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Where one sequence's rows lie on the T axis of a layer's input, and its cache slot in that layer.
struct Piece<'a> {
    start: usize,
    len: usize,
    slot: Option<&'a mut Option<(Tensor, Tensor)>>,
}

impl Piece<'_> {
    /// Causal attention of this piece's queries over its cached and new keys and values (q, k, v in
    /// [B, T, heads, head_dim]); the new keys and values join the cache.
    fn attend(
        &mut self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        scale: f64,
        bf16: bool,
    ) -> candle_core::Result<Tensor> {
        let cut = |t: &Tensor| t.narrow(1, self.start, self.len);
        let (q, k, v) = (cut(q)?, cut(k)?, cut(v)?);
        let (k, v) = match self.slot.as_deref_mut() {
            None => (k, v),
            Some(slot) => {
                let kv = match slot.take() {
                    None => (k, v),
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
                };
                *slot = Some(kv.clone());
                kv
            }
        };
        ops::causal_attention_in(&q, &k, &v, scale, bf16)
    }
}

/// The index of the largest value of a 1-D tensor (greedy decoding).
pub fn argmax(logits: &Tensor) -> Result<u32, ModelError> {
    Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?)
}
