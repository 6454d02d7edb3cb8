#!/usr/bin/env bash
# Issue 16 in one device call: TF, TF-dCM, TF-sCM and SF-DMD iterations at Wan2.1-1.3B (random weights, 480p,
# 21 latent frames, batch 1) under FSDP2 with a world size of 1, selective (compiled blocks) and full activation
# checkpointing; then the 8- and 64-GPU plan from the measured figures. JSON, logs and the plan come back in $OUT.
#   OUT=out bash scripts/gpu/scale_bench.sh
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  pip install -q --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
fi
source scripts/gpu/common.sh
export PYTHONPATH=${PYTHONPATH}:/tmp/site NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
log() { echo "[$(date +%T)] $*"; }
bench() {  # bench NAME LIMIT command...
  local name=$1 limit=$2; shift 2
  log "start $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || echo "FAILED ($?): $name"
  quiet 14 < "$OUT/$name.log"
}
bench tf_selective 250 python benchmarks/tf_iteration.py --preset wan2.1-1.3b --batch 1 --ac selective --compile \
    --fsdp --methods tf,tf_dcm,tf_scm --out "$OUT/tf_iteration_h200.json"
bench tf_full 100 python benchmarks/tf_iteration.py --preset wan2.1-1.3b --batch 1 --ac full --fsdp \
    --out "$OUT/tf_iteration_h200_full.json"
bench sf_dmd 150 python benchmarks/sf_dmd_iteration.py --preset wan2.1-1.3b --batch 1 --ac selective --fsdp \
    --out "$OUT/sf_dmd_iteration_h200.json"
bench plan 30 python benchmarks/scale_plan.py --tf "$OUT/tf_iteration_h200.json" --sf "$OUT/sf_dmd_iteration_h200.json" \
    --out "$OUT/scale_plan.json"
log end
