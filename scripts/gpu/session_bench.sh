#!/usr/bin/env bash
# The GPU benchmarks behind the closing notes, in one device call (results and logs in $OUT):
# GPU tests, Wan2.1-1.3B forward vs diffusers (plain and fused norm+RoPE), one TF iteration per objective
# at blob-s, and the whole-DiT forward-mode pass. diffusers comes from wheels carried in .whl/.
#   OUT=out bash scripts/gpu/session_bench.sh
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/smi.txt"
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 > "$OUT/pytest.txt"
timeout 240 python benchmarks/wan_forward.py --iters 15 --fused --out "$OUT/wan_forward.json" > "$OUT/wan_forward.log" 2>&1
timeout 120 python benchmarks/tf_iteration.py --preset blob-s --batch 64 --out "$OUT/tf_iteration.json" > "$OUT/tf_iteration.log" 2>&1
