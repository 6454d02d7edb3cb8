#!/usr/bin/env bash
# Issues 15/16 in one device call: which attention kernels to use (benchmarks/attention_backends.py), the 1.3B
# TF iteration with FlexAttention against the split backend on cuDNN (one profiled), the 1.3B stream with
# SDPA's default kernel order against cuDNN first, and the 1.3B SF-DMD step with full checkpointing.
# Logs and JSON come back as one perf.tar in $OUT.
#   OUT=out bash scripts/gpu/perf.sh
source scripts/gpu/common.sh
R=/tmp/perf; mkdir -p $R
run1() {  # run1 NAME LIMIT command...
  local name=$1 limit=$2; shift 2
  echo "[$(date +%T)] start $name"
  timeout "$limit" "$@" > "$R/$name.log" 2>&1 || echo "FAILED ($?): $name"
  quiet "${TAIL:-14}" < "$R/$name.log"
}
nvidia-smi -L
W=(--preset wan2.1-1.3b --batch 1 --ac selective --compile --fsdp --iters 3 --warmup 2)
run1 attention 90 python benchmarks/attention_backends.py --iters 6 --out $R/attention_backends.json
run1 tf_split 110 python benchmarks/tf_iteration.py "${W[@]}" --methods tf --attention split --sdpa cudnn \
    --profile $R/tf_split_profile.txt --out $R/tf_split.json
run1 tf_flex 100 python benchmarks/tf_iteration.py "${W[@]}" --methods tf --profile $R/tf_flex_profile.txt \
    --out $R/tf_flex.json
for s in default cudnn; do
  run1 stream_$s 70 python benchmarks/stream_latency.py --graphs --decoders none --runs c3-3:2,c1-1:1 --sdpa $s \
      --out $R/stream_$s.json
done
run1 gpu_tests 90 python -m pytest -q -x tests/test_gpu.py
run1 sf_dmd 150 python benchmarks/sf_dmd_iteration.py --preset wan2.1-1.3b --batch 1 --ac full --fsdp \
    --critic-ratio 1 --iters 1 --out $R/sf_dmd.json
tar -C $R -cf "$OUT/perf.tar" .
echo "[$(date +%T)] end"
