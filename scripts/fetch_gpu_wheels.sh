#!/usr/bin/env bash
# Download (on the dev box, which reaches PyPI) the wheels the GPU test machine lacks, into
# .whl/ (git-ignored). The GPU machine has numpy, cupy-cuda13x, pytest, hypothesis, psutil,
# rich, tqdm, matplotlib, tensorstore and nvidia-ml-py already; see docs/gpu-validation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
platforms=()
for n in 17 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pkgs=(
  "zarr==$($PY -c 'import zarr; print(zarr.__version__)')"
  "numcodecs==$($PY -c 'import numcodecs; print(numcodecs.__version__)')"
  donfig crc32c google-crc32c lz4 typing-extensions packaging
  nvidia-libnvcomp-cu13 kvikio-cu13 libkvikio-cu13 rapids-logger msgspec zarrs
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pkgs[@]}"
du -sh .whl
ls .whl
