#!/usr/bin/env bash
# Issues 14-16 measured in one device call (each step bounded by its own time limit, logs and JSON in $OUT):
#   1. the GPU tests (graph-captured stream == eager, kernels, fused norm+RoPE);
#   2. live play on the GPU through the real server: random-weight world models of the shipped architectures,
#      c1-1 at 1 step and c3-3 at 2 steps, CUDA-graph replay (and the Atari c1-1 eager for contrast);
#   3. the streaming latency protocol at Wan2.1-1.3B with CUDA graphs, each decoder;
#   4. one SF-DMD step at Wan2.1-1.3B (FSDP2 over one GPU, selective checkpointing; CRITIC critic updates).
#   OUT=out bash scripts/gpu/validate.sh
source scripts/gpu/common.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/progress.txt"
step pytest_gpu 100 python -m pytest -q -p no:cacheprovider tests/test_gpu.py
python benchmarks/play_bundles.py --out /tmp/play_bundles > /dev/null
B=/tmp/play_bundles
step play 150 python benchmarks/play_latency.py --device cuda --fps 60 --seconds 8 --warmup 2 --server-arg=--graphs \
    --ckpt $B/atari-c1-1.safetensors --ckpt $B/atari-c3-3.safetensors --ckpt $B/blob-agent-c1-1.safetensors \
    --label "graphs" --out "$OUT/play_latency_gpu.json"
step play_eager 45 python benchmarks/play_latency.py --device cuda --fps 60 --seconds 8 --warmup 2 \
    --server-arg=--no-graphs --ckpt $B/atari-c1-1.safetensors --label "eager" --out "$OUT/play_latency_gpu_eager.json"
step stream 190 python benchmarks/stream_latency.py --graphs --vae-compile --runs c3-3:2,c1-1:1 \
    --decoders none,taehv,wan_vae --plot "$OUT/stream_latency.png" --out "$OUT/stream_latency.json"
step sf_dmd "${SF_LIMIT:-100}" python benchmarks/sf_dmd_iteration.py --preset wan2.1-1.3b --batch 1 --ac selective \
    --fsdp --critic-ratio "${CRITIC:-1}" --iters 1 --out "$OUT/sf_dmd_iteration.json"
log end
