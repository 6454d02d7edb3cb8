# Sourced by the scripts in scripts/gpu/ (run from the repository root on the device machine): $OUT exists,
# the carried wheels (.whl/: diffusers, ale-py, the play server's packages) are installed into /tmp/site.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  pip install -q --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | grep -v "^WARNING: Running pip" | tail -2
fi
export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
crm() { python -m causal_rcm.cli "$@"; }
cp_if() { if [[ -f $1 ]]; then cp "$1" "$2"; fi; }  # a run too short to log has no metrics.jsonl
# progress bars off, last lines kept (an empty result is not an error under pipefail)
quiet() { tr '\r' '\n' | { grep -v "it/s\]\|s/it\]\|video/s\]\|block/s\]" || true; } | tail -"${1:-4}"; }
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/progress.txt"; }
step() {  # step NAME LIMIT command...: its log in $OUT, its last TAIL (12) lines on stdout
  local name=$1 limit=$2; shift 2
  log "start $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || log "FAILED ($?): $name"
  quiet "${TAIL:-12}" < "$OUT/$name.log"
}
run1() {  # run1 NAME LIMIT command...: its log in $R, its last TAIL (14) lines on stdout, then all of $R packed
  local name=$1 limit=$2; shift 2  # into $OUT/$PACK after every step, so a call cut short keeps what it measured
  echo "[$(date +%T)] start $name"
  timeout "$limit" "$@" > "$R/$name.log" 2>&1 || echo "FAILED ($?): $name"
  quiet "${TAIL:-14}" < "$R/$name.log"
  tar -C "$R" -cf "$OUT/$PACK" .
}
