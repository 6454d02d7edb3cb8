#!/usr/bin/env bash
# Issue 5 on one GPU inside one device call, for one chunk pattern: synthetic data from the blob-s teacher,
# the causal teacher (TF), the students in parallel processes (they share the GPU), then every bundle scored
# at 1, 2 and 4 steps (scripts/eval_table.py). Bundles (bf16), logs and the table come back in $OUT as
# <=15 MiB tar parts.
#   OUT=out bash scripts/gpu/tf_students_blob_s.sh c3-3
# Reuse earlier work instead of redoing it (paths on the device, e.g. unpacked from .carry/):
#   SYNTH=dir  SYNTH_ODE=dir  TF=bundle
# Knobs: METHODS ("tf_dcm tf_scm tf_meanflow ode_init"), TF_SECONDS, STUDENT_SECONDS, N, N_ODE, PRESET,
#   STUDENT_ARGS (extra overrides for every student, e.g. "train.eval_every=50"), STEPS (eval table, "1,2,4"),
#   EVAL_ARGS (extra eval_table.py arguments).
set -euo pipefail
OUT=${OUT:-out}
P=${1:-c3-3}
RUN=${RUN:-/tmp/blob-s-$P}
PRESET=${PRESET:-blob-s}
TEACHER=${TEACHER:-assets/blob-s/teacher.safetensors}
METHODS=${METHODS:-tf_dcm tf_scm tf_meanflow ode_init}
mkdir -p "$OUT" "$RUN"
source scripts/gpu/common.sh

SYNTH=${SYNTH:-$RUN/synth}
SYNTH_ODE=${SYNTH_ODE:-$RUN/synth_ode}
# synth resumes a partial dataset and returns at once when it is complete; the causal teacher trains while
# the ODE trajectories are drawn
crm synth --teacher "$TEACHER" --n "${N:-2048}" --seed 0 --batch 256 --out "$SYNTH" 2>&1 | quiet
if [[ " $METHODS " == *" ode_init "* ]]; then
  crm synth --teacher "$TEACHER" --n "${N_ODE:-1024}" --seed 1 --batch 256 --steps 48 \
      --ode-times 0.9994,0.9375,0.8333,0.625 --out "$SYNTH_ODE" 2>&1 | quiet &
fi
if [[ -z "${TF:-}" ]]; then
  crm train tf --preset "$PRESET" pattern="$P" data="$SYNTH" init="$TEACHER" train.eval_every=0 \
      train.time_limit="${TF_SECONDS:-150}" --out "$RUN/tf" 2>&1 | quiet
  TF="$RUN/tf/model.safetensors"
fi
wait
for m in $METHODS; do
  if [[ $m == ode_init ]]; then args=(data="$SYNTH_ODE" init="$TF"); else args=(data="$SYNTH" init="$TF" teacher="$TF"); fi
  # shellcheck disable=SC2086
  crm train "$m" --preset "$PRESET" pattern="$P" "${args[@]}" train.time_limit="${STUDENT_SECONDS:-200}" \
      ${STUDENT_ARGS:-} --out "$RUN/$m" > "$RUN/$m.log" 2>&1 &
done
wait
mkdir -p "$RUN/pack"
bundles=("tf ($P)=$TF")
for m in $METHODS; do
  crm export "$RUN/$m/model.safetensors" --dtype bf16 --out "$RUN/pack/${m}_$P.safetensors" > /dev/null
  cp_if "$RUN/$m/metrics.jsonl" "$RUN/pack/${m}_$P.metrics.jsonl"
  quiet < "$RUN/$m.log" > "$RUN/pack/${m}_$P.log"
  bundles+=("$m=$RUN/$m/model.safetensors")
  { grep -s "eval/" "$RUN/$m/metrics.jsonl" || true; } | tail -1 | cut -c1-300 | sed "s/^/$m: /"
done
[[ -f "$RUN/tf/model.safetensors" ]] && crm export "$RUN/tf/model.safetensors" --dtype bf16 \
    --out "$RUN/pack/tf_$P.safetensors" > /dev/null && cp_if "$RUN/tf/metrics.jsonl" "$RUN/pack/tf_$P.metrics.jsonl"
# bundles and logs go to $OUT before the evaluation, so a call cut short during it still brings them back
tar -C "$RUN/pack" -cf - . | split -b 15m - "$OUT/tf_students_$P.tar.part-"
# shellcheck disable=SC2086
python scripts/eval_table.py "${bundles[@]}" --steps "${STEPS:-1,2,4}" --teachers-at-steps ${EVAL_ARGS:-} \
    --out "$OUT/table_$P.json" 2>&1 | quiet
cat "$OUT/table_$P.md"
