#!/usr/bin/env bash
# Issue 13's diagnosis at the blob-s scale: does a Blobworld-agent causal teacher follow its actions when it
# learns the world's own videos in the TF layout (clean context), frame-wise (c1-1) or chunk-wise (c3-3)? On the
# CPU (blob-tiny, 16x16) c1-1 did (flow error with permuted actions +6 % after 1,000 steps, +33 % after 3,000)
# and c3-3 barely (+1 % after 1,000); the bidirectional teacher did not (+0.1 %). Both patterns train side by side from the action-free blob-s teacher
# (its new action embedding at zero), under one time limit each; then, on held-out rendered videos, the
# action sensitivity (scripts/action_sensitivity.py) and samples from each video's first frame under its true
# and under permuted actions, scored by `causal-rcm eval --intervals` (action_drift too), with the control
# (the true-action videos' drift along other videos' actions). One agent_causal.tar comes back in $OUT.
#   OUT=out bash scripts/gpu/agent_causal.sh        TINY=1 OUT=/tmp/ac bash scripts/gpu/agent_causal.sh (CPU)
source scripts/gpu/common.sh
R=${RUN:-/tmp/agent_causal}; mkdir -p $R; PACK=agent_causal.tar
if [[ -n ${TINY:-} ]]; then
  P=blob-tiny; SIZE=16; FRAMES=9; N=64; NEV=16; LIM=${LIM:-20}; INIT=(); EXTRA=(train.batch=4); PATS="c1-1 c1-4"; B=8
else
  P=blob-s; SIZE=32; FRAMES=21; N=8192; NEV=128; LIM=${LIM:-200}; INIT=(init=assets/blob-s/teacher.safetensors)
  EXTRA=(); PATS="c1-1 c3-3"; B=64
fi
W=(--variant agent --size $SIZE --frames $FRAMES)
run1 data 180 bash -c "python -m causal_rcm.cli world sample ${W[*]} --n $N --seed 11 --out $R/world.npz && \
  python -m causal_rcm.cli world sample ${W[*]} --n $NEV --seed 7 --out $R/heldout.npz && \
  python -c \"import numpy as np; a=np.load('$R/heldout.npz')['actions']; \
np.save('$R/permuted.npy', a[np.random.default_rng(0).permutation(len(a))])\""
# the action-conditioned start: the action-free teacher with a zero action embedding (lr 0: one step changes nothing)
run1 init 120 python -m causal_rcm.cli train teacher --preset $P world.variant=agent world.size=$SIZE \
    world.frames=$FRAMES "${INIT[@]}" train.steps=1 train.lr=0 train.warmup=1 train.eval_every=0 compile=false \
    --out $R/init
for PAT in $PATS; do
  ( timeout $((LIM + 120)) python -m causal_rcm.cli train tf --preset $P data=$R/world.npz \
      init=$R/init/teacher.safetensors pattern=$PAT train.time_limit=$LIM train.eval_every=0 "${EXTRA[@]}" \
      --out $R/tf_$PAT > $R/tf_$PAT.log 2>&1 || echo "FAILED: tf_$PAT" ) &
done
wait
quiet 3 < $R/tf_${PATS%% *}.log
for M in init/teacher $(for PAT in $PATS; do echo tf_$PAT/model; done); do
  name=$(dirname $M)
  run1 sens_$name 120 python scripts/action_sensitivity.py $R/$M.safetensors --data $R/heldout.npz --batches 4 \
      --batch $B --out $R/sens_$name.json
  [[ $name == init ]] && continue
  for A in true permuted; do
    acts=(); [[ $A == permuted ]] && acts=(--actions $R/permuted.npy)
    run1 gen_${name}_$A 120 bash -c "python -m causal_rcm.cli generate --ckpt $R/$M.safetensors --start-from \
$R/heldout.npz ${acts[*]} --seed 3 --out $R/gen_${name}_$A.npz && python -m causal_rcm.cli eval --intervals \
$R/gen_${name}_$A.npz"
  done
  # the control: the videos made under the true actions, their drift along other videos' (permuted) actions
  python -c "import numpy as np; from causal_rcm.worlds.blobworld_metrics import evaluate as e; \
d = np.load('$R/gen_${name}_true.npz'); print('drift along other actions:', \
e(d['videos'], list(d['prompts']), np.load('$R/permuted.npy'))['action_drift'])" 2>&1 | tee $R/control_$name.log
done
python -m causal_rcm.cli eval --intervals $R/heldout.npz > $R/eval_heldout.log 2>&1
rm -f $R/world.npz $R/*/checkpoints -r
tar -C "$R" -cf "$OUT/$PACK" .
echo "[$(date +%T)] end"
