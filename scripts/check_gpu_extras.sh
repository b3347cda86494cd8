#!/usr/bin/env bash
# CI (no GPU): does `pip install '.[gpu,dali]'` resolve? A dry-run resolution for Linux x86-64 /
# Python 3.12 (metadata only, nothing installed) with uv's resolver (installed into the test venv
# when not on PATH: pip's dry run of these wheels takes minutes, uv's seconds); prints the versions
# that matter for the GPU engine. DALI (nvidia-dali-cuda130) pins nvidia-libnvcomp-cu13, so the
# co-installed nvCOMP is whatever DALI allows (5.3.0.16 for DALI 2.4): the engine must work on it.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
if command -v uv >/dev/null 2>&1; then
    uv=(uv)
else
    "$py" -m pip install --quiet uv
    uv=("$py" -m uv)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'gpuzarr[gpu,dali] @ file://%s\n' "$PWD" > "$work/req.in"
"${uv[@]}" pip compile --quiet --python-version 3.12 --python-platform x86_64-manylinux_2_28 "$work/req.in" \
    -o "$work/req.txt"
resolved="$(grep -E '^(cupy|kvikio|nvidia-(nvcomp|libnvcomp|dali))' "$work/req.txt")"
echo "'.[gpu,dali]' resolves:"
echo "$resolved" | sed 's/^/  /'
echo "$resolved" | grep -qE '^nvidia-libnvcomp-cu13==(5\.3|6\.)' || { echo "unexpected nvCOMP version" >&2; exit 1; }
