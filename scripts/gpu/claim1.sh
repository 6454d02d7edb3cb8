#!/usr/bin/env bash
# Claim 1 of docs/results/claims.md on one GPU: TF-dCM against TF-sCM in the L1 regime (a 3-layer student made
# of blocks 0, 2, 4 of the 6-layer causal teacher, distilled from the whole causal teacher), SEEDS seeds per
# arm in parallel processes, the paired teacher-ODE distance (M1) every EVAL_EVERY iterations, then the rule
# (scripts/claim1.py). Every step skips what $RUN already holds, so a call cut short resumes on a warm machine;
# across machines, carry the bundles it returns and name them: CT=causal_teacher.safetensors
# SI=student_init.safetensors TARGETS=targets.npz (the synthetic data is redrawn: seeded, identical).
#   OUT=out bash scripts/gpu/claim1.sh
#   TINY=1 OUT=/tmp/claim1_out bash scripts/gpu/claim1.sh      # the same orchestration on the CPU preset
# Knobs: SEEDS (4), STEPS (800), LR (3e-5), BATCH (32), EVAL_EVERY (25), CT_SECONDS (causal teacher, 300),
#   SI_STEPS (1000), N (2048), N_HELD (512).
source scripts/gpu/common.sh
RUN=${RUN:-/tmp/claim1}
mkdir -p "$RUN/pack"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [[ -n ${TINY:-} ]]; then
  PRESET=blob-tiny; TEACHER=${TEACHER:-}; SEEDS=${SEEDS:-2}; STEPS=${STEPS:-6}; BATCH=${BATCH:-4}
  EVAL_EVERY=${EVAL_EVERY:-2}; CT_SECONDS=${CT_SECONDS:-20}; SI_STEPS=${SI_STEPS:-4}; N=${N:-16}; N_HELD=${N_HELD:-8}
  LAYERS="[0]"; EV=(eval.prompts=1 eval.per_prompt=2 eval.batch=4)
else
  PRESET=blob-s; TEACHER=${TEACHER:-assets/blob-s/teacher.safetensors}; SEEDS=${SEEDS:-4}; STEPS=${STEPS:-800}
  BATCH=${BATCH:-32}; EVAL_EVERY=${EVAL_EVERY:-25}; CT_SECONDS=${CT_SECONDS:-300}; SI_STEPS=${SI_STEPS:-1000}
  N=${N:-2048}; N_HELD=${N_HELD:-512}; LAYERS="[0,2,4]"; EV=(eval.prompts=4 eval.per_prompt=4)
fi
LR=${LR:-3e-5}
log() { echo "[$(date +%T)] $*"; }
train() {  # train STAGE NAME overrides...: skipped when its bundle exists
  local stage=$1 name=$2; shift 2
  [[ -f $RUN/$name/model.safetensors ]] && { log "have $name"; return 0; }
  crm train "$stage" --preset $PRESET "$@" --out "$RUN/$name" > "$RUN/$name.log" 2>&1 \
      || { echo "FAILED: $name"; tail -3 "$RUN/$name.log"; return 1; }
  log "done $name: $(tr '\r' '\n' < "$RUN/$name.log" | grep -m1 ' steps in ' || true)"
}

if [[ -z $TEACHER ]]; then  # the tiny preset has no shipped teacher: train one briefly
  crm train teacher --preset $PRESET train.steps=4 --out "$RUN/teacher" > "$RUN/teacher.log" 2>&1
  TEACHER=$RUN/teacher/teacher.safetensors
fi
crm synth --teacher "$TEACHER" --n "$N" --seed 0 --batch 256 --out "$RUN/synth" 2>&1 | quiet 1
crm synth --teacher "$TEACHER" --n "$N_HELD" --seed 1 --batch 256 --out "$RUN/heldout" 2>&1 | quiet 1
D=(data="$RUN/synth")

# the causal teacher (6 layers), then the student's own causal initialisation (3 layers) from its blocks
CT=${CT:-$RUN/ct/model.safetensors}
[[ -f $CT ]] || train tf ct "${D[@]}" init="$TEACHER" train.time_limit=$CT_SECONDS train.eval_every=0
TARGETS=${TARGETS:-$RUN/targets.npz}
[[ -f $TARGETS ]] || crm paired make --teacher "$CT" --data "$RUN/heldout" --n "$N_HELD" --out "$TARGETS" 2>&1 | quiet 1
SI=${SI:-$RUN/si/model.safetensors}
[[ -f $SI ]] || train tf si "${D[@]}" init="$CT" student_layers="$LAYERS" train.steps=$SI_STEPS train.eval_every=0

# the arms: every seed of both methods at once on the GPU
for m in tf_dcm tf_scm; do
  for s in $(seq 0 $((SEEDS - 1))); do
    train $m "${m}_s$s" "${D[@]}" init="$SI" teacher="$CT" train.seed=$s train.steps=$STEPS train.batch=$BATCH \
        train.lr=$LR train.warmup=20 train.betas=[0.0,0.999] train.eval_every=$EVAL_EVERY eval.paired="$TARGETS" \
        "${EV[@]}" &
  done
done
wait

# the reading, by the rule written before the runs; bundles to carry and every log come back
python scripts/claim1.py --slow "$RUN"/tf_dcm_s*/ --fast "$RUN"/tf_scm_s*/ --out "$RUN/pack/claim1.json" \
    --plot "$RUN/pack/claim1.png" 2>&1 | tail -8
for d in "$RUN"/*/; do cp_if "$d/metrics.jsonl" "$RUN/pack/$(basename "$d").metrics.jsonl"; done
for f in "$RUN"/*.log; do quiet 20 < "$f" > "$RUN/pack/$(basename "$f")"; done
cp_if "$CT" "$RUN/pack/causal_teacher.safetensors"
cp_if "$SI" "$RUN/pack/student_init.safetensors"
tar -C "$RUN/pack" -cf - . | split -b 15m - "$OUT/claim1.tar.part-"
log "end"
