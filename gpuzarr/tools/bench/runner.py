"""The benchmark runner: one workload, several readers, interleaved, verified, measured.

:func:`run_benchmark` reads random crops of one array through every selected reader
in a single run. Fairness rules:

* every reader reads the *same* crop lists (one per repeat, drawn from a seeded
  generator);
* readers are interleaved round-robin per repeat, and the order rotates each repeat,
  so no reader always runs first (cold page cache) or last (warm CPU clocks);
* each reader's first batch is compared with zarr-python's result before anything is
  timed, and a reader that returns different values is reported as failed, not timed
  (a benchmark of wrong answers is worthless);
* GPU readers are synchronised before the clock stops.

Per reader it reports crops/s, decoded / output / compressed GB/s, batch latency
percentiles, CPU utilisation, peak RSS, cache hit rate (when the reader has a cache)
and, with NVML, GPU utilisation, memory, PCIe traffic, SM clock and power. The result
is a JSON-ready dict; :mod:`gpuzarr.tools.bench.report` prints and saves it and
:mod:`gpuzarr.tools.bench.plots` draws it.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gpuzarr.tools.bench.monitor import PhaseMarker, ProcessSampler, start_nvml_sampler, usable_cores
from gpuzarr.tools.bench.readers import (
    DEFAULT_READERS,
    READER_CLASSES,
    DatasetSource,
    Reader,
    ReaderUnavailable,
    make_reader,
    to_numpy,
)

RESULT_SCHEMA = "gpuzarr-bench/1"


@dataclass(frozen=True)
class Preset:
    """A named workload: which demo dataset, which crops, how many repeats."""

    name: str
    description: str
    frames: int
    height: int
    width: int
    chunk: int
    crop: tuple[int, int]
    batch_size: int
    repeats: int
    warmup: int
    dataset_name: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", "CI smoke test: 2 small frames, 96x96 crops, a few repeats",
                   frames=2, height=256, width=512, chunk=128, crop=(96, 96), batch_size=4,
                   repeats=3, warmup=1, dataset_name="gpuzarr-tiny.zarr"),
    "demo": Preset("demo", "README demo: 8 4K frames, batches of 8 random 960x960 crops",
                   frames=8, height=2160, width=3840, chunk=960, crop=(960, 960), batch_size=8,
                   repeats=5, warmup=1, dataset_name="gpuzarr-demo.zarr"),
    "full": Preset("full", "issue-2 comparison: 32 4K frames, batches of 32 random 960x960 crops",
                   frames=32, height=2160, width=3840, chunk=960, crop=(960, 960), batch_size=32,
                   repeats=20, warmup=2, dataset_name="gpuzarr-demo.zarr"),
}

DEFAULT_DATA_DIR = Path("demo-data")


# ------------------------------------------------------------------ workload
def crop_regions(
    rng: np.random.Generator, shape: Sequence[int], crop: Sequence[int], batch_size: int
) -> list[tuple[Any, ...]]:
    """``batch_size`` random crops of the last two axes (clamped to the array), via :class:`RandomCrops`.

    Axis 0 gets a random integer index when the array has 3+ dimensions (a frame);
    axes between it and the last two are read whole (channels).
    """
    from gpuzarr.loading.loader import RandomCrops

    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"crops need an array of at least 2 dimensions, got shape {shape}")
    size = (min(int(crop[0]), shape[-2]), min(int(crop[1]), shape[-1]))
    sampler = RandomCrops(size, seed=int(rng.integers(2**62)), samples_per_epoch=batch_size)
    return sampler.regions(shape)


@dataclass
class BatchCost:
    """What one batch costs in data, independent of the reader."""

    output_bytes: int
    decoded_bytes: int  # distinct chunks touched × bytes per decoded chunk
    compressed_bytes: int  # stored bytes of the distinct chunks (or shards) touched
    chunks: int


class StoredSizes:
    """Stored size of each chunk object, asked of the store once per key."""

    def __init__(self, zarr_array: Any) -> None:
        self.array = zarr_array
        self._sizes: dict[str, int] = {}
        meta = zarr_array.metadata
        # Inner chunks of a shard have no object of their own; their stored size is estimated
        # from the array's compression ratio instead of read from the shard index.
        self.sharded = any(type(c).__name__ == "ShardingCodec" for c in getattr(meta, "codecs", ()))
        self.estimated = self.sharded

    def chunk_sizes(self, chunk_coords: np.ndarray) -> int:
        """Total stored bytes of these chunks (missing chunks count 0)."""
        from zarr.core.sync import sync

        store = self.array.store
        prefix = f"{self.array.path}/" if self.array.path else ""
        total = 0
        for coords in chunk_coords.tolist():
            key = prefix + self.array.metadata.encode_chunk_key(tuple(coords))
            if key not in self._sizes:
                try:
                    self._sizes[key] = int(sync(store.getsize(key)))
                except FileNotFoundError:
                    self._sizes[key] = 0
            total += self._sizes[key]
        return total


def batch_cost(zarr_array: Any, regions: Sequence[tuple[Any, ...]], sizes: StoredSizes,
               compression_ratio: float) -> BatchCost:
    """Bytes delivered, decoded and read from storage by one batch (via the planner)."""
    from gpuzarr.plan.planner import plan_batch

    inner_chunks = tuple(int(c) for c in zarr_array.chunks)  # zarr reports inner chunks of a sharded array
    plan = plan_batch(regions, zarr_array.shape, inner_chunks, str(zarr_array.path))
    itemsize = np.dtype(zarr_array.dtype).itemsize
    chunk_bytes = int(np.prod(inner_chunks)) * itemsize
    decoded = plan.n_chunks * chunk_bytes
    if sizes.sharded:
        compressed = int(decoded / max(compression_ratio, 1e-9))
    else:
        compressed = sizes.chunk_sizes(plan.chunk_coords)
    output = int(np.prod(plan.out_shape)) * itemsize
    return BatchCost(output_bytes=output, decoded_bytes=decoded, compressed_bytes=compressed, chunks=plan.n_chunks)


# ------------------------------------------------------------------ dataset
def describe_array(zarr_array: Any, source: DatasetSource) -> dict[str, Any]:
    """Path, shape, chunks, dtype, codecs and compression ratio of the benchmarked array."""
    meta = zarr_array.metadata
    logical = int(zarr_array.nbytes)
    try:
        stored = int(zarr_array.nbytes_stored())
    except Exception:  # noqa: BLE001 - some stores cannot list; the ratio is then unknown
        stored = 0
    codecs = [c.to_dict() if hasattr(c, "to_dict") else repr(c) for c in getattr(meta, "codecs", ())]
    location = source.location if isinstance(source.location, (str, os.PathLike)) else repr(source.location)
    return {
        "location": os.fspath(location),
        "array_path": source.array_path or str(zarr_array.path),
        "shape": list(zarr_array.shape),
        "chunks": list(zarr_array.chunks),
        "shards": list(zarr_array.shards) if getattr(zarr_array, "shards", None) else None,
        "dtype": str(zarr_array.dtype),
        "zarr_format": meta.zarr_format,
        "codecs": codecs,
        "logical_bytes": logical,
        "stored_bytes": stored,
        "compression_ratio": logical / stored if stored else None,
    }


def _resolve_source(preset: Preset, dataset: Any, array_path: str | None, data_dir: Path,
                    storage_options: dict[str, Any], frames: int | None, progress: bool) -> DatasetSource:
    if dataset is None:
        from gpuzarr.tools.demo import ensure_demo_dataset

        path = ensure_demo_dataset(data_dir / preset.dataset_name, frames or preset.frames, height=preset.height,
                                   width=preset.width, chunk=preset.chunk, progress=progress)
        return DatasetSource(str(path), array_path or "raw")
    return DatasetSource(dataset, array_path, storage_options)


# ------------------------------------------------------------------ statistics
def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def _mean_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return float(np.mean(values)) if values else None


def _max_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return float(np.max(values)) if values else None


def summarise(seconds: Sequence[float], costs: Sequence[BatchCost], batch_size: int, cpu_seconds: float,
              cores: int) -> dict[str, Any]:
    """Throughput (median and IQR over repeats) and latency percentiles of one reader."""
    t = np.asarray(seconds, dtype=np.float64)

    def rate(numerators: np.ndarray) -> dict[str, float]:
        per_repeat = numerators / t
        return {
            "median": float(np.median(per_repeat)),
            "p25": float(np.percentile(per_repeat, 25)),
            "p75": float(np.percentile(per_repeat, 75)),
            "min": float(per_repeat.min()),
            "max": float(per_repeat.max()),
        }

    crops = np.full(len(t), float(batch_size))
    out_b = np.array([c.output_bytes for c in costs], dtype=np.float64) / 1e9
    dec_b = np.array([c.decoded_bytes for c in costs], dtype=np.float64) / 1e9
    cmp_b = np.array([c.compressed_bytes for c in costs], dtype=np.float64) / 1e9
    return {
        "crops_per_s": rate(crops),
        "output_gb_s": rate(out_b),
        "decoded_gb_s": rate(dec_b),
        "compressed_gb_s": rate(cmp_b),
        "latency_ms": {
            "p50": _percentile(t, 50) * 1e3,
            "p95": _percentile(t, 95) * 1e3,
            "p99": _percentile(t, 99) * 1e3,
            "min": float(t.min()) * 1e3,
            "max": float(t.max()) * 1e3,
            "mean": float(t.mean()) * 1e3,
        },
        "cpu_util_percent": 100.0 * cpu_seconds / (float(t.sum()) * cores) if t.sum() > 0 else None,
        "cpu_cores_busy": cpu_seconds / float(t.sum()) if t.sum() > 0 else None,
    }


# ------------------------------------------------------------------ the run
@dataclass
class _ReaderState:
    reader: Reader
    status: str = "pending"  # ok | skipped | failed
    reason: str = ""
    seconds: list[float] | None = None
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    cache_start: tuple[int, int] | None = None
    cache_end: tuple[int, int] | None = None
    verified: bool = False  # its first batch equalled zarr-python's


def _verify(state: _ReaderState, regions: Sequence[tuple[Any, ...]], expected: np.ndarray) -> None:
    """Run the verification batch; mark the reader failed if it errors or differs from zarr-python."""
    reader = state.reader
    try:
        got = to_numpy(reader.read(regions))
        reader.synchronize()
    except Exception as exc:  # noqa: BLE001 - a reader that crashes is reported, not fatal to the run
        state.status, state.reason = "failed", f"error on the verification batch: {type(exc).__name__}: {exc}"
        return
    if got.shape != expected.shape or got.dtype != expected.dtype:
        state.status = "failed"
        state.reason = (f"wrong result: shape/dtype {got.shape}/{got.dtype}, "
                        f"zarr-python gives {expected.shape}/{expected.dtype}")
        return
    equal_nan = expected.dtype.kind in "fc"
    if not np.array_equal(got, expected, equal_nan=equal_nan):
        mismatched = int(np.count_nonzero(got != expected))
        state.status = "failed"
        state.reason = f"wrong result: {mismatched} of {expected.size} values differ from zarr-python"
        return
    state.status = "ok"
    state.verified = True


def _mark_crashed(state: _ReaderState, where: str, exc: Exception) -> None:
    state.status = "failed"
    state.reason = f"error during {where}: {type(exc).__name__}: {exc}"


def _prepare_compiled_lane() -> dict[str, Any]:
    """Compile (or load from Numba's cache) the CPU engine's compiled lane before anything is timed.

    A once-per-process cost, like the other readers' start-up; without it a short run would
    time the Python path (the lane compiles in the background after ``cpu.compile_after_chunks``
    chunks). Without Numba (the ``fast`` extra) nothing is imported and the Python path runs.
    """
    from gpuzarr.engines import compiled

    if not compiled.available():
        return {"status": "not installed (the fast extra)"}
    if compiled.setting() is None:
        return {"status": "off (cpu.compiled)"}
    t0 = time.perf_counter()
    ok = compiled.ready(wait=True)
    return {"status": "ready" if ok else "unavailable", "seconds": round(time.perf_counter() - t0, 2)}


def run_benchmark(
    preset: str = "demo",
    *,
    dataset: Any = None,
    array_path: str | None = None,
    storage_options: dict[str, Any] | None = None,
    crop: Sequence[int] | None = None,
    batch_size: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    frames: int | None = None,
    readers: Sequence[str] | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    progress: bool = True,
    sample_interval_s: float = 0.05,
    gpuzarr_cache_factory: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Run one random-crop workload through several readers and return the result dict.

    ``dataset`` is a local path, a URL or an open ``zarr.Array`` (with ``array_path``
    naming the array inside a group); ``None`` uses the preset's demo dataset under
    ``data_dir``, writing it first when missing. Values given explicitly override the
    preset. The result holds ``config``, ``environment``, ``dataset``, per-reader
    ``readers`` (status, reason, metrics, raw batch times) and a ``timeline`` of
    CPU / GPU samples for plotting.
    """
    from gpuzarr.tools.info import collect_environment

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[preset]
    chosen = replace(
        base,
        crop=tuple(int(c) for c in crop) if crop is not None else base.crop,
        batch_size=batch_size or base.batch_size,
        repeats=repeats or base.repeats,
        warmup=base.warmup if warmup is None else warmup,
    )
    if chosen.batch_size < 1 or chosen.repeats < 1 or chosen.warmup < 0:
        raise ValueError("batch size and repeats must be at least 1 and warm-up at least 0")
    reader_names = list(readers) if readers else list(DEFAULT_READERS)
    unknown = [n for n in reader_names if n not in READER_CLASSES]
    if unknown:
        raise ValueError(f"unknown reader(s) {', '.join(unknown)}; choose from {', '.join(READER_CLASSES)}")
    started = _dt.datetime.now(_dt.UTC)

    source = _resolve_source(chosen, dataset, array_path, Path(data_dir), storage_options or {}, frames, progress)
    reference = source.open_zarr()
    dataset_info = describe_array(reference, source)
    ratio = dataset_info["compression_ratio"] or 1.0

    rng = np.random.default_rng(seed)
    warm_lists = [crop_regions(rng, reference.shape, chosen.crop, chosen.batch_size)
                  for _ in range(max(chosen.warmup, 1))]
    timed_lists = [crop_regions(rng, reference.shape, chosen.crop, chosen.batch_size)
                   for _ in range(chosen.repeats)]
    sizes = StoredSizes(reference)
    costs = [batch_cost(reference, regions, sizes, ratio) for regions in timed_lists]
    expected = np.stack([reference[region] for region in warm_lists[0]])

    states: list[_ReaderState] = []
    for name in reader_names:
        reader = make_reader(name, gpuzarr_cache=gpuzarr_cache_factory() if gpuzarr_cache_factory else None)
        state = _ReaderState(reader)
        try:
            reader.open(source)
        except ReaderUnavailable as exc:
            state.status, state.reason = "skipped", str(exc)
        except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the others
            state.status, state.reason = "failed", f"cannot open: {type(exc).__name__}: {exc}"
        states.append(state)

    lane = _prepare_compiled_lane() if any(s.reader.name.startswith("gpuzarr") for s in states) else None
    load_before = _load_average()
    phase = PhaseMarker()
    t0 = time.perf_counter()
    cpu_sampler = ProcessSampler(phase, sample_interval_s, t0)
    cpu_sampler.start()
    gpu_sampler, nvml_reason = start_nvml_sampler(phase, sample_interval_s, t0)
    cores = usable_cores()

    batch_spans: list[dict[str, Any]] = []
    pending = [s for s in states if s.status == "pending"]
    total_steps = len(pending) * (len(warm_lists) + len(timed_lists))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=f"bench {chosen.name}", unit="batch", file=sys.stderr)
    try:
        # Verification doubles as the first warm-up batch.
        for state in pending:
            phase.name = state.reader.name
            _verify(state, warm_lists[0], expected)
            phase.name = "idle"
            if bar is not None:
                bar.update(1)
        running = [s for s in states if s.status == "ok"]
        if bar is not None and len(running) < len(pending):
            bar.total -= (len(pending) - len(running)) * (len(warm_lists) - 1 + len(timed_lists))
        for regions in warm_lists[1:]:
            for state in running:
                phase.name = state.reader.name
                try:
                    state.reader.read(regions)
                    state.reader.synchronize()
                except Exception as exc:  # noqa: BLE001 - one reader crashing must not end the run
                    _mark_crashed(state, "warm-up", exc)
                phase.name = "idle"
                if bar is not None:
                    bar.update(1)
            running = [s for s in running if s.status == "ok"]
        for state in running:
            state.seconds = []
            state.cache_start = state.reader.cache_counters()
        for repeat, regions in enumerate(timed_lists):
            running = [s for s in running if s.status == "ok"]
            shift = repeat % max(len(running), 1)
            for state in running[shift:] + running[:shift]:
                reader = state.reader
                phase.name = reader.name
                cpu_before = time.process_time()
                start = time.perf_counter()
                try:
                    batch = reader.read(regions)
                    reader.synchronize()
                except Exception as exc:  # noqa: BLE001 - one reader crashing must not end the run
                    phase.name = "idle"
                    _mark_crashed(state, f"timed batch {repeat}", exc)
                    continue
                end = time.perf_counter()
                elapsed = end - start
                batch_spans.append({"reader": reader.name, "repeat": repeat, "start": start - t0, "end": end - t0})
                state.cpu_seconds += time.process_time() - cpu_before
                state.peak_rss_mb = max(state.peak_rss_mb, cpu_sampler.rss_mb())
                del batch
                phase.name = "idle"
                state.seconds.append(elapsed)
                if bar is not None:
                    bar.update(1)
        for state in running:
            if state.status == "ok":
                state.cache_end = state.reader.cache_counters()
    finally:
        if bar is not None:
            bar.close()
        cpu_samples = cpu_sampler.stop()
        gpu_samples = gpu_sampler.stop() if gpu_sampler is not None else []
        for state in states:
            state.reader.close()

    reader_results: dict[str, Any] = {}
    for state in states:
        entry: dict[str, Any] = {
            "label": state.reader.label(),
            "description": state.reader.description,
            "status": state.status,
            "reason": state.reason,
            "verified": state.verified,
        }
        if state.status == "ok" and state.seconds:
            metrics = summarise(state.seconds, costs, chosen.batch_size, state.cpu_seconds, cores)
            mine = [s for s in cpu_samples if s["phase"] == state.reader.name]
            metrics["peak_rss_mb"] = max(state.peak_rss_mb, _max_of(mine, "rss_mb") or 0.0)
            metrics["system_cpu_percent_mean"] = _mean_of(mine, "system_cpu_percent")
            metrics["cache_hit_rate"] = _cache_hit_rate(state.cache_start, state.cache_end)
            gpu_mine = [s for s in gpu_samples if s["phase"] == state.reader.name]
            metrics["gpu"] = _gpu_metrics(gpu_mine) if gpu_sampler is not None else None
            entry["metrics"] = metrics
            entry["batch_seconds"] = state.seconds
        reader_results[state.reader.name] = entry

    return {
        "schema": RESULT_SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "command": " ".join(sys.argv),
        "preset": chosen.name,
        "config": {
            **{k: v for k, v in asdict(chosen).items() if k not in ("name", "dataset_name")},
            "readers": reader_names,
            "seed": seed,
            "sample_interval_s": sample_interval_s,
            "order": "round-robin per repeat, rotated each repeat; identical crop lists for every reader",
        },
        "environment": {**collect_environment(),
                        "load_average": {"before": load_before, "after": _load_average()},
                        "cpu_compiled_lane": lane},
        "dataset": dataset_info,
        "batch_costs": [asdict(c) for c in costs],
        "compressed_bytes_estimated": sizes.estimated,
        "readers": reader_results,
        "monitoring": {"cpu": "psutil", "gpu": "nvml" if gpu_sampler is not None else None,
                       "gpu_unavailable_reason": nvml_reason or None},
        "timeline": {"cpu": cpu_samples, "gpu": gpu_samples, "batches": batch_spans},
    }


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: a busy machine makes every number slower."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cache_hit_rate(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    if start is None or end is None:
        return None
    hits, misses = end[0] - start[0], end[1] - start[1]
    return hits / (hits + misses) if hits + misses else None


def _gpu_metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "util_percent_mean": _mean_of(samples, "gpu_util_percent"),
        "util_percent_max": _max_of(samples, "gpu_util_percent"),
        "mem_used_mb_max": _max_of(samples, "gpu_mem_used_mb"),
        "pcie_rx_mb_s_mean": _mean_of(samples, "pcie_rx_mb_s"),
        "pcie_tx_mb_s_mean": _mean_of(samples, "pcie_tx_mb_s"),
        "sm_clock_mhz_mean": _mean_of(samples, "sm_clock_mhz"),
        "power_w_mean": _mean_of(samples, "power_w"),
    }
