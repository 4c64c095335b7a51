#!/usr/bin/env bash
# The GPU paths for real, on a machine with a CUDA GPU (docs/results.md, H100 rows):
#
#   bash bench/gpu.sh check   # tests/test_gpu.py, then bench/train.py at 32-true, 16-mixed, bf16-mixed
#   bash bench/gpu.sh train   # the default recipe, trainer=gpu, for GPU_TRAIN_TIME (default 5 min),
#                             # then bench/translate.py and evaluate.py on the GPU with its best checkpoint
#
# Results (JSON lines, logs, the run) go to GPU_OUT (default runs/gpu). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${GPU_OUT:-runs/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"

case "${1:-check}" in
check)
  "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py
  "$PY" -m nmt.cli prepare > /dev/null
  for precision in 32-true 16-mixed bf16-mixed; do
    "$PY" bench/train.py --steps 100 trainer=gpu "trainer.precision=$precision" \
      2> "$out/bench-train-$precision.log" | tail -n 1 | tee "$out/bench-train-$precision.json"
  done
  ;;
train)
  rm -rf "$out/train"
  "$PY" train.py trainer=gpu "run_dir=$out/train" test_after_training=false \
    "trainer.max_time=${GPU_TRAIN_TIME:-00:00:05:00}" trainer.enable_progress_bar=false \
    > "$out/train.log" 2>&1 || { tail -n 40 "$out/train.log"; exit 1; }
  grep -o '"val/bleu": [0-9.]*' "$out/train/metrics.json"
  ckpt=$(ls "$out"/train/checkpoints/best-*.ckpt | head -n 1)
  "$PY" bench/translate.py --checkpoint "$ckpt" --device cuda --unbatched 200 \
    2> "$out/bench-translate.log" | tail -n 1 | tee "$out/bench-translate.json"
  "$PY" evaluate.py "checkpoint=$ckpt" device=cuda "output_dir=$out/evaluation" progress=false
  ;;
*)
  echo "usage: bash bench/gpu.sh check|train" >&2
  exit 2
  ;;
esac
