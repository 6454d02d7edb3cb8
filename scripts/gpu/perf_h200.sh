#!/usr/bin/env bash
# Issue 16's must-show on an H200, trimmed to what it lacks: the 1.3B TF / TF-dCM / TF-sCM iterations with
# selective checkpointing, compiled blocks and the split attention on cuDNN (TF profiled), and the SF-DMD step
# (full checkpointing). One perf.tar comes back in $OUT.   OUT=out bash scripts/gpu/perf_h200.sh
STEPS="tf_split sf_dmd" SF_AC=full exec bash scripts/gpu/perf.sh
