//! Preference losses (the TRL `DPOTrainer` family; docs/dpo-losses.md gives each formula) and their
//! metrics, on per-pair summed completion log-probs. Every loss is built from differentiable candle ops, so the
//! gradient reaches the policy through `lc` / `lr`; reference values are constants.

use std::collections::BTreeMap;

use candle_core::{Result as CResult, Tensor};

use zerolm_train::TrainError;

/// One loss of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Sigmoid,
    Hinge,
    Ipo,
    Robust,
    ExoPair,
    NcaPair,
    BcoPair,
    SppoHard,
    ApoZero,
    ApoDown,
    Discopop,
    SigmoidNorm,
    Aot,
    AotUnpaired,
    Sft,
    Simpo,
    Orpo,
}

pub const LOSS_NAMES: &[(&str, LossKind)] = &[
    ("sigmoid", LossKind::Sigmoid),
    ("hinge", LossKind::Hinge),
    ("ipo", LossKind::Ipo),
    ("robust", LossKind::Robust),
    ("exo_pair", LossKind::ExoPair),
    ("nca_pair", LossKind::NcaPair),
    ("bco_pair", LossKind::BcoPair),
    ("sppo_hard", LossKind::SppoHard),
    ("apo_zero", LossKind::ApoZero),
    ("apo_down", LossKind::ApoDown),
    ("discopop", LossKind::Discopop),
    ("sigmoid_norm", LossKind::SigmoidNorm),
    ("aot", LossKind::Aot),
    ("aot_unpaired", LossKind::AotUnpaired),
    ("sft", LossKind::Sft),
    ("simpo", LossKind::Simpo),
    ("orpo", LossKind::Orpo),
];

impl LossKind {
    /// Whether the loss uses reference log-probs.
    pub fn needs_reference(self) -> bool {
        !matches!(self, LossKind::Sft | LossKind::Simpo | LossKind::Orpo)
    }

    /// Whether `--label-smoothing` enters the loss (TRL 1.16: robust, exo_pair, aot, aot_unpaired).
    fn uses_label_smoothing(self) -> bool {
        matches!(
            self,
            LossKind::Robust | LossKind::ExoPair | LossKind::Aot | LossKind::AotUnpaired
        )
    }

    /// Whether the loss is built on the reward difference, so that a non-default f-divergence is
    /// defined for it (TRL's list; the others would keep a β·log Z(x) term that no longer cancels).
    fn allows_f_divergence(self) -> bool {
        matches!(
            self,
            LossKind::Sigmoid
                | LossKind::SigmoidNorm
                | LossKind::Hinge
                | LossKind::Ipo
                | LossKind::ExoPair
                | LossKind::Robust
                | LossKind::Discopop
                | LossKind::Sft
        )
    }

    /// aot and aot_unpaired sort the batch, so a pair's loss is not that pair's.
    fn sorts_the_batch(self) -> bool {
        matches!(self, LossKind::Aot | LossKind::AotUnpaired)
    }
}

/// `--f-divergence-type`: the divergence the policy is regularised with; it turns each log-ratio into the
/// score the reward-difference losses compare (f-DPO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    /// The standard DPO: the score is the log-ratio itself.
    ReverseKl,
    /// 1 − e^(−r).
    ForwardKl,
    /// ln 2 + log σ(r).
    JsDivergence,
    /// (e^((α−1)·r) − 1)/(α−1), with α = `--f-alpha-divergence-coef`.
    AlphaDivergence,
}

impl FDivergence {
    pub const NAMES: &'static [&'static str] = &[
        "reverse_kl",
        "forward_kl",
        "js_divergence",
        "alpha_divergence",
    ];

    pub fn parse(s: &str) -> Result<FDivergence, TrainError> {
        Ok(match s {
            "reverse_kl" => FDivergence::ReverseKl,
            "forward_kl" => FDivergence::ForwardKl,
            "js_divergence" => FDivergence::JsDivergence,
            "alpha_divergence" => FDivergence::AlphaDivergence,
            _ => {
                return Err(TrainError::Config(format!(
                    "--f-divergence-type: unknown value `{s}` (expected one of: {})",
                    FDivergence::NAMES.join(", ")
                )))
            }
        })
    }
}

/// `--loss`: one or more losses with weights, e.g. `sigmoid` or `sigmoid:1,sft:0.2` (RPO).
#[derive(Clone, Debug, PartialEq)]
pub struct LossSpec(pub Vec<(LossKind, f64)>);

impl LossSpec {
    pub fn parse(s: &str) -> Result<LossSpec, TrainError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once(':') {
                Some((n, w)) => {
                    let w: f64 = w.trim().parse().map_err(|_| {
                        TrainError::Config(format!(
                            "--loss {s}: weight `{w}` of `{n}` is not a number"
                        ))
                    })?;
                    (n.trim(), w)
                }
                None => (part, 1.0),
            };
            let kind = LOSS_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    let known: Vec<&str> = LOSS_NAMES.iter().map(|(n, _)| *n).collect();
                    TrainError::Config(format!(
                        "--loss {s}: unknown loss `{name}`; known: {}",
                        known.join(", ")
                    ))
                })?;
            out.push((kind, weight));
        }
        if out.is_empty() {
            return Err(TrainError::Config("--loss is empty".into()));
        }
        if let Some((k, w)) = out.iter().find(|(_, w)| !w.is_finite()) {
            return Err(TrainError::Config(format!(
                "--loss {s}: the weight of {k:?} must be a finite number, got {w}"
            )));
        }
        Ok(LossSpec(out))
    }

    pub fn needs_reference(&self) -> bool {
        self.0.iter().any(|(k, _)| k.needs_reference())
    }

    pub fn has(&self, kind: LossKind) -> bool {
        self.0.iter().any(|(k, _)| *k == kind)
    }
}

/// Loss constants.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossParams {
    pub beta: f64,
    /// ε of `robust`, `exo_pair`, `aot` and `aot_unpaired`.
    pub label_smoothing: f64,
    /// τ of `discopop`.
    pub discopop_tau: f64,
    /// γ of `simpo` (subtracted from the β-scaled length-normalised margin).
    pub simpo_gamma: f64,
    /// λ of `orpo`.
    pub orpo_lambda: f64,
    /// The f-divergence the reward-difference losses use.
    pub f_divergence: FDivergence,
    /// α of `alpha_divergence`.
    pub f_alpha_divergence_coef: f64,
    /// WPO: each pair's loss × the detached weights of its chosen and rejected completions.
    pub use_weighting: bool,
    /// LD-DPO: completion tokens past the shorter completion of a pair count with this weight.
    pub ld_alpha: Option<f64>,
}

/// The loss settings as given on the command line; [`LossOptions::resolve`] checks them.
#[derive(Clone, Debug)]
pub struct LossOptions {
    /// `--loss`, e.g. `sigmoid` or `sigmoid:1,sft:0.2`.
    pub loss: String,
    /// β; by default 0.1 (the article's), or 2.0 when the loss is `simpo` alone (SimPO's scale).
    pub beta: Option<f64>,
    pub label_smoothing: f64,
    pub simpo_gamma: f64,
    pub orpo_lambda: f64,
    /// `--f-divergence-type` (a name of [`FDivergence::NAMES`]).
    pub f_divergence: String,
    pub f_alpha_divergence_coef: f64,
    pub use_weighting: bool,
    pub ld_alpha: Option<f64>,
    /// TR-DPO's `sync_ref_model`: refused (see [`LossOptions::resolve`]).
    pub sync_ref_model: bool,
}

impl Default for LossOptions {
    fn default() -> Self {
        LossOptions {
            loss: "sigmoid".into(),
            beta: None,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            orpo_lambda: 0.1,
            f_divergence: "reverse_kl".into(),
            f_alpha_divergence_coef: 0.5,
            use_weighting: false,
            ld_alpha: None,
            sync_ref_model: false,
        }
    }
}

impl LossOptions {
    /// The loss mix and its constants, or an error naming the flag that cannot work.
    pub fn resolve(&self) -> Result<(LossSpec, LossParams), TrainError> {
        let spec = LossSpec::parse(&self.loss)?;
        self.check_reference_sync()?;
        self.check_label_smoothing(&spec)?;
        let f_divergence = self.check_f_divergence(&spec)?;
        self.check_weighting(&spec)?;
        let params = LossParams {
            beta: self.beta(&spec)?,
            label_smoothing: self.label_smoothing,
            simpo_gamma: self.simpo_gamma,
            orpo_lambda: self.orpo_lambda,
            f_divergence,
            f_alpha_divergence_coef: self.f_alpha_divergence_coef,
            use_weighting: self.use_weighting,
            ld_alpha: self.ld_alpha,
            ..Default::default()
        };
        Ok((spec, params))
    }

    fn check_reference_sync(&self) -> Result<(), TrainError> {
        if self.sync_ref_model {
            return Err(TrainError::Config(
                "--sync-ref-model (TR-DPO) is not supported: zerolm computes the reference log-probs once \
                 (a `ref-logprobs` cache, or --ref-model at start) and reuses them every step and on resume, \
                 while TR-DPO moves the reference toward the policy during training, so every cached value \
                 would go stale. Train without it."
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_label_smoothing(&self, spec: &LossSpec) -> Result<(), TrainError> {
        let e = self.label_smoothing;
        if !(0.0..0.5).contains(&e) {
            return Err(TrainError::Config(format!(
                "--label-smoothing must be in [0, 0.5), got {e}"
            )));
        }
        if spec.has(LossKind::ExoPair) && e <= 0.0 {
            return Err(TrainError::Config(
                "exo_pair needs --label-smoothing > 0 (1e-3 is typical)".into(),
            ));
        }
        if e > 0.0 && !spec.0.iter().any(|(k, _)| k.uses_label_smoothing()) {
            return Err(TrainError::Config(
                "--label-smoothing applies to robust, exo_pair, aot and aot_unpaired only; this --loss would \
                 ignore it"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_f_divergence(&self, spec: &LossSpec) -> Result<FDivergence, TrainError> {
        let f = FDivergence::parse(&self.f_divergence)?;
        if f != FDivergence::ReverseKl {
            if let Some((k, _)) = spec.0.iter().find(|(k, _)| !k.allows_f_divergence()) {
                return Err(TrainError::Config(format!(
                    "--f-divergence-type {} works only with the losses built on the chosen-minus-rejected reward \
                     (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft): for {k:?} the \
                     partition term of f-DPO does not cancel. Use --f-divergence-type reverse_kl with it",
                    self.f_divergence
                )));
            }
        }
        let a = self.f_alpha_divergence_coef;
        if !a.is_finite() {
            return Err(TrainError::Config(format!(
                "--f-alpha-divergence-coef must be a finite number, got {a}"
            )));
        }
        Ok(f)
    }

    fn check_weighting(&self, spec: &LossSpec) -> Result<(), TrainError> {
        if self.use_weighting && spec.0.iter().any(|(k, _)| k.sorts_the_batch()) {
            return Err(TrainError::Config(
                "--use-weighting (WPO) cannot be combined with aot or aot_unpaired: they sort the batch, so a \
                 pair's weights would multiply another pair's loss"
                    .into(),
            ));
        }
        if let Some(a) = self.ld_alpha {
            if !(0.0..=1.0).contains(&a) {
                return Err(TrainError::Config(format!(
                    "--ld-alpha must be in [0, 1], got {a}"
                )));
            }
        }
        Ok(())
    }

    // `!(x > 0.0)` is meant: unlike `x <= 0.0` it also rejects NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    fn beta(&self, spec: &LossSpec) -> Result<f64, TrainError> {
        let simpo_only = spec.0.iter().all(|(k, _)| *k == LossKind::Simpo);
        let beta = self.beta.unwrap_or(if simpo_only { 2.0 } else { 0.1 });
        if !(beta > 0.0 && beta.is_finite()) {
            return Err(TrainError::Config(format!(
                "--beta must be a positive number, got {beta}"
            )));
        }
        Ok(beta)
    }
}

impl Default for LossParams {
    fn default() -> Self {
        LossParams {
            beta: 0.1,
            label_smoothing: 0.0,
            discopop_tau: 0.05,
            simpo_gamma: 0.5,
            orpo_lambda: 0.1,
            f_divergence: FDivergence::ReverseKl,
            f_alpha_divergence_coef: 0.5,
            use_weighting: false,
            ld_alpha: None,
        }
    }
}

/// Per-pair inputs, each [N] f32: policy (tracked) and reference (constant) summed completion
/// log-probs (LD-weighted with `--ld-alpha`) and completion lengths in tokens.
pub struct Pairs {
    pub lc: Tensor,
    pub lr: Tensor,
    pub rc: Option<Tensor>,
    pub rr: Option<Tensor>,
    pub len_c: Tensor,
    pub len_r: Tensor,
    /// The chosen completions' plain summed log-probs (the `sft` term's; equal to `lc` without LD).
    pub lc_plain: Tensor,
    /// WPO: per pair, the product of its chosen and rejected weights (constant).
    pub weights: Option<Tensor>,
}

impl Pairs {
    /// Pairs without LD weighting or WPO weights.
    pub fn new(
        lc: Tensor,
        lr: Tensor,
        reference: Option<(Tensor, Tensor)>,
        len_c: Tensor,
        len_r: Tensor,
    ) -> Pairs {
        let (rc, rr) = reference.unzip();
        Pairs {
            lc_plain: lc.clone(),
            lc,
            lr,
            rc,
            rr,
            len_c,
            len_r,
            weights: None,
        }
    }
}

/// log σ(x), stably: min(x, 0) − log(1 + e^(−|x|)), with min(x, 0) written as (x − |x|)/2 so the
/// gradient at exactly 0 is σ(0) = ½ (candle's relu′(0) = |·|′(0) = 1 would give 1.5 otherwise; a
/// policy equal to its reference sits at exactly 0 on the first step).
pub fn log_sigmoid(x: &Tensor) -> CResult<Tensor> {
    let min0 = ((x - x.abs()?)? * 0.5)?;
    min0 - (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

pub fn sigmoid(x: &Tensor) -> CResult<Tensor> {
    log_sigmoid(x)?.exp()
}

/// The per-pair loss [N] of a pairwise kind (not `sft`, which is a batch token mean).
pub fn per_pair(kind: LossKind, p: &Pairs, k: &LossParams) -> Result<Tensor, TrainError> {
    match kind {
        LossKind::Sft => Err(TrainError::Internal("sft is not a pairwise loss".into())),
        LossKind::Simpo | LossKind::Orpo => Ok(reference_free(kind, p, k)?),
        _ => {
            let (Some(rc), Some(rr)) = (&p.rc, &p.rr) else {
                return Err(TrainError::Config(format!(
                    "loss {kind:?} needs reference log-probs"
                )));
            };
            let (cl, rl) = ((&p.lc - rc)?, (&p.lr - rr)?);
            Ok(match kind {
                LossKind::Aot => {
                    let policy = sorted(&(&p.lc - &p.lr)?)?;
                    let reference = sorted(&(rc - rr)?)?;
                    smoothed_logistic(&(policy - reference)?, k)?
                }
                LossKind::AotUnpaired => smoothed_logistic(&(sorted(&cl)? - sorted(&rl)?)?, k)?,
                _ => {
                    let score = |r: &Tensor| f_score(r, k);
                    against_reference(kind, score(&cl)?, score(&rl)?, p, k)?
                }
            })
        }
    }
}

/// `x` [N] sorted ascending, differentiably (the order is taken from the values, the gradient flows
/// through the gather).
fn sorted(x: &Tensor) -> CResult<Tensor> {
    let v: Vec<f32> = x.detach().to_vec1()?;
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    idx.sort_by(|&a, &b| v[a as usize].total_cmp(&v[b as usize]));
    let idx = Tensor::from_vec(idx, v.len(), x.device())?;
    x.index_select(&idx, 0)
}

/// −(1−ε)·log σ(β·δ) − ε·log σ(−β·δ): the aot losses on their sorted margins δ.
fn smoothed_logistic(delta: &Tensor, k: &LossParams) -> CResult<Tensor> {
    let z = (delta * k.beta)?;
    let e = k.label_smoothing;
    (log_sigmoid(&z)? * -(1.0 - e))? - (log_sigmoid(&z.neg()?)? * e)?
}

/// The f-divergence score of log-ratios `r` (the log-ratio itself for reverse KL).
fn f_score(r: &Tensor, k: &LossParams) -> CResult<Tensor> {
    match k.f_divergence {
        FDivergence::ReverseKl => Ok(r.clone()),
        FDivergence::ForwardKl => r.neg()?.exp()?.affine(-1.0, 1.0),
        FDivergence::JsDivergence => log_sigmoid(r)?.affine(1.0, std::f64::consts::LN_2),
        FDivergence::AlphaDivergence => {
            let a = k.f_alpha_divergence_coef;
            if (a - 1.0).abs() < 1e-6 {
                // the limit α → 1 is the log-ratio
                return Ok(r.clone());
            }
            // clamped so that e^t stays finite in f32
            let t = (r * (a - 1.0))?.minimum(80.0)?;
            t.exp()?.affine(1.0 / (a - 1.0), -1.0 / (a - 1.0))
        }
    }
}

/// A loss on the log-ratios `cl` = lc − rc and `rl` = lr − rr.
fn against_reference(
    kind: LossKind,
    cl: Tensor,
    rl: Tensor,
    p: &Pairs,
    k: &LossParams,
) -> CResult<Tensor> {
    let beta = k.beta;
    Ok(match kind {
        LossKind::Sigmoid => log_sigmoid(&((cl - rl)? * beta)?)?.neg()?,
        LossKind::Hinge => ((cl - rl)? * -beta)?.affine(1.0, 1.0)?.relu()?,
        LossKind::Ipo => {
            let d = ((cl / &p.len_c)? - (rl / &p.len_r)?)?;
            d.affine(1.0, -1.0 / (2.0 * beta))?.sqr()?
        }
        LossKind::Robust => {
            let z = ((cl - rl)? * beta)?;
            let e = k.label_smoothing;
            ((log_sigmoid(&z)? * -(1.0 - e))? + (log_sigmoid(&z.neg()?)? * e)?)?
                .affine(1.0 / (1.0 - 2.0 * e), 0.0)?
        }
        LossKind::ExoPair => {
            let e = k.label_smoothing;
            let z = ((cl - rl)? * beta)?;
            let q = sigmoid(&z)?;
            let log_q = log_sigmoid(&z)?;
            let log_1mq = log_sigmoid(&z.neg()?)?;
            let a = (q.clone() * log_q.affine(1.0, -(1.0 - e).ln())?)?;
            let b = (q.affine(-1.0, 1.0)? * log_1mq.affine(1.0, -e.ln())?)?;
            (a + b)?
        }
        LossKind::NcaPair => {
            let c = (cl * beta)?;
            let r = (rl * beta)?;
            ((log_sigmoid(&c)?.neg()? - (log_sigmoid(&c.neg()?)? * 0.5)?)?
                - (log_sigmoid(&r.neg()?)? * 0.5)?)?
        }
        LossKind::BcoPair => (log_sigmoid(&(cl * beta)?)?.neg()? - log_sigmoid(&(rl * -beta)?)?)?,
        LossKind::SppoHard => {
            let h = 1.0 / (2.0 * beta);
            (cl.affine(1.0, -h)?.sqr()? + rl.affine(1.0, h)?.sqr()?)?
        }
        LossKind::ApoZero => {
            (sigmoid(&(cl * beta)?)?.affine(-1.0, 1.0)? + sigmoid(&(rl * beta)?)?)?
        }
        LossKind::ApoDown => {
            let d = ((&cl - &rl)? * beta)?;
            (sigmoid(&(cl * beta)?)? + sigmoid(&d)?.affine(-1.0, 1.0)?)?
        }
        LossKind::Discopop => {
            let z = ((cl - rl)? * beta)?;
            let m = sigmoid(&(&z / k.discopop_tau)?)?;
            let logistic = log_sigmoid(&z)?.neg()?;
            // m·e^(−z) as exp(log m − z): no 0·∞ when z is very negative
            let m_exp = (log_sigmoid(&(&z / k.discopop_tau)?)? - &z)?.exp()?;
            ((m.affine(-1.0, 1.0)? * logistic)? + m_exp)?
        }
        LossKind::SigmoidNorm => {
            log_sigmoid(&(((cl / &p.len_c)? - (rl / &p.len_r)?)? * beta)?)?.neg()?
        }
        _ => unreachable!("{kind:?} is not a loss against the reference"),
    })
}

/// `simpo` and `orpo`, on the policy's log-probs alone.
fn reference_free(kind: LossKind, p: &Pairs, k: &LossParams) -> CResult<Tensor> {
    let beta = k.beta;
    Ok(match kind {
        LossKind::Simpo => {
            let m = ((&p.lc / &p.len_c)? - (&p.lr / &p.len_r)?)?;
            log_sigmoid(&m.affine(beta, -k.simpo_gamma)?)?.neg()?
        }
        LossKind::Orpo => {
            // log odds of each completion from its mean token log-prob p̄: log p̄ − log(1 − p̄).
            // clamped below 0 so log(1 − e^m) stays finite for a memorised completion (m → 0)
            let mc = (&p.lc / &p.len_c)?.minimum(-1e-6)?;
            let mr = (&p.lr / &p.len_r)?.minimum(-1e-6)?;
            let log_odds =
                |m: &Tensor| -> CResult<Tensor> { m - m.exp()?.affine(-1.0, 1.0)?.log()? };
            let ratio = (log_odds(&mc)? - log_odds(&mr)?)?;
            (log_sigmoid(&ratio)? * -k.orpo_lambda)?
        }
        _ => unreachable!("{kind:?} needs a reference"),
    })
}

/// The batch loss: Σ weight · (mean over pairs of the per-pair loss), where `sft` (and orpo's NLL
/// term) is the token-mean cross-entropy of the chosen completions; with WPO each pair's loss (the
/// `sft` term too, as TRL does) is first multiplied by its pair weight.
pub fn batch_loss(spec: &LossSpec, p: &Pairs, k: &LossParams) -> Result<Tensor, TrainError> {
    let chosen_nll = || -> Result<Tensor, TrainError> {
        let tokens = p.len_c.sum_all()?.to_scalar::<f32>()? as f64;
        Ok(p.lc_plain.sum_all()?.affine(-1.0 / tokens.max(1.0), 0.0)?)
    };
    let weighted_mean = |per_pair: Tensor| -> Result<Tensor, TrainError> {
        Ok(match &p.weights {
            Some(w) => (per_pair * w)?.mean_all()?,
            None => per_pair.mean_all()?,
        })
    };
    let mean_weight = || -> Result<f64, TrainError> {
        Ok(match &p.weights {
            Some(w) => w.mean_all()?.to_scalar::<f32>()? as f64,
            None => 1.0,
        })
    };
    let mut total: Option<Tensor> = None;
    for (kind, weight) in &spec.0 {
        let term = match kind {
            LossKind::Sft => (chosen_nll()? * mean_weight()?)?,
            LossKind::Orpo => {
                (weighted_mean(per_pair(*kind, p, k)?)? + (chosen_nll()? * mean_weight()?)?)?
            }
            _ => weighted_mean(per_pair(*kind, p, k)?)?,
        };
        let term = (term * *weight)?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    total.ok_or_else(|| TrainError::Config("no loss".into()))
}

/// TRL's metrics for a batch (without logits): rewards/* from β·(policy − reference) (or β·policy when
/// reference-free), logps/* the mean summed log-probs.
pub fn reward_metrics(p: &Pairs, beta: f64) -> Result<BTreeMap<String, f64>, TrainError> {
    let v = |t: &Tensor| -> Result<Vec<f64>, TrainError> {
        Ok(t.detach()
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?)
    };
    let (lc, lr) = (v(&p.lc)?, v(&p.lr)?);
    let (rc, rr) = match (&p.rc, &p.rr) {
        (Some(a), Some(b)) => (v(a)?, v(b)?),
        _ => (vec![0.0; lc.len()], vec![0.0; lr.len()]),
    };
    let n = lc.len() as f64;
    let chosen: Vec<f64> = lc.iter().zip(&rc).map(|(a, b)| beta * (a - b)).collect();
    let rejected: Vec<f64> = lr.iter().zip(&rr).map(|(a, b)| beta * (a - b)).collect();
    let mean = |x: &[f64]| x.iter().sum::<f64>() / n;
    let mut m = BTreeMap::new();
    m.insert("rewards/chosen".into(), mean(&chosen));
    m.insert("rewards/rejected".into(), mean(&rejected));
    m.insert("rewards/margins".into(), mean(&chosen) - mean(&rejected));
    m.insert(
        "rewards/accuracies".into(),
        chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count() as f64 / n,
    );
    m.insert("logps/chosen".into(), mean(&lc));
    m.insert("logps/rejected".into(), mean(&lr));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use std::f64::consts::LN_2;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn pairs(lc: &[f32], lr: &[f32], rc: &[f32], rr: &[f32]) -> Pairs {
        let n = lc.len();
        Pairs::new(
            t(lc),
            t(lr),
            Some((t(rc), t(rr))),
            t(&vec![5.0; n]),
            t(&vec![5.0; n]),
        )
    }

    fn vals(x: &Tensor) -> Vec<f32> {
        x.to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn test_vector_one_sigmoid_hinge_and_rewards() {
        let p = pairs(
            &[-0.5, -10.0, -1.0],
            &[-0.1, -30.0, -21.0],
            &[-0.5, -10.1, -0.1],
            &[-0.1, -20.1, -0.1],
        );
        let k = LossParams::default();
        close(
            &vals(&per_pair(LossKind::Sigmoid, &p, &k).unwrap()),
            &[LN_2, 0.313262, 0.126928],
        );
        close(
            &vals(&per_pair(LossKind::Hinge, &p, &k).unwrap()),
            &[1.0, 0.0, 0.0],
        );
        let m = reward_metrics(&p, 0.1).unwrap();
        assert!((m["rewards/chosen"] - (0.0 + 0.01 - 0.09) / 3.0).abs() < 1e-6);
        assert!((m["rewards/margins"] - 1.0).abs() < 1e-5, "{m:?}"); // mean of [0, 1, 2]
        assert!((m["rewards/accuracies"] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn test_vector_two_sigmoid_mean() {
        let p = pairs(
            &[-3.0, -2.5, -4.0, -1.5],
            &[-5.0, -3.5, -6.0, -2.5],
            &[-2.8, -2.3, -3.8, -1.4],
            &[-3.2, -2.7, -4.2, -1.8],
        );
        let k = LossParams::default();
        close(
            &vals(&per_pair(LossKind::Sigmoid, &p, &k).unwrap()),
            &[0.616344, 0.663597, 0.616344, 0.663597],
        );
        let mean = batch_loss(&LossSpec::parse("sigmoid").unwrap(), &p, &k)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((mean as f64 - 0.639970).abs() < 1e-5);
    }

    #[test]
    fn values_at_init_match_the_formula_sheet() {
        // policy = reference: Δ = cl = rl = 0.
        let p = pairs(&[-4.0, -7.0], &[-6.0, -2.0], &[-4.0, -7.0], &[-6.0, -2.0]);
        let mut k = LossParams::default();
        for (kind, want) in [
            (LossKind::Sigmoid, LN_2),
            (LossKind::Robust, LN_2),
            (LossKind::Hinge, 1.0),
            (LossKind::ApoZero, 1.0),
            (LossKind::ApoDown, 1.0),
            (LossKind::Ipo, 25.0),
            (LossKind::SppoHard, 50.0),
            (LossKind::NcaPair, 1.386294),
            (LossKind::BcoPair, 1.386294),
            (LossKind::Discopop, 0.846574),
            (LossKind::SigmoidNorm, LN_2),
        ] {
            close(&vals(&per_pair(kind, &p, &k).unwrap()), &[want, want]);
        }
        k.label_smoothing = 1e-3;
        close(
            &vals(&per_pair(LossKind::ExoPair, &p, &k).unwrap()),
            &[2.761231, 2.761231],
        );
        close(
            &vals(&per_pair(LossKind::Robust, &p, &k).unwrap()),
            &[LN_2, LN_2],
        );
        assert_eq!(reward_metrics(&p, 0.1).unwrap()["rewards/accuracies"], 0.0);
    }

    #[test]
    fn reference_free_losses_and_sft_combination() {
        let p = Pairs {
            rc: None,
            rr: None,
            ..pairs(&[-2.0, -3.0], &[-4.0, -3.0], &[0.0, 0.0], &[0.0, 0.0])
        };
        let k = LossParams {
            beta: 2.0,
            ..Default::default()
        };
        // simpo: −logσ(β·(lc/5 − lr/5) − γ) for pair 0: β·0.4 − 0.5 = 0.3
        let s = vals(&per_pair(LossKind::Simpo, &p, &k).unwrap());
        assert!(
            (s[0] as f64 - (1.0 + (-0.3f64).exp()).ln()).abs() < 1e-5,
            "{s:?}"
        );
        // orpo with equal completions has log-odds ratio 0: −λ·logσ(0) = λ·ln 2 (pair 1)
        let o = vals(&per_pair(LossKind::Orpo, &p, &k).unwrap());
        assert!((o[1] as f64 - 0.1 * 2f64.ln()).abs() < 1e-6, "{o:?}");
        // sft = token-mean NLL of chosen: (2 + 3) / 10
        let sft = batch_loss(&LossSpec::parse("sft").unwrap(), &p, &k)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((sft - 0.5).abs() < 1e-6);
        assert!(
            per_pair(LossKind::Sigmoid, &p, &k).is_err(),
            "sigmoid without a reference must refuse"
        );
        let spec = LossSpec::parse("sigmoid:1, sft:0.2").unwrap();
        assert_eq!(spec.0, vec![(LossKind::Sigmoid, 1.0), (LossKind::Sft, 0.2)]);
        assert!(LossSpec::parse("dpo")
            .unwrap_err()
            .to_string()
            .contains("known: sigmoid"));
        assert!(LossSpec::parse("sigmoid:x").is_err());
        assert!(!LossSpec::parse("simpo,sft").unwrap().needs_reference());
    }

    #[test]
    fn sigmoid_gradient_at_policy_equals_reference_is_minus_beta_over_2() {
        let lc = Var::new(&[-3.0f32, -2.0], &Device::Cpu).unwrap();
        let p = Pairs::new(
            lc.as_tensor().clone(),
            t(&[-5.0, -1.0]),
            Some((t(&[-3.0, -2.0]), t(&[-5.0, -1.0]))),
            t(&[4.0, 3.0]),
            t(&[5.0, 2.0]),
        );
        let loss = batch_loss(
            &LossSpec::parse("sigmoid").unwrap(),
            &p,
            &LossParams::default(),
        )
        .unwrap();
        let g = vals(loss.backward().unwrap().get(&lc).unwrap());
        // d/dlc mean(−logσ(βΔ)) = −β·σ(−βΔ)/N = −0.1·0.5/2 at Δ = 0
        close(&g, &[-0.025, -0.025]);
        // and a huge negative margin stays finite for discopop
        let far = pairs(&[-900.0], &[-1.0], &[-1.0], &[-1.0]);
        let d = vals(
            &per_pair(
                LossKind::Discopop,
                &far,
                &LossParams {
                    beta: 1.0,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        assert!(d[0].is_finite() || d[0] == f32::INFINITY, "{d:?}");
        assert!(!d[0].is_nan());
    }

    #[test]
    fn every_loss_passes_a_finite_gradient_to_the_policy() {
        for (name, kind) in LOSS_NAMES {
            let lc = Var::new(&[-3.0f32, -2.0], &Device::Cpu).unwrap();
            let lr = Var::new(&[-5.0f32, -1.0], &Device::Cpu).unwrap();
            let p = Pairs::new(
                lc.as_tensor().clone(),
                lr.as_tensor().clone(),
                Some((t(&[-2.5, -2.2]), t(&[-4.0, -1.5]))),
                t(&[4.0, 3.0]),
                t(&[5.0, 2.0]),
            );
            let k = LossParams {
                label_smoothing: 0.1,
                ..Default::default()
            };
            let loss = batch_loss(&LossSpec(vec![(*kind, 1.0)]), &p, &k).unwrap();
            let g = loss.backward().unwrap();
            let gc = vals(g.get(&lc).unwrap());
            assert!(
                gc.iter().all(|v| v.is_finite()) && gc.iter().any(|v| *v != 0.0),
                "{name}: {gc:?}"
            );
        }
    }

    #[test]
    fn aot_sorts_the_batch_and_f_divergences_score_the_log_ratios() {
        // policy margins lc − lr = [2, −1], reference margins rc − rr = [0, 1]: sorted, δ = [−1 − 0, 2 − 1]
        let p = pairs(&[-1.0, -3.0], &[-3.0, -2.0], &[-2.0, -2.0], &[-2.0, -3.0]);
        let k = LossParams {
            beta: 1.0,
            label_smoothing: 0.1,
            ..Default::default()
        };
        let smoothed = |d: f64| {
            let ls = |x: f64| -(1.0 + (-x).exp()).ln();
            -0.9 * ls(d) - 0.1 * ls(-d)
        };
        close(
            &vals(&per_pair(LossKind::Aot, &p, &k).unwrap()),
            &[smoothed(-1.0), smoothed(1.0)],
        );
        // cl = [1, −1], rl = [−1, 1]: sorted, δ = [−1 − (−1), 1 − 1] = 0
        close(
            &vals(&per_pair(LossKind::AotUnpaired, &p, &k).unwrap()),
            &[smoothed(0.0), smoothed(0.0)],
        );
        let r = t(&[0.5, -2.0]);
        let score = |f, a| {
            let k = LossParams {
                f_divergence: f,
                f_alpha_divergence_coef: a,
                ..Default::default()
            };
            vals(&f_score(&r, &k).unwrap())
        };
        close(&score(FDivergence::ReverseKl, 0.5), &[0.5, -2.0]);
        close(
            &score(FDivergence::ForwardKl, 0.5),
            &[1.0 - (-0.5f64).exp(), 1.0 - 2f64.exp()],
        );
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        close(
            &score(FDivergence::JsDivergence, 0.5),
            &[LN_2 + ls(0.5), LN_2 + ls(-2.0)],
        );
        let alpha = |x: f64| ((-0.7 * x).exp() - 1.0) / -0.7;
        close(
            &score(FDivergence::AlphaDivergence, 0.3),
            &[alpha(0.5), alpha(-2.0)],
        );
        close(&score(FDivergence::AlphaDivergence, 1.0), &[0.5, -2.0]);
    }

    #[test]
    fn wpo_weights_multiply_each_pairs_loss_and_the_sft_term() {
        let mut p = pairs(&[-4.0, -7.0], &[-6.0, -2.0], &[-4.0, -7.0], &[-6.0, -2.0]);
        p.weights = Some(t(&[0.5, 0.25]));
        let k = LossParams::default();
        let loss = |spec: &str| {
            batch_loss(&LossSpec::parse(spec).unwrap(), &p, &k)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        assert!((loss("sigmoid") - LN_2 * 0.375).abs() < 1e-6);
        // sft: (4 + 7) / 10 tokens, times the mean weight
        assert!((loss("sft") - 1.1 * 0.375).abs() < 1e-6);
    }

    fn options(loss: &str, beta: Option<f64>, label_smoothing: f64) -> LossOptions {
        LossOptions {
            loss: loss.into(),
            beta,
            label_smoothing,
            ..Default::default()
        }
    }

    #[test]
    fn loss_options_default_beta_per_loss_and_refuse_what_cannot_work() {
        let (spec, p) = options("sigmoid:1,sft:0.5", None, 0.0).resolve().unwrap();
        assert_eq!(spec.0, vec![(LossKind::Sigmoid, 1.0), (LossKind::Sft, 0.5)]);
        assert_eq!(p.beta, 0.1);
        assert_eq!(options("simpo", None, 0.0).resolve().unwrap().1.beta, 2.0);
        assert_eq!(
            options("robust", Some(0.3), 0.1)
                .resolve()
                .unwrap()
                .1
                .label_smoothing,
            0.1
        );
        let refused = |o: LossOptions, needle: &str| {
            let e = o.resolve().unwrap_err();
            assert!(e.is_user_error() && e.to_string().contains(needle), "{e}");
        };
        refused(
            options("sigmoid", None, 0.6),
            "--label-smoothing must be in [0, 0.5)",
        );
        refused(
            options("exo_pair", None, 0.0),
            "exo_pair needs --label-smoothing > 0",
        );
        refused(
            options("sigmoid", None, 0.1),
            "applies to robust, exo_pair, aot and aot_unpaired only",
        );
        refused(
            options("sigmoid", Some(0.0), 0.0),
            "--beta must be a positive number",
        );
        refused(
            options("sigmoid", Some(f64::NAN), 0.0),
            "--beta must be a positive number",
        );
        refused(options("dpo", None, 0.0), "unknown loss `dpo`");
        let with = |f: &dyn Fn(&mut LossOptions)| {
            let mut o = options("sigmoid", None, 0.0);
            f(&mut o);
            o
        };
        refused(
            with(&|o| o.sync_ref_model = true),
            "TR-DPO) is not supported",
        );
        refused(
            with(&|o| {
                o.loss = "sigmoid,bco_pair".into();
                o.f_divergence = "forward_kl".into();
            }),
            "partition term of f-DPO does not cancel",
        );
        refused(
            with(&|o| {
                o.loss = "aot_unpaired".into();
                o.use_weighting = true;
            }),
            "they sort the batch",
        );
        refused(
            with(&|o| o.ld_alpha = Some(-0.1)),
            "--ld-alpha must be in [0, 1]",
        );
        let (_, p) = with(&|o| {
            o.loss = "sigmoid:1,sft:1".into();
            o.f_divergence = "js_divergence".into();
            o.use_weighting = true;
            o.ld_alpha = Some(0.3);
        })
        .resolve()
        .unwrap();
        assert_eq!(
            (p.f_divergence, p.use_weighting, p.ld_alpha),
            (FDivergence::JsDivergence, true, Some(0.3))
        );
        assert_eq!(
            options("aot", None, 0.2)
                .resolve()
                .unwrap()
                .1
                .label_smoothing,
            0.2
        );
    }
}
