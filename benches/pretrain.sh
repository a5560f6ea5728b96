#!/usr/bin/env bash
# Benchmark one pretraining step (forward over all positions, backward, clip, AdamW), f32 on CPU:
# zerolm's `pretrain` and, when a Python with torch+transformers is available ($PYTHON), the same model
# and step in PyTorch, back to back.
#   benches/pretrain.sh [PRESET] [BATCH] [SEQ] [THREADS] [STEPS]     (default minimind2 4 256 2 10)
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-minimind2}
B=${2:-4}
T=${3:-256}
THREADS=${4:-2}
STEPS=${5:-10}
WARMUP=2
PY=${PYTHON:-python3}
W=${BENCH_DIR:-/tmp/zerolm-bench}
mkdir -p "$W"
cargo build --release --bin pretrain --bin tokenize --bin pipeline
target/release/pipeline run pipelines/full.yaml --until tok-pretrain --quiet
rm -rf "$W/pretrain-$PRESET"
echo "== zerolm pretrain --preset $PRESET (vocab 6400), batch ${B}x$T, $THREADS threads"
/usr/bin/time -f "peak RSS %M KB" target/release/pretrain --preset "$PRESET" --set model.vocab_size=6400 \
  --input runs/tokens/pretrain.parquet --tokenizer runs/tokenizer --out "$W/pretrain-$PRESET" \
  --batch-size "$B" --max-len "$T" --threads "$THREADS" --max-steps $((WARMUP + STEPS)) \
  --set log_every=1 --save-every 0 --set eval_every=0 --no-progress 2>&1 | grep -E "^pretrain: [0-9]+ docu|peak RSS"
# tokens/s over the steps after warmup, from the per-step elapsed times in metrics.jsonl
"$PY" - "$W/pretrain-$PRESET/metrics.jsonl" $WARMUP $B $T <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
warm, b, t = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dt = rows[-1]["elapsed_s"] - rows[warm - 1]["elapsed_s"]
n = len(rows) - warm
print(f"zerolm: {n * b * t / dt:.0f} tokens/s ({dt / n:.2f} s/step over {n} steps)")
PYEOF
if "$PY" -c 'import torch, transformers' 2>/dev/null; then
  echo "== PyTorch, same model and step"
  "$PY" benches/pretrain_py.py --preset "$PRESET" --batch-size "$B" --seq-len "$T" --threads "$THREADS" --steps "$STEPS" --warmup $WARMUP
else
  echo "(no Python with torch+transformers: set PYTHON=/path/to/python to compare)"
fi
