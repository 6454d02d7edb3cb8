#!/usr/bin/env bash
# Issue 16's must-show on an H200, trimmed to what it lacks: the 1.3B TF / TF-dCM / TF-sCM iterations with
# selective checkpointing, compiled blocks and the split attention on cuDNN (TF profiled), and the SF-DMD step
# (full checkpointing). One perf.tar comes back in $OUT.   OUT=out bash scripts/gpu/perf_h200.sh
source scripts/gpu/common.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/perf; mkdir -p $R; PACK=perf.tar
nvidia-smi -L
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
AC=full; [[ $MEM -gt 100000 ]] && AC=selective
W=(--preset wan2.1-1.3b --batch 1 --ac $AC --compile --fsdp --iters 3 --warmup 2)
run1 tf_split 240 python benchmarks/tf_iteration.py "${W[@]}" --methods tf,tf_dcm,tf_scm --attention split \
    --sdpa cudnn --profile $R/tf_split_profile.txt --out $R/tf_split_$AC.json
run1 sf_dmd 150 python benchmarks/sf_dmd_iteration.py --preset wan2.1-1.3b --batch 1 --ac full --fsdp \
    --critic-ratio 1 --iters 1 --out $R/sf_dmd_full.json
echo "[$(date +%T)] end"
