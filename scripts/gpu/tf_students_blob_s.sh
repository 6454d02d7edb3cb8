#!/usr/bin/env bash
# Issue 5 on one GPU inside one device call: synthetic data from the shipped blob-s teacher, the causal
# teacher (TF) for one chunk pattern, then the four students in parallel processes (small models leave the
# GPU mostly idle, so they share it). bf16 bundles, configs and logs come back in $OUT as <=15 MiB tar parts.
#   OUT=out bash scripts/gpu/tf_students_blob_s.sh c3-3
# Knobs (seconds / counts): TF_SECONDS, STUDENT_SECONDS, N, N_ODE.
set -euo pipefail
OUT=${OUT:-out}
P=${1:-c3-3}
RUN=${RUN:-/tmp/blob-s-$P}
TEACHER=${TEACHER:-assets/blob-s/teacher.safetensors}
mkdir -p "$OUT" "$RUN"
export PYTHONPATH=src PYTHONUNBUFFERED=1
crm() { python -m causal_rcm.cli "$@"; }
quiet() { tr '\r' '\n' | grep -v "it/s\]\|s/it\]" | tail -4; }

crm synth --teacher "$TEACHER" --n "${N:-2048}" --seed 0 --batch 256 --out "$RUN/synth" 2>&1 | quiet &
crm synth --teacher "$TEACHER" --n "${N_ODE:-1024}" --seed 1 --batch 256 --steps 48 \
    --ode-times 0.9994,0.9375,0.8333,0.625 --out "$RUN/synth_ode" 2>&1 | quiet &
wait
crm train tf --preset blob-s pattern="$P" data="$RUN/synth" init="$TEACHER" train.eval_every=0 \
    train.time_limit="${TF_SECONDS:-150}" --out "$RUN/tf" 2>&1 | quiet
TF="$RUN/tf/model.safetensors"
for m in tf_dcm tf_scm tf_meanflow; do
  crm train $m --preset blob-s pattern="$P" data="$RUN/synth" init="$TF" teacher="$TF" \
      train.time_limit="${STUDENT_SECONDS:-200}" --out "$RUN/$m" > "$RUN/$m.log" 2>&1 &
done
crm train ode_init --preset blob-s pattern="$P" data="$RUN/synth_ode" init="$TF" \
    train.time_limit="${STUDENT_SECONDS:-200}" --out "$RUN/ode_init" > "$RUN/ode_init.log" 2>&1 &
wait
mkdir -p "$RUN/pack"
for m in tf tf_dcm tf_scm tf_meanflow ode_init; do
  crm export "$RUN/$m/model.safetensors" --dtype bf16 --out "$RUN/pack/${m}_$P.safetensors" > /dev/null
  cp "$RUN/$m/metrics.jsonl" "$RUN/pack/${m}_$P.metrics.jsonl"
  grep "eval/" "$RUN/$m/metrics.jsonl" | tail -1 | cut -c1-300 | sed "s/^/$m: /"
done
tar -C "$RUN/pack" -cf - . | split -b 15m - "$OUT/tf_students_$P.tar.part-"
