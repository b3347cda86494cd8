#!/usr/bin/env bash
# Run on the GPU machine (repo root, wheels from scripts/fetch_gpu_wheels.sh in .whl/):
# installs the missing packages, then runs every GPU check and the GPU benchmarks. Writes
# seven files under ${OUT:-gpu-out} (the device tool returns at most 8): gpu-validate.log,
# bench-gpu-decode.json, bench-io.json, bench-full.json and its three PNGs. See
# docs/gpu-validation.md.
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
log="$out/gpu-validate.log"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD"
status=0
step() {
    echo "=== $* ($(date -u +%H:%M:%S))" | tee -a "$log"
    "$@" >>"$log" 2>&1 || { echo "=== FAILED ($?): $*" | tee -a "$log"; status=1; }
    tail -5 "$log"
}

step bash -c 'date -u; nvidia-smi'
step python3 -m gpuzarr info
step bash scripts/compile_kernels.sh
step python3 -m pytest -q -m gpu -p no:cacheprovider tests/
step python3 -m pytest -q -p no:cacheprovider tests/test_oracle.py tests/test_blosc_mirror.py tests/test_kernel_mirrors.py
step python3 benchmarks/bench_gpu_decode.py --out "$out/bench-gpu-decode.json"
step python3 benchmarks/bench_io.py --drop-caches --out "$out/bench-io.json"
step python3 -m gpuzarr bench --preset full --no-progress --out "$out"
exit $status
