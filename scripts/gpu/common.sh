# Sourced by the scripts in scripts/gpu/ (run from the repository root on the device machine).
export PYTHONPATH=src PYTHONUNBUFFERED=1
crm() { python -m causal_rcm.cli "$@"; }
cp_if() { if [[ -f $1 ]]; then cp "$1" "$2"; fi; }  # a run too short to log has no metrics.jsonl
# progress bars off, last lines kept (an empty result is not an error under pipefail)
quiet() { tr '\r' '\n' | { grep -v "it/s\]\|s/it\]\|video/s\]\|block/s\]" || true; } | tail -"${1:-4}"; }
