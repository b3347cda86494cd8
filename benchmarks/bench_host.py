"""Host-path benchmark: gpuzarr's CPU engine vs tensorstore (batched) vs zarr-python on small chunks.

Three workloads, read from local files with the page cache warm:

``small``    256 random 64×64 crops of float32 ``(64, 1024, 1024)``, chunks ``(1, 256, 256)``,
             Blosc lz4 + byte shuffle
``sharded``  64 random 128×128 crops of uint16 ``(32, 2048, 2048)``, shards ``(1, 1024, 1024)``
             of inner chunks ``(1, 128, 128)``, zstd + crc32c
``demo``     32 random 960×960 crops of the demo-like 4K frames (uint8 ``(N, 3, 2160, 3840)``,
             chunks ``(1, 3, 960, 960)``, Blosc zstd + bit shuffle; see :mod:`gpuzarr.tools.demo`)

Every round reads one batch of fresh random crops with every reader, in a shuffled
order (interleaved, so a machine whose load changes during the run affects every reader
alike); the table reports the median crops per second per reader and gpuzarr's ratio to
the others. Before its timed batch each reader reads untimed batches of other random crops
for at least ``--warm-ms`` milliseconds (default 50) and at least ``--warm-batches``
batches (default 1), as a loader reading back to back would have. Measured on the 2-core
dev VM (docs/benchmarks.md): a batch that follows zarr-python's 190 ms read, a 190 ms sleep
or 190 ms of another thread's work, with one 8-12 ms batch in between, ran 1.2-1.7× slower
than in steady state (gpuzarr and tensorstore alike); its threads waited runnable while a
core sat idle, for 10-25 ms after the pause. With 50 ms of warm-up the effect was gone. gpuzarr reads through the same entry a :class:`gpuzarr.Loader` uses
(:meth:`ArrayHandle.read_batch` with region tuples, as a user writes them).

It also reports gpuzarr's **host microseconds per chunk**: planning, read orchestration
(keys, reads, cache lookups) and assembly, with decoding excluded. It is measured on one
thread by running the same batches through the CPU engine with a decode chain that returns
an already decoded chunk instead of decoding (bytes are still read from the files), so the
time left is everything gpuzarr adds around the codec. Split into ``plan`` (regions →
:class:`~gpuzarr.plan.planner.BatchPlan`) and ``read + assemble``. That is the Python
path's cost; what gpuzarr runs by default is the CPU engine's compiled lane
(:mod:`gpuzarr.engines.compiled`, compiled before anything is timed), whose host time
``host(c)`` is measured as a batch's CPU time on one thread minus the time the same
compiled code spends only decoding those chunks' bytes (``codec(c)``); it includes the
file reads, so it is the stricter number.

Last, **ceilings**: those one-thread CPU costs times the batch's chunks, spread evenly over
gpuzarr's decode threads with nothing serial, are the fastest batch its measured CPU allows
(``codec floor``: CRC32C and decoders alone; ``CPU floor``: with today's host path).
tensorstore's median batch over each floor bounds the ratio gpuzarr could show on this
machine, so a ratio target can be checked against what the decoders leave.

Usage::

    python benchmarks/bench_host.py                      # all three, 15 rounds
    python benchmarks/bench_host.py --workloads small --rounds 30 --json bench-out/host.json

Writes the JSON to ``bench-out/bench-host.json`` by default; the data is written once to
``bench-out/host-data/`` (about 0.8 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np

import gpuzarr
from gpuzarr.storage.base import ByteRange, ChunkFetcher, SuffixRange

WORKLOADS = ("small", "sharded", "demo")
READERS = ("gpuzarr", "tensorstore", "zarr-python")


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    path: str
    crop: tuple[int, int]
    batch: int
    description: str


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Noise with some spatial structure (cumulative sums), so codecs compress it like real data."""
    x = rng.integers(-2, 3, size=shape).astype(np.float32)
    return np.cumsum(np.cumsum(x, axis=-1), axis=-2) * np.float32(scale)


def _write_small(path: Path) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    arr = zarr.create_array(str(path), shape=(64, 1024, 1024), chunks=(1, 256, 256), dtype="float32",
                            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), fill_value=0.0)
    rng = np.random.default_rng(1)
    for i in range(64):
        arr[i] = _smooth_noise(rng, (1024, 1024), 0.01)


def _write_sharded(path: Path) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    arr = zarr.create_array(str(path), shape=(32, 2048, 2048), chunks=(1, 128, 128), shards=(1, 1024, 1024),
                            dtype="uint16", compressors=(ZstdCodec(level=3), Crc32cCodec()), fill_value=0)
    rng = np.random.default_rng(2)
    for i in range(32):
        arr[i] = (_smooth_noise(rng, (2048, 2048), 0.5) % 4096 + 1000).astype(np.uint16)


def _write_demo(path: Path) -> None:
    from gpuzarr.tools.demo import write_demo_dataset

    write_demo_dataset(path, frames=8, progress=False)


def ensure_data(root: Path, names: list[str]) -> dict[str, Workload]:
    """The workloads' arrays under ``root`` (written on first use)."""
    specs = {
        "small": (root / "small.zarr", "", (64, 64), 256, _write_small,
                  "256 crops 64x64, float32 (64,1024,1024), chunks (1,256,256), blosc lz4 shuffle"),
        "sharded": (root / "sharded.zarr", "", (128, 128), 64, _write_sharded,
                    "64 crops 128x128, uint16 (32,2048,2048), shards (1,1024,1024) of (1,128,128), zstd+crc32c"),
        "demo": (root / "demo.zarr", "raw", (960, 960), 32, _write_demo,
                 "32 crops 960x960, uint8 (8,3,2160,3840), chunks (1,3,960,960), blosc zstd bitshuffle"),
    }
    out = {}
    for name in names:
        path, sub, crop, batch, write, desc = specs[name]
        marker = path / ".complete"
        if not marker.exists():
            print(f"writing {name} data to {path} ...", file=sys.stderr, flush=True)
            write(path)
            marker.write_text("ok")
        out[name] = Workload(name, str(path / sub) if sub else str(path), crop, batch, desc)
    return out


def random_regions(shape: tuple[int, ...], crop: tuple[int, int], n: int, rng: np.random.Generator) -> list[tuple]:
    """``n`` random crops: an integer on axis 0, whole middle axes, a window on the last two."""
    return [tuple(r) for r in region_tuples(*random_tables(shape, crop, n, rng))]


def random_tables(shape: tuple[int, ...], crop: tuple[int, int], n: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """The same crops as start/extent tables (what a sampler hands the planner): starts, extent, squeezed axes."""
    starts = np.zeros((n, len(shape)), dtype=np.int64)
    starts[:, 0] = rng.integers(0, shape[0], size=n)
    starts[:, -2] = rng.integers(0, shape[-2] - crop[0] + 1, size=n)
    starts[:, -1] = rng.integers(0, shape[-1] - crop[1] + 1, size=n)
    extent = (1, *shape[1:-2], *crop)
    return starts, extent, (0,)


def region_tuples(starts: np.ndarray, extent: tuple[int, ...], squeeze: tuple[int, ...]) -> list[tuple]:
    return [tuple(s if d in squeeze else slice(s, s + extent[d]) for d, s in enumerate(row)) for row in starts.tolist()]


# ------------------------------------------------------------------ readers
def make_readers(path: str) -> dict[str, Callable[[list[tuple]], np.ndarray]]:
    import tensorstore as ts
    import zarr

    handle = gpuzarr.open_array(path)
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path.rstrip("/") + "/"}},
                    read=True).result()
    zarr_array = zarr.open_array(path, mode="r")

    def read_gpuzarr(regions: list[tuple]) -> np.ndarray:
        return handle.read_batch(regions, device="cpu")

    def read_tensorstore(regions: list[tuple]) -> np.ndarray:
        with ts.Batch() as batch:
            futures = [store[r].read(batch=batch) for r in regions]
        return np.stack([f.result() for f in futures])

    def read_zarr(regions: list[tuple]) -> np.ndarray:
        return np.stack([zarr_array[r] for r in regions])

    return {"gpuzarr": read_gpuzarr, "tensorstore": read_tensorstore, "zarr-python": read_zarr}


class _CodecClock:
    """Patches the codec entry points gpuzarr's CPU path calls so their CPU time can be subtracted."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._undo: list[tuple[Any, str, Any]] = []

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.thread_time

        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += clock() - t0

        return run

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self) -> Self:
        import numcodecs.blosc
        import numcodecs.zstd

        from gpuzarr.codecs import chain

        self._patch(numcodecs.blosc, "decompress", self._timed(numcodecs.blosc.decompress))
        self._patch(numcodecs.zstd, "decompress", self._timed(numcodecs.zstd.decompress))
        try:  # the C decoders called through ctypes (absent in an older tree)
            from gpuzarr.codecs import native
        except ImportError:
            native = None  # type: ignore[assignment]
        if native is not None:
            for name in ("blosc_decompress_into", "blosc_getitem_into", "zstd_decompress_into"):
                self._patch(native, name, self._timed(getattr(native, name)))
        else:  # an older tree: blosc_getitem reached through the partial-decode module
            try:
                from gpuzarr.codecs.blosc import partial as blosc_native
            except ImportError:
                from gpuzarr.codecs import blosc_native  # type: ignore[no-redef]
            getitem = blosc_native._getitem()
            if getitem is not None:
                timed_getitem = self._timed(getitem)
                self._patch(blosc_native, "_getitem", lambda: timed_getitem)
        self._patch(chain, "_crc32c_value", self._timed(chain._crc32c_value))
        if hasattr(chain, "_stream_decode"):  # gzip/zlib/bz2/lzma: capped streaming decoders
            self._patch(chain, "_stream_decode", self._timed(chain._stream_decode))
        for name in ("_ZSTD", "_GZIP"):  # an older tree (to measure "before")
            codec = getattr(chain, name, None)
            if codec is not None:
                self._patch(chain, name, type("Timed", (), {"decode": staticmethod(self._timed(codec.decode))})())
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, value in reversed(self._undo):
            setattr(owner, name, value)


class _MemoryFetcher(ChunkFetcher):
    """Serves every object from memory (loaded once from the real fetcher): reads cost no syscalls.

    Like the local fetcher it reads into the decoding thread's buffer (the protocol's
    default ``read_into``: a fetch and one copy), so the engine takes the same deferred
    path as on real files; the copy out of memory stands in for the read and is counted
    as host work.
    """

    reads_into_buffers = True

    def __init__(self, real: Any) -> None:
        self._real = real
        self.store_id = real.store_id
        self._objects: dict[str, Any] = {}

    def fetch(self, keys: list[str], ranges: list[Any] | None = None) -> list[Any]:
        out = []
        for i, key in enumerate(keys):
            data = self._objects.get(key)
            if data is None and key not in self._objects:
                (data,) = self._real.fetch([key])
                data = self._objects[key] = None if data is None else memoryview(bytes(data))
            rng = None if ranges is None else ranges[i]
            if data is None or rng is None:
                out.append(data)
            elif isinstance(rng, ByteRange):
                out.append(data[rng.start: rng.start + rng.length])
            elif isinstance(rng, SuffixRange):
                out.append(data[len(data) - rng.length:])
        return out


def host_time(path: str, workload: Workload, rounds: int, seed: int) -> dict[str, float]:
    """Host CPU µs per chunk: plan + read orchestration + assembly, decode and I/O excluded.

    One decode thread; the array's fetcher is replaced by one serving the (already read)
    objects from memory, so no syscall is counted, and the CPU time spent inside the
    codecs' C entry points (Blosc, Zstd, Gzip, CRC32C) is measured and subtracted. What
    is left is gpuzarr's own work per batch: planning, keys, shard-index lookups, range
    grouping, choosing Blosc blocks and checking them, and copying every piece into the
    batch. Process CPU time, which a shared machine disturbs far less than wall time.
    """
    from gpuzarr.engines.cpu import CpuEngine

    handle = gpuzarr.open_array(path)
    handle.reader.fetcher = _MemoryFetcher(handle.reader.fetcher)
    engine = CpuEngine(workers=1)
    from gpuzarr.plan import planner

    rng = np.random.default_rng(seed)
    tables = [random_tables(handle.shape, workload.crop, workload.batch, rng) for _ in range(rounds)]
    batches = [region_tuples(*t) for t in tables]
    for regions in batches:  # load every object the batches touch into memory
        plan = handle.plan(regions)
        handle.reader.read(plan.chunk_coords)
    table_s = float("nan")
    if hasattr(planner, "bounds_from_tables"):  # absent in an older tree
        table_s = 0.0
        for table in tables:
            t0 = time.process_time()
            planner.plan_batch(planner.bounds_from_tables(*table, handle.shape), handle.shape, handle.chunks)
            table_s += time.process_time() - t0
    plan_s = exec_s = codec_s = 0.0
    chunks = pieces = 0
    lazy_keys = getattr(handle.reader, "lazy_chunk_keys", handle.reader.chunk_keys)
    for regions in batches:
        with _CodecClock() as codecs:
            t0 = time.process_time()
            plan = handle.plan(regions)
            t1 = time.process_time()
            encoded = handle.reader.read(plan.chunk_coords, deferred=engine.capabilities.loads_deferred_reads)
            # (plain and sharded chunks alike are then read by the decoding thread, as on real files)
            engine.decode_and_assemble(plan, encoded, handle.chain, handle.fill_value,
                                       keys=lazy_keys(plan.chunk_coords), array_name=handle.name)
            t2 = time.process_time()
        plan_s += t1 - t0
        exec_s += t2 - t1 - codecs.seconds
        codec_s += codecs.seconds
        chunks += plan.n_chunks
        pieces += plan.n_pieces
    engine.close()
    return {"chunks_per_batch": chunks / rounds, "pieces_per_batch": pieces / rounds,
            "plan_us_per_chunk": 1e6 * plan_s / chunks, "plan_from_tables_us_per_chunk": 1e6 * table_s / chunks,
            "read_assemble_us_per_chunk": 1e6 * exec_s / chunks,
            "host_us_per_chunk": 1e6 * (plan_s + exec_s) / chunks, "codec_us_per_chunk": 1e6 * codec_s / chunks}


def compiled_host_time(path: str, workload: Workload, rounds: int, seed: int) -> dict[str, float]:
    """Host CPU µs per chunk on the compiled lane: everything but the codecs, with and without file reads.

    One thread, real files (page cache warm). A batch's process CPU time (plan, shard
    index, lane tables, then the kernel's reads, checks and piece copies) minus the time
    the same kernel spends decoding those chunks' bytes from memory with no piece to
    copy (CRC32C, header checks and the decoder itself, for the Blosc blocks the pieces
    need: the codec cost; the kernel given an empty output copies nothing). ``no_io``: the
    same batch handed to the engine as bytes already in memory (what the Python path's
    host time measures: no syscall, no copy out of the page cache). NaN when the lane
    does not apply to the array (or Numba is missing).
    """
    from gpuzarr.codecs import native
    from gpuzarr.engines import compiled
    from gpuzarr.engines.cpu import CpuEngine

    nan = {"compiled_host_us_per_chunk": float("nan"), "compiled_host_no_io_us_per_chunk": float("nan"),
           "compiled_codec_us_per_chunk": float("nan")}
    if not compiled.ready(wait=True):
        return nan
    handle = gpuzarr.open_array(path)
    engine = CpuEngine(workers=1)
    rng = np.random.default_rng(seed)
    batches = [region_tuples(*random_tables(handle.shape, workload.crop, workload.batch, rng)) for _ in range(rounds)]
    total_s = codec_s = memory_s = 0.0
    chunks = 0
    for regions in batches:
        handle.read_batch(regions, device="cpu")  # page cache warm
        plan = handle.plan(regions)
        encoded = handle.reader.read(plan.chunk_coords)  # bytes in memory, for the codec-only run
        full = np.empty((plan.n_regions, *plan.region_shape), dtype=handle.chain.dtype)
        partial = handle.chain.supports_partial_decode and handle.chain.stored_nbytes >= gpuzarr.config.get(
            "partial_decode.min_chunk_bytes")
        codec_only = compiled.lane(plan, encoded, handle.chain, full, partial=partial)
        if codec_only is None:
            return nan
        status = np.zeros(plan.n_chunks, dtype=np.int8)
        # an empty output: the kernel decodes (only the blocks the pieces need) and copies nothing
        args = (np.empty(0, dtype=np.uint8), np.empty(codec_only.input_bytes, dtype=np.uint8),
                np.empty(handle.chain.stored_nbytes, dtype=np.uint8), native.zstd_context())
        c0 = time.process_time()
        codec_only.run(0, plan.n_chunks, status, *args)
        codec_s += time.process_time() - c0
        keys = handle.reader.lazy_chunk_keys(plan.chunk_coords)
        t0 = time.process_time()  # the same batch from bytes in memory: no file read
        engine.decode_and_assemble(handle.plan(regions), encoded, handle.chain, handle.fill_value, keys=keys,
                                   array_name=handle.name)
        memory_s += time.process_time() - t0
        t0 = time.process_time()
        plan = handle.plan(regions)
        deferred = handle.reader.read(plan.chunk_coords, deferred=True)
        engine.decode_and_assemble(plan, deferred, handle.chain, handle.fill_value, keys=keys,
                                   array_name=handle.name)
        total_s += time.process_time() - t0
        chunks += plan.n_chunks
    engine.close()
    return {"compiled_host_us_per_chunk": 1e6 * (total_s - codec_s) / chunks,
            "compiled_host_no_io_us_per_chunk": 1e6 * (memory_s - codec_s) / chunks,
            "compiled_codec_us_per_chunk": 1e6 * codec_s / chunks}


def _threads() -> int:
    """gpuzarr's decode threads (the CPU engine's pool: the ``threads`` setting)."""
    from gpuzarr.threads import cpu_pool

    return cpu_pool().size


def ceilings(res: dict[str, Any]) -> dict[str, float]:
    """The fastest batch gpuzarr's measured CPU allows, and what that would make its ratio to tensorstore.

    The compiled lane's one-thread CPU per chunk (``codec(c)``: CRC32C and the decoders;
    ``host(c)``: everything else, file reads and planning included) times the batch's
    chunks, spread evenly over the decode threads with nothing left serial: no real batch
    is faster. Dividing tensorstore's median batch by it bounds gpuzarr's ratio to
    tensorstore on this machine, whatever the host path does (codec floor) or with the
    host path's CPU as it is now (CPU floor). NaN where the lane does not apply.
    """
    h, rd = res["host"], res["readers"]
    threads = _threads()
    codec_ms = h["chunks_per_batch"] * h["compiled_codec_us_per_chunk"] / threads / 1e3
    cpu_ms = h["chunks_per_batch"] * (h["compiled_codec_us_per_chunk"] + h["compiled_host_us_per_chunk"]) / threads / 1e3
    nan = float("nan")
    ts_ms = rd["tensorstore"]["median_s"] * 1e3 if "tensorstore" in rd else nan
    gz_ms = rd["gpuzarr"]["median_s"] * 1e3 if "gpuzarr" in rd else nan
    return {"threads": threads, "tensorstore_ms": ts_ms, "gpuzarr_ms": gz_ms, "codec_floor_ms": codec_ms,
            "cpu_floor_ms": cpu_ms, "ts_over_codec_floor": ts_ms / codec_ms if codec_ms else nan,
            "ts_over_cpu_floor": ts_ms / cpu_ms if cpu_ms else nan}


def run_workload(workload: Workload, rounds: int, seed: int, readers: list[str], warm_batches: int = 1,
                 warm_ms: float = 50.0) -> dict[str, Any]:
    fns = make_readers(workload.path)
    fns = {k: v for k, v in fns.items() if k in readers}
    import zarr

    shape = tuple(zarr.open_array(workload.path, mode="r").shape)
    rng = np.random.default_rng(seed)
    order_rng = random.Random(seed)
    warm = random_regions(shape, workload.crop, workload.batch, rng)
    reference = None
    for name, fn in fns.items():  # warm-up round, and a check that every reader agrees
        got = fn(warm)
        if reference is None:
            reference = got
        else:
            np.testing.assert_array_equal(got, reference, err_msg=f"{name} disagrees on {workload.name}")
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    warm_rng = np.random.default_rng(seed + 7)  # the untimed batches' crops: never the timed ones
    for _ in range(rounds):
        regions = random_regions(shape, workload.crop, workload.batch, rng)
        names = list(fns)
        order_rng.shuffle(names)
        for name in names:
            warm_until = time.perf_counter() + warm_ms / 1e3
            done = 0
            while done < warm_batches or time.perf_counter() < warm_until:
                fns[name](random_regions(shape, workload.crop, workload.batch, warm_rng))
                done += 1
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name](regions)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    result: dict[str, Any] = {"workload": workload.name, "description": workload.description,
                              "batch": workload.batch, "rounds": rounds, "warm_batches": warm_batches, "warm_ms": warm_ms, "readers": {}}
    for name, ts_ in times.items():
        med = statistics.median(ts_)
        cpu_med = statistics.median(cpu[name])
        result["readers"][name] = {"median_s": med, "crops_per_s": workload.batch / med,
                                   "min_s": min(ts_), "max_s": max(ts_), "cpu_s_per_batch": cpu_med,
                                   "crops_per_cpu_s": workload.batch / cpu_med if cpu_med else float("nan")}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--host-rounds", type=int, default=10)
    parser.add_argument("--warm-batches", type=int, default=1,
                        help="untimed batches each reader reads right before its timed one, at least (0: none)")
    parser.add_argument("--warm-ms", type=float, default=50.0,
                        help="and untimed batches until at least this many milliseconds passed (0: only --warm-batches)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="bench-out/host-data")
    parser.add_argument("--json", default="bench-out/bench-host.json")
    args = parser.parse_args(argv)
    names = [w for w in args.workloads.split(",") if w]
    readers = [r for r in args.readers.split(",") if r]
    workloads = ensure_data(Path(args.data), names)
    # the CPU engine's compiled lane is compiled (or loaded from Numba's cache) before anything is timed
    from gpuzarr.engines import compiled

    print(f"compiled lane: {'ready' if compiled.ready(wait=True) else 'not available (Python path)'}",
          file=sys.stderr)
    results = []
    for name in names:
        w = workloads[name]
        res = run_workload(w, args.rounds, args.seed, readers, args.warm_batches, args.warm_ms)
        with gpuzarr.config.set({"cpu.compiled": "off"}):
            res["host"] = host_time(w.path, w, args.host_rounds, args.seed + 1)
        res["host"].update(compiled_host_time(w.path, w, args.host_rounds, args.seed + 1))
        res["ceilings"] = ceilings(res)
        results.append(res)

    header = (f"{'workload':<9} {'gpuzarr':>8} {'tensorstore':>11} {'zarr-python':>11} {'vs ts':>6} {'vs zarr':>7} "
              f"{'chunks':>6} {'plan':>6} {'plan tbl':>8} {'rd+asm':>7} {'host':>6} {'codec':>7} "
              f"{'host(c)':>7} {'no I/O':>6} {'codec(c)':>8}")
    print(header)
    print("-" * len(header))
    for res in results:
        rd = res["readers"]
        cps = {k: rd[k]["crops_per_s"] if k in rd else float("nan") for k in READERS}
        h = res["host"]
        print(f"{res['workload']:<9} {cps['gpuzarr']:>8.0f} {cps['tensorstore']:>11.0f} {cps['zarr-python']:>11.0f} "
              f"{cps['gpuzarr'] / cps['tensorstore']:>6.2f} {cps['gpuzarr'] / cps['zarr-python']:>7.2f} "
              f"{h['chunks_per_batch']:>6.0f} {h['plan_us_per_chunk']:>6.1f} {h['plan_from_tables_us_per_chunk']:>8.1f} "
              f"{h['read_assemble_us_per_chunk']:>7.1f} {h['host_us_per_chunk']:>6.1f} {h['codec_us_per_chunk']:>7.1f} "
              f"{h['compiled_host_us_per_chunk']:>7.1f} {h['compiled_host_no_io_us_per_chunk']:>6.1f} "
              f"{h['compiled_codec_us_per_chunk']:>8.1f}")
    print()
    print(f"{'workload':<9} " + " ".join(f"{r + ' crops/CPU-s':>24}" for r in READERS) + f" {'vs ts':>6}")
    for res in results:
        rd = res["readers"]
        eff = {k: rd[k]["crops_per_cpu_s"] if k in rd else float("nan") for k in READERS}
        print(f"{res['workload']:<9} " + " ".join(f"{eff[r]:>24.0f}" for r in READERS)
              + f" {eff['gpuzarr'] / eff['tensorstore']:>6.2f}")
    print()
    print(f"{'workload':<9} {'ts ms':>7} {'gpuzarr ms':>10} {'codec floor':>11} {'CPU floor':>9} "
          f"{'ts/codec floor':>14} {'ts/CPU floor':>12}")
    for res in results:
        c = res["ceilings"]
        print(f"{res['workload']:<9} {c['tensorstore_ms']:>7.2f} {c['gpuzarr_ms']:>10.2f} {c['codec_floor_ms']:>11.2f} "
              f"{c['cpu_floor_ms']:>9.2f} {c['ts_over_codec_floor']:>14.2f} {c['ts_over_cpu_floor']:>12.2f}")
    print("Ceilings: the batch time gpuzarr could reach at best, its one-thread CPU split evenly over its\n"
          f"{_threads()} decode threads with nothing serial: codec floor = chunks x codec(c) (CRC32C and decoders\n"
          "alone), CPU floor = chunks x (codec(c) + host(c)) (everything it does today, file reads included);\n"
          "ts/... = tensorstore's median batch over that floor, the most gpuzarr's ratio to tensorstore could be.")
    print()
    print("crops/s: median of interleaved rounds. Per chunk, CPU µs on one thread, on the Python path: plan\n"
          "(region tuples), plan tbl (start/extent tables), rd+asm (read orchestration + assembly, I/O and codecs\n"
          "excluded), host = plan + rd+asm, codec (time inside the codecs, for scale). On the compiled lane (what\n"
          "gpuzarr runs): host(c) = everything but the codecs, file reads included; no I/O = the same with the\n"
          "chunks' bytes already in memory; codec(c) = the codecs.")
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.node(),
           "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
           "gpuzarr": getattr(gpuzarr, "__version__", "?"), "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
