#!/usr/bin/env bash
# Train the blob-s teacher on one GPU inside one device call, score it, and leave in $OUT the bf16 bundle,
# the logs, the metrics and the run's latest checkpoint (weights only, in <=15 MiB parts) to resume from.
# Extra arguments are config overrides.
#   OUT=out bash scripts/gpu/teacher_blob_s.sh train.time_limit=420
# Resume in a later call: copy the returned teacher_run.tar.part-* into .carry/ and carry .carry.
set -euo pipefail
OUT=${OUT:-out}
RUN=${RUN:-/tmp/blob-s-teacher}
mkdir -p "$OUT" "$RUN"
source scripts/gpu/common.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if ls .carry/teacher_run.tar.part-* >/dev/null 2>&1; then
  cat .carry/teacher_run.tar.part-* | tar -C "$RUN" -xf - && echo "resuming from $(cat "$RUN/checkpoints/latest")"
fi
crm train teacher --preset blob-s "$@" --out "$RUN" 2>&1 | quiet 30
crm export "$RUN/teacher.safetensors" --dtype bf16 --out "$OUT/teacher.safetensors"
cp "$RUN/metrics.jsonl" "$OUT/teacher_metrics.jsonl"
latest=$(cat "$RUN/checkpoints/latest")
tar -C "$RUN" --exclude='optim_*' -cf - config.json checkpoints/latest "checkpoints/$latest" \
  | split -b 15m - "$OUT/teacher_run.tar.part-"
# evaluation layout of issue 3: 16 prompts x 16 samples, 50 Euler steps; a small (cfg, shift) grid
for cs in ${GRID:-3.0,3.0}; do
  cfg=${cs%,*}; shift=${cs#*,}
  crm generate --ckpt "$OUT/teacher.safetensors" --n 256 --per-prompt 16 --steps 50 --cfg "$cfg" --shift "$shift" \
      --seed 1234 --out "/tmp/eval_$cs.npz" 2>&1 | tail -1
  echo "cfg=$cfg shift=$shift $(crm eval "/tmp/eval_$cs.npz" --json | tr -d '\n ')"
done | tee "$OUT/teacher_eval.txt"
