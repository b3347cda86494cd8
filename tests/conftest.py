"""Shared test configuration: the ``gpu`` marker and hypothesis profiles.

Tests marked ``gpu`` are deselected by default (``-m 'not gpu'`` in pyproject) and run
with ``pytest -m gpu``; without a usable GPU engine they skip with the reason.

``GPUZARR_EMULATE_GPU=1 pytest -m gpu`` runs them on the CPU under the GPU emulation of
:mod:`gpu_emulation` (CuPy, nvCOMP, kvikio and the kernels emulated) for the whole
session; ``GPUZARR_EMULATE_NVCOMP_API=6`` models libnvcomp 6.x instead of 5.x there and in
the ``emu`` fixtures. The kernels run there as the real ``kernels/*.cu`` compiled for the CPU
(``tests/cuda_cpu``), so the kernel-vs-mirror tests compare real kernel code; nvCOMP and
kvikio stay emulated (see docs/gpu-validation.md for what that leaves unproven).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("mutation", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # scripts/mutation_check.py: no shrinking
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_EMULATION: pytest.MonkeyPatch | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _EMULATION
    # the CPU engine's compiled lane, compiled before the first batch that can use it (not in
    # the background): every test then reads through it wherever it applies, deterministically
    import gpuzarr

    gpuzarr.config.set({"cpu.compiled": os.environ.get("GPUZARR_CPU__COMPILED", "eager")})
    if os.environ.get("GPUZARR_EMULATE_GPU") == "1":
        from gpu_emulation import install

        _EMULATION = pytest.MonkeyPatch()
        install(_EMULATION, kvikio=True, nvcomp_api=int(os.environ.get("GPUZARR_EMULATE_NVCOMP_API", "5")))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _EMULATION is not None:
        _EMULATION.undo()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from gpuzarr import _optional

    gpu = _optional.gpu_engine()
    if _EMULATION is not None:
        emulated = pytest.mark.skip(reason="asks the CUDA runtime itself, which the GPU emulation does not emulate")
        for item in gpu_items:
            if "real_cuda" in item.keywords:
                item.add_marker(emulated)
    if not gpu:
        skip = pytest.mark.skip(reason=f"no usable GPU engine: {gpu.reason}")
        for item in gpu_items:
            item.add_marker(skip)
