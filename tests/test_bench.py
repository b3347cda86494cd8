"""The benchmark: tiny preset end to end on the readers present here, plus its building blocks.

No test asserts on speed; they check that every reader that runs is verified against
zarr-python, that readers that cannot run say why, and that JSON and PNGs are valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

from gpuzarr import _optional
from gpuzarr.tools.bench import PRESETS, READER_CLASSES, run_benchmark, save_outputs
from gpuzarr.tools.bench.readers import DatasetSource, Reader
from gpuzarr.tools.bench.runner import BatchCost, crop_regions, summarise

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    root = tmp_path_factory.mktemp("bench")
    result = run_benchmark("tiny", data_dir=root / "data", progress=False, sample_interval_s=0.01)
    files = save_outputs(result, root / "out")
    return result, files


def test_json_is_valid_and_complete(tiny_run: tuple[dict[str, Any], dict[str, str]]) -> None:
    _, files = tiny_run
    data = json.loads(Path(files["json"]).read_text())
    for key in ("schema", "created", "preset", "config", "environment", "dataset", "readers", "timeline",
                "batch_costs", "monitoring", "files"):
        assert key in data, key
    env = data["environment"]
    assert env["python"] and env["cpu"]["logical_cores"] >= 1 and env["cpu"]["model"]
    for package in ("numpy", "zarr", "numcodecs", "tensorstore", "zarrs", "cupy", "kvikio", "nvcomp"):
        assert package in env["packages"]
    assert env["packages"]["zarr"] == zarr.__version__
    assert "gpu" in env and "devices" in env["gpu"]
    ds = data["dataset"]
    assert ds["shape"] == [2, 3, 256, 512] and ds["chunks"] == [1, 3, 128, 128] and ds["dtype"] == "uint8"
    assert 1.0 < ds["compression_ratio"] < 10.0
    assert any("blosc" in json.dumps(c) for c in ds["codecs"])
    assert data["config"]["batch_size"] == PRESETS["tiny"].batch_size
    assert len(data["batch_costs"]) == PRESETS["tiny"].repeats


def test_every_reader_is_verified_timed_or_explained(tiny_run: tuple[dict[str, Any], dict[str, str]]) -> None:
    result, _ = tiny_run
    readers = result["readers"]
    assert set(readers) == {"gpuzarr-cuda", "gpuzarr-cpu", "zarr-python", "zarr-python-gpu", "tensorstore", "zarrs"}
    for name in ("zarr-python", "gpuzarr-cpu"):  # always present
        assert readers[name]["status"] == "ok", readers[name]["reason"]
    for name, module in (("tensorstore", "tensorstore"), ("zarrs", "zarrs")):
        if _optional.module_available(module):
            assert readers[name]["status"] == "ok", readers[name]["reason"]
    for name, entry in readers.items():
        assert entry["status"] in ("ok", "skipped"), f"{name}: {entry['reason']}"
        if entry["status"] == "skipped":
            assert entry["reason"], f"{name} skipped without a reason"
            continue
        assert entry["verified"]
        m = entry["metrics"]
        assert len(entry["batch_seconds"]) == PRESETS["tiny"].repeats
        assert m["crops_per_s"]["p25"] <= m["crops_per_s"]["median"] <= m["crops_per_s"]["p75"]
        assert m["latency_ms"]["p50"] <= m["latency_ms"]["p95"] <= m["latency_ms"]["p99"]
        assert m["decoded_gb_s"]["median"] > 0 and m["compressed_gb_s"]["median"] > 0
        assert m["compressed_gb_s"]["median"] < m["decoded_gb_s"]["median"]  # the data is compressed
        assert m["peak_rss_mb"] > 0
        assert m["cpu_util_percent"] is not None and m["cpu_util_percent"] >= 0
    if not _optional.gpu_engine():
        assert readers["gpuzarr-cuda"]["status"] == "skipped"
        assert "cuda" in readers["gpuzarr-cuda"]["reason"].lower()
    if not _optional.cupy_device():
        assert readers["zarr-python-gpu"]["status"] == "skipped"


def test_pngs_are_valid(tiny_run: tuple[dict[str, Any], dict[str, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.image as mpimg

    _, files = tiny_run
    for name in ("throughput", "latency", "utilisation"):
        path = Path(files[name])
        raw = path.read_bytes()
        assert raw.startswith(PNG_SIGNATURE) and len(raw) > 1000, name
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0, f"{name}.png is blank"


def test_batch_costs_match_the_chunks_touched(tiny_run: tuple[dict[str, Any], dict[str, str]]) -> None:
    result, _ = tiny_run
    chunk_bytes = 3 * 128 * 128
    crop_bytes = PRESETS["tiny"].batch_size * 3 * 96 * 96
    for cost in result["batch_costs"]:
        assert cost["output_bytes"] == crop_bytes
        assert cost["decoded_bytes"] == cost["chunks"] * chunk_bytes
        assert 0 < cost["compressed_bytes"] < cost["decoded_bytes"]


class _WrongReader(Reader):
    """A reader that returns plausible-looking but wrong values."""

    name = "wrong"
    description = "returns the right shape with every value off by one"

    def open(self, source: DatasetSource) -> None:
        self.array = source.open_zarr()

    def read(self, regions: Any) -> Any:
        return np.stack([self.array[r] for r in regions]) + np.uint8(1)


class _CrashingReader(_WrongReader):
    name = "crashing"
    description = "raises on every read"

    def read(self, regions: Any) -> Any:
        raise RuntimeError("boom")


class _LateCrashingReader(_WrongReader):
    """Right values on the verification batch, then a crash (e.g. running out of GPU memory)."""

    name = "late-crashing"
    description = "crashes after verification"

    def __init__(self) -> None:
        self.calls = 0

    def read(self, regions: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            raise MemoryError("out of memory")
        return np.stack([self.array[r] for r in regions])


def test_a_reader_crashing_mid_run_is_failed_and_the_rest_still_timed(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(READER_CLASSES, "late-crashing", _LateCrashingReader)
    result = run_benchmark("tiny", readers=["late-crashing", "zarr-python"], data_dir=tmp_path, progress=False,
                           warmup=0, repeats=3)
    crashed = result["readers"]["late-crashing"]
    assert crashed["status"] == "failed" and "out of memory" in crashed["reason"] and "metrics" not in crashed
    assert len(result["readers"]["zarr-python"]["batch_seconds"]) == 3


def test_wrong_answers_are_failed_not_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(READER_CLASSES, "wrong", _WrongReader)
    monkeypatch.setitem(READER_CLASSES, "crashing", _CrashingReader)
    result = run_benchmark("tiny", readers=["zarr-python", "wrong", "crashing"], data_dir=tmp_path, progress=False,
                           repeats=2)
    readers = result["readers"]
    assert readers["zarr-python"]["status"] == "ok"
    assert readers["wrong"]["status"] == "failed" and "differ from zarr-python" in readers["wrong"]["reason"]
    assert "metrics" not in readers["wrong"]
    assert readers["crashing"]["status"] == "failed" and "boom" in readers["crashing"]["reason"]


def test_cache_hit_rate_is_reported_for_a_cached_gpuzarr_reader(tmp_path: Path) -> None:
    from gpuzarr.storage.cache import PinnedLRUCache

    result = run_benchmark("tiny", readers=["gpuzarr-cpu", "zarr-python"], data_dir=tmp_path, progress=False,
                           gpuzarr_cache_factory=lambda: PinnedLRUCache(64 * 10**6, pinned=False))
    rate = result["readers"]["gpuzarr-cpu"]["metrics"]["cache_hit_rate"]
    assert rate is not None and 0.0 <= rate <= 1.0
    assert result["readers"]["zarr-python"]["metrics"]["cache_hit_rate"] is None


def test_any_array_by_path(tmp_path: Path) -> None:
    """A user dataset: 3-D float32, sharded, crops clamped to the array."""
    path = tmp_path / "user.zarr"
    arr = zarr.create_array(str(path), shape=(3, 70, 90), chunks=(1, 16, 16), shards=(1, 32, 32), dtype="float32")
    arr[:] = np.linspace(0, 1, arr.size, dtype=np.float32).reshape(arr.shape)
    result = run_benchmark("tiny", dataset=str(path), readers=["zarr-python", "gpuzarr-cpu", "tensorstore"],
                           crop=(40, 200), batch_size=3, repeats=2, progress=False)
    assert result["dataset"]["shape"] == [3, 70, 90]
    assert result["compressed_bytes_estimated"] is True
    for name, entry in result["readers"].items():
        assert entry["status"] == "ok", f"{name}: {entry['reason']}"
    assert result["batch_costs"][0]["output_bytes"] == 3 * 40 * 90 * 4


@given(
    shape=st.lists(st.integers(1, 50), min_size=2, max_size=5),
    crop=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_crop_regions_are_in_bounds_and_equal_shape(shape: list[int], crop: tuple[int, int], batch: int,
                                                    seed: int) -> None:
    regions = crop_regions(np.random.default_rng(seed), shape, crop, batch)
    again = crop_regions(np.random.default_rng(seed), shape, crop, batch)
    assert regions == again
    assert len(regions) == batch
    reference = np.zeros(shape, dtype=np.uint8)
    shapes = {reference[r].shape for r in regions}
    assert len(shapes) == 1
    (out_shape,) = shapes
    assert out_shape[-2:] == (min(crop[0], shape[-2]), min(crop[1], shape[-1]))
    for region in regions:
        assert len(region) == len(shape)
        for index, size in zip(region, shape, strict=True):
            if isinstance(index, int):
                assert 0 <= index < size
            elif index != slice(None):
                assert 0 <= index.start < index.stop <= size


def test_summarise_statistics() -> None:
    seconds = [0.1, 0.2, 0.4, 0.2]
    costs = [BatchCost(output_bytes=10**9, decoded_bytes=2 * 10**9, compressed_bytes=10**9, chunks=4)] * 4
    m = summarise(seconds, costs, batch_size=8, cpu_seconds=0.45, cores=3)
    assert m["crops_per_s"]["median"] == pytest.approx(40.0)  # 8 / 0.2
    assert m["crops_per_s"]["min"] == pytest.approx(20.0) and m["crops_per_s"]["max"] == pytest.approx(80.0)
    assert m["decoded_gb_s"]["median"] == pytest.approx(10.0)
    assert m["latency_ms"]["p50"] == pytest.approx(200.0)
    assert m["cpu_util_percent"] == pytest.approx(100 * 0.45 / (0.9 * 3))


def test_unknown_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        run_benchmark("huge", data_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown reader"):
        run_benchmark("tiny", readers=["nope"], data_dir=tmp_path, progress=False)
