"""CUDA on the CPU: build ``kernels/*.cu`` unchanged with g++ and launch them through ctypes.

Each kernel file becomes one shared object (the exact text CuPy compiles, from
:func:`gpuzarr.engines.gpu.kernels.kernel_source`, compiled through ``cuda_on_cpu.h``
beside this file), cached by the hash of that text, the header and the compiler in
``$GPUZARR_CUDA_CPU_CACHE`` (default: a per-user directory under the system temp dir).
Every ``extern "C" __global__`` function gets a generated launch wrapper taking CUDA's
``kernelParams`` convention (an array of pointers to the argument values) and a
signature string derived by the C++ compiler from the kernel's own parameter list, so the
Python side checks every launch argument against the real source, not a hand-kept table.

:class:`CpuModule` / :class:`CpuKernel` follow ``cupy.RawModule`` / ``RawKernel``:
``module.get_function(name)(grid, block, args, stream=...)``. Arguments are device arrays
of the GPU emulation (:class:`gpu_emulation.FakeDeviceArray`), NumPy arrays (direct tests)
or NumPy scalars of exactly the kernel's C type (``long long`` ↔ ``np.int64``, ``int`` ↔
``np.int32``, ``double`` ↔ ``np.float64``); anything else is a ``TypeError``.

Execution (see the header): fibers (default) or OS threads per CUDA thread, blocks in
turn, in the order of a schedule — ``forward``, ``reverse`` or ``shuffle`` (default: threads
and blocks in a seeded random order, the seed counting launches, so one run is reproducible
and a missing barrier shows whether the writer is thread 0 or the reader is) — set per call,
with :func:`execution`, or with ``GPUZARR_CUDA_CPU_SCHEDULE`` / ``GPUZARR_CUDA_CPU_MODE``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import itertools
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_on_cpu.h"
LINKER_SCRIPT = HERE / "shared.ld"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-pthread", "-fdata-sections", f"-Wl,-T,{LINKER_SCRIPT}", "-Wall", "-Wextra", "-Werror",
            "-Wno-unknown-pragmas", "-Wno-unused-parameter", "-Wno-sign-compare")
SCHEDULES = {"forward": 0, "reverse": 1, "shuffle": 2}
MODES = {"fibers": 0, "threads": 1}
_C_TYPES = {"u8": ctypes.c_uint8, "i8": ctypes.c_int8, "u16": ctypes.c_uint16, "i16": ctypes.c_int16,
            "u32": ctypes.c_uint32, "i32": ctypes.c_int32, "u64": ctypes.c_uint64, "i64": ctypes.c_int64,
            "f32": ctypes.c_float, "f64": ctypes.c_double}
_NP_TYPES = {"u8": np.uint8, "i8": np.int8, "u16": np.uint16, "i16": np.int16, "u32": np.uint32, "i32": np.int32,
             "u64": np.uint64, "i64": np.int64, "f32": np.float32, "f64": np.float64}
_KERNEL_MARK = re.compile(r"__gzcpu_kernel__\s+void\s+([A-Za-z_]\w*)\s*\(")
_lock = threading.Lock()
_override: dict[str, Any] = {}
_launch_counter = itertools.count(1)  # default shuffle seed: a different, reproducible order per launch


@contextlib.contextmanager
def execution(schedule: str | None = None, mode: str | None = None, seed: int = 0) -> Iterator[None]:
    """Run every launch inside with this schedule / mode / shuffle seed (tests of the harness itself)."""
    saved = dict(_override)
    _override.update({k: v for k, v in (("schedule", schedule), ("mode", mode), ("seed", seed)) if v is not None})
    try:
        yield
    finally:
        _override.clear()
        _override.update(saved)


class KernelBuildError(RuntimeError):
    """g++ rejected a kernel file (the message carries the compiler's output)."""


class KernelLaunchError(RuntimeError):
    """The CPU execution of a kernel found an error (divergent ``__syncthreads``, ...)."""


def cache_dir() -> Path:
    path = os.environ.get("GPUZARR_CUDA_CPU_CACHE")
    d = Path(path) if path else Path(tempfile.gettempdir()) / f"gpuzarr-cuda-cpu-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@functools.cache
def _compiler_id() -> str:
    return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout


def kernel_names(source: str) -> list[str]:
    """Every ``__global__`` function of ``source``, found after preprocessing (macro-made kernels too)."""
    proc = subprocess.run([CXX, "-E", "-P", "-x", "c++", "-std=c++17", "-"],
                          input="#define __global__ __gzcpu_kernel__\n" + source,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise KernelBuildError(proc.stderr)
    return list(dict.fromkeys(_KERNEL_MARK.findall(proc.stdout)))


def translation_unit(source: str, names: list[str]) -> str:
    wrappers = "".join(
        f'extern "C" int gzcpu_launch__{n}(const long long* cfg, void** args, char* err, size_t err_len) '
        f"{{ return ::gzcpu::launch_kernel(&{n}, cfg, args, err, err_len); }}\n"
        f'extern "C" const char* gzcpu_signature__{n}() {{ return ::gzcpu::signature(&{n}); }}\n'
        for n in names)
    return f'#include "{HEADER}"\n#line 1 "kernel"\n{source}\n// generated launch wrappers\n{wrappers}'


def build(source: str) -> tuple[Path, list[str]]:
    """Compile ``source`` (kernel text with includes inlined) into a cached shared object."""
    names = kernel_names(source)
    tu = translation_unit(source, names)
    digest = hashlib.sha256("\0".join([tu, HEADER.read_text(), LINKER_SCRIPT.read_text(), " ".join(CXXFLAGS),
                                       _compiler_id()]).encode())
    so = cache_dir() / f"k-{digest.hexdigest()[:24]}.so"
    if not so.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            cpp = Path(tmp) / "tu.cpp"
            cpp.write_text(tu)
            out = Path(tmp) / "k.so"
            proc = subprocess.run([CXX, *CXXFLAGS, "-o", str(out), str(cpp)], capture_output=True, text=True,
                                  check=False)
            if proc.returncode:
                raise KernelBuildError(f"g++ failed on the kernel source:\n{proc.stderr[-6000:]}")
            os.replace(out, so)  # atomic: concurrent builders of the same text agree
    return so, names


def _pointer(value: Any) -> tuple[int, np.dtype] | None:
    inner = getattr(value, "_a", None)  # gpu_emulation.FakeDeviceArray
    arr = inner if isinstance(inner, np.ndarray) else value if isinstance(value, np.ndarray) else None
    if arr is None:
        return None
    if not arr.flags.c_contiguous:
        raise TypeError("a kernel pointer argument must be a contiguous array")
    return int(arr.__array_interface__["data"][0]), arr.dtype


class CpuKernel:
    """One compiled ``__global__`` function (``cupy.RawKernel``-like call)."""

    def __init__(self, lib: ctypes.CDLL, name: str) -> None:
        self.name = name
        self._launch = getattr(lib, f"gzcpu_launch__{name}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        sig = getattr(lib, f"gzcpu_signature__{name}")
        sig.restype = ctypes.c_char_p
        self.signature: tuple[str, ...] = tuple(sig().decode().split(","))

    def pack(self, args: tuple[Any, ...]) -> tuple[Any, list[Any]]:
        """``kernelParams`` for ``args``, checked against the kernel's C parameter types."""
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments, the kernel takes {len(self.signature)}")
        keep: list[Any] = []
        params = (ctypes.c_void_p * max(len(args), 1))()
        for i, (arg, code) in enumerate(zip(args, self.signature, strict=True)):
            if code.endswith("*"):
                ptr = _pointer(arg)
                if ptr is None:
                    raise TypeError(f"{self.name} argument {i}: expected an array for {code}, got {type(arg).__name__}")
                if ptr[1] != np.dtype(_NP_TYPES[code[:-1]]):
                    raise TypeError(f"{self.name} argument {i}: {code} parameter given a {ptr[1]} array")
                value = ctypes.c_void_p(ptr[0])
            else:
                if not isinstance(arg, np.generic) or arg.dtype != np.dtype(_NP_TYPES[code]):
                    raise TypeError(f"{self.name} argument {i}: expected a {np.dtype(_NP_TYPES[code])} scalar for "
                                    f"{code}, got {type(arg).__name__} {getattr(arg, 'dtype', '')}")
                value = _C_TYPES[code](arg.item())
            keep.append(value)
            params[i] = ctypes.addressof(value)
        return params, keep

    def __call__(self, grid: Any, block: Any, args: tuple[Any, ...], *, shared_mem: int = 0, stream: Any = None,
                 schedule: str | None = None, mode: str | None = None, seed: int = 0) -> None:
        schedule = schedule or _override.get("schedule") or os.environ.get("GPUZARR_CUDA_CPU_SCHEDULE", "shuffle")
        mode = mode or _override.get("mode") or os.environ.get("GPUZARR_CUDA_CPU_MODE", "fibers")
        seed = seed or _override.get("seed") or next(_launch_counter)
        g = tuple(int(x) for x in grid) + (1,) * (3 - len(grid))
        b = tuple(int(x) for x in block) + (1,) * (3 - len(block))
        if min(g + b) < 1 or int(np.prod(b)) > 1024:
            raise ValueError(f"{self.name}: bad launch configuration grid {grid} block {block}")
        params, _keep = self.pack(tuple(args))
        cfg = (ctypes.c_longlong * 9)(*g, *b, MODES[mode], SCHEDULES[schedule], seed)
        err = ctypes.create_string_buffer(1024)
        if self._launch(cfg, ctypes.cast(params, ctypes.c_void_p), err, len(err)):
            raise KernelLaunchError(f"{self.name}: {err.value.decode()}")


class CpuModule:
    """One kernel file compiled for the CPU (``cupy.RawModule``-like)."""

    def __init__(self, source: str) -> None:
        path, names = build(source)
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        self.kernels = {n: CpuKernel(self._lib, n) for n in names}
        self._lib.gzcpu_shared_bytes.restype = ctypes.c_size_t
        #: bytes of ``__shared__`` storage the launcher poisons before every block
        self.shared_bytes = int(self._lib.gzcpu_shared_bytes())

    def get_function(self, name: str) -> CpuKernel:
        try:
            return self.kernels[name]
        except KeyError:
            raise AttributeError(f"no kernel named {name!r} in this module ({sorted(self.kernels)})") from None


def module(file: str) -> CpuModule:
    """``kernels/<file>`` (the text CuPy would compile) built for the CPU; rebuilt when the text changes."""
    from gpuzarr.engines.gpu.kernels import kernel_source

    return compile_source(kernel_source(file))


def compile_source(source: str) -> CpuModule:
    """``source`` built for the CPU (one build and one load per distinct text in a process)."""
    with _lock:
        return _module_for(source)


@functools.cache
def _module_for(source: str) -> CpuModule:
    return CpuModule(source)


def kernel_files() -> list[str]:
    return sorted(p.name for p in (Path(__file__).resolve().parents[2] / "kernels").glob("*.cu"))
