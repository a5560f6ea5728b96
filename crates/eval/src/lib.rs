//! Scoring a model on task files, as `eval` does: multiple choice (log-likelihood of each choice,
//! `acc`/`acc_norm` with standard errors, as lm-evaluation-harness computes them), perplexity and bits
//! per byte of documents (the harness's rolling windows), and the greedy answer check that `sft` and
//! `dpo` also run as their probe.

pub mod answer;
mod error;
pub mod loglik;
pub mod mc;
pub mod ppl;
mod progress;
pub mod results;
pub mod run;
pub mod task;

pub use error::EvalError;
pub use results::{Results, Settings};
pub use run::{Evaluator, Task};
pub use task::{Kind, TaskSpec};

#[cfg(test)]
mod testing {
    use candle_core::Device;
    use zerolm_model::{init_parameters, Model, ModelConfig};

    /// An untrained micro model (vocabulary 1000) drawn with `seed`.
    pub fn micro_model(seed: u64) -> Model {
        let mut cfg = ModelConfig::preset("micro").unwrap();
        cfg.vocab_size = 1000;
        let params = init_parameters(&cfg, seed, &Device::Cpu).unwrap();
        Model::new(cfg, params).unwrap()
    }
}
