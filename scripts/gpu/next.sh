#!/usr/bin/env bash
# Whichever card comes: an H200 (> 100 GB) measures the training iterations with selective checkpointing
# (scripts/gpu/perf_h200.sh), an H100 the stream (scripts/gpu/stream_h200.sh, which runs on either card).
#   OUT=out bash scripts/gpu/next.sh
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
if [[ $MEM -gt 100000 ]]; then exec bash scripts/gpu/perf_h200.sh; else exec bash scripts/gpu/stream_h200.sh; fi
