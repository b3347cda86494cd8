"""nvCOMP's batched C API (``libnvcomp.so``) through ctypes: one decode call per algorithm per batch.

Why the C API and not nvCOMP's Python ``Codec``: the Python API of nvCOMP 5.3 (what
``nvidia-dali-cuda130`` pins) wraps a batch as a Python list of one ``Array`` per stream
(``as_arrays(list_of_buffers)``), so a batch of 20 000 Blosc streams costs 20 000 Python
objects per call; 6.0 adds an offset-table ``as_arrays(buffer, offsets, sizes)`` but, in both,
``Codec.decode`` without a ``DecompressConfig`` "internally calls configure_decompression
on src, forcing a stream synchronization", a config built from the buffers synchronises
too, and reading decoded sizes (``buffer_sizes``) waits for the stream. The batched C
functions take device arrays of pointers and sizes, write per-entry statuses and decoded
sizes to device memory, and never synchronise: the engine builds the tables with NumPy,
uploads them in one copy, and reads statuses and sizes back after the batch's event.

The C functions this module uses have the same signatures in nvCOMP 5.x and 6.x except
one: the host-only temp-size query is ``nvcompBatched<A>DecompressGetTempSizeAsync(n,
max_chunk, opts, *temp, max_total)`` in 5.x and ``nvcompBatched<A>DecompressGetTempSize(n,
max_chunk, opts, *temp, max_total, stream)`` in 6.x (:attr:`NvcompLibrary.api` says which
was found). The decompression options are a 64-byte struct passed by value in both; all
zeros is the default backend (and for LZ4: ``NVCOMP_TYPE_CHAR``, no bitshuffle).

:func:`library` loads the library once per process (from the ``nvidia-libnvcomp-cu13``
wheel, else the system's ``libnvcomp.so.6`` / ``.so.5``); the GPU emulation of the tests
replaces it with a model of either API shape.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["ALGORITHMS", "STATUS_NAMES", "DecompressOpts", "NvcompLibrary", "NvcompUnavailableError", "library"]

ALGORITHMS = ("LZ4", "Zstd", "Deflate")

#: ``nvcompStatus_t`` values (nvcomp/shared_types.h, identical in 5.x and 6.x)
STATUS_NAMES = {0: "nvcompSuccess", 10: "nvcompErrorInvalidValue", 11: "nvcompErrorNotSupported",
                12: "nvcompErrorCannotDecompress", 13: "nvcompErrorBadChecksum",
                14: "nvcompErrorCannotVerifyChecksums", 15: "nvcompErrorOutputBufferTooSmall",
                16: "nvcompErrorWrongHeaderLength", 17: "nvcompErrorAlignment", 18: "nvcompErrorChunkSizeTooLarge",
                19: "nvcompErrorCannotCompress", 20: "nvcompErrorWrongInputLength",
                21: "nvcompErrorBatchSizeTooLarge", 22: "nvcompErrorSubChunkCountTooLarge",
                23: "nvcompErrorSubChunkCountTooSmall", 24: "nvcompErrorOutputBufferAlignmentTooSmall",
                1000: "nvcompErrorCudaError", 10000: "nvcompErrorInternal"}


class NvcompUnavailableError(RuntimeError):
    """libnvcomp cannot be loaded, or lacks the batched decompression functions."""


class DecompressOpts(ctypes.Structure):
    """``nvcompBatched{LZ4,Zstd,Deflate}DecompressOpts_t``: 64 bytes, the backend first (0 = default)."""

    _fields_ = [("backend", ctypes.c_int), ("reserved", ctypes.c_char * 60)]


class AlignmentRequirements(ctypes.Structure):
    """``nvcompAlignmentRequirements_t``: minimum alignment of inputs, outputs and the temp buffer."""

    _fields_ = [("input", ctypes.c_size_t), ("output", ctypes.c_size_t), ("temp", ctypes.c_size_t)]


_P, _S = ctypes.c_void_p, ctypes.c_size_t


@dataclass(frozen=True)
class Alignment:
    """Required alignment in bytes of decompression inputs, outputs and temp memory."""

    input: int
    output: int
    temp: int


class NvcompLibrary:
    """The three batched decompression entry points per algorithm of one loaded ``libnvcomp``."""

    def __init__(self, cdll: Any, path: str = "") -> None:
        self.path = path
        self._lib = cdll
        if hasattr(cdll, "nvcompBatchedZstdDecompressGetTempSize"):
            self.api = 6
        elif hasattr(cdll, "nvcompBatchedZstdDecompressGetTempSizeAsync"):
            self.api = 5
        else:
            raise NvcompUnavailableError(f"{path or cdll}: no nvcompBatchedZstdDecompressGetTempSize[Async] "
                                         "(nvCOMP 5.x or 6.x needed)")
        self._temp: dict[str, Any] = {}
        self._decompress: dict[str, Any] = {}
        self._align: dict[str, Any] = {}
        for alg in ALGORITHMS:
            try:
                temp = getattr(cdll, f"nvcompBatched{alg}DecompressGetTempSize" + ("" if self.api == 6 else "Async"))
                decompress = getattr(cdll, f"nvcompBatched{alg}DecompressAsync")
                align = getattr(cdll, f"nvcompBatched{alg}DecompressGetRequiredAlignments")
            except AttributeError as exc:
                raise NvcompUnavailableError(f"{path or cdll}: {exc}") from None
            temp.restype = decompress.restype = align.restype = ctypes.c_int
            temp.argtypes = ([_S, _S, DecompressOpts, ctypes.POINTER(_S), _S]
                             + ([_P] if self.api == 6 else []))
            decompress.argtypes = [_P, _P, _P, _P, _S, _P, _S, _P, DecompressOpts, _P, _P]
            align.argtypes = [DecompressOpts, ctypes.POINTER(AlignmentRequirements)]
            self._temp[alg], self._decompress[alg], self._align[alg] = temp, decompress, align
        self._alignments: dict[str, Alignment] = {}

    def alignment(self, algorithm: str) -> Alignment:
        """What ``nvcompBatched<A>DecompressGetRequiredAlignments`` reports (host only; cached)."""
        got = self._alignments.get(algorithm)
        if got is None:
            req = AlignmentRequirements()
            self._check(algorithm, "DecompressGetRequiredAlignments", self._align[algorithm](DecompressOpts(), ctypes.byref(req)))
            got = self._alignments[algorithm] = Alignment(int(req.input), int(req.output), int(req.temp))
        return got

    def temp_bytes(self, algorithm: str, n: int, max_chunk_bytes: int, total_bytes: int, stream: int = 0) -> int:
        """Temporary device memory a decode of ``n`` entries needs (host only: nothing is queued)."""
        out = _S(0)
        args: list[Any] = [n, max(int(max_chunk_bytes), 1), DecompressOpts(), ctypes.byref(out), max(int(total_bytes), 1)]
        if self.api == 6:
            args.append(stream)
        self._check(algorithm, "DecompressGetTempSize", self._temp[algorithm](*args))
        return int(out.value)

    def decompress_async(self, algorithm: str, *, in_ptrs: int, in_bytes: int, out_capacity: int, out_actual: int,
                         n: int, temp: int, temp_bytes: int, out_ptrs: int, statuses: int, stream: int) -> None:
        """Queue ``nvcompBatched<A>DecompressAsync`` on ``stream``; every argument a device address or a count.

        Raises ``RuntimeError`` when the launch itself is refused (a bad argument); the
        per-entry outcome is in ``statuses`` / ``out_actual`` once the stream gets there.
        """
        status = self._decompress[algorithm](in_ptrs, in_bytes, out_capacity, out_actual, n, temp or None, temp_bytes,
                                             out_ptrs, DecompressOpts(), statuses, stream or None)
        self._check(algorithm, "DecompressAsync", status)

    @staticmethod
    def _check(algorithm: str, what: str, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"nvcompBatched{algorithm}{what} returned {STATUS_NAMES.get(status, status)}")


def _candidates() -> list[str]:
    """Where libnvcomp may be: the ``nvidia-libnvcomp-cu13`` wheel's ``nvidia/libnvcomp/lib64`` on any
    ``sys.path`` entry (searched directly: another wheel's ``nvidia/__init__.py`` can make ``nvidia`` a
    regular package that hides the wheel from ``import nvidia.libnvcomp``), then the dynamic loader."""
    import sys

    roots: list[str] = []
    try:
        import nvidia.libnvcomp as wheel

        roots += list(getattr(wheel, "__path__", []))
    except ImportError:
        pass
    roots += [os.path.join(entry or ".", "nvidia", "libnvcomp") for entry in sys.path]
    paths: list[str] = []
    for root in roots:
        for sub in ("lib64", "lib", "bin"):
            for path in sorted(glob.glob(os.path.join(root, sub, "libnvcomp.so.*")), reverse=True):
                if path not in paths:
                    paths.append(path)
    return paths + ["libnvcomp.so.6", "libnvcomp.so.5", "libnvcomp.so"]


@functools.cache
def library() -> NvcompLibrary:
    """The process's libnvcomp (loaded once); :class:`NvcompUnavailableError` when there is none."""
    errors = []
    for path in _candidates():
        try:
            cdll = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        return NvcompLibrary(cdll, path)
    raise NvcompUnavailableError("cannot load libnvcomp (pip install nvidia-libnvcomp-cu13): " + "; ".join(errors[-2:]))
