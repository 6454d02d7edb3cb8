#!/usr/bin/env bash
# Train the blob-s teacher on one GPU inside one device call, score it, and leave the bf16 bundle, logs and
# metrics in $OUT. Extra arguments are config overrides (e.g. train.time_limit=420).
#   OUT=out bash scripts/gpu/teacher_blob_s.sh train.time_limit=420
set -euo pipefail
OUT=${OUT:-out}
RUN=${RUN:-/tmp/blob-s-teacher}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
crm() { python -m causal_rcm.cli "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
crm train teacher --preset blob-s "$@" --out "$RUN" 2>&1 | grep -v "it/s\]$" | tail -40
crm export "$RUN/teacher.safetensors" --dtype bf16 --out "$OUT/teacher.safetensors"
cp "$RUN/metrics.jsonl" "$OUT/teacher_metrics.jsonl"
for cfg in 2.0 3.0 4.5; do
  crm generate --ckpt "$OUT/teacher.safetensors" --n 256 --per-prompt 16 --steps 50 --cfg $cfg --seed 1234 \
      --out "/tmp/eval_cfg$cfg.npz" 2>&1 | tail -1
  echo "cfg=$cfg $(crm eval /tmp/eval_cfg$cfg.npz --json | tr -d '\n ')"
done | tee "$OUT/teacher_eval.txt"
crm world sample --n 256 --seed 1235 --out /tmp/data.npz > /dev/null
echo "data(random prompts) $(crm eval /tmp/data.npz --json | tr -d '\n ')" | tee -a "$OUT/teacher_eval.txt"
cp /tmp/eval_cfg3.0.gif "$OUT/teacher_samples.gif" 2>/dev/null || true
