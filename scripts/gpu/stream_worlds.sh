#!/usr/bin/env bash
# Issues 15 and 13 in one device call: the 1.3B stream (SDPA's default kernel order against cuDNN first, clean
# and noisy context), the GPU tests, then the world-model chains (scripts/gpu/world_models.sh) in the rest.
#   OUT=out bash scripts/gpu/stream_worlds.sh
source scripts/gpu/common.sh
R=/tmp/stream; mkdir -p $R; PACK=stream.tar
nvidia-smi -L
for s in default cudnn; do
  run1 stream_$s 60 python benchmarks/stream_latency.py --graphs --decoders none --runs c3-3:2,c1-1:1 --sdpa $s \
      --out $R/stream_$s.json
done
run1 stream_noisy 45 python benchmarks/stream_latency.py --graphs --decoders none,taehv --runs c3-3:2 --sdpa cudnn \
    --context noisy --out $R/stream_noisy.json
run1 gpu_tests 60 python -m pytest -q -x tests/test_gpu.py
OUT=$OUT SCALE=${SCALE:-0.7} N_AT=1024 TEACHER_ARGS=compile=false timeout ${WM_LIMIT:-330} bash scripts/gpu/world_models.sh
echo "[$(date +%T)] end"
