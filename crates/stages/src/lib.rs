//! zerolm's training stages, each a [`zerolm_train::trainer::Task`] handed to the one training loop:
//! `pretrain` (packed documents, next-token loss), `sft` (conversations, loss on assistant tokens),
//! `ref-logprobs` (the reference model's log-probs of every DPO pair, cached) and `dpo` (the TRL
//! preference-loss family on those pairs), with what they share: the run set-up, the starting model,
//! the exported model directory and the held-out answer check.

pub mod answers;
pub mod common;
pub mod defaults;
pub mod dpo;
pub mod preference;
pub mod pretrain;
pub mod ref_logprobs;
pub mod sft;
