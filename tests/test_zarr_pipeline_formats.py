"""gpuzarr.GpuzarrCodecPipeline on dtype-changing filters, Zarr v2 arrays and every zarr store.

The oracle is zarr's ``BatchedCodecPipeline`` reading the same store. Hypothesis draws
v3 arrays whose array→array codecs change the data type or shape (``FixedScaleOffset``
with ``astype``, ``AsType``, ``Delta`` with ``astype``, ``PackBits``, ``scale_offset`` +
``cast_value``, mixed with transposes) and Zarr v2 arrays (Blosc, Zstd, GZip or no
compressor, numcodecs filters, ``order`` C or F, ``.`` or ``/`` chunk separators, fill
values NaN, None or a number); every read through the plug-in must equal zarr's and
must go through gpuzarr (its counters), never its fallback. The store tests read a
fixed set of v2 and v3 arrays from LocalStore, MemoryStore, ZipStore, FsspecStore (local
and in-memory file systems, and s3 on moto), ObjectStore (obstore, local and in-memory)
and an Icechunk session.
"""

from __future__ import annotations

import warnings

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from s3_server import s3_server  # noqa: F401 - fixture
from test_zarr_pipeline import DEFAULT, PLUGIN, _apply, selections
from zarr.storage import LocalStore, MemoryStore, ZipStore

import gpuzarr
from gpuzarr.integrations.zarr_pipeline import read_stats


def _through_both(store, select, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``select(array)`` read by zarr's default pipeline and by gpuzarr's (which must not fall back)."""
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        expected = select(zarr.open_array(store=store, path=path, mode="r"))
    before = read_stats()
    with warnings.catch_warnings(), zarr.config.set({"codec_pipeline.path": PLUGIN}):
        warnings.simplefilter("error", gpuzarr.PipelineFallbackWarning)
        got = select(zarr.open_array(store=store, path=path, mode="r"))
    after = read_stats()
    if np.asarray(expected).size:  # zarr calls no pipeline for an empty selection
        assert after["reads"] > before["reads"], "the read did not go through gpuzarr"
    assert after["fallback_reads"] == before["fallback_reads"]
    return np.asarray(got), np.asarray(expected)


def _assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # NaN equals NaN here


# --------------------------------------------------------------------------- dtype-changing v3 filters
def _v3_filter_cases(ndim: int, perm: tuple[int, ...]) -> dict[str, tuple[str, list, str]]:
    """name → (array dtype, filters, how data is drawn); every filter list changes the dtype or shape."""
    from zarr.codecs import CastValue, ScaleOffset, TransposeCodec
    from zarr.codecs import numcodecs as znc

    clamp = {"rounding": "nearest-even", "out_of_range": "clamp"}
    return {
        "fso-astype-i2": ("float64", [znc.FixedScaleOffset(offset=1, scale=10, dtype="<f8", astype="<i2")], "f"),
        "fso-astype-u1": ("float32", [znc.FixedScaleOffset(offset=-5, scale=2, dtype="<f4", astype="u1")], "pos"),
        "astype-f4": ("float64", [znc.AsType(encode_dtype="<f4", decode_dtype="<f8")], "f"),
        "delta-astype": ("int32", [znc.Delta(dtype="<i4", astype="<i2")], "i"),
        "packbits": ("bool", [znc.PackBits()], "b"),
        "cast_value": ("float32", [CastValue(data_type="uint8", **clamp)], "pos"),
        "scale_offset+cast_value": ("float64", [ScaleOffset(offset=2, scale=4), CastValue(data_type="int16", **clamp)],
                                    "f"),
        "transpose+fso": ("float64", [TransposeCodec(order=perm),
                                      znc.FixedScaleOffset(offset=0, scale=100, dtype="<f8", astype="<i4")], "f"),
        "quantize+astype": ("float64", [znc.Quantize(digits=3, dtype="<f8"),
                                        znc.AsType(encode_dtype="<f4", decode_dtype="<f8")], "f"),
    }


V3_CASES = list(_v3_filter_cases(2, (1, 0)))


def _data(kind: str, dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind == "b":
        return rng.random(shape) > 0.5
    if kind == "i":
        return rng.integers(-3000, 3000, shape).astype(dtype)
    if kind == "pos":
        return (rng.random(shape) * 100).astype(dtype)
    return (rng.normal(size=shape) * 50).astype(dtype)


V3_COMPRESSORS = {
    "none": None,
    "blosc": zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle"),
    "zstd": zarr.codecs.ZstdCodec(level=1),
    "gzip": zarr.codecs.GzipCodec(level=1),
}


@st.composite
def filtered_v3_arrays(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 30)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, s)) for s in shape)
    shards = tuple(c * draw(st.integers(1, 3)) for c in chunks) if draw(st.booleans()) else None
    perm = tuple(draw(st.permutations(range(ndim))))
    case = draw(st.sampled_from(V3_CASES))
    dtype, filters, kind = _v3_filter_cases(ndim, perm)[case]
    return {"shape": shape, "chunks": chunks, "shards": shards, "case": case, "dtype": dtype, "filters": filters,
            "kind": kind, "comp": draw(st.sampled_from(sorted(V3_COMPRESSORS))),
            "order": draw(st.sampled_from(["C", "F"])), "partial": draw(st.booleans()),
            "seed": draw(st.integers(0, 2**31))}


@settings(max_examples=80, deadline=None)
@given(spec=filtered_v3_arrays(), data=st.data())
def test_dtype_changing_filters_equal_zarr(spec, data):
    store = MemoryStore()
    _make_filtered(spec, store)
    kind, sel = data.draw(selections(spec["shape"]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="numcodecs")
        got, expected = _through_both(store, _apply(kind, sel))
    _assert_same(got, expected)


def _make_filtered(spec, store) -> None:
    """Write the array ``spec`` (drawn by :func:`filtered_v3_arrays`) into ``store`` with zarr's default pipeline."""
    rng = np.random.default_rng(spec["seed"])
    with warnings.catch_warnings(), zarr.config.set({"codec_pipeline.path": DEFAULT, "array.order": spec["order"]}):
        warnings.simplefilter("ignore")  # numcodecs.zarr3's "not part of the Zarr v3 spec" warnings
        arr = zarr.create_array(store=store, shape=spec["shape"], chunks=spec["chunks"], shards=spec["shards"],
                                dtype=spec["dtype"], filters=spec["filters"],
                                compressors=V3_COMPRESSORS[spec["comp"]])
        full = _data(spec["kind"], spec["dtype"], spec["shape"], rng)
        if spec["partial"]:  # leave the last chunks unwritten: they read as the fill value
            region = tuple(slice(0, max(1, s // 2)) for s in spec["shape"])
            arr[region] = full[region]
        else:
            arr[...] = full


# --------------------------------------------------------------------------- Zarr v2
V2_COMPRESSORS = {
    "none": None,
    "blosc-lz4": numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE, blocksize=256),
    "blosc-zstd-bitshuffle": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE),
    "zstd": numcodecs.Zstd(level=1),
    "gzip": numcodecs.GZip(level=1),
}


def _v2_filters(dtype: str) -> dict[str, list]:
    """name → numcodecs filters valid for ``dtype`` (some change the stored data type)."""
    dt = np.dtype(dtype)
    out: dict[str, list] = {"none": []}
    if dt.kind == "b":
        out["packbits"] = [numcodecs.PackBits()]
    elif dt.kind == "f":
        out["fso-astype"] = [numcodecs.FixedScaleOffset(offset=0, scale=100, dtype=dt.str, astype="<i4")]
        out["astype-f4"] = [numcodecs.AsType(encode_dtype="<f4", decode_dtype=dt.str)]
        out["quantize"] = [numcodecs.Quantize(digits=3, dtype=dt.str)]
    else:
        out["delta"] = [numcodecs.Delta(dtype=dt.str)]
        out["shuffle+delta"] = [numcodecs.Delta(dtype=dt.str), numcodecs.Shuffle(elementsize=dt.itemsize)]
    return out


@st.composite
def v2_arrays(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 30)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, s)) for s in shape)
    dtype = draw(st.sampled_from(["uint8", "<i2", ">i4", "<u8", "<f4", ">f8", "bool"]))
    fills: list = [None, 0] if dtype == "bool" else [None, 3]
    if np.dtype(dtype).kind == "f":
        fills.append(float("nan"))
    return {"shape": shape, "chunks": chunks, "dtype": dtype,
            "comp": draw(st.sampled_from(sorted(V2_COMPRESSORS))),
            "filters": draw(st.sampled_from(sorted(_v2_filters(dtype)))),
            "order": draw(st.sampled_from(["C", "F"])), "sep": draw(st.sampled_from([".", "/"])),
            "fill": draw(st.sampled_from(fills)), "partial": draw(st.booleans()),
            "seed": draw(st.integers(0, 2**31))}


def _make_v2(spec, store, path: str | None = None):
    rng = np.random.default_rng(spec["seed"])
    dtype = np.dtype(spec["dtype"])
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        arr = zarr.create_array(store=store, name=path, shape=spec["shape"], chunks=spec["chunks"], dtype=dtype,
                                compressors=V2_COMPRESSORS[spec["comp"]],
                                filters=_v2_filters(spec["dtype"])[spec["filters"]] or None,
                                fill_value=spec["fill"], order=spec["order"], zarr_format=2,
                                chunk_key_encoding={"name": "v2", "separator": spec["sep"]})
        if dtype.kind == "b":
            data = rng.random(spec["shape"]) > 0.5
        elif dtype.kind == "f":
            data = (rng.normal(size=spec["shape"]) * 50).astype(dtype)
        else:
            data = rng.integers(0, 120, spec["shape"]).astype(dtype)
        if spec["partial"]:
            region = tuple(slice(0, max(1, s // 2)) for s in spec["shape"])
            arr[region] = data[region]
        else:
            arr[...] = data
    return arr


@settings(max_examples=100, deadline=None)
@given(spec=v2_arrays(), data=st.data())
def test_v2_arrays_equal_zarr(spec, data):
    store = MemoryStore()
    _make_v2(spec, store)
    kind, sel = data.draw(selections(spec["shape"]))
    got, expected = _through_both(store, _apply(kind, sel))
    _assert_same(got, expected)


def test_v2_separators_reach_their_keys():
    """The chunk keys really differ between the two separators, and both read equal to zarr."""
    for sep in (".", "/"):
        store = MemoryStore()
        spec = {"shape": (12, 10), "chunks": (5, 4), "dtype": "<f8", "comp": "blosc-lz4", "filters": "none",
                "order": "F", "sep": sep, "fill": float("nan"), "partial": True, "seed": 3}
        _make_v2(spec, store)
        keys = set(store._store_dict)
        assert ("0.0" in keys) == (sep == "."), keys
        assert ("0/0" in keys) == (sep == "/"), keys
        got, expected = _through_both(store, lambda a: a[:])
        assert np.isnan(expected[-1, -1])  # an unwritten chunk: the NaN fill
        _assert_same(got, expected)


# --------------------------------------------------------------------------- stores
V2_STORE_ARRAYS = {
    "v2-blosc-F-slash-nan": {"shape": (37, 29), "chunks": (8, 6), "dtype": "<f8", "comp": "blosc-zstd-bitshuffle",
                             "filters": "none", "order": "F", "sep": "/", "fill": float("nan"), "partial": True,
                             "seed": 1},
    "v2-zstd-delta-dot-none": {"shape": (37, 29), "chunks": (10, 7), "dtype": ">i4", "comp": "zstd",
                               "filters": "shuffle+delta", "order": "C", "sep": ".", "fill": None, "partial": True,
                               "seed": 2},
    "v2-gzip-fso": {"shape": (37, 29), "chunks": (9, 9), "dtype": ">f8", "comp": "gzip", "filters": "fso-astype",
                    "order": "C", "sep": ".", "fill": 3, "partial": False, "seed": 3},
    "v2-none-packbits-F": {"shape": (37, 29), "chunks": (16, 5), "dtype": "bool", "comp": "none",
                           "filters": "packbits", "order": "F", "sep": "/", "fill": None, "partial": True, "seed": 4},
}


def _write_store_arrays(store) -> None:
    for name, spec in V2_STORE_ARRAYS.items():
        _make_v2(spec, store, path=name)
    with zarr.config.set({"codec_pipeline.path": DEFAULT}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from zarr.codecs import numcodecs as znc

        v3 = zarr.create_array(store=store, name="v3-sharded-fso", shape=(37, 29), chunks=(4, 5), shards=(8, 10),
                               dtype="f8", fill_value=np.nan, compressors=zarr.codecs.ZstdCodec(),
                               filters=[znc.FixedScaleOffset(offset=0, scale=10, dtype="<f8", astype="<i2")])
        v3[0:30, 0:20] = np.random.default_rng(5).normal(size=(30, 20)) * 30


STORE_SELECTIONS = {
    "all": lambda a: a[...],
    "crop": lambda a: a[3:31, 2:27],
    "row": lambda a: a[17],
    "strided": lambda a: a[1::3, ::2],
    "oindex": lambda a: a.oindex[[0, 5, 36], 1:20],
    "vindex": lambda a: a.vindex[[0, 36, 12], [28, 3, 12]],
}


def _check_all(store) -> None:
    names = [*V2_STORE_ARRAYS, "v3-sharded-fso"]
    for name in names:
        for sname, select in STORE_SELECTIONS.items():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module="numcodecs")
                got, expected = _through_both(store, select, path=name)
            try:
                _assert_same(got, expected)
            except AssertionError as exc:
                raise AssertionError(f"{name} / {sname}: {exc}") from exc


def _fsspec_store(kind: str, tmp_path):
    pytest.importorskip("fsspec")
    from zarr.storage import FsspecStore

    if kind == "fsspec-local":
        return FsspecStore.from_url(f"file://{tmp_path}/f.zarr", storage_options={"auto_mkdir": True})
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/gpuzarr-{tmp_path.name}"
    return FsspecStore.from_url(f"memory://{root}"), (fs, root)


@pytest.mark.parametrize("kind", ["local", "memory", "zip", "fsspec-local", "fsspec-memory", "obstore-local",
                                  "obstore-memory"])
def test_stores(tmp_path, kind):
    """v2 and v3 arrays (filters, order F, both separators, NaN/None fills) on each store equal zarr's reads."""
    cleanup = None
    if kind == "local":
        store = LocalStore(tmp_path / "a.zarr")
    elif kind == "memory":
        store = MemoryStore()
    elif kind == "zip":
        store = ZipStore(tmp_path / "a.zip", mode="w")
    elif kind == "fsspec-local":
        store = _fsspec_store(kind, tmp_path)
    elif kind == "fsspec-memory":
        store, cleanup = _fsspec_store(kind, tmp_path)
    else:
        obstore = pytest.importorskip("obstore")
        from zarr.storage import ObjectStore

        raw = (obstore.store.LocalStore(str(tmp_path), mkdir=True) if kind == "obstore-local"
               else obstore.store.MemoryStore())
        store = ObjectStore(raw)
    try:
        _write_store_arrays(store)
        if kind == "zip":
            store.close()
            store = ZipStore(tmp_path / "a.zip", mode="r")
        _check_all(store)
    finally:
        if kind == "zip":
            store.close()
        if cleanup is not None:
            fs, root = cleanup
            fs.rm(root, recursive=True)


def test_fsspec_s3_store(s3_server):  # noqa: F811
    """FsspecStore on s3 (moto on loopback): the v2 and v3 arrays read equal to zarr's."""
    pytest.importorskip("s3fs")
    from zarr.storage import FsspecStore

    bucket = s3_server.create_bucket()
    store = FsspecStore.from_url(f"s3://{bucket}/v2.zarr", storage_options=s3_server.storage_options())
    _write_store_arrays(store)
    _check_all(store)


def test_icechunk_session_v3_filters(tmp_path):
    """An Icechunk session (Zarr v3 only) holding a dtype-changing, sharded array reads equal to zarr's."""
    icechunk = pytest.importorskip("icechunk")
    from zarr.codecs import numcodecs as znc

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    with zarr.config.set({"codec_pipeline.path": DEFAULT}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = zarr.create_array(store=session.store, name="a", shape=(37, 29), chunks=(4, 5), shards=(8, 10),
                              dtype="f8", fill_value=np.nan, compressors=zarr.codecs.BloscCodec(cname="lz4"),
                              filters=[znc.FixedScaleOffset(offset=0, scale=10, dtype="<f8", astype="<i2")])
        a[0:30, 0:20] = np.random.default_rng(5).normal(size=(30, 20)) * 30
    snapshot = session.commit("data")
    store = repo.readonly_session(snapshot_id=snapshot).store
    for sname, select in STORE_SELECTIONS.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="numcodecs")
            got, expected = _through_both(store, select, path="a")
        try:
            _assert_same(got, expected)
        except AssertionError as exc:
            raise AssertionError(f"icechunk / {sname}: {exc}") from exc


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("dtype", ["datetime64[ms]", "timedelta64[s]", "complex64", ">c16"])
def test_time_and_complex_types(zarr_format, dtype):
    store = MemoryStore()
    data = (np.arange(400).reshape(20, 20) * 7).astype(dtype)
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        arr = zarr.create_array(store=store, shape=data.shape, chunks=(7, 5), dtype=dtype, zarr_format=zarr_format)
        arr[:10] = data[:10]  # the rest reads as the fill value
    for select in (lambda a: a[...], lambda a: a[2:13, 1:9], lambda a: a.vindex[[0, 19], [3, 4]]):
        _assert_same(*_through_both(store, select))
