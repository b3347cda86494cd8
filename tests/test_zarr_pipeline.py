"""gpuzarr.GpuzarrCodecPipeline: zarr-python reads through gpuzarr equal zarr's own pipeline.

The oracle is zarr's ``BatchedCodecPipeline`` on the same store: hypothesis draws arrays
(shape, chunks, shards, codecs, dtype, fill value, written region) and selections of every
indexing mode zarr has, and every read through the plug-in must equal it. The plug-in's
own counters prove the reads went through gpuzarr rather than its fallback.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from s3_server import s3_server  # noqa: F401 - fixture
from zarr.storage import LocalStore, MemoryStore, ZipStore

import gpuzarr
from gpuzarr.engines import compiled
from gpuzarr.integrations import zarr_pipeline as zp
from gpuzarr.integrations.zarr_pipeline import read_stats

PLUGIN = "gpuzarr.GpuzarrCodecPipeline"
DEFAULT = "zarr.core.codec_pipeline.BatchedCodecPipeline"


def _read(store, selector, path: str, *, pipeline: str):
    with zarr.config.set({"codec_pipeline.path": pipeline}):
        arr = zarr.open_array(store=store, mode="r")
        return selector(arr)


COMPRESSORS = {
    "none": None,
    "blosc-lz4-shuffle": zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle", blocksize=256),
    "blosc-zstd-bitshuffle": zarr.codecs.BloscCodec(cname="zstd", shuffle="bitshuffle"),
    "zstd": zarr.codecs.ZstdCodec(level=1),
    "gzip+crc32c": [zarr.codecs.GzipCodec(level=1), zarr.codecs.Crc32cCodec()],
}


@st.composite
def arrays(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 40)) for _ in range(ndim))
    inner = tuple(draw(st.integers(1, max(1, s))) for s in shape)
    sharded = draw(st.booleans())
    shards = tuple(i * draw(st.integers(1, 3)) for i in inner) if sharded else None
    dtype = draw(st.sampled_from(["uint8", "int16", "<u2", ">i4", "float32", "float64", "bool"]))
    comp = draw(st.sampled_from(sorted(COMPRESSORS)))
    order = draw(st.sampled_from(["C", "F"]))
    lo = tuple(draw(st.integers(0, s - 1)) for s in shape)
    hi = tuple(draw(st.integers(a + 1, s)) for a, s in zip(lo, shape, strict=True))
    seed = draw(st.integers(0, 2**31))
    return {"shape": shape, "chunks": inner, "shards": shards, "dtype": dtype, "comp": comp, "order": order,
                "written": tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), "seed": seed}


def _make(spec, store):
    rng = np.random.default_rng(spec["seed"])
    dtype = np.dtype(spec["dtype"])
    fill = np.zeros((), dtype=dtype)[()] if dtype.kind == "b" else np.asarray(7, dtype=dtype)[()]
    with zarr.config.set({"codec_pipeline.path": DEFAULT, "array.order": spec["order"]}):
        arr = zarr.create_array(store=store, shape=spec["shape"], chunks=spec["chunks"], shards=spec["shards"],
                                dtype=dtype, compressors=COMPRESSORS[spec["comp"]], fill_value=fill)
        region = spec["written"]
        shape = tuple(s.stop - s.start for s in region)
        if dtype.kind == "b":
            data = rng.random(shape) > 0.5
        elif dtype.kind == "f":
            data = rng.normal(size=shape).astype(dtype)
        else:
            data = rng.integers(0, 100, shape).astype(dtype)
        arr[region] = data
    return arr


@st.composite
def selections(draw, shape):
    kind = draw(st.sampled_from(["basic", "strided", "int", "orthogonal", "vindex", "mask"]))
    sel = []
    if kind in ("basic", "int", "strided"):
        for s in shape:
            if kind == "int" and draw(st.booleans()):
                sel.append(draw(st.integers(-s, s - 1)))
                continue
            a = draw(st.integers(0, s - 1))
            b = draw(st.integers(a + 1, s))
            sel.append(slice(a, b, draw(st.integers(1, 4)) if kind == "strided" else None))
        return kind, tuple(sel)
    if kind == "orthogonal":
        return kind, tuple(np.asarray(draw(st.lists(st.integers(0, s - 1), min_size=1, max_size=5)))
                           if draw(st.booleans()) else slice(None) for s in shape)
    if kind == "vindex":
        n = draw(st.integers(1, 6))
        return kind, tuple(np.asarray(draw(st.lists(st.integers(0, s - 1), min_size=n, max_size=n))) for s in shape)
    seed = draw(st.integers(0, 2**31))
    return kind, np.random.default_rng(seed).random(shape) > 0.6


def _apply(kind, sel):
    if kind == "orthogonal":
        return lambda a: a.oindex[sel]
    if kind in ("vindex", "mask"):
        return lambda a: a.vindex[sel]
    return lambda a: a[sel]


@settings(max_examples=120)
@given(spec=arrays(), data=st.data())
def test_reads_equal_zarr(spec, data):
    store = MemoryStore()
    _make(spec, store)
    kind, sel = data.draw(selections(spec["shape"]))
    select = _apply(kind, sel)
    expected = _read(store, select, "", pipeline=DEFAULT)
    before = read_stats()
    inline = data.draw(st.sampled_from([0, 1 << 20]))  # 0: every read through the engine's thread pool
    with warnings.catch_warnings(), zarr.config.set({"codec_pipeline.inline_max_bytes": inline}):
        warnings.simplefilter("error", gpuzarr.PipelineFallbackWarning)
        got = _read(store, select, "", pipeline=PLUGIN)
    after = read_stats()
    if np.asarray(expected).size:  # zarr calls no pipeline for an empty selection
        assert after["reads"] > before["reads"], "the read did not go through gpuzarr"
    assert after["fallback_reads"] == before["fallback_reads"]
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, expected)


@contextlib.contextmanager
def _loop_route_taken():
    """A list that gets an entry each time a read goes from zarr's event loop to the lane (``_Job.decode_async``).

    Patched by hand, not with ``monkeypatch``: hypothesis runs many examples in one test call.
    """
    taken = []
    original = zp._Job.decode_async

    async def spy(self):
        taken.append(1)
        return await original(self)

    zp._Job.decode_async = spy
    try:
        yield taken
    finally:
        zp._Job.decode_async = original


@settings(max_examples=60, deadline=None)
@given(spec=arrays(), data=st.data())
def test_local_store_reads_from_the_event_loop_equal_zarr(tmp_path_factory, spec, data):
    """LocalStore reads the compiled lane takes from zarr's event loop (no worker thread between): equal to zarr's
    default pipeline for every selection, and the loop route ran for whole-box unsharded reads."""
    compiled.ready(wait=True)
    path = str(tmp_path_factory.mktemp("loop") / "a.zarr")
    _make(spec, LocalStore(path))
    kind, sel = data.draw(selections(spec["shape"]))
    select = _apply(kind, sel)
    expected = _read(LocalStore(path), select, "", pipeline=DEFAULT)
    with _loop_route_taken() as taken, warnings.catch_warnings(), \
            zarr.config.set({"codec_pipeline.inline_max_bytes": 0}), gpuzarr.config.set({"cpu.compiled": "eager"}):
        warnings.simplefilter("error", gpuzarr.PipelineFallbackWarning)
        got = _read(LocalStore(path), select, "", pipeline=PLUGIN)
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    if kind == "basic" and spec["shards"] is None and np.asarray(expected).size:
        assert taken, "the read did not go from the event loop to the lane"


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "lz4-in-part"])
def test_reads_from_the_event_loop_with_damaged_missing_or_left_chunks(tmp_path, damage):
    """From the event loop: a damaged chunk raises CorruptChunkError naming it, a missing chunk reads as fill, a
    chunk the lane leaves (LZ4 inside Blosc, read in part) is decoded by the Python path on a worker thread."""
    compiled.ready(wait=True)
    path = tmp_path / "a.zarr"
    ref = (np.arange(96 * 96, dtype="u2").reshape(96, 96) * 7) % 1000
    comp = (zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle", blocksize=1024) if damage == "lz4-in-part"
            else zarr.codecs.BloscCodec(cname="zstd", shuffle="bitshuffle", blocksize=1024))
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        zarr.create_array(store=str(path), shape=ref.shape, chunks=(48, 48), dtype="u2", compressors=comp,
                          fill_value=9)[:] = ref
    chunk = path / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncate":
        raw = raw[:-5]
    chunk.write_bytes(bytes(raw))
    if damage == "remove":
        chunk.unlink()
    region = (slice(30, 70), slice(10, 90))
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        try:
            want = zarr.open_array(str(path), mode="r")[region]
        except Exception as exc:  # noqa: BLE001 - zarr's own error for the damage
            want = exc
    with _loop_route_taken() as taken, gpuzarr.config.set({"cpu.compiled": "eager"}), \
            zarr.config.set({"codec_pipeline.path": PLUGIN, "codec_pipeline.inline_max_bytes": 0}):
        try:
            got = zarr.open_array(str(path), mode="r")[region]
        except gpuzarr.CorruptChunkError as exc:
            got = exc
    assert taken
    if isinstance(want, Exception) or damage in ("flip", "truncate"):
        assert isinstance(got, gpuzarr.CorruptChunkError) and "c/1/0" in str(got), (want, got)
    else:
        np.testing.assert_array_equal(got, want)
        if damage == "remove":
            assert (got[18:, :38] == 9).all()  # chunk (1, 0): rows 48-96, columns 0-48


def test_concurrent_reads_from_the_event_loop(tmp_path):
    """Reads from many threads at once, all through zarr's one event loop to the engine's pool: every result right,
    none waits forever (the loop never waits on a pool thread that waits on the pool)."""
    import concurrent.futures

    compiled.ready(wait=True)
    path = str(tmp_path / "a.zarr")
    ref = np.random.default_rng(1).integers(0, 1000, (8, 200, 300)).astype("u2")
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        zarr.create_array(store=path, shape=ref.shape, chunks=(1, 100, 100), dtype="u2",
                          compressors=zarr.codecs.BloscCodec(cname="zstd", shuffle="shuffle"))[:] = ref
    rng = np.random.default_rng(2)
    regions = [(int(t), slice(int(y), int(y) + 90), slice(int(x), int(x) + 150))
               for t, y, x in zip(rng.integers(0, 8, 64), rng.integers(0, 110, 64), rng.integers(0, 150, 64),
                                  strict=True)]
    with zarr.config.set({"codec_pipeline.path": PLUGIN, "codec_pipeline.inline_max_bytes": 0}), \
            gpuzarr.config.set({"cpu.compiled": "eager"}):
        arr = zarr.open_array(path, mode="r")
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda r: arr[r], regions, timeout=120))
    for region, got in zip(regions, results, strict=True):
        np.testing.assert_array_equal(got, ref[region])


def test_pipeline_is_registered_and_selected():
    with zarr.config.set({"codec_pipeline.path": PLUGIN}):
        arr = zarr.create_array(store=MemoryStore(), shape=(4,), chunks=(2,), dtype="i4")
        assert isinstance(arr._async_array.codec_pipeline, gpuzarr.GpuzarrCodecPipeline)
    from importlib.metadata import entry_points

    names = {e.value for e in entry_points(group="zarr.codec_pipeline")}
    assert "gpuzarr:GpuzarrCodecPipeline" in names


def test_missing_chunks_and_read_missing_chunks_false():
    store = MemoryStore()
    with zarr.config.set({"codec_pipeline.path": PLUGIN}):
        arr = zarr.create_array(store=store, shape=(20, 20), chunks=(5, 5), shards=(10, 10), dtype="i2",
                                fill_value=-5, config={"read_missing_chunks": False})
        arr[0:5, 0:5] = 1
        # shard (0, 0) exists: its unwritten inner chunks fill; shard (1, 1) is missing: an error
        np.testing.assert_array_equal(arr[0:10, 0:10], np.where(np.add.outer(np.arange(10), 0 * np.arange(10)) < 5,
                                                                 np.where(np.arange(10) < 5, 1, -5)[None, :], -5))
        with pytest.raises(zarr.errors.ChunkNotFoundError):
            arr[:]


def test_pickles_and_keeps_reading():
    store = MemoryStore()
    with zarr.config.set({"codec_pipeline.path": PLUGIN}):
        arr = zarr.create_array(store=store, shape=(30, 30), chunks=(10, 10), dtype="f4")
        arr[:] = np.arange(900, dtype="f4").reshape(30, 30)
        pipeline = arr._async_array.codec_pipeline
        clone = pickle.loads(pickle.dumps(pipeline))
        assert clone == pipeline and list(clone) == list(pipeline)
        arr2 = pickle.loads(pickle.dumps(arr))
        np.testing.assert_array_equal(arr2[3:17, 5:29], np.arange(900, dtype="f4").reshape(30, 30)[3:17, 5:29])


def test_fallback_warns_once_per_reason_and_strict_raises():
    store = MemoryStore()
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        arr = zarr.create_array(store=store, shape=(6,), chunks=(3,), dtype="<U4", fill_value="")
        arr[:] = np.array(["a", "bb", "ccc", "d", "", "ff"])
    with zarr.config.set({"codec_pipeline.path": PLUGIN}):
        gpuzarr.integrations.zarr_pipeline._warned.clear()
        arr = zarr.open_array(store=store, mode="r")
        with pytest.warns(gpuzarr.PipelineFallbackWarning, match="not supported"):
            assert arr[:].tolist() == ["a", "bb", "ccc", "d", "", "ff"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert arr[1:3].tolist() == ["bb", "ccc"]  # same reason: no second warning
        with zarr.config.set({"codec_pipeline.strict": True}), pytest.raises(gpuzarr.PipelineUnsupportedError):
            arr[:]


def test_corrupt_chunk_names_the_key():
    store = MemoryStore()
    with zarr.config.set({"codec_pipeline.path": PLUGIN}):
        arr = zarr.create_array(store=store, shape=(8, 8), chunks=(4, 4), dtype="u2",
                                compressors=zarr.codecs.ZstdCodec())
        arr[:] = 3
        key = "c/1/0"
        raw = store._store_dict[key].to_bytes()
        store._store_dict[key] = type(store._store_dict[key]).from_bytes(raw[: len(raw) // 2])
        with pytest.raises(gpuzarr.CorruptChunkError, match="c/1/0"):
            arr[:]
        np.testing.assert_array_equal(arr[0:4, :], 3)  # other chunks still read


@pytest.mark.skipif(not compiled.available(), reason="numba is not installed (the 'fast' extra)")
@pytest.mark.parametrize("damage", ["none", "flip", "truncate", "remove"])
def test_local_store_shards_read_as_file_ranges_by_the_compiled_lane(tmp_path, monkeypatch, damage):
    """LocalStore shards: the lane reads inner chunks from the shard files; damage reads as zarr's default reads it."""
    path = tmp_path / "a.zarr"
    ref = (np.arange(64 * 48, dtype="u2").reshape(64, 48) * 7) % 1000
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        arr = zarr.create_array(store=str(path), shape=ref.shape, chunks=(8, 8), shards=(32, 24), dtype="u2",
                                compressors=(zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()), fill_value=9)
        arr[:] = ref
        arr[0:8, 0:8] = 9  # an inner chunk of fill values only: not written
    shard = path / "c" / "1" / "0"
    raw = bytearray(shard.read_bytes())
    if damage == "flip":
        raw[20] ^= 0xFF  # inside the shard's first inner chunk (its CRC32C fails)
    elif damage == "truncate":
        index = raw[-(12 * 16 + 4):]
        raw = raw[:30] + index  # the index now points past the end of the payload
    shard.write_bytes(bytes(raw))
    if damage == "remove":
        shard.unlink()
    taken = []
    original = zp._Job._shard_file_ranges
    monkeypatch.setattr(zp._Job, "_shard_file_ranges", lambda self, *a: taken.append(1) or original(self, *a))
    regions = [(slice(0, 64), slice(0, 48)), (slice(3, 19), slice(5, 30)), (slice(40, 60), slice(20, 44))]
    for region in regions:
        want = got = None
        with zarr.config.set({"codec_pipeline.path": DEFAULT}):
            try:
                want = zarr.open_array(str(path), mode="r")[region]
            except Exception as exc:  # noqa: BLE001 - zarr's own error for the damage
                want = exc
        with zarr.config.set({"codec_pipeline.path": PLUGIN}):
            try:
                got = zarr.open_array(str(path), mode="r")[region]
            except gpuzarr.CorruptChunkError as exc:
                got = exc
        if isinstance(want, Exception):
            assert isinstance(got, gpuzarr.CorruptChunkError) and "c/1/0" in str(got), (want, got)
        else:
            np.testing.assert_array_equal(got, want)
    assert taken, "the plug-in did not hand the shard files to the compiled lane"


@pytest.mark.parametrize("kind", ["local", "zip"])
def test_local_and_zip_stores(tmp_path, kind):
    ref = np.arange(64 * 48, dtype="u2").reshape(64, 48)
    if kind == "local":
        store = LocalStore(tmp_path / "a.zarr")
    else:
        store = ZipStore(tmp_path / "a.zip", mode="w")
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        arr = zarr.create_array(store=store, shape=ref.shape, chunks=(8, 8), shards=(32, 24), dtype="u2",
                                compressors=zarr.codecs.BloscCodec(cname="lz4"))
        arr[:] = ref
    if kind == "zip":
        store.close()
        store = ZipStore(tmp_path / "a.zip", mode="r")
    before = read_stats()
    got = _read(store, lambda a: (a[:], a[5:50, 7:40], a.oindex[[0, 63], :]), "", pipeline=PLUGIN)
    assert read_stats()["reads"] >= before["reads"] + 3
    np.testing.assert_array_equal(got[0], ref)
    np.testing.assert_array_equal(got[1], ref[5:50, 7:40])
    np.testing.assert_array_equal(got[2], ref[[0, 63], :])


def _write_reference(store) -> np.ndarray:
    ref = (np.arange(40 * 36, dtype="i4").reshape(40, 36) * 7) % 1000
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        a = zarr.create_array(store=store, name="a", shape=ref.shape, chunks=(5, 6), shards=(20, 18), dtype="i4",
                              compressors=zarr.codecs.ZstdCodec(), fill_value=-1)
        a[:] = ref
        a[30:40, 30:36] = -1  # partly empty shards
        b = zarr.create_array(store=store, name="b", shape=ref.shape, chunks=(8, 8), dtype="i4",
                              compressors=zarr.codecs.BloscCodec(cname="lz4"), fill_value=-1)
        b[0:24] = ref[0:24]  # chunks past row 24 never written
    expected = ref.copy()
    expected[30:40, 30:36] = -1
    return expected


def _check_store(store, expected: np.ndarray) -> None:
    before = read_stats()
    with zarr.config.set({"codec_pipeline.path": PLUGIN}), warnings.catch_warnings():
        warnings.simplefilter("error", gpuzarr.PipelineFallbackWarning)
        a = zarr.open_array(store=store, path="a", mode="r")
        b = zarr.open_array(store=store, path="b", mode="r")
        np.testing.assert_array_equal(a[:], expected)
        np.testing.assert_array_equal(a[3:37, 5:33], expected[3:37, 5:33])
        np.testing.assert_array_equal(a.oindex[[0, 21, 39], 2:30], expected[[0, 21, 39], 2:30])
        got_b = b[:]
    assert read_stats()["reads"] >= before["reads"] + 4
    ref_b = np.full(expected.shape, -1, dtype="i4")
    ref_b[0:24] = ((np.arange(40 * 36, dtype="i4").reshape(40, 36) * 7) % 1000)[0:24]
    np.testing.assert_array_equal(got_b, ref_b)


@pytest.mark.parametrize("kind", ["fsspec", "obstore"])
def test_s3_stores(s3_server, kind):  # noqa: F811
    """FsspecStore (s3fs) and ObjectStore (obstore) against moto on loopback: reads equal zarr's."""
    bucket = s3_server.create_bucket()
    if kind == "fsspec":
        from zarr.storage import FsspecStore

        store = FsspecStore.from_url(f"s3://{bucket}/p.zarr", storage_options=s3_server.storage_options())
    else:
        obstore = pytest.importorskip("obstore")
        from zarr.storage import ObjectStore

        s3 = obstore.store.S3Store(bucket, prefix="p.zarr", endpoint=s3_server.endpoint_url,
                                   access_key_id=s3_server.key, secret_access_key=s3_server.secret,
                                   region=s3_server.region, client_options={"allow_http": True})
        store = ObjectStore(s3)
    expected = _write_reference(store)
    _check_store(store, expected)


def test_icechunk_session(tmp_path):
    icechunk = pytest.importorskip("icechunk")
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    expected = _write_reference(session.store)
    snapshot = session.commit("data")
    _check_store(repo.readonly_session(snapshot_id=snapshot).store, expected)


def _child_read(path: str, queue) -> None:
    with zarr.config.set({"codec_pipeline.path": PLUGIN}):
        arr = zarr.open_array(path, mode="r")
        queue.put((arr[2:30, 1:40].tolist(), read_stats()["reads"]))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_after_reads(tmp_path):
    """A forked child (a DataLoader or multiprocessing worker) reads through the plug-in after the parent did."""
    import multiprocessing as mp

    ref = np.arange(32 * 48, dtype="u2").reshape(32, 48)
    path = str(tmp_path / "f.zarr")
    with zarr.config.set({"codec_pipeline.path": PLUGIN}):
        arr = zarr.create_array(path, shape=ref.shape, chunks=(8, 8), dtype="u2",
                                compressors=zarr.codecs.BloscCodec(cname="lz4"))
        arr[:] = ref
        np.testing.assert_array_equal(arr[:], ref)  # the parent's engine pool now exists
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(path, queue))
    child.start()
    got, reads = queue.get(timeout=120)
    child.join(60)
    assert child.exitcode == 0
    assert reads > 0
    np.testing.assert_array_equal(np.asarray(got, dtype="u2"), ref[2:30, 1:40])


def test_benchmark_script_quick_run(tmp_path):
    """benchmarks/bench_zarr_pipeline.py runs end to end on tiny data (outputs checked inside), writes its JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_zarr_pipeline.py"
    out = tmp_path / "b.json"
    run = subprocess.run([sys.executable, str(script), "--quick", "--rounds", "1", "--data-dir", str(tmp_path),
                          "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    rows = {(r["workload"], r["pipeline"]) for r in result["rows"]}
    assert {("whole", "gpuzarr"), ("crops", "gpuzarr"), ("sharded", "gpuzarr"), ("sharded", "default"),
            ("unsharded", "gpuzarr")} <= rows
    assert "x default" in run.stdout


@pytest.mark.parametrize("workers", [1, 3])
def test_zarr_threading_max_workers_sets_the_decode_threads(monkeypatch, workers):
    """zarr's ``threading.max_workers`` is the number of threads that decode (the caller's included)."""
    import threading

    from gpuzarr.codecs.chain import DecodeChain
    from gpuzarr.integrations import zarr_pipeline

    seen: set[str] = set()
    barrier = threading.Barrier(workers, timeout=5) if workers > 1 else None
    original = DecodeChain.decode

    met: list[bool] = []

    def decode(self, *args, **kwargs):
        name = threading.current_thread().name
        first = name not in seen
        seen.add(name)
        if barrier is not None and first:
            try:  # each thread's first decode waits until `workers` threads decode at once
                barrier.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                pass
        return original(self, *args, **kwargs)

    store = MemoryStore()
    ref = np.arange(64 * 64, dtype="u2").reshape(64, 64)
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        zarr.create_array(store=store, shape=ref.shape, chunks=(8, 8), dtype="u2",
                          compressors=zarr.codecs.ZstdCodec())[:] = ref
    monkeypatch.setattr(DecodeChain, "decode", decode)
    with zarr.config.set({"threading.max_workers": workers, "codec_pipeline.inline_max_bytes": 0}):
        got = _read(store, lambda a: a[:], "", pipeline=PLUGIN)
    np.testing.assert_array_equal(got, ref)
    assert zarr_pipeline._engines[workers].workers == workers
    assert len(seen) == workers, seen
    assert barrier is None or len(met) == workers, "the decode threads never ran at once"


@settings(max_examples=200)
@given(data=st.data())
def test_few_pieces_walk_equals_the_numpy_path(data):
    """The Python walk used for a few pieces gives the same pieces, in the same order, as the NumPy path."""
    from gpuzarr.integrations import zarr_pipeline as zp

    ndim = data.draw(st.integers(1, 3))
    unit = np.array([data.draw(st.integers(1, 6)) for _ in range(ndim)], dtype=np.int64)
    n = data.draw(st.integers(1, 4))
    lo = np.array([[data.draw(st.integers(0, 12)) for _ in range(ndim)] for _ in range(n)], dtype=np.int64)
    hi = lo + np.array([[data.draw(st.integers(0, 9)) for _ in range(ndim)] for _ in range(n)], dtype=np.int64)
    few = zp._few_pieces(lo.tolist(), hi.tolist(), unit.tolist(), ndim)
    old = zp._FEW_PIECES
    try:
        zp._FEW_PIECES = 0  # force the NumPy path
        ref = zp._pieces(lo, hi, unit)
    finally:
        zp._FEW_PIECES = old
    if few is None:  # more pieces than the walk takes
        assert len(ref[0]) > old
        return
    for a, b in zip(few, ref, strict=True):
        np.testing.assert_array_equal(a, b.reshape(a.shape))
        assert a.dtype == np.int64
