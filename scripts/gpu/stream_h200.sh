#!/usr/bin/env bash
# Issue 15 on an H200 in one device call: the 1.3B stream with SDPA's default order and cuDNN first (clean
# context; c3-3 2 steps, c1-1 1 step), the noisy-context stream with the tiny decoder, the end-to-end row with
# the Wan VAE (compiled decoder, noisy context), the stream attention rows (is cuDNN taken on the cache's
# prefix views?), then the GPU tests. One stream.tar comes back in $OUT.
#   OUT=out bash scripts/gpu/stream_h200.sh
source scripts/gpu/common.sh
R=/tmp/stream; mkdir -p $R
run1() {
  local name=$1 limit=$2; shift 2
  echo "[$(date +%T)] start $name"
  timeout "$limit" "$@" > "$R/$name.log" 2>&1 || echo "FAILED ($?): $name"
  quiet "${TAIL:-14}" < "$R/$name.log"
  tar -C $R -cf "$OUT/stream.tar" .
}
nvidia-smi -L
for s in default cudnn; do
  run1 stream_$s 70 python benchmarks/stream_latency.py --graphs --decoders none --runs c3-3:2,c1-1:1 --sdpa $s \
      --out $R/stream_$s.json
done
run1 stream_noisy 60 python benchmarks/stream_latency.py --graphs --decoders none,taehv --runs c3-3:2,c1-1:1 \
    --sdpa cudnn --context noisy --out $R/stream_noisy.json
run1 stream_attention 60 python benchmarks/attention_backends.py --stream-only --iters 5 --out $R/attention_stream.json
run1 stream_wan_vae 200 python benchmarks/stream_latency.py --graphs --decoders wan_vae --runs c3-3:2 --sdpa cudnn \
    --context noisy --vae-compile --out $R/stream_wan_vae.json
run1 gpu_tests 90 python -m pytest -q -x tests/test_gpu.py
echo "[$(date +%T)] end"
