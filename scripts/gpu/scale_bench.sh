#!/usr/bin/env bash
# Issue 16 in one device call: TF, TF-dCM, TF-sCM and SF-DMD iterations at Wan2.1-1.3B (random weights, 480p,
# 21 latent frames, batch 1) under FSDP2 with a world size of 1, selective (compiled blocks) and full activation
# checkpointing; then the 8- and 64-GPU plan from the measured figures. JSON, logs and the plan come back in $OUT.
#   OUT=out bash scripts/gpu/scale_bench.sh
source scripts/gpu/common.sh
log() { echo "[$(date +%T)] $*"; }
bench() {  # bench NAME LIMIT command...
  local name=$1 limit=$2; shift 2
  log "start $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || echo "FAILED ($?): $name"
  quiet 14 < "$OUT/$name.log"
}
bench sf_dmd 240 python benchmarks/sf_dmd_iteration.py --preset wan2.1-1.3b --batch 1 --ac selective --fsdp \
    --out "$OUT/sf_dmd_iteration_h200.json"
bench tf_selective 250 python benchmarks/tf_iteration.py --preset wan2.1-1.3b --batch 1 --ac selective --compile \
    --fsdp --methods tf,tf_dcm,tf_scm --out "$OUT/tf_iteration_h200.json"
bench tf_full 100 python benchmarks/tf_iteration.py --preset wan2.1-1.3b --batch 1 --ac full --fsdp \
    --out "$OUT/tf_iteration_h200_full.json"
TF_JSON="$OUT/tf_iteration_h200.json"; [[ -f $TF_JSON ]] || TF_JSON=results/tf_iteration_h200.json  # measured 2026-12-02
bench plan 30 python benchmarks/scale_plan.py --tf "$TF_JSON" --sf "$OUT/sf_dmd_iteration_h200.json" \
    --out "$OUT/scale_plan.json"
log end
