#!/usr/bin/env bash
# Issue 13 in one device call: the Blobworld-agent and the Pong world models trained side by side on one GPU
# (every stage a `causal-rcm train` with a time limit, independent chains in parallel processes), then scored
# (scripts/eval_table.py). Bundles (bf16), logs and tables come back in $OUT. Blobworld-agent follows the
# blob-agent-tiny recipe's chain: world data, the agent teacher from the action-free one, causal teachers (c3-3
# and c1-1) trained on the world's own videos, TF-sCM students with the teacher's CFG, SF-DMD with the causal
# teacher as the real score.
#   OUT=out bash scripts/gpu/world_models.sh              # the GPU run (about 8 minutes)
#   TINY=1 OUT=/tmp/wm_out bash scripts/gpu/world_models.sh  # the same orchestration on the CPU presets
# Knobs: SCALE (multiplies every time limit; 1), TEACHER (the action-free teacher the agent teacher starts from),
#   SKIP_TRAIN=1 (only pack and score what $RUN holds), WORLDS (agent atari: the chains to train).
source scripts/gpu/common.sh
RUN=${RUN:-/tmp/world_models}
mkdir -p "$RUN/pack" "$RUN/tables"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S=${SCALE:-1}
read -ra TEACHER_ARGS <<< "${TEACHER_ARGS:-}"  # e.g. TEACHER_ARGS=compile=false
lim() { python -c "print(int($1 * $S))"; }
if [[ -n ${TINY:-} ]]; then
  AG=blob-tiny; AT=atari-tiny; FRAMES_AG=9; SIZE_AG=16; N_AG=64; FRAMES_AT=5; N_AT=8; N_SYN=8; WORKERS=2
  EV=(--prompts 2 --per-prompt 2 --batch 4)
  AG_WORLD=(world.variant=agent world.frames=$FRAMES_AG); AT_EXTRA=(train.batch=2); TEACHER=${TEACHER:-}
  P11=c1-1; P33=c1-4
else
  AG=blob-s; AT=atari; FRAMES_AG=21; SIZE_AG=32; N_AG=8192; FRAMES_AT=12; N_AT=${N_AT:-2048}; N_SYN=1024
  WORKERS=12; EV=(--prompts 8 --per-prompt 8)
  AG_WORLD=(world.variant=agent); AT_EXTRA=(); TEACHER=${TEACHER:-assets/blob-s/teacher.safetensors}
  P11=c1-1; P33=c3-3
fi
log() { echo "[$(date +%T)] $*"; }
train() {  # train STAGE NAME PRESET LIMIT overrides...
  local stage=$1 name=$2 preset=$3 limit=$4; shift 4
  crm train "$stage" --preset "$preset" "$@" train.time_limit="$(lim "$limit")" --out "$RUN/$name" \
      > "$RUN/$name.log" 2>&1 || { echo "FAILED: $name"; tail -3 "$RUN/$name.log"; }
  log "done $name: $(tr '\r' '\n' < "$RUN/$name.log" | grep -m1 ' steps in ' || true)"
}

# ----- Blobworld-agent: teacher from the action-free teacher, synth, then c3-3 and c1-1 chains --------------
agent() {
  local init=(); [[ -n $TEACHER ]] && init=(init="$TEACHER")
  # the world's own videos: the causal teachers learn them (a bidirectional teacher ignores the actions; the
  # tiny recipe's causal chain follows them: docs/results/world_models.md)
  crm world sample --variant agent --size $SIZE_AG --frames $FRAMES_AG --n $N_AG --seed 11 --out "$RUN/ag_data.npz" \
      > "$RUN/ag_data.log" 2>&1; log "done ag_data"
  train teacher ag_teacher $AG 110 "${AG_WORLD[@]}" "${init[@]}" train.lr=2e-4 train.warmup=50 train.eval_every=0 \
      "${TEACHER_ARGS[@]}"
  local D=(data="$RUN/ag_data.npz")
  for P in $P33 $P11; do
    ( train tf "ag_tf_$P" $AG 120 "${D[@]}" init="$RUN/ag_teacher/teacher.safetensors" pattern=$P train.warmup=20 \
          train.eval_every=0
      train tf_scm "ag_tf_scm_$P" $AG 60 "${D[@]}" init="$RUN/ag_tf_$P/model.safetensors" \
          teacher="$RUN/ag_tf_$P/model.safetensors" pattern=$P objective.w_cfg=3.0 train.warmup=20 \
          train.betas=[0.0,0.999] train.eval_every=0
      train sf_dmd "ag_sf_dmd_$P" $AG 80 "${D[@]}" init="$RUN/ag_tf_scm_$P/model.safetensors" \
          teacher="$RUN/ag_tf_$P/model.safetensors" train.eval_every=0 ) &
  done
  wait
}

# ----- Pong: emulator data, teacher from real first frames, synth from the data, a c1-1 and a c3-3 chain ------
atari() {
  crm world sample --world atari --variant Pong --size 64 --frames $FRAMES_AT --n $N_AT --workers $WORKERS \
      --out "$RUN/at_data.npz" > "$RUN/at_data.log" 2>&1; log "done at_data: $(quiet 1 < "$RUN/at_data.log")"
  train teacher at_teacher $AT 130 data="$RUN/at_data.npz" world.frames=$FRAMES_AT "${AT_EXTRA[@]}" \
      train.eval_every=0 "${TEACHER_ARGS[@]}"
  crm synth --teacher "$RUN/at_teacher/teacher.safetensors" --data "$RUN/at_data.npz" --n $N_SYN --seed 0 \
      --batch 256 --out "$RUN/at_synth" > "$RUN/at_synth.log" 2>&1; log "done at_synth"
  local D=(data="$RUN/at_synth")
  for P in $P11 $P33; do
    ( train tf "at_tf_$P" $AT 50 "${D[@]}" init="$RUN/at_teacher/teacher.safetensors" pattern=$P train.eval_every=0 \
          "${AT_EXTRA[@]}"
      train tf_scm "at_tf_scm_$P" $AT 50 "${D[@]}" init="$RUN/at_tf_$P/model.safetensors" \
          teacher="$RUN/at_tf_$P/model.safetensors" pattern=$P train.eval_every=0 "${AT_EXTRA[@]}"
      train sf_dmd "at_sf_dmd_$P" $AT 60 "${D[@]}" init="$RUN/at_tf_scm_$P/model.safetensors" \
          teacher="$RUN/at_teacher/teacher.safetensors" train.eval_every=0 "${AT_EXTRA[@]}" ) &
  done
  wait
}

log "start"
if [[ -z ${SKIP_TRAIN:-} ]]; then  # SKIP_TRAIN=1: pack and score what $RUN holds
  for w in ${WORLDS:-agent atari}; do "$w" > "$RUN/$w.out" 2>&1 & done  # WORLDS=agent: Blobworld-agent only
  wait
fi
cat "$RUN"/*.out

# ----- pack the bundles to ship and every log before scoring, so a call cut short still brings them back.
# What comes back from a call is at most 8 files of 16 MiB, 64 MiB in all: the bundles to ship (bf16: 7.8 MiB
# for blob-s, 19 MiB for atari), the rest is scored here and its tables come back instead -----------------
SHIP=(${SHIP:-ag_teacher "ag_tf_scm_$P33" "ag_sf_dmd_$P33" "ag_sf_dmd_$P11" "at_sf_dmd_$P11"})
for d in "$RUN"/*/; do
  name=$(basename "$d")
  [[ $name == pack ]] && continue
  cp_if "$d/metrics.jsonl" "$RUN/pack/$name.metrics.jsonl"
  [[ " ${SHIP[*]} " == *" $name "* ]] || continue
  for f in teacher model; do
    [[ -f $d/$f.safetensors ]] && crm export "$d/$f.safetensors" --dtype bf16 --out "$RUN/pack/$name.safetensors" > /dev/null
  done
done
for f in "$RUN"/*.log; do quiet 40 < "$f" > "$RUN/pack/$(basename "$f")"; done
tar -C "$RUN/pack" -cf - . | split -b 15m - "$OUT/world_models.tar.part-"
log "packed $(du -sh "$RUN/pack" | cut -f1)"

# ----- scores: every student at 1 and 2 steps beside its teachers (the agent on sticky actions; Pong from the
# first block of real frames, against the emulator) ---------------------------------------------------------
table() {  # table TAG NAME=BUNDLE...
  local tag=$1; shift
  local have=(); for item in "$@"; do [[ -f ${item#*=} ]] && have+=("$item"); done
  [[ ${#have[@]} -gt 0 ]] || return 0  # a world not trained in this call
  python scripts/eval_table.py "${have[@]}" --steps 1,2 "${EV[@]}" --out "$RUN/tables/table_$tag.json" 2>&1 | quiet 2
  cat "$RUN/tables/table_$tag.md" 2>/dev/null
}
table agent "teacher=$RUN/ag_teacher/teacher.safetensors" \
    "causal teacher $P33=$RUN/ag_tf_$P33/model.safetensors" "TF-sCM $P33=$RUN/ag_tf_scm_$P33/model.safetensors" \
    "SF-DMD $P33=$RUN/ag_sf_dmd_$P33/model.safetensors" "TF-sCM $P11=$RUN/ag_tf_scm_$P11/model.safetensors" \
    "SF-DMD $P11=$RUN/ag_sf_dmd_$P11/model.safetensors" &
table pong "teacher=$RUN/at_teacher/teacher.safetensors" \
    "causal teacher $P11=$RUN/at_tf_$P11/model.safetensors" "TF-sCM $P11=$RUN/at_tf_scm_$P11/model.safetensors" \
    "SF-DMD $P11=$RUN/at_sf_dmd_$P11/model.safetensors" "causal teacher $P33=$RUN/at_tf_$P33/model.safetensors" \
    "TF-sCM $P33=$RUN/at_tf_scm_$P33/model.safetensors" "SF-DMD $P33=$RUN/at_sf_dmd_$P33/model.safetensors" &
wait
cp "$RUN"/pack/*.metrics.jsonl "$RUN"/pack/*.log "$RUN/tables/" 2>/dev/null
tar -C "$RUN/tables" -cf "$OUT/report.tar" .   # tables, logs and training curves: one file
log "end"
