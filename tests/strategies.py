"""Shared Hypothesis strategies and helpers for the oracle, planning and loader tests.

Everything here draws *small* cases (a few thousand elements at most) so that a
property test can run hundreds of examples on two cores. The central pieces:

* :func:`array_specs` — a complete description of a Zarr 3 array to create: dtype,
  shape, chunk shape (deliberately not dividing the shape), codec pipeline (Blosc with
  every cname/shuffle, Zstd, Gzip, CRC32C, big/little-endian bytes, sharding with the
  index at the start or the end; filter chains of transposes and value codecs, some
  changing the stored dtype: :func:`filter_chains`), fill value (NaN for floats) and
  which boxes of the array get written (so some chunks are never written);
* :func:`batches` — a batch of equal-shape regions for a shape, written the many
  ways NumPy allows (negative and ``None`` bounds, integers mixed with slices,
  omitted trailing axes, ``...``), including regions touching the edges, regions
  sharing chunks and zero-extent regions;
* :func:`create_zarr_array` / :func:`assert_same_batch` — build the array with
  zarr-python and compare a gpuzarr batch with zarr's own ``arr[region]``.

Set ``GPUZARR_HYPOTHESIS_SCALE=10`` (see :func:`scaled`) for a ten times deeper run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

DTYPES: tuple[str, ...] = (
    "bool",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
)
FLOAT_DTYPES: tuple[str, ...] = ("float16", "float32", "float64")
MULTIBYTE_DTYPES: tuple[str, ...] = tuple(d for d in DTYPES if np.dtype(d).itemsize > 1)
BLOSC_CNAMES: tuple[str, ...] = ("lz4", "lz4hc", "zstd", "zlib", "blosclz")
BLOSC_SHUFFLES: tuple[str, ...] = ("noshuffle", "shuffle", "bitshuffle")

# Multiplies every property test's example count: GPUZARR_HYPOTHESIS_SCALE=10 for a deep run.
HYPOTHESIS_SCALE: int = max(1, int(os.environ.get("GPUZARR_HYPOTHESIS_SCALE", "1")))


def scaled(max_examples: int) -> int:
    """``max_examples`` times ``GPUZARR_HYPOTHESIS_SCALE`` (1 by default, keeping the suite fast)."""
    return max_examples * HYPOTHESIS_SCALE


# Largest number of elements a drawn array may have, per dimensionality.
MAX_SIDE_BY_NDIM: dict[int, int] = {1: 60, 2: 18, 3: 9, 4: 6}


# --------------------------------------------------------------------------- codecs
@dataclass(frozen=True)
class CodecSpec:
    """The codec-related arguments of ``zarr.create_array`` (kept printable for failures)."""

    filters: tuple[Any, ...] = ()
    serializer_endian: str = "little"
    compressors: tuple[Any, ...] = ()
    shards: tuple[int, ...] | None = None
    index_location: str = "end"

    def create_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "filters": list(self.filters),
            "serializer": BytesCodec(endian=self.serializer_endian),
            "compressors": list(self.compressors) if self.compressors else None,
        }
        if self.shards is not None:
            kwargs["shards"] = {"shape": self.shards, "index_location": self.index_location}
        return kwargs


def blosc_codecs() -> st.SearchStrategy[BloscCodec]:
    """Blosc with any cname, shuffle mode and level (blocksize left to Blosc)."""
    return st.builds(
        BloscCodec,
        cname=st.sampled_from(BLOSC_CNAMES),
        shuffle=st.sampled_from(BLOSC_SHUFFLES),
        clevel=st.integers(1, 9),
    )


def compressor_chains() -> st.SearchStrategy[tuple[Any, ...]]:
    """Bytes→bytes codec lists: none, one compressor, a compressor plus CRC32C, or two stacked."""
    one = st.one_of(
        blosc_codecs(),
        st.builds(ZstdCodec, level=st.integers(0, 5), checksum=st.booleans()),
        st.builds(GzipCodec, level=st.integers(1, 9)),
    )
    return st.one_of(
        st.just(()),
        one.map(lambda c: (c,)),
        one.map(lambda c: (c, Crc32cCodec())),
        st.just((Crc32cCodec(),)),
        st.tuples(one, one),
    )


def value_filters(dtype: str) -> list[st.SearchStrategy[tuple[Any, ...]]]:
    """numcodecs array→array codecs (zarr's wrappers) valid for ``dtype``, some changing the stored type.

    Each strategy draws a tuple of codecs in encode order: Delta (also with a wider
    ``astype``), BitRound, FixedScaleOffset to an integer type (optionally followed by a
    Delta of that type), AsType to a narrower float.
    """
    from zarr.codecs import numcodecs as znc

    dt = np.dtype(dtype)
    out: list[st.SearchStrategy[tuple[Any, ...]]] = []
    if dt.kind in "iu":
        out.append(st.just((znc.Delta(dtype=dt.str),)))
        if dt.itemsize <= 4:  # a wider stored type (a narrower one overflows when zarr writes)
            wider = np.dtype(f"{dt.kind}{dt.itemsize * 2}").str
            out.append(st.just((znc.Delta(dtype=dt.str, astype=wider),)))
    if dt.kind == "f" and dt.itemsize >= 4:
        out.append(st.integers(1, 10).map(lambda k: (znc.BitRound(keepbits=k),)))
        fso = st.builds(lambda off, scale, astype: znc.FixedScaleOffset(offset=off, scale=scale, dtype=dt.str,
                                                                          astype=astype),
                        st.sampled_from([0.0, 1.5, -100.0]), st.sampled_from([1, 10, 1000]),
                        st.sampled_from(["<i4", "<u2", "<i8"]))
        out.append(fso.map(lambda c: (c,)))
        out.append(fso.map(lambda c: (c, znc.Delta(dtype=np.dtype(c.codec_config["astype"]).str))))
        narrower = "<f4" if dt.itemsize == 8 else "<f2"
        out.append(st.just((znc.AsType(encode_dtype=narrower, decode_dtype=dt.str),)))
    return out


@st.composite
def filter_chains(draw: st.DrawFn, ndim: int, dtype: str | None = None) -> tuple[Any, ...]:
    """Array→array codecs in encode order: up to two transposes, then (for ``dtype``) value codecs.

    Transposes come first because zarr-python cannot write a transpose after a numcodecs
    codec (those hand back flat arrays); decoding must then undo the value codecs on the
    transposed shape and the transposes after them, tracking shape and dtype per step.
    """
    filters: list[Any] = []
    if ndim > 1:
        for _ in range(draw(st.integers(0, 2))):
            filters.append(TransposeCodec(order=tuple(draw(st.permutations(range(ndim))))))
    options = value_filters(dtype) if dtype is not None else []
    if options and draw(st.integers(0, 2)) == 0:
        filters.extend(draw(st.one_of(options)))
    return tuple(filters)


@st.composite
def codec_specs(draw: st.DrawFn, chunks: Sequence[int], *, allow_sharding: bool = True,
                dtype: str | None = None) -> CodecSpec:
    """A codec pipeline for an array whose (inner) chunk shape is ``chunks``.

    With ``dtype``, the filters may include value codecs (see :func:`filter_chains`), some of
    which change the stored data type.
    """
    ndim = len(chunks)
    filters: tuple[Any, ...] = draw(filter_chains(ndim, dtype))
    endian = draw(st.sampled_from(("little", "big")))
    compressors = draw(compressor_chains())
    shards = None
    index_location = "end"
    if allow_sharding and draw(st.booleans()):
        factors = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
        shards = tuple(c * f for c, f in zip(chunks, factors, strict=True))
        index_location = draw(st.sampled_from(("start", "end")))
    return CodecSpec(filters, endian, compressors, shards, index_location)


# --------------------------------------------------------------------------- arrays
@dataclass(frozen=True)
class ArraySpec:
    """Everything needed to build one Zarr array and fill it deterministically."""

    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    codecs: CodecSpec
    fill_value: Any
    writes: tuple[tuple[tuple[int, int], ...], ...]  # boxes (per axis (start, stop)) written with data
    data_seed: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.shape)


def fill_values(dtype: str) -> st.SearchStrategy[Any]:
    """Fill values worth testing for ``dtype`` (0, extremes, NaN for floats)."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return st.booleans()
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return st.sampled_from([0, 1, int(info.max), int(info.min) if dt.kind == "i" else 7])
    return st.sampled_from([0.0, -1.5, 42.0, float("nan")])


@st.composite
def shapes_and_chunks(
    draw: st.DrawFn, *, min_dims: int = 1, max_dims: int = 4, min_side: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A small shape and a chunk shape that usually does not divide it (and may exceed it)."""
    ndim = draw(st.integers(min_dims, max_dims))
    max_side = MAX_SIDE_BY_NDIM[ndim]
    shape = tuple(draw(st.lists(st.integers(min_side, max_side), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, s + 2)) for s in shape)
    return shape, chunks


@st.composite
def write_boxes(draw: st.DrawFn, shape: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Which boxes to write: the whole array, nothing, or one or two sub-boxes."""
    mode = draw(st.sampled_from(("full", "partial", "partial", "two", "none")))
    full = tuple((0, int(s)) for s in shape)
    if mode == "full":
        return (full,)
    if mode == "none":
        return ()

    def box() -> tuple[tuple[int, int], ...]:
        out = []
        for s in shape:
            a = draw(st.integers(0, s - 1))
            b = draw(st.integers(a + 1, s))
            out.append((a, b))
        return tuple(out)

    return tuple(box() for _ in range(1 if mode == "partial" else 2))


@st.composite
def array_specs(
    draw: st.DrawFn,
    *,
    dtypes: Sequence[str] = DTYPES,
    min_dims: int = 1,
    max_dims: int = 4,
    allow_sharding: bool = True,
    codecs: st.SearchStrategy[CodecSpec] | None = None,
) -> ArraySpec:
    """A random small Zarr 3 array description (see module docstring)."""
    dtype = draw(st.sampled_from(tuple(dtypes)))
    shape, chunks = draw(shapes_and_chunks(min_dims=min_dims, max_dims=max_dims))
    codec_spec = draw(codecs if codecs is not None else codec_specs(chunks, allow_sharding=allow_sharding,
                                                                    dtype=dtype))
    fill = draw(fill_values(dtype))
    writes = draw(write_boxes(shape))
    seed = draw(st.integers(0, 2**32 - 1))
    return ArraySpec(dtype, shape, chunks, codec_spec, fill, writes, seed)


#: chunk bytes at and above which the CPU engine decodes only the Blosc blocks a batch needs
PARTIAL_DECODE_BYTES: int = 1 << 18


@st.composite
def large_chunk_specs(draw: st.DrawFn, *, ndim: int | None = None) -> ArraySpec:
    """A Blosc array whose chunks are at or above the partial-decode threshold (256 KiB), any ndim 1-4.

    Chunks hold several Blosc blocks (a small ``blocksize`` is drawn), the array is a
    little larger than one chunk on some axes (so edge chunks are partial) and part of
    it may be left unwritten; every cname, shuffle and byte order can be drawn.
    """
    ndim = draw(st.integers(1, 4)) if ndim is None else ndim
    dtype = draw(st.sampled_from(("uint8", "uint16", "int32", "float32", "float64")))
    itemsize = np.dtype(dtype).itemsize
    # a chunk of 2**18 .. 2**19 bytes, its elements spread over ndim axes
    n_items = draw(st.integers(PARTIAL_DECODE_BYTES, 2 * PARTIAL_DECODE_BYTES)) // itemsize + 1
    lead_max = {1: 1, 2: 1, 3: 4, 4: 3}[ndim]
    chunks_l = [draw(st.integers(1, lead_max)) for _ in range(max(ndim - 2, 0))]
    rest = -(-n_items // int(np.prod(chunks_l, dtype=np.int64)))
    if ndim == 1:
        chunks_l = [rest]
    else:
        rows = draw(st.integers(16, 512))
        chunks_l += [rows, -(-rest // rows)]
    chunks = tuple(chunks_l)
    shape = tuple(c + draw(st.sampled_from((0, 0, 1, c // 3 + 1))) for c in chunks)
    codec = BloscCodec(cname=draw(st.sampled_from(BLOSC_CNAMES)), shuffle=draw(st.sampled_from(BLOSC_SHUFFLES)),
                       clevel=draw(st.integers(1, 5)), blocksize=draw(st.sampled_from((0, 8192, 32768))))
    codecs = CodecSpec(compressors=(codec,), serializer_endian=draw(st.sampled_from(("little", "big"))))
    return ArraySpec(dtype, shape, chunks, codecs, draw(fill_values(dtype)), draw(write_boxes(shape)),
                     draw(st.integers(0, 2**32 - 1)))


def make_data(dtype: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """Deterministic values spanning the dtype's range (with a few NaN/inf for floats)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    shape = tuple(shape)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(int(info.min), int(info.max), size=shape, endpoint=True, dtype=dt)
    values = (rng.standard_normal(shape) * 1000).astype(dt)
    special = rng.random(shape)
    values[special < 0.02] = np.nan
    values[(special >= 0.02) & (special < 0.03)] = np.inf
    values[(special >= 0.03) & (special < 0.04)] = -0.0
    return values


def create_zarr_array(spec: ArraySpec, store: Any) -> zarr.Array:
    """Create and partially fill the array described by ``spec`` in ``store`` (path or Store)."""
    arr = zarr.create_array(
        store,
        shape=spec.shape,
        chunks=spec.chunks,
        dtype=spec.dtype,
        fill_value=spec.fill_value,
        overwrite=True,
        **spec.codecs.create_kwargs(),
    )
    data = make_data(spec.dtype, spec.shape, spec.data_seed)
    for box in spec.writes:
        sel = tuple(slice(a, b) for a, b in box)
        arr[sel] = data[sel]
    return arr


# --------------------------------------------------------------------------- Zarr v2 arrays
@dataclass(frozen=True)
class V2Spec:
    """A Zarr v2 array to create with zarr-python (``zarr_format=2``)."""

    dtype: str  # with byte order, e.g. ">i4"
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    order: str
    separator: str
    compressor: Any
    filters: tuple[Any, ...]
    fill_value: Any
    writes: tuple[tuple[tuple[int, int], ...], ...]
    data_seed: int = 0


V2_DTYPES: tuple[str, ...] = ("|b1", "|u1", "<i2", ">i2", "<u4", ">i4", "<i8", "<f2", "<f4", ">f4", "<f8", ">f8")


def v2_compressors() -> st.SearchStrategy[Any]:
    """numcodecs compressors as a v2 ``.zarray`` names them (None: uncompressed)."""
    import numcodecs

    blosc = st.builds(numcodecs.Blosc, cname=st.sampled_from(BLOSC_CNAMES), clevel=st.integers(1, 9),
                      shuffle=st.sampled_from([numcodecs.Blosc.NOSHUFFLE, numcodecs.Blosc.SHUFFLE,
                                               numcodecs.Blosc.BITSHUFFLE]))
    return st.one_of(st.none(), blosc, st.builds(numcodecs.Zstd, level=st.integers(1, 5)),
                     st.builds(numcodecs.Zlib, level=st.integers(1, 9)), st.builds(numcodecs.GZip, level=st.integers(1, 9)),
                     st.just(numcodecs.LZ4()), st.just(numcodecs.BZ2(level=1)))


def v2_filters(dtype: str) -> st.SearchStrategy[tuple[Any, ...]]:
    """numcodecs v2 filters valid for ``dtype``: none, Delta, FixedScaleOffset to ints, AsType, Quantize, BitRound."""
    import numcodecs

    dt = np.dtype(dtype)
    options: list[st.SearchStrategy[tuple[Any, ...]]] = [st.just(())]
    if dt.kind in "iu":
        options.append(st.just((numcodecs.Delta(dtype=dt.str),)))
    if dt.kind == "f" and dt.itemsize >= 4:
        fso = st.builds(lambda off, scale, astype: numcodecs.FixedScaleOffset(offset=off, scale=scale, dtype=dt.str,
                                                                               astype=astype),
                        st.sampled_from([0.0, 2.5]), st.sampled_from([1, 10, 100]), st.sampled_from(["<i4", "<u2"]))
        options += [fso.map(lambda f: (f,)),
                    fso.map(lambda f: (f, numcodecs.Delta(dtype=f.astype.str))),
                    st.just((numcodecs.AsType(encode_dtype=dt.newbyteorder("<").str.replace("8", "4")
                                              if dt.itemsize == 8 else "<f2", decode_dtype=dt.str),)),
                    st.integers(1, 4).map(lambda d: (numcodecs.Quantize(digits=d, dtype=dt.str),))]
        if dt.byteorder != ">":  # numcodecs' BitRound cannot write big-endian floats
            options.append(st.integers(1, 10).map(lambda k: (numcodecs.BitRound(keepbits=k),)))
    return st.one_of(options)


@st.composite
def v2_array_specs(draw: st.DrawFn, *, max_dims: int = 3) -> V2Spec:
    """A random small Zarr v2 array: dtype with byte order, order C/F, either separator, compressor, filters."""
    dtype = draw(st.sampled_from(V2_DTYPES))
    shape, chunks = draw(shapes_and_chunks(max_dims=max_dims))
    kind = np.dtype(dtype).kind
    fill = draw(st.one_of(st.none(), fill_values(np.dtype(dtype).newbyteorder("=").name)))
    if kind == "b" and fill is not None:
        fill = bool(fill)
    return V2Spec(dtype, shape, chunks, draw(st.sampled_from("CF")), draw(st.sampled_from("/.")),
                  draw(v2_compressors()), draw(v2_filters(dtype)), fill, draw(write_boxes(shape)),
                  draw(st.integers(0, 2**32 - 1)))


def create_v2_array(spec: V2Spec, store: Any) -> zarr.Array:
    """Create and partially fill the v2 array described by ``spec`` in ``store``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notes on v2 / numcodecs; cast warnings of lossy filters
        arr = zarr.create_array(store, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype, zarr_format=2,
                                order=spec.order, compressors=spec.compressor, filters=list(spec.filters) or None,
                                fill_value=spec.fill_value, overwrite=True,
                                chunk_key_encoding={"name": "v2", "separator": spec.separator})
        data = make_data(np.dtype(spec.dtype).newbyteorder("=").name, spec.shape, spec.data_seed)
        for box in spec.writes:
            sel = tuple(slice(a, b) for a, b in box)
            arr[sel] = data[sel]
    return arr


# --------------------------------------------------------------------------- regions
@dataclass(frozen=True)
class Batch:
    """A batch of regions plus the canonical (start, stop) boxes they denote."""

    regions: tuple[Any, ...]
    starts: np.ndarray  # (R, ndim)
    stops: np.ndarray  # (R, ndim)
    int_axes: tuple[int, ...]

    @property
    def region_shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.stops[0] - self.starts[0]) if len(self.starts) else ()


def _slice_bound(draw: st.DrawFn, value: int, size: int, *, is_start: bool) -> int | np.integer | None:
    """``value`` written as a positive, negative (counted from the end) or ``None`` bound."""
    options: list[Any] = [value]
    if value < size:  # value - size == 0 would mean "start", not "end"
        options.append(value - size)
    if (is_start and value == 0) or (not is_start and value == size):
        options.append(None)
    choice = draw(st.sampled_from(options))
    if choice is not None and draw(st.integers(0, 5)) == 0:
        return np.int64(choice)  # NumPy integers are valid bounds too
    return choice


@st.composite
def batches(
    draw: st.DrawFn,
    shape: Sequence[int],
    *,
    min_regions: int = 1,
    max_regions: int = 6,
    allow_int: bool = True,
    allow_empty: bool = True,
    allow_syntax: bool = True,
) -> Batch:
    """Equal-shape regions of an array of ``shape`` in every spelling NumPy accepts (step 1).

    Regions are biased towards touching the array's edges and overlapping each other
    (several regions sharing chunks), and may have zero extent when ``allow_empty``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    n = draw(st.integers(min_regions, max_regions))
    int_axes = tuple(d for d in range(ndim) if allow_int and draw(st.integers(0, 4)) == 0)
    extents = []
    for d, size in enumerate(shape):
        if d in int_axes:
            extents.append(1)
        elif allow_empty and draw(st.integers(0, 15)) == 0:
            extents.append(0)
        else:
            extents.append(draw(st.integers(1, size)))
    # trailing axes taken whole may be left out, or replaced by '...'
    n_omit = 0
    if allow_syntax:
        while n_omit < ndim and extents[ndim - 1 - n_omit] == shape[ndim - 1 - n_omit] and (
            ndim - 1 - n_omit not in int_axes
        ) and draw(st.booleans()):
            n_omit += 1
    use_ellipsis = allow_syntax and n_omit > 0 and draw(st.booleans())
    # a few anchor starts so that regions often coincide / overlap / hit the edges
    anchors = [
        tuple(draw(st.integers(0, shape[d] - extents[d])) for d in range(ndim)) for _ in range(2)
    ]
    regions = []
    starts = np.zeros((n, ndim), dtype=np.int64)
    stops = np.zeros((n, ndim), dtype=np.int64)
    for r in range(n):
        how = draw(st.sampled_from(("random", "anchor", "low_edge", "high_edge")))
        items: list[Any] = []
        for d, size in enumerate(shape):
            hi = size - extents[d]
            if how == "anchor":
                start = anchors[r % 2][d]
            elif how == "low_edge":
                start = 0
            elif how == "high_edge":
                start = hi
            else:
                start = draw(st.integers(0, hi))
            starts[r, d] = start
            stops[r, d] = start + extents[d]
            if d in int_axes:
                idx = draw(st.sampled_from((start, start - size)))
                items.append(np.int64(idx) if draw(st.integers(0, 5)) == 0 else idx)
            else:
                items.append(
                    slice(
                        _slice_bound(draw, start, size, is_start=True),
                        _slice_bound(draw, start + extents[d], size, is_start=False),
                    )
                )
        if n_omit:
            items = items[: ndim - n_omit]
            if use_ellipsis:
                items.append(Ellipsis)
        region: Any = tuple(items)
        if allow_syntax and len(items) == 1 and draw(st.booleans()):
            region = items[0]
        regions.append(region)
    return Batch(tuple(regions), starts, stops, int_axes)


@st.composite
def arrays_with_batches(
    draw: st.DrawFn, *, max_regions: int = 6, **spec_kwargs: Any
) -> tuple[ArraySpec, Batch]:
    """An :class:`ArraySpec` and a batch of regions of it."""
    spec = draw(array_specs(**spec_kwargs))
    batch = draw(batches(spec.shape, max_regions=max_regions))
    return spec, batch


# --------------------------------------------------------------------------- oracle
def zarr_reference(arr: Any, regions: Sequence[Any]) -> np.ndarray:
    """zarr-python's (or NumPy's) ``arr[region]`` for every region, stacked on a new axis 0."""
    return np.stack([np.asarray(arr[region]) for region in regions])


def assert_same_batch(got: Any, expected: np.ndarray, *, context: str = "") -> None:
    """Same shape, same (native) dtype and the same values, NaN equal to NaN."""
    assert isinstance(got, np.ndarray), f"{context}: expected a NumPy array, got {type(got).__name__}"
    assert got.shape == expected.shape, f"{context}: shape {got.shape} != zarr's {expected.shape}"
    want_dtype = expected.dtype.newbyteorder("=") if expected.dtype.itemsize > 1 else expected.dtype
    assert got.dtype == want_dtype, f"{context}: dtype {got.dtype} != zarr's {expected.dtype}"
    np.testing.assert_array_equal(got, expected, err_msg=context, strict=True)
