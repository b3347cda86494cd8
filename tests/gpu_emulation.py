"""Run the GPU engine's host orchestration on the CPU: CuPy, nvCOMP and the CUDA kernels emulated.

:func:`gpu_emulation` (a context manager) and the :func:`emulated_gpu` pytest fixture make
``device="cuda"`` resolve to a fresh :class:`gpuzarr.engines.gpu.engine.GpuEngine` that runs on
NumPy, so everything the engine does on the host — arena layout, slot offsets and
alignment, Blosc stream tables, nvCOMP batching per algorithm, decoded-size checks, CPU
fallback and ``strict``, crc32c, gather arguments — runs in CI without a GPU.

What is emulated, and how strictly (never more forgiving than the real thing where the
real behaviour is known; stricter where it is not, and said so):

* **cupy** (:class:`FakeDeviceArray`): a wrapper over a NumPy array, *not* a subclass, so
  device memory cannot leak into host code by accident: ``np.asarray(dev)`` raises
  ``TypeError`` exactly as CuPy does, mixing a NumPy array into arithmetic raises, and
  ``set()`` enforces CuPy's checks (NumPy source, same dtype, same shape, contiguous
  destination). ``cp.empty`` fills the memory with the byte ``0xA5`` so reading bytes
  nothing wrote shows up as wrong values. Allocations are 256-byte aligned, as CuPy's
  memory pool's are, and pointers are real addresses, so alignment checks are real.
* **nvidia.nvcomp** (:class:`FakeCodec`, :func:`fake_as_arrays`): ``as_arrays(buffer,
  offsets, sizes, cuda_stream=)`` needs a device (fake CuPy) 1-D contiguous ``uint8``
  buffer (nvCOMP also takes other dtypes and host buffers: stricter) and entries inside
  it. ``Codec.decode(batch, out=batch)`` checks every input and output *address* against
  :data:`DECOMPRESSION_ALIGNMENT` (LZ4 4, Zstd 8, Deflate 8 bytes — the nvCOMP 4.x headers
  ask for less: LZ4 1/1, Zstd 1/1 with an 8-byte scratch; stricter), rejects outputs
  that overlap each other or an input (undefined behaviour on a GPU), then decodes each
  entry with a real CPU decoder (python-lz4 raw block, numcodecs Zstd, ``zlib`` raw
  deflate). An entry whose decoded size exceeds its output slot raises ``ValueError``
  (the documented behaviour); an undecodable entry raises ``RuntimeError`` (the
  emulation's choice: the Python API's behaviour on corrupt RAW input is undocumented);
  a Deflate stream with bytes after its final block raises ``RuntimeError`` too (nvCOMP
  would likely ignore them: stricter). ``buffer_sizes`` of the result report the real
  decoded sizes. Every call is recorded in :attr:`GpuEmulation.decode_calls`.
* **kernels**: ``cupy.RawModule(code=...)`` compiles the very text CuPy would get
  (``kernels/*.cu`` with includes inlined) with g++ through the CUDA-on-CPU harness of
  :mod:`cuda_cpu`, so every launch runs the real kernel code on the fake device memory.
  Each launch is checked against the kernel's C signature (the compiler's, and
  :data:`KERNEL_SIGNATURES`): ``long long`` ↔ ``np.int64``, ``int`` ↔ ``np.int32``,
  ``double`` ↔ ``np.float64``, pointers ↔ device arrays of the pointee type (a host array
  is a ``TypeError`` as in CuPy). After the launch the kernel's NumPy mirror
  (:mod:`gpuzarr.engines.gpu.mirrors`) recomputes the output as an oracle and any
  difference is an ``AssertionError``; for the gather kernels the oracle is computed from
  :func:`gpu_kernels.launch_gather`'s own Python arguments (the layout read back from
  ``out_strides`` and checked against :func:`kernel_mirrors.gather_layout`), so a wrong
  table, argument order or fill packing in the launcher fails twice over.

* **kvikio** (only with ``install(..., kvikio=True)`` / :func:`gpu_emulation(kvikio=True)`):
  ``CuFile(path, "r").pread(buffer, size, file_offset)`` reads the file with ``os.pread``
  into a fake device array or a (pinned) host array, which must be 1-D contiguous
  ``uint8`` and large enough, and returns a future whose ``get()`` is the byte count.
  Each read is logged in :attr:`GpuEmulation.kvikio_reads` as ``"device"`` or ``"host"``.
  ``RemoteFile.open_http(url, nbytes)`` / ``open_s3(bucket, object, nbytes, region, key,
  secret, endpoint, token)`` read over plain HTTP with ``Range`` requests (path-style
  URLs on the given endpoint, unsigned: the loopback moto accepts that), learning the
  size with a ``HEAD`` at open when ``nbytes`` is not given, as kvikio does; an HTTP
  error at open or read is a ``RuntimeError`` naming the status (kvikio raises
  ``RuntimeError`` from libcurl; the wording here is the emulation's). Remote reads are
  logged as ``"remote device"`` / ``"remote host"``.

What it does not prove: that nvcc/NVRTC and the GPU execute the kernels as g++ and the
fiber scheduler do (warp-level behaviour, memory model, real parallel races beyond what the
schedules expose), that nvCOMP decodes, aligns, sizes and reports errors as assumed here,
or anything about streams and asynchrony (every emulated operation is synchronous).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pytest

from gpuzarr.engines.gpu import mirrors as km

#: byte written into fresh ``cp.empty`` memory (reading it back means nothing wrote there)
UNINITIALISED_BYTE = 0xA5
#: CuPy's memory pool hands out 256-byte aligned blocks
DEVICE_ALLOCATION_ALIGN = 256
DEVICE_COUNT = 1

_IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")


# ============================================================================ fake CuPy


def _allocate(shape: Any, dtype: Any, fill: int | None) -> np.ndarray:
    """Host memory standing in for one device allocation: 256-byte aligned, optionally filled."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + DEVICE_ALLOCATION_ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % DEVICE_ALLOCATION_ALIGN
    mem = raw[start:start + nbytes]
    DEVICE_MEMORY.add(raw, raw.ctypes.data + start, nbytes)
    mem[...] = UNINITIALISED_BYTE if fill is None else fill
    return mem.view(dtype).reshape(shape)


def _unwrap(value: Any, *, allow_host_arrays: bool) -> Any:
    if isinstance(value, FakeDeviceArray):
        return value._a
    if isinstance(value, np.ndarray) and not allow_host_arrays:
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, tuple):
        return tuple(_unwrap(v, allow_host_arrays=allow_host_arrays) for v in value)
    return value


def _wrap(value: Any) -> Any:
    return FakeDeviceArray(value) if isinstance(value, np.ndarray) else FakeDeviceArray(np.asarray(value))


class _MemoryPointer:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class FakeDeviceArray:
    """A ``cupy.ndarray`` stand-in over host memory (see the module docstring for its strictness)."""

    __slots__ = ("_a",)

    def __init__(self, host_memory: np.ndarray) -> None:
        self._a = host_memory

    # ---- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: FakeDeviceArray(self._a.T))

    @property
    def data(self) -> _MemoryPointer:
        return _MemoryPointer(int(self._a.__array_interface__["data"][0]))

    @property
    def device(self) -> FakeDevice:
        return FakeDevice(0)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        iface = self._a.__array_interface__
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "data": (iface["data"][0], False),
                "strides": None if self._a.flags.c_contiguous else self._a.strides, "version": 3, "stream": 1}

    # ---- host interop: only explicit
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(_IMPLICIT_CONVERSION)

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        """A device→host copy. ``blocking=False`` (CuPy ≥ 13, ``out`` given) queues the copy on the
        stream: ``out`` is written only when that stream, or an event recorded after the copy, is
        synchronised (reading it earlier sees what was there before), and ``out`` must be pinned
        (an async copy into pageable memory is synchronous on a real device: refused here)."""
        stream = get_current_stream() if stream is None else stream
        if not blocking:
            if out is None or not isinstance(out, np.ndarray):
                raise ValueError("get(blocking=False) needs out= (a host array)")
            if not is_pinned(out):
                raise ValueError("GPU emulation: get(blocking=False) into pageable memory (not async on a device)")
            if out.shape != self._a.shape or out.dtype != self._a.dtype:
                raise ValueError(f"get: out is {out.dtype} {out.shape}, the array {self.dtype} {self.shape}")
            stream._queue_host_write(out, self._a.copy())
            return out
        stream._flush()  # a blocking copy waits for everything queued on the stream before it
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: Any, stream: Any = None) -> None:
        # cupy/_core/core.pyx ndarray.set: with a stream the copy is asynchronous (truly so only from pinned memory)
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not (self._a.flags.c_contiguous or self._a.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        if UPLOAD_LOG.hook is not None:
            kind = ("async" if stream is not None else "sync") + (" pinned" if is_pinned(arr) else " pageable")
            UPLOAD_LOG.hook((kind, int(arr.nbytes), getattr(stream, "ptr", None)))
        self._a[...] = arr

    def item(self) -> Any:
        return self._a.item()

    def tolist(self) -> Any:
        return self._a.tolist()

    # ---- indexing and views
    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, key: Any) -> FakeDeviceArray:
        return _wrap(self._a[_unwrap(key, allow_host_arrays=True)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_unwrap(key, allow_host_arrays=True)] = _unwrap(value, allow_host_arrays=True)

    def view(self, dtype: Any) -> FakeDeviceArray:
        return FakeDeviceArray(self._a.view(np.dtype(dtype)))

    def reshape(self, *shape: Any, order: str = "C") -> FakeDeviceArray:
        return FakeDeviceArray(self._a.reshape(*shape, order=order))

    def ravel(self) -> FakeDeviceArray:
        return FakeDeviceArray(self._a.ravel())

    def transpose(self, *axes: Any) -> FakeDeviceArray:
        return FakeDeviceArray(self._a.transpose(*axes))

    def astype(self, dtype: Any, copy: bool = True) -> FakeDeviceArray:
        return FakeDeviceArray(self._a.astype(dtype, copy=copy))

    def copy(self) -> FakeDeviceArray:
        out = _allocate(self.shape, self.dtype, 0)
        out[...] = self._a
        return FakeDeviceArray(out)

    def fill(self, value: Any) -> None:
        self._a.fill(value)

    def __repr__(self) -> str:
        return f"FakeDeviceArray({self._a!r})"

    # ---- arithmetic: device arrays and scalars only, as in CuPy
    def _binary(self, other: Any, op: Callable[[Any, Any], Any], reflected: bool = False) -> Any:
        other = _unwrap(other, allow_host_arrays=False)
        result = op(other, self._a) if reflected else op(self._a, other)
        return _wrap(result)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __index__(self) -> int:
        return self._a.__index__()


def _install_operators() -> None:
    import operator

    for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "and", "or", "xor", "lshift", "rshift",
                 "eq", "ne", "lt", "le", "gt", "ge", "pow"):
        op = getattr(operator, name if name not in ("and", "or") else f"{name}_")
        setattr(FakeDeviceArray, f"__{name}__", lambda self, other, op=op: self._binary(other, op))
        if name not in ("eq", "ne", "lt", "le", "gt", "ge"):
            setattr(FakeDeviceArray, f"__r{name}__", lambda self, other, op=op: self._binary(other, op, True))
    FakeDeviceArray.__hash__ = None  # type: ignore[assignment]
    FakeDeviceArray.__neg__ = lambda self: FakeDeviceArray(-self._a)  # type: ignore[attr-defined]
    FakeDeviceArray.__invert__ = lambda self: FakeDeviceArray(~self._a)  # type: ignore[attr-defined]


_install_operators()


class _UploadLog:
    """Where :meth:`FakeDeviceArray.set` reports each host→device copy (set by :func:`install`)."""

    hook: Callable[[tuple[str, int, int | None]], None] | None = None


UPLOAD_LOG = _UploadLog()


class FakeStream:
    """``cupy.cuda.Stream``: a pointer, ``synchronize()``, and the asynchronous device→host copies queued on it.

    Kernels, decodes and uploads run at once (in stream order by construction); only async
    copies into host memory are held back until the stream, or an event recorded after
    them, is synchronised, so host code that reads results before waiting sees stale bytes.
    """

    _next_ptr = 0x7000

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        if null:
            self.ptr = 0
        else:
            FakeStream._next_ptr += 0x10
            self.ptr = FakeStream._next_ptr
        self.synchronize_calls = 0
        self._previous: list[FakeStream] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._done = 0  # pending entries before this index have landed

    def _queue_host_write(self, dst: np.ndarray, data: np.ndarray) -> None:
        self._pending.append((dst, data))

    def _flush(self, upto: int | None = None) -> None:
        upto = len(self._pending) if upto is None else upto
        for dst, data in self._pending[self._done:upto]:
            dst[...] = data
        self._done = max(self._done, upto)

    def synchronize(self) -> None:
        self.synchronize_calls += 1
        self._flush()

    def use(self) -> FakeStream:
        _stream_state.current = self
        return self

    def __enter__(self) -> Self:
        self._previous.append(get_current_stream())
        _stream_state.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        _stream_state.current = self._previous.pop()


class FakeEvent:
    """``cupy.cuda.Event``: ``record(stream)`` marks the stream's queue; ``synchronize()`` lands what came before."""

    #: set by :func:`install`: records every event synchronisation (the engine's one wait per batch)
    on_synchronize: Callable[[FakeEvent], None] | None = None

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self._stream: FakeStream | None = None
        self._mark = 0

    def record(self, stream: Any = None) -> None:
        self._stream = get_current_stream() if stream is None else stream
        self._mark = len(self._stream._pending)

    def synchronize(self) -> None:
        if FakeEvent.on_synchronize is not None:
            FakeEvent.on_synchronize(self)
        if self._stream is not None:
            self._stream._flush(self._mark)

    @property
    def done(self) -> bool:
        return self._stream is None or self._stream._done >= self._mark


class FakeExternalStream(FakeStream):
    """``cupy.cuda.ExternalStream(ptr)``: a stream the caller owns, made current by ``with``."""

    def __init__(self, ptr: int, device_id: int = -1) -> None:
        super().__init__()
        self.ptr = int(ptr)


_stream_state = threading.local()
NULL_STREAM = FakeStream(null=True)


def get_current_stream(device_id: int | None = None) -> FakeStream:
    return getattr(_stream_state, "current", NULL_STREAM)


class FakeDevice:
    """``cupy.cuda.Device``: an id, usable as a context manager."""

    def __init__(self, device: int | None = None) -> None:
        device = 0 if device is None else int(device)
        if not 0 <= device < DEVICE_COUNT:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device}")
        self.id = device

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def use(self) -> None:
        return None

    #: set by :func:`install`: records device-wide synchronisations (the engine must use streams/events)
    on_device_synchronize: Callable[[str], None] | None = None

    def synchronize(self) -> None:
        if FakeDevice.on_device_synchronize is not None:
            FakeDevice.on_device_synchronize("Device.synchronize")

    def __int__(self) -> int:
        return self.id


def _asarray(obj: Any, dtype: Any = None, order: Any = None) -> FakeDeviceArray:
    if isinstance(obj, FakeDeviceArray):
        return obj if dtype is None or np.dtype(dtype) == obj.dtype else obj.astype(dtype)
    host = np.asarray(obj, dtype=dtype)
    mem = _allocate(host.shape, host.dtype, 0)
    mem[...] = host
    return FakeDeviceArray(mem)


def _asnumpy(obj: Any, stream: Any = None) -> np.ndarray:
    return obj.get() if isinstance(obj, FakeDeviceArray) else np.asarray(obj)


def _empty_pinned(shape: Any, dtype: Any = float, order: str = "C") -> np.ndarray:
    """``cupyx.empty_pinned``: host memory registered as page-locked (see :func:`is_pinned`)."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(max(nbytes, 1), dtype=np.uint8)
    raw[...] = UNINITIALISED_BYTE  # page-locked memory comes back dirty from CuPy's pool
    PINNED_MEMORY.add(raw, raw.ctypes.data, raw.nbytes)
    return raw[:nbytes].view(dtype).reshape(shape)


def make_fake_cupy() -> tuple[types.ModuleType, types.ModuleType]:
    """The fake ``cupy`` module (with ``cupy.cuda``) and a fake ``cupyx`` (``empty_pinned``)."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "emulated"
    cp.ndarray = FakeDeviceArray
    for name in ("bool_", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
                 "float32", "float64", "complex64", "complex128", "dtype"):
        setattr(cp, name, getattr(np, name))
    cp.empty = lambda shape, dtype=float, order="C": FakeDeviceArray(_allocate(shape, dtype, None))
    cp.zeros = lambda shape, dtype=float, order="C": FakeDeviceArray(_allocate(shape, dtype, 0))
    cp.ones = lambda shape, dtype=float, order="C": FakeDeviceArray(_allocate(shape, dtype, 1))

    def full(shape: Any, fill_value: Any, dtype: Any = None) -> FakeDeviceArray:
        mem = _allocate(shape, dtype if dtype is not None else np.asarray(fill_value).dtype, 0)
        mem[...] = fill_value
        return FakeDeviceArray(mem)

    cp.full = full
    cp.empty_like = lambda a, dtype=None: cp.empty(a.shape, dtype or a.dtype)
    cp.zeros_like = lambda a, dtype=None: cp.zeros(a.shape, dtype or a.dtype)
    cp.asarray = _asarray
    cp.array = lambda obj, dtype=None, copy=True: _asarray(obj, dtype).copy() if copy else _asarray(obj, dtype)
    cp.ascontiguousarray = lambda a, dtype=None: (a if isinstance(a, FakeDeviceArray) and a.flags.c_contiguous
                                                  else _asarray(np.ascontiguousarray(_asnumpy(a)), dtype))
    cp.asnumpy = _asnumpy

    cuda = types.ModuleType("cupy.cuda")
    cuda.get_current_stream = get_current_stream
    cuda.Stream = FakeStream
    cuda.ExternalStream = FakeExternalStream
    cuda.Event = FakeEvent
    cuda.Device = FakeDevice
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: DEVICE_COUNT
    runtime.getDevice = lambda: 0
    runtime.runtimeGetVersion = lambda: 13000
    runtime.driverGetVersion = lambda: 13000
    runtime.deviceSynchronize = lambda: FakeDevice.on_device_synchronize and FakeDevice.on_device_synchronize(
        "runtime.deviceSynchronize")
    runtime.getDeviceProperties = lambda i: {"name": b"Emulated GPU", "totalGlobalMem": 1 << 34,
                                             "major": 9, "minor": 0, "multiProcessorCount": 1}
    cuda.runtime = runtime
    cp.cuda = cuda

    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = _empty_pinned
    return cp, cupyx


# ============================================================================ fake nvCOMP (the batched C API)


#: alignment the emulated libnvcomp reports (and demands) for decompression inputs and outputs; the real
#: 5.3 / 6.0 libraries report input 1 / 1 / 4 and output 1 for LZ4 / Zstd / Deflate (stricter here, so the
#: engine's repacking runs in CI; ``tests/contract`` checks the real values are no stricter than these)
DECOMPRESSION_ALIGNMENT = {"LZ4": 4, "Zstd": 8, "Deflate": 8}
#: temp-memory alignment (the real libraries: Zstd 8, LZ4 and Deflate 1)
TEMP_ALIGNMENT = {"LZ4": 1, "Zstd": 8, "Deflate": 1}
NVCOMP_SUCCESS, NVCOMP_INVALID_VALUE, NVCOMP_CANNOT_DECOMPRESS = 0, 10, 12


@dataclass
class DecodeCall:
    """One emulated ``nvcompBatched<A>DecompressAsync``: what it was given and what it reported."""

    algorithm: str
    n: int
    input_sizes: list[int]
    decoded_sizes: list[int] | None = None
    statuses: list[int] | None = None
    error: str | None = None
    temp_bytes: int = 0
    stream: int = 0


def _decode_lz4(data: bytes, capacity: int) -> bytes:
    import lz4.block

    try:
        return lz4.block.decompress(data, uncompressed_size=max(capacity, 1))
    except lz4.block.LZ4BlockError as exc:
        try:  # does it decode into more room? then the output slot was too small
            lz4.block.decompress(data, uncompressed_size=max(255 * len(data) + 64, 1))
        except lz4.block.LZ4BlockError:
            raise RuntimeError(f"LZ4 decode failed: {exc}") from None
        raise ValueError(f"output buffer of {capacity} bytes is too small for the decompressed data") from None


def _decode_zstd(data: bytes, capacity: int) -> bytes:
    import numcodecs

    from gpuzarr.codecs.blosc import zstd_content_size

    try:
        declared = zstd_content_size(memoryview(data))
    except ValueError as exc:
        raise RuntimeError(f"Zstd decode failed: {exc}") from None
    if declared is not None and declared > capacity:
        raise ValueError(f"output buffer of {capacity} bytes is too small for the decompressed data ({declared})")
    try:
        out = bytes(numcodecs.Zstd().decode(data))
    except (RuntimeError, ValueError) as exc:
        raise RuntimeError(f"Zstd decode failed: {exc}") from None
    if declared is not None and len(out) != declared:
        raise RuntimeError(f"Zstd frame declares {declared} bytes but decodes to {len(out)}")
    if len(out) > capacity:
        raise ValueError(f"output buffer of {capacity} bytes is too small for the decompressed data")
    return out


def _decode_deflate(data: bytes, capacity: int) -> bytes:
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, capacity + 1)
    except zlib.error as exc:
        raise RuntimeError(f"Deflate decode failed: {exc}") from None
    if len(out) > capacity:
        raise ValueError(f"output buffer of {capacity} bytes is too small for the decompressed data")
    if not d.eof:
        raise RuntimeError("Deflate decode failed: the stream is truncated")
    if d.unused_data:
        raise RuntimeError(f"Deflate decode: {len(d.unused_data)} bytes after the final block")
    return out


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {"LZ4": _decode_lz4, "Zstd": _decode_zstd,
                                                      "Deflate": _decode_deflate}


@functools.cache
def _real_libnvcomp() -> Any:
    """The installed libnvcomp (5.x or 6.x; its host-only functions run without a GPU), or None."""
    from gpuzarr.engines.gpu import nvcomp as nvc

    try:
        return nvc.NvcompLibrary(*_load_real_cdll())
    except (OSError, nvc.NvcompUnavailableError):
        return None


def _load_real_cdll() -> tuple[Any, str]:
    import ctypes

    from gpuzarr.engines.gpu import nvcomp as nvc

    for path in nvc._candidates():
        try:
            return ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL), path
        except OSError:
            continue
    raise OSError("no libnvcomp")


def model_temp_bytes(algorithm: str, n: int, max_chunk: int, total: int) -> int:
    """Temp memory of a decode: the real library's answer when it loads here, else a model of it.

    (Measured with the real 5.3 and 6.0 libraries: LZ4 and Deflate need none; Zstd about 3.1 x the
    largest chunk per entry, e.g. 203 544 bytes per 64 KiB entry.)
    """
    real = _real_libnvcomp()
    if real is not None:
        return real.temp_bytes(algorithm, n, max_chunk, total)
    return 0 if algorithm != "Zstd" else n * (3 * max(max_chunk, 1) + 6936)


class _Registry:
    """Address ranges of live emulated allocations (device or pinned host), for pointer checks."""

    def __init__(self) -> None:
        self._ranges: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, owner: np.ndarray, start: int, nbytes: int) -> None:
        import weakref

        with self._lock:
            self._ranges[start] = start + nbytes
        weakref.finalize(owner, self._remove, start)

    def _remove(self, start: int) -> None:
        with self._lock:
            self._ranges.pop(start, None)

    def contains(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per entry: does ``[lo, hi)`` lie inside one live allocation?"""
        with self._lock:
            items = sorted(self._ranges.items())
        if not items:
            return np.zeros(len(lo), dtype=bool)
        starts = np.array([a for a, _ in items], dtype=np.uint64)
        ends = np.array([b for _, b in items], dtype=np.uint64)
        k = np.searchsorted(starts, lo.astype(np.uint64), side="right") - 1
        ok = k >= 0
        kk = np.where(ok, k, 0)
        return ok & (lo.astype(np.uint64) >= starts[kk]) & (hi.astype(np.uint64) <= ends[kk])


DEVICE_MEMORY = _Registry()
PINNED_MEMORY = _Registry()


def is_pinned(arr: Any) -> bool:
    """Whether host array ``arr`` lies in emulated page-locked memory (``cupyx.empty_pinned``)."""
    if not isinstance(arr, np.ndarray) or arr.nbytes == 0:
        return isinstance(arr, np.ndarray)
    lo = np.array([arr.__array_interface__["data"][0]], dtype=np.uint64)
    return bool(PINNED_MEMORY.contains(lo, lo + np.uint64(arr.nbytes))[0])


class _FakeCFunction:
    """One exported function of the fake libnvcomp: ctypes' argument conversion checked, then the model runs."""

    def __init__(self, name: str, impl: Callable[..., int]) -> None:
        self.__name__ = name
        self._impl = impl
        self.argtypes: list[Any] | None = None
        self.restype: Any = None

    def __call__(self, *args: Any) -> int:
        import ctypes

        if self.argtypes is None or len(args) != len(self.argtypes):
            raise TypeError(f"{self.__name__}: argtypes not declared, or {len(args)} arguments for "
                            f"{None if self.argtypes is None else len(self.argtypes)}")
        converted = []
        for i, (arg, ctype) in enumerate(zip(args, self.argtypes, strict=True)):
            if ctype is ctypes.c_void_p:
                if arg is not None and not (isinstance(arg, int) and arg >= 0):
                    raise ctypes.ArgumentError(f"{self.__name__} argument {i + 1}: a pointer must be an int or None")
                converted.append(arg or 0)
            elif ctype is ctypes.c_size_t:
                if not isinstance(arg, (int, np.integer)) or isinstance(arg, bool) or arg < 0:
                    raise ctypes.ArgumentError(f"{self.__name__} argument {i + 1}: size_t wants a non-negative int, "
                                               f"got {arg!r}")
                converted.append(int(arg))
            elif isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
                if type(arg) is not ctype:
                    raise ctypes.ArgumentError(f"{self.__name__} argument {i + 1}: expected {ctype.__name__} by value")
                converted.append(arg)
            else:  # POINTER(T): ctypes.byref(T instance)
                obj = getattr(arg, "_obj", None)
                if obj is None or type(obj) is not ctype._type_:
                    raise ctypes.ArgumentError(f"{self.__name__} argument {i + 1}: expected byref({ctype._type_})")
                converted.append(obj)
        return self._impl(*converted)


class FakeLibnvcomp:
    """A model of ``libnvcomp.so`` 5.x (``api=5``) or 6.x (``api=6``): the batched LZ4/Zstd/Deflate decompression.

    Differences of the two modelled: the temp-size query is ``...DecompressGetTempSizeAsync(n, max,
    opts, *temp, total)`` in 5.x and ``...DecompressGetTempSize(n, max, opts, *temp, total, stream)``
    in 6.x (only the one of the modelled version exists), and 6.x rejects a NULL ``device_statuses``
    (5.x allows it). ``DecompressAsync`` reads its pointer and size tables from emulated device
    memory (each table and each entry must lie inside one live device allocation, entries aligned
    to :data:`DECOMPRESSION_ALIGNMENT`, outputs disjoint from each other and from every input, the
    temp buffer large enough and aligned), decodes each entry with a CPU decoder and writes each
    status and decoded size to device memory. An undecodable entry or one whose output slot is
    too small gets ``nvcompErrorCannotDecompress`` (the header's documented behaviour for a too-small
    slot; for corrupt input the real decoders promise nothing) with decoded size 0 and its slot
    filled with :data:`UNINITIALISED_BYTE`; with ``silent_corruption=True`` a corrupt entry instead
    reports success and the length of whatever prefix decoded (the documented worst case: "Passing
    corrupt ... data leads to undefined behavior"; the engine's size check must catch it).
    """

    def __init__(self, emulation: GpuEmulation, api: int) -> None:
        import ctypes

        from gpuzarr.engines.gpu import nvcomp as nvc

        if api not in (5, 6):
            raise ValueError(f"api must be 5 or 6, not {api}")
        self.api = api
        self._emu = emulation
        self.silent_corruption = False
        self._c = ctypes
        self._nvc = nvc
        for alg in ("LZ4", "Zstd", "Deflate"):
            temp_name = f"nvcompBatched{alg}DecompressGetTempSize" + ("" if api == 6 else "Async")
            setattr(self, temp_name, _FakeCFunction(temp_name, functools.partial(self._temp_size, alg)))
            name = f"nvcompBatched{alg}DecompressAsync"
            # looked up at call time, so a benchmark may replace FakeLibnvcomp._decompress
            setattr(self, name, _FakeCFunction(name, lambda *args, _alg=alg: self._decompress(_alg, *args)))
            name = f"nvcompBatched{alg}DecompressGetRequiredAlignments"
            setattr(self, name, _FakeCFunction(name, functools.partial(self._alignments, alg)))

    def _alignments(self, alg: str, opts: Any, out: Any) -> int:
        if not _default_opts(opts):
            return NVCOMP_INVALID_VALUE
        out.input = out.output = DECOMPRESSION_ALIGNMENT[alg]
        out.temp = TEMP_ALIGNMENT[alg]
        return NVCOMP_SUCCESS

    def _temp_size(self, alg: str, n: int, max_chunk: int, opts: Any, out: Any, total: int, *stream: int) -> int:
        if (self.api == 6) != bool(stream) and not (self.api == 6 and len(stream) == 1):
            return NVCOMP_INVALID_VALUE
        out.value = model_temp_bytes(alg, n, max_chunk, total)
        return NVCOMP_SUCCESS

    def _table(self, addr: int, n: int, dtype: Any, what: str) -> np.ndarray:
        nbytes = n * np.dtype(dtype).itemsize
        lo = np.array([addr], dtype=np.uint64)
        if addr % np.dtype(dtype).itemsize or not DEVICE_MEMORY.contains(lo, lo + np.uint64(nbytes))[0]:
            raise _LaunchRefused(f"{what} table at 0x{addr:x} ({nbytes} bytes) is not inside device memory")
        return np.ctypeslib.as_array((self._c.c_uint8 * nbytes).from_address(addr)).view(dtype)

    def _entry(self, addr: int, size: int) -> np.ndarray:
        return np.ctypeslib.as_array((self._c.c_uint8 * max(size, 1)).from_address(addr))[:size]

    def _decompress(self, alg: str, in_ptrs: int, in_bytes: int, out_cap: int, out_actual: int, n: int, temp: int,
                    temp_bytes: int, out_ptrs: int, opts: Any, statuses: int, stream: int) -> int:
        call = DecodeCall(alg, n, [], temp_bytes=temp_bytes, stream=stream)
        try:
            return self._run(call, alg, in_ptrs, in_bytes, out_cap, out_actual, n, temp, temp_bytes, out_ptrs, opts,
                             statuses)
        except _LaunchRefused as exc:
            call.error = str(exc)
            return NVCOMP_INVALID_VALUE
        finally:
            self._emu.decode_calls.append(call)

    def _run(self, call: DecodeCall, alg: str, in_ptrs: int, in_bytes: int, out_cap: int, out_actual: int, n: int,
             temp: int, temp_bytes: int, out_ptrs: int, opts: Any, statuses: int) -> int:
        if n == 0:
            raise _LaunchRefused("num_chunks is 0")
        if not _default_opts(opts):
            raise _LaunchRefused("decompression options are not the defaults")
        if statuses == 0 and self.api == 6:
            raise _LaunchRefused("device_statuses is NULL (6.x requires it)")
        src = self._table(in_ptrs, n, np.uint64, "compressed pointer")
        src_n = self._table(in_bytes, n, np.uint64, "compressed size")
        cap = self._table(out_cap, n, np.uint64, "output capacity")
        dst = self._table(out_ptrs, n, np.uint64, "output pointer")
        actual = self._table(out_actual, n, np.uint64, "actual size")
        status = self._table(statuses, n, np.int32, "status") if statuses else np.zeros(n, np.int32)
        call.input_sizes = src_n.tolist()
        for what, ptr, size in (("input", src, src_n), ("output", dst, cap)):
            if (ptr % np.uint64(DECOMPRESSION_ALIGNMENT[alg])).any():
                k = int(np.flatnonzero(ptr % np.uint64(DECOMPRESSION_ALIGNMENT[alg]))[0])
                raise _LaunchRefused(f"{what} {k} at 0x{int(ptr[k]):x} is not {DECOMPRESSION_ALIGNMENT[alg]}-byte "
                                     "aligned")
            inside = DEVICE_MEMORY.contains(ptr, ptr + size)
            if not inside.all():
                k = int(np.flatnonzero(~inside)[0])
                raise _LaunchRefused(f"{what} {k} [0x{int(ptr[k]):x}, +{int(size[k])}) is not inside device memory")
        _check_disjoint(src, src_n, dst, cap)
        need = model_temp_bytes(alg, n, int(cap.max()), int(cap.sum()))
        if temp_bytes < need:
            raise _LaunchRefused(f"temp_bytes {temp_bytes} < the {need} bytes GetTempSize asks for")
        if need:
            lo = np.array([temp], dtype=np.uint64)
            if temp % TEMP_ALIGNMENT[alg] or not DEVICE_MEMORY.contains(lo, lo + np.uint64(temp_bytes))[0]:
                raise _LaunchRefused(f"temp buffer 0x{temp:x} (+{temp_bytes}) is not aligned device memory")
        decoder = _DECODERS[alg]
        for k in range(n):
            data = self._entry(int(src[k]), int(src_n[k])).tobytes()
            out = self._entry(int(dst[k]), int(cap[k]))
            try:
                got = decoder(data, int(cap[k]))
            except (RuntimeError, ValueError) as exc:
                out[...] = UNINITIALISED_BYTE
                if self.silent_corruption and isinstance(exc, RuntimeError):
                    status[k], actual[k] = NVCOMP_SUCCESS, _decodable_prefix(alg, data, int(cap[k]))
                else:
                    status[k], actual[k] = NVCOMP_CANNOT_DECOMPRESS, 0
                continue
            out[: len(got)] = np.frombuffer(got, dtype=np.uint8)
            status[k], actual[k] = NVCOMP_SUCCESS, len(got)
        call.decoded_sizes = actual.tolist()
        call.statuses = status.tolist()
        return NVCOMP_SUCCESS


def _default_opts(opts: Any) -> bool:
    """A 64-byte options struct of zeros (the default backend; LZ4: char data, no bitshuffle)."""
    import ctypes

    return ctypes.sizeof(opts) == 64 and ctypes.string_at(ctypes.addressof(opts), 64) == bytes(64)


class _LaunchRefused(Exception):
    """An argument the emulated libnvcomp refuses at launch (the call returns ``nvcompErrorInvalidValue``)."""


def _check_disjoint(src: np.ndarray, src_n: np.ndarray, dst: np.ndarray, cap: np.ndarray) -> None:
    """Outputs must not overlap each other or any input (a data race on a GPU)."""
    keep = cap > 0
    order = np.argsort(dst[keep], kind="stable")
    lo, hi = dst[keep][order], (dst + cap)[keep][order]
    if lo.size > 1 and (lo[1:] < hi[:-1]).any():
        raise _LaunchRefused("two outputs overlap")
    if not lo.size:
        return
    s_lo, s_hi = src[src_n > 0], (src + src_n)[src_n > 0]
    first = np.searchsorted(hi, s_lo, side="right")
    last = np.searchsorted(lo, s_hi, side="left")
    if (first < last).any():
        raise _LaunchRefused("an input overlaps an output")


def _decodable_prefix(alg: str, data: bytes, capacity: int) -> int:
    """How many bytes a decoder that does not validate might report for a corrupt entry (a model)."""
    if alg == "Deflate":
        d = zlib.decompressobj(-15)
        try:
            return len(d.decompress(data, capacity))
        except zlib.error:
            return 0
    return min(capacity, len(data))


# ============================================================================ fake kernels

#: C parameter types of every kernel (kernels/*.cu); "T*" = device array of T
KERNEL_SIGNATURES: dict[str, tuple[str, ...]] = {
    "blosc_unshuffle_blocks": ("u8*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64", "i64",
                               "u8*"),
    "copy_segments": ("u8*", "i64*", "u8*", "i64*", "i64*", "i64*", "i64", "i64"),
    "gather_pieces_copy": ("u8*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64", "i32", "i64*",
                           "i64*", "i64", "i64", "i32", "u8*", "u8*"),
    "gather_pieces_convert": ("u8*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64*", "i64", "i32", "i64*",
                              "i64*", "i64", "i64", "i32", "i32", "i32", "f64", "i32", "i32", "i32", "f64*", "f64*",
                              "u8*"),
    "crc32c_segments": ("u8*", "i64*", "i64*", "i64", "u32*"),
    "crc32c_combine_segments": ("u32*", "i64*", "i64*", "i64", "u32*"),
}
_C_TYPES = {"u8": np.uint8, "u32": np.uint32, "i32": np.int32, "i64": np.int64, "f64": np.float64}


def _check_launch(name: str, grid: Any, block: Any, args: tuple[Any, ...]) -> None:
    base = "gather_pieces_copy" if name.startswith("gather_pieces_copy_") else name
    signature = KERNEL_SIGNATURES[base]
    for what, dims in (("grid", grid), ("block", block)):
        if not isinstance(dims, tuple) or not 1 <= len(dims) <= 3 or not all(
                isinstance(d, (int, np.integer)) and 0 < int(d) < 2**31 for d in dims):
            raise ValueError(f"{name}: bad {what} {dims!r}")
    if int(np.prod(block)) > 1024:
        raise ValueError(f"{name}: block {block} has more than 1024 threads")
    if len(args) != len(signature):
        raise TypeError(f"{name}: {len(args)} arguments, the kernel takes {len(signature)}")
    for i, (arg, ctype) in enumerate(zip(args, signature, strict=True)):
        if isinstance(arg, np.ndarray):
            raise TypeError(f"{name} argument {i}: Unsupported type {type(arg)} (a host array)")
        want = np.dtype(_C_TYPES[ctype.rstrip("*")])
        if ctype.endswith("*"):
            if not isinstance(arg, FakeDeviceArray):
                raise TypeError(f"{name} argument {i}: expected a device array of {want}, got {type(arg).__name__}")
            if arg.dtype != want or not arg.flags.c_contiguous:
                raise TypeError(f"{name} argument {i}: expected a contiguous {want} device array, got {arg.dtype}")
        elif not isinstance(arg, np.generic) or arg.dtype != want:
            raise TypeError(f"{name} argument {i}: expected a {want} scalar, got {type(arg).__name__} "
                            f"{getattr(arg, 'dtype', '')}")


def _host(arg: FakeDeviceArray, n: int | None = None) -> np.ndarray:
    return arg._a if n is None else arg._a[:n]


# Oracles: the NumPy mirror of each kernel, run on a copy of the kernel's output argument after the
# compiled kernel ran; a difference is an AssertionError naming the kernel and the first byte.


def _oracle_unshuffle(grid: Any, block: Any, args: tuple[Any, ...], out: np.ndarray) -> None:
    arena, soff, first, nsplits, size, ts, mode, out_off, tiles, n_blocks, _tile_bytes, _out = args
    n = int(n_blocks)
    if grid[0] != int(tiles._a[n]):
        raise ValueError(f"blosc_unshuffle_blocks: grid {grid} but the tile table ends at {int(tiles._a[n])}")
    km.unshuffle_blocks(arena._a, soff._a, first._a, _host(nsplits, n), _host(size, n), _host(ts, n),
                        _host(mode, n), _host(out_off, n), out)


def _oracle_copy_segments(grid: Any, block: Any, args: tuple[Any, ...], out: np.ndarray) -> None:
    src, so, _dst, do, size, tiles, n_segments, _tile = args
    n = int(n_segments)
    if grid[0] != int(tiles._a[n]):
        raise ValueError(f"copy_segments: grid {grid} but the tile table ends at {int(tiles._a[n])}")
    km.copy_segments(src._a, _host(so, n), out, _host(do, n), _host(size, n))


def _oracle_crc_segments(grid: Any, block: Any, args: tuple[Any, ...], out: np.ndarray) -> None:
    data, off, length, n_segments, _seg_crc = args
    n = int(n_segments)
    lengths = _host(length, n)
    if (lengths > km.CRC32C_SEGMENT).any() or (lengths < 0).any():
        raise ValueError("crc32c_segments: a segment is longer than CRC32C_SEGMENT")
    if grid[0] * block[0] < n:  # one thread per segment
        raise ValueError(f"crc32c_segments: grid {grid} covers fewer than {n} segments")
    out[:n] = km.crc32c_batch(data._a, _host(off, n), lengths)


def _oracle_crc_combine(grid: Any, block: Any, args: tuple[Any, ...], out: np.ndarray) -> None:
    seg_crc, length, start, n_buffers, _crc_out = args
    n = int(n_buffers)
    if grid[0] < n:
        raise ValueError(f"crc32c_combine_segments: grid {grid} has fewer blocks than {n} buffers")
    starts = _host(start, n + 1)
    for u in range(n):
        acc = 0
        for s in range(int(starts[u]), int(starts[u + 1])):
            acc = km.crc32c_combine(acc, int(seg_crc._a[s]), int(length._a[s]))
        out[u] = acc


#: kernel → (index of its output argument, mirror writing into a copy of that output)
_ORACLES: dict[str, tuple[int, Callable[[Any, Any, tuple[Any, ...], np.ndarray], None]]] = {
    "blosc_unshuffle_blocks": (11, _oracle_unshuffle),
    "copy_segments": (2, _oracle_copy_segments),
    "crc32c_segments": (4, _oracle_crc_segments),
    "crc32c_combine_segments": (4, _oracle_crc_combine),
}


def _first_difference(got: np.ndarray, want: np.ndarray) -> int:
    return int(np.flatnonzero(got.view(np.uint8).reshape(-1) != want.view(np.uint8).reshape(-1))[0])


class FakeKernel:
    """A kernel of ``kernels/*.cu`` compiled for the CPU (:mod:`cuda_cpu`), launched with CuPy's arguments.

    Each launch is checked against the C signature (the compiler's, and the hand-kept
    :data:`KERNEL_SIGNATURES`), runs the compiled kernel on the fake device memory, and then
    compares its output with the kernel's NumPy mirror (the gather kernels are compared
    by the :func:`launch_gather` wrapper, from the launcher's own Python arguments).
    """

    def __init__(self, emulation: GpuEmulation, name: str, compiled: Any) -> None:
        self.name = name
        self._emulation = emulation
        self._compiled = compiled

    def __call__(self, grid: Any, block: Any, args: tuple[Any, ...], *, shared_mem: int = 0,
                 stream: Any = None) -> None:
        args = tuple(args)
        _check_launch(self.name, grid, block, args)
        self._emulation.kernel_launches.append(self.name)
        self._emulation.check_stream(self.name, stream)
        oracle = _ORACLES.get(self.name) if self._emulation.oracles else None
        expected = None
        if oracle is not None:
            expected = args[oracle[0]]._a.copy()
            oracle[1](grid, block, args, expected)
        self._compiled(grid, block, args)
        if self.name.startswith("gather_pieces_"):
            self._emulation._gather_launched.flag = True
        if expected is not None:
            got = args[oracle[0]]._a
            if not np.array_equal(got.view(np.uint8), expected.view(np.uint8)):
                raise AssertionError(f"kernel {self.name} (compiled for the CPU) differs from its NumPy mirror "
                                     f"at byte {_first_difference(got, expected)} of its output")


class FakeRawModule:
    """``cupy.RawModule(code=..., options=...)``: the same source text compiled with g++ (:mod:`cuda_cpu`)."""

    def __init__(self, emulation: GpuEmulation, code: str | None = None, options: tuple[str, ...] = (),
                 **kwargs: Any) -> None:
        import cuda_cpu

        if code is None:
            raise NotImplementedError("GPU emulation: RawModule needs code= (the kernel source)")
        self._emulation = emulation
        self._module = cuda_cpu.compile_source(code)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        return None

    def get_function(self, name: str) -> FakeKernel:
        return FakeKernel(self._emulation, name, self._module.get_function(name))


class _KernelTransform:
    """The transform a gather launch encodes, rebuilt from the launcher's arguments for the mirror."""

    def __init__(self, order: tuple[int, ...], channel: int | None, out_dtype: np.dtype,
                 mean: np.ndarray | None, inv_std: np.ndarray | None) -> None:
        self._order, self._channel, self._dtype = order, channel, out_dtype
        self._mean, self._inv_std = mean, inv_std

    @property
    def normalises(self) -> bool:
        return self._mean is not None

    def output_dtype(self, src_dtype: Any) -> np.dtype:
        return self._dtype

    def resolve_channel_axis(self, sample_ndim: int) -> int | None:
        return self._channel

    def output_axes(self, sample_ndim: int) -> tuple[int, ...]:
        return self._order

    def channel_tables(self, n_channels: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self._mean is None:
            return None, None
        return np.asarray(self._mean, dtype=np.float64), np.asarray(self._inv_std, dtype=np.float64)


def _make_launch_gather(emu: GpuEmulation, original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def launch_gather(plan: Any, chunks: Any, chunk_offset: np.ndarray, src_strides: np.ndarray, src_dtype: Any,
                      out: Any, *, sample_size: int, out_strides: np.ndarray, swap_bytes: bool = False,
                      fill_value: Any = 0, convert_to: Any = None, channel_axis: int | None = None,
                      mean: np.ndarray | None = None, inv_std: np.ndarray | None = None) -> None:
        emu._gather_launched.flag = False
        original(plan, chunks, chunk_offset, src_strides, src_dtype, out, sample_size=sample_size,
                 out_strides=out_strides, swap_bytes=swap_bytes, fill_value=fill_value, convert_to=convert_to,
                 channel_axis=channel_axis, mean=mean, inv_std=inv_std)
        if not emu._gather_launched.flag or not emu.oracles:
            return
        src_dtype = np.dtype(src_dtype)
        out_strides = np.asarray(out_strides, dtype=np.int64)
        region_shape = tuple(int(x) for x in plan.region_shape)
        kept = [d for d in range(len(region_shape)) if d not in plan.squeeze_axes]
        order = tuple(sorted(range(len(kept)), key=lambda a: -int(out_strides[kept[a]])))
        out_dtype = src_dtype if convert_to is None else np.dtype(convert_to)
        channel = None if channel_axis is None else kept.index(int(channel_axis))
        transform = None
        if convert_to is not None or order != tuple(range(len(kept))):
            transform = _KernelTransform(order, channel, out_dtype, mean, inv_std)
        shape, strides, ch = km.gather_layout(plan, transform)
        long_axes = np.array([n > 1 for n in region_shape], dtype=bool)
        if (int(np.prod(shape, dtype=np.int64)) != sample_size
                or not np.array_equal(strides[long_axes], out_strides[long_axes])):
            raise ValueError(f"launch_gather: out_strides {out_strides.tolist()} / sample_size {sample_size} do not "
                             f"describe a layout of regions {region_shape} (squeezed {plan.squeeze_axes})")
        if convert_to is not None and ch != channel_axis:
            raise ValueError(f"launch_gather: channel axis {channel_axis} vs layout {ch}")
        # the mirror indexes byte 0.. of `chunks` even for missing chunks (then discards it); the kernel
        # never reads them, so a 1-byte placeholder buffer (every chunk missing) is padded here
        host_chunks = chunks._a
        if host_chunks.size < src_dtype.itemsize:
            host_chunks = np.concatenate([host_chunks, np.zeros(src_dtype.itemsize, np.uint8)])
        expected = km.gather_pieces(plan, host_chunks, np.asarray(chunk_offset, dtype=np.int64),
                                    np.asarray(src_strides, dtype=np.int64), src_dtype, swap_bytes=swap_bytes,
                                    fill_value=fill_value, transform=transform)
        if out.dtype != expected.dtype or out.size != expected.size:
            raise ValueError(f"launch_gather: out is {out.size} x {out.dtype}, the batch is "
                             f"{expected.size} x {expected.dtype}")
        got = out._a.reshape(-1)
        want = expected.reshape(-1)
        if not np.array_equal(got, want, equal_nan=got.dtype.kind == "f"):
            bad = int(np.flatnonzero(~((got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == "f"
                                       else got == want))[0])
            raise AssertionError(f"the gather kernel (compiled for the CPU, driven by launch_gather's tables) "
                                 f"differs from its NumPy mirror at element {bad}: {got[bad]!r} != {want[bad]!r}")

    return launch_gather


# ============================================================================ kvikio


class _DoneFuture:
    def __init__(self, nbytes: int) -> None:
        self._nbytes = nbytes

    def get(self) -> int:
        return self._nbytes

    def done(self) -> bool:
        return True


def make_fake_kvikio(emu: GpuEmulation) -> types.ModuleType:
    """A ``kvikio`` whose ``CuFile`` reads local files into fake device (or host) memory."""
    import os

    class CuFile:
        def __init__(self, file: Any, flags: str = "r") -> None:
            if flags != "r":
                raise ValueError(f"GPU emulation: CuFile opened with {flags!r}, only 'r' is emulated")
            self._fd = os.open(os.fspath(file), os.O_RDONLY)

        def pread(self, buf: Any, size: int | None = None, file_offset: int = 0, task_size: int | None = None) -> Any:
            on_device = isinstance(buf, FakeDeviceArray)
            target = buf._a if on_device else np.asarray(buf)
            if target.dtype != np.uint8 or target.ndim != 1 or not target.flags.c_contiguous:
                raise ValueError(f"GPU emulation: pread into a {target.dtype} {target.shape} buffer (need 1-D uint8)")
            size = target.nbytes if size is None else int(size)
            if size > target.nbytes:
                raise ValueError(f"GPU emulation: pread of {size} bytes into a {target.nbytes}-byte buffer")
            data = os.pread(self._fd, size, int(file_offset))
            target[: len(data)] = np.frombuffer(data, dtype=np.uint8)
            emu.kvikio_reads.append("device" if on_device else "host")
            return _DoneFuture(len(data))

        def close(self) -> None:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    class RemoteFile:
        def __init__(self, url: str, nbytes: int | None, signing: tuple[Any, str] | None = None) -> None:
            self._url = url
            self._signing = signing  # (botocore Credentials, region): requests are SigV4-signed like kvikio's
            self._nbytes = self._request("HEAD")[1] if nbytes is None else int(nbytes)

        def _request(self, method: str, headers: dict[str, str] | None = None) -> tuple[bytes, int]:
            import urllib.error
            import urllib.request

            headers = dict(headers or {})
            if self._signing is not None:
                from botocore.auth import S3SigV4Auth
                from botocore.awsrequest import AWSRequest

                signed = AWSRequest(method=method, url=self._url, headers=headers)
                S3SigV4Auth(self._signing[0], "s3", self._signing[1]).add_auth(signed)
                headers = dict(signed.headers.items())
            request = urllib.request.Request(self._url, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    body = answer.read()
                    return body, int(answer.headers.get("Content-Length", len(body)))
            except urllib.error.HTTPError as exc:
                raise RuntimeError(f"GPU emulation of kvikio RemoteFile: HTTP {exc.code} for {self._url}") from None

        @classmethod
        def open_http(cls, url: str, nbytes: int | None = None) -> RemoteFile:
            return cls(url, nbytes)

        @classmethod
        def open_s3(cls, bucket_name: str, object_name: str, nbytes: int | None = None,
                    aws_region_name: str | None = None, aws_access_key_id: str | None = None,
                    aws_secret_access_key: str | None = None, aws_endpoint_url: str | None = None,
                    aws_session_token: str | None = None) -> RemoteFile:
            from urllib.parse import quote

            from botocore.credentials import Credentials

            if not aws_endpoint_url:
                raise RuntimeError("GPU emulation of kvikio RemoteFile: only endpoint URLs are reachable here")
            if not (aws_access_key_id and aws_secret_access_key):
                raise RuntimeError("GPU emulation of kvikio RemoteFile: open_s3 needs credentials")
            signing = (Credentials(aws_access_key_id, aws_secret_access_key, aws_session_token),
                       aws_region_name or "us-east-1")
            return cls(f"{aws_endpoint_url.rstrip('/')}/{bucket_name}/{quote(object_name)}", nbytes, signing)

        def nbytes(self) -> int:
            return self._nbytes

        def pread(self, buf: Any, size: int | None = None, file_offset: int = 0) -> Any:
            on_device = isinstance(buf, FakeDeviceArray)
            target = buf._a if on_device else np.asarray(buf)
            size = target.nbytes if size is None else int(size)
            if target.dtype != np.uint8 or target.ndim != 1 or size > target.nbytes:
                raise ValueError(f"GPU emulation: RemoteFile.pread of {size} bytes into {target.dtype} {target.shape}")
            if size == 0:
                return _DoneFuture(0)
            body, _ = self._request("GET", {"Range": f"bytes={file_offset}-{file_offset + size - 1}"})
            target[: len(body)] = np.frombuffer(body, dtype=np.uint8)[:size]
            emu.kvikio_reads.append("remote device" if on_device else "remote host")
            return _DoneFuture(min(len(body), size))

        def close(self) -> None:
            pass

    kvikio = types.ModuleType("kvikio")
    kvikio.CuFile = CuFile  # type: ignore[attr-defined]
    kvikio.RemoteFile = RemoteFile  # type: ignore[attr-defined]
    kvikio.is_remote_file_available = lambda: True  # type: ignore[attr-defined]
    kvikio.__version__ = "0+emulated"  # type: ignore[attr-defined]
    return kvikio


# ============================================================================ installation


@dataclass
class GpuEmulation:
    """Handle on an installed emulation: call logs, and the engines it created."""

    decode_calls: list[DecodeCall] = field(default_factory=list)
    kernel_launches: list[str] = field(default_factory=list)
    #: device-wide synchronisations seen (``Device.synchronize``, ``runtime.deviceSynchronize``)
    device_syncs: list[str] = field(default_factory=list)
    kernel_streams: list[tuple[str, int | None]] = field(default_factory=list)
    #: compare every kernel's output with its NumPy mirror after the launch
    oracles: bool = True
    kvikio_reads: list[str] = field(default_factory=list)
    #: every event synchronisation (the engine waits once per batch, after queuing all of it)
    event_syncs: list[Any] = field(default_factory=list)
    #: every host→device copy by ``ndarray.set``: ("async pinned" / "sync pageable" / ..., bytes, stream)
    uploads: list[tuple[str, int, int | None]] = field(default_factory=list)
    #: the modelled libnvcomp (:class:`FakeLibnvcomp`; ``silent_corruption`` is set on it)
    libnvcomp: Any = None
    engines: list[Any] = field(default_factory=list)
    _gather_launched: threading.local = field(default_factory=threading.local)

    def reset_logs(self) -> None:
        self.decode_calls.clear()
        self.kernel_launches.clear()
        self.kernel_streams.clear()
        self.device_syncs.clear()
        self.kvikio_reads.clear()
        self.event_syncs.clear()
        self.uploads.clear()

    @contextlib.contextmanager
    def oracles_off(self) -> Iterator[None]:
        """Launch without comparing to the mirrors (tests over sparse multi-GiB buffers compare a window)."""
        self.oracles = False
        try:
            yield
        finally:
            self.oracles = True

    def check_stream(self, what: str, stream: Any) -> None:
        """Record the stream a kernel was launched on (``None``: CuPy's current stream)."""
        self.kernel_streams.append((what, getattr(get_current_stream() if stream is None else stream, "ptr", None)))


def _clear_caches() -> None:
    from gpuzarr import _optional
    from gpuzarr.engines import base as engine_base
    from gpuzarr.engines.gpu import kernels as gpu_kernels
    from gpuzarr.storage import local

    for probe in (_optional.cupy_device, _optional.nvcomp, _optional.gpu_engine, _optional.kvikio):
        probe.cache_clear()
    engine_base._gpu_engine.cache_clear()
    local.cuda_io_usable.cache_clear()
    gpu_kernels._module.cache_clear()


def install(monkeypatch: pytest.MonkeyPatch, *, kvikio: bool = False, nvcomp_api: int = 5) -> GpuEmulation:
    """Install the emulation with ``monkeypatch`` (undone by it); see :func:`gpu_emulation` for teardown.

    ``kvikio=True`` also emulates kvikio, so local fetchers read with ``CuFile`` into
    pinned host or device memory; otherwise they stay on POSIX reads. ``nvcomp_api``: which
    libnvcomp shape to model, 5 (5.x, what DALI pins) or 6 (see :class:`FakeLibnvcomp`).
    """
    from gpuzarr import _optional
    from gpuzarr.engines import base as engine_base
    from gpuzarr.engines.gpu import kernels as gpu_kernels
    from gpuzarr.engines.gpu import nvcomp as nvc
    from gpuzarr.storage import local

    emu = GpuEmulation()
    cp, cupyx = make_fake_cupy()
    emu.libnvcomp = FakeLibnvcomp(emu, nvcomp_api)
    fake_library = nvc.NvcompLibrary(emu.libnvcomp, f"emulated libnvcomp {nvcomp_api}.x")
    _clear_caches()
    monkeypatch.setattr(FakeDevice, "on_device_synchronize", emu.device_syncs.append)
    monkeypatch.setattr(FakeEvent, "on_synchronize", emu.event_syncs.append)
    monkeypatch.setattr(UPLOAD_LOG, "hook", emu.uploads.append)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cp.cuda)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setattr(nvc, "library", lambda: fake_library)
    if kvikio:
        monkeypatch.setitem(sys.modules, "kvikio", make_fake_kvikio(emu))
        monkeypatch.setattr(_optional, "kvikio", lambda: _optional.Availability(True, "", "0+emulated"))
        monkeypatch.setattr(local, "cuda_io_usable", lambda: True)
    else:  # real kvikio reads need a CUDA driver: keep the fetchers on POSIX
        monkeypatch.setattr(_optional, "kvikio",
                            lambda: _optional.Availability(False, "disabled under the GPU emulation"))
        monkeypatch.setattr(local, "cuda_io_usable", lambda: False)
    cp.RawModule = functools.partial(FakeRawModule, emu)
    monkeypatch.setattr(gpu_kernels, "launch_gather", _make_launch_gather(emu, gpu_kernels.launch_gather))

    original_engine_factory = engine_base._gpu_engine.__wrapped__

    @functools.cache
    def gpu_engine(strict: bool) -> Any:
        engine = original_engine_factory(strict)
        emu.engines.append(engine)
        return engine

    monkeypatch.setattr(engine_base, "_gpu_engine", gpu_engine)
    return emu


@contextlib.contextmanager
def gpu_emulation(*, kvikio: bool = False, nvcomp_api: int = 5) -> Iterator[GpuEmulation]:
    """Context manager: the GPU engine runs emulated inside; everything is restored afterwards."""
    mp = pytest.MonkeyPatch()
    emu = None
    try:
        emu = install(mp, kvikio=kvikio, nvcomp_api=nvcomp_api)
        yield emu
    finally:
        if emu is not None:
            for engine in emu.engines:
                engine.close()
        mp.undo()
        _clear_caches()


@pytest.fixture
def emulated_gpu() -> Iterator[GpuEmulation]:
    """Pytest fixture form of :func:`gpu_emulation`.

    It manages its own :class:`pytest.MonkeyPatch` rather than the ``monkeypatch``
    fixture so that the probe caches are cleared *after* the fake modules are removed
    (the ``monkeypatch`` fixture would undo only after this fixture's teardown).
    """
    with gpu_emulation() as emu:
        yield emu
