#!/usr/bin/env bash
# Benchmark `tokenize pretrain` on a generated corpus (default 100 MB) and, when a Python with
# `tokenizers` and `pyarrow` is available ($PYTHON, default python3), the same job in Python, side by side.
#   benches/tokenize.sh [MB] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-100}
THREADS=${2:-2}
PY=${PYTHON:-python3}
W=${BENCH_DIR:-/tmp/zerolm-bench}
mkdir -p "$W"
cargo build --release --bin tokenize --bin make-data
[ -f "$W/corpus-$MB.jsonl" ] || target/release/make-data corpus --out "$W/corpus-$MB.jsonl" --mb "$MB"
[ -f "$W/tokenizer/tokenizer.json" ] || target/release/tokenize train-tokenizer --input data/pretrain.jsonl --out "$W/tokenizer"
echo "== zerolm tokenize pretrain ($THREADS threads)"
target/release/tokenize --threads "$THREADS" pretrain --tokenizer "$W/tokenizer" --input "$W/corpus-$MB.jsonl" --out "$W/zerolm.parquet" 2>&1 | grep -v ' rows, .* MB ('
if "$PY" -c 'import tokenizers, pyarrow' 2>/dev/null; then
  echo "== Python tokenizers + pyarrow (RAYON_NUM_THREADS=$THREADS)"
  RAYON_NUM_THREADS=$THREADS "$PY" benches/tokenize_py.py --tokenizer "$W/tokenizer" --input "$W/corpus-$MB.jsonl" --out "$W/python.parquet"
else
  echo "(no Python with tokenizers+pyarrow: set PYTHON=/path/to/python to compare)"
fi
