#!/usr/bin/env bash
# The GPU path's check in one call of at most 9 minutes; bench/gpu_check.py says what it runs.
#   bash bench/gpu_check.sh [--steps STEP ...]   on a lent GPU machine (the device tool sets OUT)
#   bash bench/gpu_check.sh --cpu                here: the same steps at tiny sizes
# docs/gpu.md: the wheels and data to carry, and the call.
set -u
cd "$(dirname "$0")/.." || exit 1
export OUT="${OUT:-$PWD/gpu-check-out}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
# the script keeps to its own budget (520 s); this is the backstop
exec timeout -k 10 540 python3 bench/gpu_check.py --out "$OUT" "$@"
