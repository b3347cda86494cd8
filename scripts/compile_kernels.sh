#!/usr/bin/env bash
# Compile every kernels/*.cu with nvcc for sm_80 and sm_90 (cubin) into a temporary
# directory; any error or warning fails the run. Called from .ci/run; needs only nvcc,
# no GPU. The kernels are compiled again at run time by CuPy (NVRTC), so this is the
# check that they build cleanly with the offline compiler too.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc_bin="${NVCC:-nvcc}"
if ! command -v "$nvcc_bin" >/dev/null 2>&1; then
    echo "compile_kernels: nvcc not found (set NVCC or put it on PATH)" >&2
    exit 2
fi

out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT

shopt -s nullglob
sources=("$repo_root"/kernels/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "compile_kernels: no kernels/*.cu found" >&2
    exit 1
fi

status=0
for src in "${sources[@]}"; do
    name="$(basename "$src" .cu)"
    for arch in 80 90; do
        log="$out_dir/$name.sm_$arch.log"
        if "$nvcc_bin" -cubin -std=c++17 -O3 \
            -gencode "arch=compute_$arch,code=sm_$arch" \
            -Werror all-warnings -Xptxas -Werror \
            -o "$out_dir/$name.sm_$arch.cubin" "$src" >"$log" 2>&1; then
            echo "ok    $name.cu  sm_$arch"
        else
            echo "FAIL  $name.cu  sm_$arch" >&2
            cat "$log" >&2
            status=1
        fi
    done
done
exit $status
