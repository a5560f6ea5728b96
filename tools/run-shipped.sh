#!/usr/bin/env bash
# The main job until the pipeline runner lands: train the tokenizer on the shipped corpus, tokenize every
# shipped split into $OUT/tokens/ (default OUT=runs), pretrain the `tiny` model into $OUT/pretrain/,
# fine-tune it on the conversations into $OUT/sft/, cache the SFT model's reference log-probs of the DPO
# pairs into $OUT/ref/, align it with DPO into $OUT/dpo/, and sample from the models. With step names as arguments
# it runs only those steps (the Makefile's targets call it that way); with none it runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
THREADS=${THREADS:-2}
B=target/release
TOK="--tokenizer $OUT/tokenizer"

step() {
  case "$1" in
    tokenizer)         $B/tokenize train-tokenizer --input data/pretrain.jsonl --out "$OUT/tokenizer" --vocab-size 6400 ;;
    tok-pretrain)      $B/tokenize pretrain $TOK --input data/pretrain.jsonl --out "$OUT/tokens/pretrain.parquet" ;;
    tok-pretrain-eval) $B/tokenize pretrain $TOK --input data/pretrain_eval.jsonl --out "$OUT/tokens/pretrain_eval.parquet" ;;
    tok-sft)           $B/tokenize sft $TOK --input data/sft.jsonl --out "$OUT/tokens/sft.parquet" --max-len 512 ;;
    tok-sft-eval)      $B/tokenize sft $TOK --input data/sft_eval.jsonl --out "$OUT/tokens/sft_eval.parquet" --max-len 512 ;;
    tok-dpo)           $B/tokenize dpo $TOK --input data/dpo.jsonl --input data/dpo_conversations.jsonl --out "$OUT/tokens/dpo.parquet" --max-len 512 ;;
    tok-dpo-eval)      $B/tokenize dpo $TOK --input data/dpo_eval.jsonl --out "$OUT/tokens/dpo_eval.parquet" --max-len 512 ;;
    pretrain)          $B/pretrain --preset tiny $TOK --input "$OUT/tokens/pretrain.parquet" \
                         --eval-input "$OUT/tokens/pretrain_eval.parquet" --out "$OUT/pretrain" \
                         --epochs 6 --batch-size 16 --max-len 256 --lr 3e-3 --eval-every 50 --save-every 50 \
                         --threads "$THREADS" ;;
    sft)               $B/sft --model "$OUT/pretrain/model" --input "$OUT/tokens/sft.parquet" \
                         --eval-input "$OUT/tokens/sft_eval.parquet" --out "$OUT/sft" \
                         --epochs 2 --batch-size 16 --lr 1e-3 --eval-every 100 --save-every 100 \
                         --answer-check data/sft_eval.jsonl --threads "$THREADS" ;;
    ref)               $B/ref-logprobs --model "$OUT/sft/model" --input "$OUT/tokens/dpo.parquet" --out "$OUT/ref/dpo.parquet" --threads "$THREADS"
                       $B/ref-logprobs --model "$OUT/sft/model" --input "$OUT/tokens/dpo_eval.parquet" --out "$OUT/ref/dpo_eval.parquet" --threads "$THREADS" ;;
    dpo)               $B/dpo --model "$OUT/sft/model" --input "$OUT/tokens/dpo.parquet" --ref-cache "$OUT/ref/dpo.parquet" \
                         --eval-input "$OUT/tokens/dpo_eval.parquet" --eval-ref-cache "$OUT/ref/dpo_eval.parquet" \
                         --out "$OUT/dpo" --max-steps 300 --lr 1e-4 --loss sigmoid:1,sft:1 --eval-every 100 --save-every 100 \
                         --answer-check data/dpo_eval.jsonl --threads "$THREADS" ;;
    sample)            $B/generate --model "$OUT/pretrain/model" --prompt "Elena Moreau lives in" --max-new-tokens 40
                       $B/generate --model "$OUT/pretrain/model" --prompt "陈洋" --max-new-tokens 40
                       [ ! -d "$OUT/sft/model" ] || $B/generate --model "$OUT/sft/model" --chat "Where does Elena Moreau live?"
                       [ ! -d "$OUT/sft/model" ] || $B/generate --model "$OUT/sft/model" --chat "陈洋最喜欢的颜色是什么？"
                       [ ! -d "$OUT/dpo/model" ] || $B/generate --model "$OUT/dpo/model" --chat "Where does Elena Moreau live?" ;;
    *) echo "unknown step '$1' (tokenizer tok-pretrain tok-pretrain-eval tok-sft tok-sft-eval tok-dpo tok-dpo-eval pretrain sft ref dpo sample)" >&2; exit 1 ;;
  esac
}

cargo build --release --bin tokenize --bin pretrain --bin sft --bin ref-logprobs --bin dpo --bin generate
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tokenizer tok-pretrain tok-pretrain-eval tok-sft tok-sft-eval tok-dpo tok-dpo-eval pretrain sft ref dpo sample)
for s in "${steps[@]}"; do step "$s"; done
echo "done: tokenizer in $OUT/tokenizer, token files in $OUT/tokens/, models in $OUT/{pretrain,sft,dpo}/model"
