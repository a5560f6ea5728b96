#!/usr/bin/env bash
# The main job until the pipeline runner lands: train the tokenizer on the shipped corpus and tokenize
# every shipped split into $OUT/tokens/ (default OUT=runs). With step names as arguments it runs only
# those steps (the Makefile's targets call it that way); with none it runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
T=target/release/tokenize
TOK="--tokenizer $OUT/tokenizer"

step() {
  case "$1" in
    tokenizer)     $T train-tokenizer --input data/pretrain.jsonl --out "$OUT/tokenizer" --vocab-size 6400 ;;
    pretrain)      $T pretrain $TOK --input data/pretrain.jsonl --out "$OUT/tokens/pretrain.parquet" ;;
    pretrain-eval) $T pretrain $TOK --input data/pretrain_eval.jsonl --out "$OUT/tokens/pretrain_eval.parquet" ;;
    sft)           $T sft $TOK --input data/sft.jsonl --out "$OUT/tokens/sft.parquet" --max-len 512 ;;
    sft-eval)      $T sft $TOK --input data/sft_eval.jsonl --out "$OUT/tokens/sft_eval.parquet" --max-len 512 ;;
    dpo)           $T dpo $TOK --input data/dpo.jsonl --input data/dpo_conversations.jsonl --out "$OUT/tokens/dpo.parquet" --max-len 512 ;;
    dpo-eval)      $T dpo $TOK --input data/dpo_eval.jsonl --out "$OUT/tokens/dpo_eval.parquet" --max-len 512 ;;
    *) echo "unknown step '$1' (tokenizer pretrain pretrain-eval sft sft-eval dpo dpo-eval)" >&2; exit 1 ;;
  esac
}

cargo build --release --bin tokenize
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tokenizer pretrain pretrain-eval sft sft-eval dpo dpo-eval)
for s in "${steps[@]}"; do step "$s"; done
echo "done: tokenizer in $OUT/tokenizer, token files in $OUT/tokens/"
