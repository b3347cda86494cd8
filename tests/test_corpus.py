"""A corpus of arrays written by other writers, each read by gpuzarr and compared with zarr-python bit for bit.

Built by the tests themselves in a temporary directory:

* **tensorstore** (``zarr3`` driver): sharding with each inner codec and the index at the
  start or the end, ``transpose``, big-endian ``bytes``; and its Zarr v2 driver (``zarr``:
  Blosc, ``order="F"``, big-endian, ``.`` separators);
* **zarr-python, Zarr v2** (``zarr_format=2``): Blosc with every cname × shuffle, zlib,
  zstd, gzip, LZ4, bz2, LZMA, no compressor, the filters Delta, FixedScaleOffset (with
  ``astype``), AsType and Quantize, ``order="F"``, both dimension separators, ``>i4``,
  ``|b1``, datetime64 and NaN / null fill values;
* **xarray** ``to_zarr`` (v2 and v3): data variables with NaN fill, CF-encoded times,
  scale/offset packing, a coordinate;
* **numcodecs' golden fixtures** (``fixture/`` of its source distribution), decoded by
  gpuzarr's bounded decode steps, where the machine has them (``GPUZARR_NUMCODECS_FIXTURES``
  names the directory; skipped with the reason otherwise).

For every array, :data:`N_REGIONS` random regions (seeded) are read in batches with
gpuzarr and compared with zarr-python: same shape, same (native-order) data type and
the same bytes — NaN payloads and signed zeros included. The expected values are zarr's
own read of the whole array, spot-checked against zarr's per-region reads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr

import gpuzarr

N_REGIONS = 200  # per array
BATCH = 25  # regions per read_batch (equal shape within a batch)
SHAPE = (37, 29, 6)
CHUNKS = (8, 7, 6)


# --------------------------------------------------------------------------- helpers


def _data(dtype: Any, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.4
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -(10**6)), min(int(info.max), 10**6)
        return rng.integers(lo, hi, shape, endpoint=True).astype(dt)
    if dt.kind in "mM":
        return rng.integers(-(10**9), 10**9, shape).astype(dt)
    values = (rng.standard_normal(shape) * 100).astype(dt)
    special = rng.random(shape)
    values[special < 0.03] = np.nan
    values[(special >= 0.03) & (special < 0.04)] = -0.0
    return values


def _regions(shape: tuple[int, ...], rng: np.random.Generator) -> Iterator[list[tuple[slice, ...]]]:
    """Batches of equal-shape regions, N_REGIONS in all, with edges and single elements included."""
    for _ in range(N_REGIONS // BATCH):
        extent = [int(rng.integers(1, s + 1)) for s in shape]
        if rng.random() < 0.2:
            extent = [1] * len(shape)
        batch = []
        for _ in range(BATCH):
            starts = [int(rng.integers(0, s - e + 1)) for s, e in zip(shape, extent, strict=True)]
            batch.append(tuple(slice(a, a + e) for a, e in zip(starts, extent, strict=True)))
        yield batch


def _same_bits(got: np.ndarray, want: np.ndarray, context: str) -> None:
    native = want.dtype.newbyteorder("=") if want.dtype.itemsize > 1 else want.dtype
    assert got.dtype == native, f"{context}: dtype {got.dtype} != zarr's {want.dtype}"
    assert got.shape == want.shape, f"{context}: shape {got.shape} != zarr's {want.shape}"
    want = np.ascontiguousarray(want.astype(native))
    if not np.array_equal(np.ascontiguousarray(got).view(np.uint8), want.view(np.uint8)):
        bad = np.argwhere(~((got == want) | ((got != got) & (want != want))))  # noqa: PLR0124 (NaN test)
        raise AssertionError(f"{context}: differs from zarr at {bad[:5].tolist()} (of {len(bad)})")


def check_against_zarr(path: Path | str, *, array_path: str | None = None, seed: int = 0) -> int:
    """Read N_REGIONS random regions of the array at ``path`` with gpuzarr; compare with zarr-python."""
    ref = zarr.open_array(str(path), path=array_path, mode="r") if array_path else zarr.open_array(str(path), mode="r")
    handle = gpuzarr.open_array(str(path), path=array_path)
    full = ref[...]
    rng = np.random.default_rng(seed)
    n = 0
    for i, batch in enumerate(_regions(tuple(ref.shape), rng)):
        got = handle.read_batch(batch, device="cpu")
        want = np.stack([full[r] for r in batch])
        _same_bits(got, want, f"{path}{'/' + array_path if array_path else ''} batch {i}")
        if i % 3 == 0:  # spot check: zarr's own region reads agree with its whole-array read
            _same_bits(got[0], np.asarray(ref[batch[0]]), f"{path} region {batch[0]}")
        n += len(batch)
    return n


# --------------------------------------------------------------------------- tensorstore

try:
    import tensorstore as ts
except ImportError:  # pragma: no cover
    ts = None

needs_ts = pytest.mark.skipif(ts is None, reason="tensorstore is not installed")

INNER_CODECS: dict[str, list[dict]] = {
    "blosc": [{"name": "bytes", "configuration": {"endian": "little"}},
              {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle",
                                                  "typesize": 4, "blocksize": 0}}],
    "zstd": [{"name": "bytes", "configuration": {"endian": "little"}},
             {"name": "zstd", "configuration": {"level": 3, "checksum": True}}],
    "gzip": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "gzip", "configuration": {"level": 5}}],
    "crc32c": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
    "none": [{"name": "bytes", "configuration": {"endian": "little"}}],
    "transpose+big+blosc": [{"name": "transpose", "configuration": {"order": [2, 0, 1]}},
                            {"name": "bytes", "configuration": {"endian": "big"}},
                            {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle",
                                                                "typesize": 4, "blocksize": 0}}],
}


def _ts_write(path: Path, spec_metadata: dict, data: np.ndarray, *, driver: str = "zarr3") -> None:
    store = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": spec_metadata, "create": True, "delete_existing": True}).result()
    store[:30, ...].write(data[:30]).result()  # rows 30.. never written: fill value


@needs_ts
@pytest.mark.parametrize("inner", list(INNER_CODECS))
@pytest.mark.parametrize("index_location", ["start", "end"])
def test_tensorstore_sharded(tmp_path: Path, inner: str, index_location: str) -> None:
    data = _data("float32", seed=1)
    codecs = [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(CHUNKS[:2]) + [3], "codecs": INNER_CODECS[inner],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": index_location}}]
    _ts_write(tmp_path / "a", {"shape": list(SHAPE), "data_type": "float32", "fill_value": float("nan"),
                               "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [16, 14, 6]}},
                               "codecs": codecs}, data)
    assert check_against_zarr(tmp_path / "a", seed=2) == N_REGIONS


@needs_ts
@pytest.mark.parametrize("dtype", ["int32", "uint16", "float64", "int8", "bool"])
@pytest.mark.parametrize("layout", ["transpose+big+blosc", "zstd", "none"])
def test_tensorstore_zarr3(tmp_path: Path, dtype: str, layout: str) -> None:
    data = _data(dtype, seed=3)
    codecs = [dict(c) for c in INNER_CODECS[layout]]
    for c in codecs:
        if c["name"] == "blosc":
            c["configuration"] = {**c["configuration"], "typesize": np.dtype(dtype).itemsize}
        if c["name"] == "bytes" and np.dtype(dtype).itemsize == 1:
            c.pop("configuration")
    _ts_write(tmp_path / "a", {"shape": list(SHAPE), "data_type": dtype, "fill_value": False if dtype == "bool" else 3,
                               "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(CHUNKS)}},
                               "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
                               "codecs": codecs}, data)
    assert check_against_zarr(tmp_path / "a", seed=4) == N_REGIONS


@needs_ts
@pytest.mark.parametrize("dtype,order,sep,compressor", [
    (">i4", "F", "/", {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}),
    ("<f8", "C", ".", {"id": "zstd", "level": 3}),
    ("<u2", "F", ".", {"id": "zlib", "level": 4}),
    ("|b1", "C", "/", None),
    (">f4", "C", "/", {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}),
])
def test_tensorstore_zarr_v2(tmp_path: Path, dtype: str, order: str, sep: str, compressor: dict | None) -> None:
    data = _data(dtype, seed=5)
    _ts_write(tmp_path / "a", {"shape": list(SHAPE), "chunks": list(CHUNKS), "dtype": dtype, "order": order,
                               "dimension_separator": sep, "compressor": compressor, "filters": None,
                               "fill_value": None if dtype == "|b1" else 7}, data, driver="zarr")
    assert (tmp_path / "a" / ".zarray").exists()
    assert check_against_zarr(tmp_path / "a", seed=6) == N_REGIONS


# --------------------------------------------------------------------------- zarr-python, Zarr v2


def _v2(path: Path, dtype: Any, *, write_rows: int = 30, **kwargs: Any) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: v2 dtypes without a v3 spec, codec warnings
        arr = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype=dtype, zarr_format=2, **kwargs)
        data = _data(dtype, seed=7)
        arr[:write_rows] = data[:write_rows]
    return path


BLOSC_CNAMES = ("lz4", "lz4hc", "zstd", "zlib", "blosclz")
SHUFFLES = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}


@pytest.mark.parametrize("cname", BLOSC_CNAMES)
@pytest.mark.parametrize("shuffle", list(SHUFFLES))
def test_zarr_v2_blosc(tmp_path: Path, cname: str, shuffle: str) -> None:
    path = _v2(tmp_path / "a", "<i4", compressors=numcodecs.Blosc(cname=cname, clevel=4, shuffle=SHUFFLES[shuffle]),
               fill_value=-5)
    handle = gpuzarr.open_array(str(path))
    assert handle.chain.codec_names == ("bytes", "blosc")
    assert check_against_zarr(path, seed=8) == N_REGIONS


V2_COMPRESSORS = {"zlib": numcodecs.Zlib(level=3), "zstd": numcodecs.Zstd(level=2), "gzip": numcodecs.GZip(level=4),
                  "lz4": numcodecs.LZ4(), "bz2": numcodecs.BZ2(level=2), "lzma": numcodecs.LZMA(preset=1),
                  "none": None}


@pytest.mark.parametrize("compressor", list(V2_COMPRESSORS))
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("separator", ["/", "."])
def test_zarr_v2_compressors_orders_separators(tmp_path: Path, compressor: str, order: str, separator: str) -> None:
    path = _v2(tmp_path / "a", ">i4", compressors=V2_COMPRESSORS[compressor], order=order, fill_value=11,
               chunk_key_encoding={"name": "v2", "separator": separator})
    stored = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert ("0/0/0" in stored) == (separator == "/") and ("0.0.0" in stored) == (separator == ".")
    assert check_against_zarr(path, seed=9) == N_REGIONS


V2_FILTERS = {
    "delta": ("<i4", [numcodecs.Delta(dtype="<i4")], numcodecs.Blosc(cname="lz4")),
    "delta-astype": ("<i8", [numcodecs.Delta(dtype="<i8", astype="<i4")], numcodecs.Zstd()),
    "fixedscaleoffset-u2": ("<f8", [numcodecs.FixedScaleOffset(offset=0, scale=10, dtype="<f8", astype="<i4")],
                            numcodecs.Blosc(cname="zstd", shuffle=numcodecs.Blosc.SHUFFLE)),
    "astype-f4": ("<f8", [numcodecs.AsType(encode_dtype="<f4", decode_dtype="<f8")], numcodecs.Zlib()),
    "quantize": ("<f8", [numcodecs.Quantize(digits=2, dtype="<f8")], None),
    "delta+fso": ("<f4", [numcodecs.FixedScaleOffset(offset=1, scale=100, dtype="<f4", astype="<i4"),
                          numcodecs.Delta(dtype="<i4")], numcodecs.Blosc()),
    "bitround": ("<f4", [numcodecs.BitRound(keepbits=8)], numcodecs.Zstd()),
}


@pytest.mark.parametrize("name", list(V2_FILTERS))
@pytest.mark.parametrize("order", ["C", "F"])
def test_zarr_v2_filters(tmp_path: Path, name: str, order: str) -> None:
    dtype, filters, compressor = V2_FILTERS[name]
    path = _v2(tmp_path / "a", dtype, filters=filters, compressors=compressor, order=order,
               fill_value=float("nan") if np.dtype(dtype).kind == "f" else 0)
    assert check_against_zarr(path, seed=10) == N_REGIONS


@pytest.mark.parametrize("dtype,fill", [("|b1", None), ("|b1", True), ("<M8[ns]", None), ("<m8[s]", 5),
                                        ("<f8", None), ("<f4", float("nan")), (">u2", 65535), ("<c8", None),
                                        ("|u1", 255), ("<i2", -1)])
def test_zarr_v2_dtypes_and_fill_values(tmp_path: Path, dtype: str, fill: Any) -> None:
    path = _v2(tmp_path / "a", dtype, compressors=numcodecs.Blosc(cname="lz4"), fill_value=fill)
    assert check_against_zarr(path, seed=11) == N_REGIONS


def test_zarr_v2_group_member_and_attrs(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=2)
    group.attrs["title"] = "v2 group"
    arr = group.create_array("raw", shape=SHAPE, chunks=CHUNKS, dtype="<u2", compressors=numcodecs.Zstd())
    arr[...] = _data("<u2", seed=12)
    handle = gpuzarr.open_group(str(tmp_path / "g"))
    assert handle.attrs["title"] == "v2 group"
    assert isinstance(handle["raw"], gpuzarr.ArrayHandle)
    assert check_against_zarr(tmp_path / "g", array_path="raw", seed=13) == N_REGIONS


def test_zarr_v2_large_blosc_chunks_use_partial_decode(tmp_path: Path) -> None:
    """A v2 Blosc array takes the same partial-decode path as v3 (chunks above the threshold)."""
    path = tmp_path / "big"
    shape = (3, 96, 256)
    arr = zarr.create_array(str(path), shape=shape, chunks=shape, dtype="<f8", zarr_format=2,
                            compressors=numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.SHUFFLE, blocksize=1 << 14))
    arr[...] = _data("<f8", shape=shape, seed=14)
    handle = gpuzarr.open_array(str(path))
    assert handle.chain.supports_partial_decode and handle.chain.stored_nbytes >= 1 << 18
    assert check_against_zarr(path, seed=15) == N_REGIONS


# --------------------------------------------------------------------------- zarr-python v3: other codec shapes


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _v3_codec_cases() -> dict[str, Any]:
    from zarr.codecs import CastValue, ScaleOffset, TransposeCodec
    from zarr.codecs import numcodecs as znc

    clamp = {"rounding": "nearest-even", "out_of_range": "clamp"}
    return {
        "fixedscaleoffset-astype": ("float64", {"filters": [znc.FixedScaleOffset(offset=1, scale=10, dtype="<f8",
                                                                                 astype="<i2")]}, None),
        "astype": ("float64", {"filters": [znc.AsType(encode_dtype="<f4", decode_dtype="<f8")]}, None),
        "transpose-delta": ("int32", {"filters": [TransposeCodec(order=(2, 0, 1)), znc.Delta(dtype="<i4")]}, None),
        "transpose-bitround-transpose": ("float32", {"filters": [TransposeCodec(order=(1, 0, 2)),
                                                                 znc.BitRound(keepbits=6),
                                                                 TransposeCodec(order=(2, 1, 0))]}, None),
        "transpose-fso-big-endian": ("float64", {"filters": [TransposeCodec(order=(2, 1, 0)),
                                                             znc.FixedScaleOffset(offset=0, scale=100, dtype="<f8",
                                                                                  astype="<i4")],
                                                 "serializer": zarr.codecs.BytesCodec(endian="big")}, None),
        "cast_value": ("float32", {"filters": [CastValue(data_type="uint8", **clamp)]}, "cast_value_rs"),
        "scale_offset+cast_value": ("float64", {"filters": [ScaleOffset(offset=2, scale=4),
                                                            CastValue(data_type="int16", **clamp)]}, "cast_value_rs"),
        "pcodec": ("float64", {"serializer": znc.PCodec(), "compressors": None}, "pcodec"),
        "transpose-pcodec": ("int64", {"filters": [TransposeCodec(order=(1, 0, 2))], "serializer": znc.PCodec()},
                             "pcodec"),
        "zfpy": ("float64", {"serializer": znc.ZFPY(mode=4)}, "zfpy"),
        "datetime64": ("datetime64[ms]", {}, None),
        "timedelta64": ("timedelta64[s]", {"compressors": [znc.Zlib()]}, None),
        "numcodecs-lz4-bz2-lzma": ("uint16", {"compressors": [znc.LZ4(), znc.BZ2(), znc.LZMA()]}, None),
        "numcodecs-shuffle-zstd": ("uint32", {"compressors": [znc.Shuffle(), znc.Zstd()]}, None),
    }


@pytest.mark.parametrize("case", list(_v3_codec_cases()))
def test_zarr_v3_codec_shapes(tmp_path: Path, case: str) -> None:
    """dtype-changing array codecs, transposes mixed with value codecs, other array→bytes codecs, time types."""
    dtype, kwargs, needs = _v3_codec_cases()[case]
    if needs and not _has(needs):
        pytest.skip(f"{needs} is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(str(tmp_path / "a"), shape=SHAPE, chunks=CHUNKS, dtype=dtype, **kwargs)
        data = _data(dtype, seed=19)
        if np.dtype(dtype).kind == "f" and "cast" in case:
            data = np.nan_to_num(data) % 250
        arr[:30] = data[:30]
    assert check_against_zarr(tmp_path / "a", seed=20) == N_REGIONS


# --------------------------------------------------------------------------- xarray

xr = None
try:
    import xarray as xr
except ImportError:  # pragma: no cover
    pass

needs_xarray = pytest.mark.skipif(xr is None, reason="xarray is not installed (pip install gpuzarr[test])")


@needs_xarray
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_to_zarr(tmp_path: Path, zarr_format: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(16)
    temp = _data("float32", shape=(24, 30, 20), seed=17)
    ds = xr.Dataset(
        {
            "temperature": (("time", "y", "x"), temp),
            "counts": (("time", "y", "x"), rng.integers(0, 500, (24, 30, 20)).astype("int16")),
            "pressure": (("time", "y", "x"), (rng.random((24, 30, 20)) * 1000).astype("float64")),
        },
        coords={"time": pd.date_range("2000-01-01", periods=24, freq="6h"), "y": np.arange(30.0),
                "x": np.arange(20.0)},
    )
    encoding = {"temperature": {"chunks": (5, 16, 7)}, "counts": {"chunks": (8, 10, 10)},
                "pressure": {"chunks": (6, 30, 20), "scale_factor": 0.1, "add_offset": 500.0, "dtype": "int16",
                             "_FillValue": -32768}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(tmp_path / "ds.zarr"), zarr_format=zarr_format, encoding=encoding, consolidated=False)
    group = gpuzarr.open_group(str(tmp_path / "ds.zarr"))
    for name in ("temperature", "counts", "pressure", "time", "x"):
        assert name in group
        assert check_against_zarr(tmp_path / "ds.zarr", array_path=name, seed=18) == N_REGIONS


# --------------------------------------------------------------------------- numcodecs golden fixtures


def _fixture_dir() -> Path | None:
    """numcodecs' ``fixture/`` directory: $GPUZARR_NUMCODECS_FIXTURES, or beside an unpacked sdist."""
    env = os.environ.get("GPUZARR_NUMCODECS_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates += [Path(numcodecs.__file__).parent.parent / "fixture", Path.home() / "numcodecs" / "fixture"]
    for c in candidates:
        if (c / "zstd").is_dir() or (c / "blosc").is_dir():
            return c
    return None


FIXTURES = _fixture_dir()


#: fixture directories of codecs whose decode is exact (lossless) and numeric
GOLDEN_CODECS = ("blosc", "zstd", "gzip", "zlib", "lz4", "bz2", "lzma", "delta", "shuffle")


@pytest.mark.skipif(FIXTURES is None, reason="numcodecs' golden fixtures (fixture/ of its sdist or repository) are "
                    "not on this machine; set GPUZARR_NUMCODECS_FIXTURES to that directory")
@pytest.mark.parametrize("codec_id", GOLDEN_CODECS)
def test_numcodecs_golden_fixtures(codec_id: str) -> None:
    """Every encoded fixture decodes, through gpuzarr's bounded decode step for that codec, to the fixture's bytes."""
    import json

    from gpuzarr.codecs.chain import NumcodecStep, _numcodec_step

    assert FIXTURES is not None
    root = FIXTURES / codec_id
    if not root.is_dir():
        pytest.skip(f"no {codec_id} fixtures in {FIXTURES}")
    checked = refused = 0
    # fixture/<codec>/[<dtype>/]array.NN.npy and codec.MM/{config.json, encoded.NN.dat}
    for codec_dir in sorted(p.parent for p in root.rglob("config.json") if p.parent.name.startswith("codec.")):
        config = json.loads((codec_dir / "config.json").read_text())
        try:
            codec = numcodecs.get_codec(dict(config))
        except (ValueError, TypeError, KeyError) as exc:  # a codec option this numcodecs no longer has
            warnings.warn(f"{codec_dir}: {exc}", stacklevel=1)
            continue
        for enc in sorted(codec_dir.glob("encoded.*.dat")):
            array_file = codec_dir.parent / f"array.{enc.name.split('.')[1]}.npy"
            if not array_file.exists():
                continue
            arr = np.load(array_file, allow_pickle=False)
            want = arr.reshape(-1, order="A").view(np.uint8)  # numcodecs encodes the buffer in memory order
            if codec_id == "delta" and np.dtype(codec.dtype) != arr.dtype:
                continue
            make = _numcodec_step(codec)[0] if codec_id not in ("delta", "shuffle") else (
                lambda cap, exact, c=codec: NumcodecStep(c, cap=cap, exact=exact))
            encoded = enc.read_bytes()
            try:
                codec.decode(encoded)
            except (RuntimeError, ValueError):  # numcodecs cannot decode it either (e.g. Blosc's snappy)
                with pytest.raises((RuntimeError, ValueError)):
                    make(want.size, True).decode(encoded)
                refused += 1
                continue
            got = make(want.size, True).decode(encoded)
            assert bytes(memoryview(got).cast("B")) == want.tobytes(), f"{enc} ({config})"
            checked += 1
    assert checked, f"{root}: no fixture was checked"
