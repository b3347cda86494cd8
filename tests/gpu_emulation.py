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
import itertools
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
#: alignment the emulated nvCOMP demands of every decode input and output address
DECOMPRESSION_ALIGNMENT = {"LZ4": 4, "Zstd": 8, "Deflate": 8}
_KNOWN_ALGORITHMS = ("LZ4", "Snappy", "GDeflate", "Deflate", "Bitcomp", "ANS", "Zstd", "Cascaded", "Gzip")
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

    def get(self, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: Any, stream: Any = None) -> None:
        # cupy/_core/core.pyx ndarray.set
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not (self._a.flags.c_contiguous or self._a.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
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


class FakeStream:
    """``cupy.cuda.Stream``: a pointer and ``synchronize()`` (everything is synchronous here)."""

    _next_ptr = 0x7000

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        if null:
            self.ptr = 0
        else:
            FakeStream._next_ptr += 0x10
            self.ptr = FakeStream._next_ptr
        self.synchronize_calls = 0
        self._previous: list[FakeStream] = []

    def synchronize(self) -> None:
        self.synchronize_calls += 1

    def use(self) -> FakeStream:
        _stream_state.current = self
        return self

    def __enter__(self) -> Self:
        self._previous.append(get_current_stream())
        _stream_state.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        _stream_state.current = self._previous.pop()


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
    cupyx.empty_pinned = lambda shape, dtype=float: np.empty(shape, dtype=dtype)
    return cp, cupyx


# ============================================================================ fake nvCOMP


class FakeBitstreamKind:
    NVCOMP_NATIVE = "NVCOMP_NATIVE"
    RAW = "RAW"
    WITH_UNCOMPRESSED_SIZE = "WITH_UNCOMPRESSED_SIZE"


class FakeBatchArray:
    """``nvcomp.BatchArray`` carved from one buffer by an offset table."""

    def __init__(self, buffer: FakeDeviceArray, offsets: list[int], sizes: list[int], cuda_stream: int) -> None:
        self.buffer = buffer
        self.offsets = offsets
        self.sizes = sizes
        self.cuda_stream = cuda_stream

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def buffer_sizes(self) -> list[int]:
        return list(self.sizes)

    def address(self, k: int) -> int:
        return self.buffer.data.ptr + self.offsets[k]

    def entry(self, k: int) -> np.ndarray:
        return self.buffer._a[self.offsets[k]: self.offsets[k] + self.sizes[k]]


def _int_list(name: str, values: Any) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"as_arrays: {name} must be a list of ints, not {type(values).__name__}")
    out = []
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"as_arrays: {name} holds {type(v).__name__}, not int")
        out.append(int(v))
    return out


def fake_as_arrays(buffer: Any, offsets: Any = None, sizes: Any = None, cuda_stream: int = 0) -> FakeBatchArray:
    """``nvcomp.as_arrays(buffer, offsets, sizes, cuda_stream=)`` (the offset-table overload only)."""
    if offsets is None or sizes is None:
        raise NotImplementedError("GPU emulation: only as_arrays(buffer, offsets, sizes) is emulated")
    if not isinstance(buffer, FakeDeviceArray):
        raise TypeError(f"as_arrays: the engine must hand nvCOMP device memory, got {type(buffer).__name__}")
    if buffer.dtype != np.uint8 or buffer.ndim != 1 or not buffer.flags.c_contiguous:
        raise ValueError(f"as_arrays: buffer must be a contiguous 1-D uint8 array (offsets/sizes are bytes), "
                         f"got {buffer.dtype} shape {buffer.shape}")
    if not isinstance(cuda_stream, int):
        raise TypeError(f"as_arrays: cuda_stream must be an int, not {type(cuda_stream).__name__}")
    offs, szs = _int_list("offsets", offsets), _int_list("sizes", sizes)
    if len(offs) != len(szs):
        raise ValueError(f"as_arrays: {len(offs)} offsets but {len(szs)} sizes")
    for k, (o, s) in enumerate(zip(offs, szs, strict=True)):
        if o < 0 or s < 0 or o + s > buffer.nbytes:
            raise ValueError(f"as_arrays: entry {k} [{o}, {o + s}) lies outside the {buffer.nbytes}-byte buffer")
    return FakeBatchArray(buffer, offs, szs, cuda_stream)


@dataclass
class DecodeCall:
    """One emulated ``Codec.decode``: algorithm, entry count, input sizes, decoded sizes (None if it raised)."""

    algorithm: str
    n: int
    input_sizes: list[int]
    decoded_sizes: list[int] | None = None
    error: str | None = None


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


class FakeCodec:
    """``nvcomp.Codec`` for RAW decoding of LZ4 / Zstd / Deflate batches (see the module docstring)."""

    def __init__(self, emulation: GpuEmulation, **kwargs: Any) -> None:
        allowed = {"algorithm", "device_id", "cuda_stream", "uncomp_chunk_size", "bitstream_kind",
                   "execution_policy", "checksum_policy", "decompress_backend", "use_de_sort", "data_type",
                   "bitshuffle_mode", "algorithm_type"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"Codec: unexpected keyword arguments {sorted(unknown)}")
        algorithm = kwargs.get("algorithm")
        if algorithm not in _KNOWN_ALGORITHMS:
            raise RuntimeError(f"Codec: unknown algorithm {algorithm!r}")
        if algorithm not in _DECODERS:
            raise NotImplementedError(f"GPU emulation: no CPU decoder for nvCOMP {algorithm}")
        if kwargs.get("bitstream_kind") != FakeBitstreamKind.RAW:
            raise NotImplementedError("GPU emulation: only BitstreamKind.RAW is emulated "
                                      f"(got {kwargs.get('bitstream_kind')!r})")
        device_id = kwargs.get("device_id", 0)
        if not isinstance(device_id, int) or not 0 <= device_id < DEVICE_COUNT:
            raise RuntimeError(f"Codec: invalid device_id {device_id!r}")
        stream = kwargs.get("cuda_stream", 0)
        if not isinstance(stream, int):
            raise TypeError(f"Codec: cuda_stream must be an int, not {type(stream).__name__}")
        self.algorithm = algorithm
        self.device_id = device_id
        self.cuda_stream = stream
        self._emulation = emulation

    def get_required_decompression_alignment(self) -> int:
        return DECOMPRESSION_ALIGNMENT[self.algorithm]

    def decode(self, srcs: Any, data_type: str = "", out: Any = None, decompression_config: Any = None) -> Any:
        if not isinstance(srcs, FakeBatchArray):
            raise TypeError(f"Codec.decode: srcs must be a BatchArray, not {type(srcs).__name__}")
        if not isinstance(out, FakeBatchArray):
            raise NotImplementedError("GPU emulation: decode needs out= (a BatchArray over preallocated memory)")
        if len(out) != len(srcs):
            raise ValueError(f"Codec.decode: {len(srcs)} inputs but {len(out)} outputs")
        align = self.get_required_decompression_alignment()
        for name, batch in (("input", srcs), ("output", out)):
            for k in range(len(batch)):
                if batch.address(k) % align:
                    raise ValueError(f"Codec.decode ({self.algorithm}): {name} {k} at offset {batch.offsets[k]} "
                                     f"is not {align}-byte aligned")
        self._check_no_overlap(srcs, out)
        call = DecodeCall(self.algorithm, len(srcs), list(srcs.sizes))
        self._emulation.decode_calls.append(call)
        decoder = _DECODERS[self.algorithm]
        try:
            decoded = [decoder(srcs.entry(k).tobytes(), out.sizes[k]) for k in range(len(srcs))]
        except (RuntimeError, ValueError) as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            for k in range(len(out)):  # what a failed batch leaves behind is undefined
                out.entry(k)[...] = UNINITIALISED_BYTE
            raise
        for k, data in enumerate(decoded):
            out.entry(k)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        call.decoded_sizes = [len(d) for d in decoded]
        return FakeBatchArray(out.buffer, out.offsets, call.decoded_sizes, out.cuda_stream)

    @staticmethod
    def _check_no_overlap(srcs: FakeBatchArray, out: FakeBatchArray) -> None:
        """Outputs must not overlap each other or any input (a data race on a GPU)."""
        spans = sorted((out.address(k), out.address(k) + out.sizes[k], k) for k in range(len(out)) if out.sizes[k])
        for (_, hi_a, a), (lo_b, _, b) in itertools.pairwise(spans):
            if lo_b < hi_a:
                raise ValueError(f"Codec.decode: outputs {a} and {b} overlap")
        if not spans:
            return
        starts = np.array([s[0] for s in spans], dtype=np.int64)
        ends = np.array([s[1] for s in spans], dtype=np.int64)
        for k in range(len(srcs)):
            lo, hi = srcs.address(k), srcs.address(k) + srcs.sizes[k]
            if hi == lo:
                continue
            first = int(np.searchsorted(ends, lo, side="right"))  # outputs ending after the input starts
            last = int(np.searchsorted(starts, hi, side="left"))  # ... and starting before it ends
            if first < last:
                raise ValueError(f"Codec.decode: input {k} overlaps output {spans[first][2]}")


def make_fake_nvcomp(emulation: GpuEmulation) -> types.ModuleType:
    nv = types.ModuleType("nvidia.nvcomp")
    nv.__version__ = "emulated"
    nv.BitstreamKind = FakeBitstreamKind
    nv.Codec = lambda **kwargs: FakeCodec(emulation, **kwargs)
    nv.as_arrays = fake_as_arrays
    return nv


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
    engines: list[Any] = field(default_factory=list)
    _gather_launched: threading.local = field(default_factory=threading.local)

    def reset_logs(self) -> None:
        self.decode_calls.clear()
        self.kernel_launches.clear()
        self.kernel_streams.clear()
        self.device_syncs.clear()
        self.kvikio_reads.clear()

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


def install(monkeypatch: pytest.MonkeyPatch, *, kvikio: bool = False) -> GpuEmulation:
    """Install the emulation with ``monkeypatch`` (undone by it); see :func:`gpu_emulation` for teardown.

    ``kvikio=True`` also emulates kvikio, so local fetchers read with ``CuFile`` into
    pinned host or device memory; otherwise they stay on POSIX reads.
    """
    try:
        import nvidia
    except ImportError:  # a CPU-only install has no nvidia.* packages at all
        nvidia = types.ModuleType("nvidia")
        nvidia.__path__ = []  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "nvidia", nvidia)

    from gpuzarr import _optional
    from gpuzarr.engines import base as engine_base
    from gpuzarr.engines.gpu import kernels as gpu_kernels
    from gpuzarr.storage import local

    emu = GpuEmulation()
    cp, cupyx = make_fake_cupy()
    nv = make_fake_nvcomp(emu)
    _clear_caches()
    monkeypatch.setattr(FakeDevice, "on_device_synchronize", emu.device_syncs.append)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cp.cuda)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(sys.modules, "nvidia.nvcomp", nv)
    monkeypatch.setattr(nvidia, "nvcomp", nv, raising=False)  # `from nvidia import nvcomp` reads the attribute
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
def gpu_emulation(*, kvikio: bool = False) -> Iterator[GpuEmulation]:
    """Context manager: the GPU engine runs emulated inside; everything is restored afterwards."""
    mp = pytest.MonkeyPatch()
    emu = None
    try:
        emu = install(mp, kvikio=kvikio)
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
