#!/usr/bin/env bash
# Issue 16 in one device call: which attention kernels to use (benchmarks/attention_backends.py), the 1.3B
# TF / TF-dCM / TF-sCM iterations with the split attention backend on cuDNN and compiled blocks (TF profiled),
# TF with FlexAttention as the same machine's baseline, and the 1.3B SF-DMD step. Selective checkpointing
# where it fits (a 141 GB H200), full checkpointing on an 80 GB H100; SF_AC sets the SF-DMD step's.
# STEPS picks some of the steps (default all). One perf.tar comes back in $OUT.
#   OUT=out bash scripts/gpu/perf.sh      OUT=out STEPS="tf_split sf_dmd" SF_AC=full bash scripts/gpu/perf.sh
source scripts/gpu/common.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/perf; mkdir -p $R; PACK=perf.tar
nvidia-smi -L
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
AC=full; [[ $MEM -gt 100000 ]] && AC=selective
SF_AC=${SF_AC:-$AC}
want() { [[ " ${STEPS:-attention tf_split tf_flex sf_dmd} " == *" $1 "* ]]; }
W=(--preset wan2.1-1.3b --batch 1 --ac $AC --compile --fsdp --iters 3 --warmup 2)
want attention && run1 attention 60 python benchmarks/attention_backends.py --iters 5 --out $R/attention_backends.json
want tf_split && run1 tf_split 240 python benchmarks/tf_iteration.py "${W[@]}" --methods tf,tf_dcm,tf_scm \
    --attention split --sdpa cudnn --profile $R/tf_split_profile.txt --out $R/tf_split_$AC.json
want tf_flex && run1 tf_flex 90 python benchmarks/tf_iteration.py "${W[@]}" --methods tf --out $R/tf_flex_$AC.json
want sf_dmd && run1 sf_dmd 170 python benchmarks/sf_dmd_iteration.py --preset wan2.1-1.3b --batch 1 --ac $SF_AC \
    --fsdp --critic-ratio 1 --iters 1 --out $R/sf_dmd_$SF_AC.json
echo "[$(date +%T)] end"
