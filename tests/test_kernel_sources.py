"""The kernel text CuPy compiles at run time (includes inlined) builds with nvcc too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gpuzarr.engines.gpu.kernels import kernel_source

KERNELS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "kernels").glob("*.cu"))


@pytest.mark.parametrize("name", KERNELS)
def test_runtime_source_has_no_unresolved_local_include(name: str) -> None:
    text = kernel_source(name)
    assert '#include "' not in text
    assert "extern \"C\" __global__" in text


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("name", KERNELS)
def test_runtime_source_compiles_with_nvcc(name: str, tmp_path: Path) -> None:
    src = tmp_path / name  # a directory without common.cuh: only the inlined text can build
    src.write_text(kernel_source(name))
    proc = subprocess.run(["nvcc", "-cubin", "-std=c++17", "-gencode", "arch=compute_90,code=sm_90",
                           "-Werror", "all-warnings", "-o", str(tmp_path / "k.cubin"), str(src)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
