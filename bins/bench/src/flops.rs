//! Model FLOPs of a step, counted as model FLOPs utilisation (MFU) is usually reported (PaLM, appendix
//! B): two FLOPs per multiply-add of every product with a weight (each Linear layer and the LM head; not
//! the embedding lookup, not the norms) and of attention's two products over all T keys (no credit for
//! the causal half a kernel may skip); a training step counts three forwards (the backward's two
//! products per product). What the hardware did is not counted, so MFU compares implementations.

use zerolm_model::ModelConfig;

/// Model FLOPs of one step of `batch` sequences of `seq` tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flops {
    pub forward: f64,
    pub train: f64,
}

impl Flops {
    /// FLOPs per token of a training step (`train`) or of a forward pass, in steps of `tokens` tokens.
    pub fn per_token(&self, train: bool, tokens: usize) -> f64 {
        (if train { self.train } else { self.forward }) / tokens as f64
    }
}

/// Multiply-adds of the weight products per token: q, k, v, o, gate, up, down in every layer, and the
/// LM head.
pub fn weight_macs_per_token(cfg: &ModelConfig) -> usize {
    let (d, hd) = (cfg.hidden_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let layer = 2 * d * q + 2 * d * kv + 3 * d * cfg.intermediate_size;
    cfg.num_hidden_layers * layer + d * cfg.vocab_size
}

/// [`Flops`] of a step of `batch` × `seq` tokens.
pub fn per_step(cfg: &ModelConfig, batch: usize, seq: usize) -> Flops {
    let q = cfg.num_attention_heads * cfg.head_dim();
    // Q·Kᵀ and P·V: each query head meets all `seq` keys over head_dim, per layer.
    let attention_macs = 2 * cfg.num_hidden_layers * seq * q;
    let macs = (weight_macs_per_token(cfg) + attention_macs) as f64 * (batch * seq) as f64;
    Flops {
        forward: 2.0 * macs,
        train: 6.0 * macs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_products_are_every_parameter_but_the_norms() {
        for preset in ["tiny", "minimind2"] {
            let cfg = ModelConfig::preset(preset).unwrap();
            assert!(
                cfg.tie_word_embeddings,
                "{preset}: the LM head is the embedding"
            );
            let norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size;
            assert_eq!(
                weight_macs_per_token(&cfg),
                cfg.num_parameters() - norms,
                "{preset}"
            );
        }
    }

    #[test]
    fn minimind2_at_4_by_256_is_57_gflop_forward_and_three_times_that_to_train() {
        let mut cfg = ModelConfig::preset("minimind2").unwrap();
        cfg.vocab_size = 6400;
        let f = per_step(&cfg, 4, 256);
        // 25,821,184 weight multiply-adds and 2·8·256·512 = 2,097,152 attention ones per token.
        assert_eq!(f.forward, 2.0 * 1024.0 * (25_821_184.0 + 2_097_152.0));
        assert_eq!(f.train, 3.0 * f.forward);
    }
}
