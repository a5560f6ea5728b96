//! The default settings of the stages that fine-tune a model directory (`--preset` shapes only
//! `pretrain`'s fresh model; its defaults are [`TrainConfig::pretrain_defaults`]).

use zerolm_model::ModelConfig;
use zerolm_train::TrainConfig;

/// SFT: 2 epochs over 512-token rows at lr 1e-3 after 10 warm-up steps.
pub fn sft(model: ModelConfig) -> TrainConfig {
    let mut c = TrainConfig::pretrain_defaults("tiny").expect("tiny preset exists");
    c.preset = "from --model".into();
    c.model = model;
    c.seq_len = 512;
    c.lr = 1e-3;
    c.warmup_steps = 10;
    c.epochs = 2;
    c
}

/// DPO: SFT's, with one epoch of batch 8 at lr 1e-4 (the article's β 0.1 is `--beta`'s default).
pub fn dpo(model: ModelConfig) -> TrainConfig {
    let mut c = sft(model);
    c.lr = 1e-4;
    c.epochs = 1;
    c.batch_size = 8;
    c
}
