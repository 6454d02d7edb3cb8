#!/usr/bin/env bash
# Issue 6 on one GPU inside one device call: SF-DMD from several initialisations in parallel processes on
# the same budget (one time limit each), then every result scored at 1 and 2 steps (scripts/eval_table.py).
# Bundles (bf16), logs and the table come back in $OUT as <=15 MiB tar parts.
#   INITS="teacher=assets/blob-s/teacher.safetensors tf_scm=assets/blob-s/tf_scm_c3-3.safetensors" \
#       OUT=out bash scripts/gpu/sf_dmd_blob_s.sh
# Knobs: INITS (NAME=BUNDLE ...; default: the shipped teacher and TF-sCM student), SECONDS_EACH, PRESET,
#   TEACHER (the real score), DMD_ARGS (extra overrides for every run), STEPS ("1,2"), EVAL_ARGS, TAG (names
#   of what comes back: TAG.tar.part-*, table_TAG.json/.md; "sf_dmd").
set -euo pipefail
OUT=${OUT:-out}
RUN=${RUN:-/tmp/blob-s-${TAG:-sf_dmd}}
PRESET=${PRESET:-blob-s}
TEACHER=${TEACHER:-assets/blob-s/teacher.safetensors}
INITS=${INITS:-teacher=$TEACHER tf_scm=assets/blob-s/tf_scm_c3-3.safetensors}
mkdir -p "$OUT" "$RUN/pack"
source scripts/gpu/common.sh

for item in $INITS; do
  name=${item%%=*}; init=${item#*=}
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} crm train sf_dmd --preset "$PRESET" init="$init" teacher="$TEACHER" \
      train.time_limit="${SECONDS_EACH:-420}" ${DMD_ARGS:-} --out "$RUN/$name" > "$RUN/$name.log" 2>&1 &
done
wait
bundles=()
for item in $INITS; do
  name=${item%%=*}; init=${item#*=}
  bundles+=("$name (before)=$init" "sf_dmd from $name=$RUN/$name/model.safetensors")
  crm export "$RUN/$name/model.safetensors" --dtype bf16 --out "$RUN/pack/sf_dmd_from_$name.safetensors" > /dev/null
  cp_if "$RUN/$name/metrics.jsonl" "$RUN/pack/sf_dmd_from_$name.metrics.jsonl"
  quiet < "$RUN/$name.log" > "$RUN/pack/sf_dmd_from_$name.log"
  { grep -s "eval/" "$RUN/$name/metrics.jsonl" || true; } | tail -1 | cut -c1-300 | sed "s/^/$name: /"
done
# bundles and logs go to $OUT before the evaluation, so a call cut short during it still brings them back
tar -C "$RUN/pack" -cf - . | split -b 15m - "$OUT/${TAG:-sf_dmd}.tar.part-"
# shellcheck disable=SC2086
python scripts/eval_table.py "${bundles[@]}" --steps "${STEPS:-1,2}" ${EVAL_ARGS:-} \
    --out "$OUT/table_${TAG:-sf_dmd}.json" 2>&1 | quiet
cat "$OUT/table_${TAG:-sf_dmd}.md"
