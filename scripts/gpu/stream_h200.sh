#!/usr/bin/env bash
# Issue 15 on an H200 in one device call: the 1.3B stream (random weights, 832x480, 81 frames, CUDA graphs,
# cuDNN attention first) with the blocks compiled around their attention: first the Wan VAE end to end
# (compiled, channels-last; dynamo's recompiles logged), then c3-3 2 steps and c1-1 1 step DiT only and with
# the tiny decoder, the same without compiling as the baseline, the 14B memory check, then the GPU tests
# (noisy context throughout). One stream.tar in $OUT.   OUT=out bash scripts/gpu/stream_h200.sh
source scripts/gpu/common.sh
R=/tmp/stream; mkdir -p $R; PACK=stream.tar
nvidia-smi -L
S=(python benchmarks/stream_latency.py --graphs --sdpa cudnn)
TORCH_LOGS=recompiles run1 stream_wan_vae 240 "${S[@]}" --compile --decoders wan_vae --runs c3-3:2 \
    --context noisy --vae-compile --out $R/stream_wan_vae.json
run1 stream_compiled 150 "${S[@]}" --compile --decoders none,taehv --runs c3-3:2,c1-1:1 --context noisy \
    --out $R/stream_compiled.json
run1 stream_plain 60 "${S[@]}" --decoders none,taehv --runs c3-3:2,c1-1:1 --context noisy --out $R/stream_plain.json
run1 stream_14b 240 "${S[@]}" --decoders none --runs c3-3:2 --context noisy --check-14b --out $R/stream_14b.json
run1 gpu_tests 120 python -m pytest -q -x tests/test_gpu.py
echo "[$(date +%T)] end"
