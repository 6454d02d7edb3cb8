#!/usr/bin/env bash
# Issues 14 and 15 in one device call (every result and log is written to $OUT as it comes):
#   1. the GPU tests (graph-captured stream == eager, kernels);
#   2. live play latency on the GPU for random-weight world models of the shipped architectures (atari and
#      blob-s presets; c1-1 at 1 step, c3-3 at 2 steps) through the real server (benchmarks/play_latency.py);
#   3. the streaming latency protocol at Wan2.1-1.3B (random weights, 832x480, 21 latent frames), eager and
#      with the per-chunk forward captured as a CUDA graph, and the 14B memory check.
#   OUT=out bash scripts/gpu/stream_play_bench.sh
source scripts/gpu/common.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/progress.txt"
step pytest_gpu 90 python -m pytest -q -p no:cacheprovider tests/test_gpu.py
python benchmarks/play_bundles.py --out /tmp/play_bundles > /dev/null
step play 110 python benchmarks/play_latency.py --device cuda --fps 60 --seconds 8 --warmup 2 --server-arg=--no-graphs \
    --ckpt /tmp/play_bundles/atari-c1-1.safetensors --ckpt /tmp/play_bundles/atari-c3-3.safetensors \
    --ckpt /tmp/play_bundles/blob-agent-c1-1.safetensors --ckpt /tmp/play_bundles/blob-agent-c3-3.safetensors \
    --out "$OUT/play_latency_gpu.json"
step play_graphs 60 python benchmarks/play_latency.py --device cuda --fps 60 --seconds 8 --warmup 2 --server-arg=--graphs \
    --ckpt /tmp/play_bundles/atari-c1-1.safetensors --ckpt /tmp/play_bundles/blob-agent-c1-1.safetensors \
    --out "$OUT/play_latency_gpu_graphs.json"
step stream_graphs 150 python benchmarks/stream_latency.py --graphs --vae-compile --runs c3-3:2,c1-1:1 \
    --decoders none,taehv,wan_vae --plot "$OUT/stream_latency_graphs.png" --out "$OUT/stream_latency_graphs.json"
step stream_eager 90 python benchmarks/stream_latency.py --runs c3-3:2,c3-3:4,c1-1:1,c1-1:2 --decoders none,taehv \
    --out "$OUT/stream_latency_eager.json"
log end
