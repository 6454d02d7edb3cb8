#!/usr/bin/env bash
# One short device call for the numbers issues 14-16 wait for (results and logs in $OUT):
#   1. the GPU tests (graph-captured stream == eager, kernels);
#   2. live play latency on the GPU: an Atari c1-1 student of the `atari` architecture (random weights:
#      latency does not depend on them) and the tiny Blobworld-agent c1-1 student (tests/assets);
#   3. the streaming latency protocol at Wan2.1-1.3B (random weights, 480p, 21 latent frames), eager and
#      with the per-chunk forward captured as a CUDA graph;
#   4. one TF-dCM and one TF-sCM iteration at Wan2.1-1.3B with selective activation checkpointing.
#   OUT=out bash scripts/gpu/session4_bench.sh
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
pip install -q --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/smi.txt"
t() { echo "[$(date +%T)] $*"; }

t "gpu tests"
timeout 60 python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -6 > "$OUT/pytest_gpu.txt"
cat "$OUT/pytest_gpu.txt"

t "play latency"
python - <<'PY'
import dataclasses, torch
from causal_rcm.config import preset
from causal_rcm.models import WanDiT
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sampling import FewStep
from causal_rcm.worlds.base import WorldConfig
torch.manual_seed(0)
net = WanDiT(dataclasses.replace(preset("atari"), action_dim=6))
text = WorldTextEncoder.for_prompts(["no ball"], dim=128, num_layers=2, num_heads=4)
Bundle(net, text, FewStep("c1-1", 1, 1), WorldConfig("atari", "Pong", 64, 12), "student").save("/tmp/atari_c1-1.safetensors")
PY
timeout 90 python benchmarks/play_latency.py --ckpt /tmp/atari_c1-1.safetensors \
    --ckpt tests/assets/blob-agent-c1-1.safetensors --device cuda --fps 60 --seconds 12 \
    --out "$OUT/play_latency_gpu.json" > "$OUT/play_latency_gpu.log" 2>&1
tail -8 "$OUT/play_latency_gpu.log"

t "stream latency"
timeout 110 python benchmarks/stream_latency.py --patterns c3-3,c1-1 --steps 2,1 --decoders none,taehv,wan_vae \
    --out "$OUT/stream_latency_eager.json" > "$OUT/stream_eager.log" 2>&1
tail -10 "$OUT/stream_eager.log"
timeout 60 python benchmarks/stream_latency.py --graphs --patterns c3-3,c1-1 --steps 2,1 --decoders none,taehv \
    --out "$OUT/stream_latency_graphs.json" > "$OUT/stream_graphs.log" 2>&1
tail -6 "$OUT/stream_graphs.log"
t "end"
