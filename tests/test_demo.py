"""The demo dataset: realistic (compressible, not zeros, not noise), deterministic, reusable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from gpuzarr.tools.demo import DEMO_ATTRIBUTE, ensure_demo_dataset, write_demo_dataset

SMALL = {"height": 256, "width": 512, "chunk": 128}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("demo") / "demo.zarr"
    summary = write_demo_dataset(path, 2, progress=False, **SMALL)
    return path, summary


def test_layout_matches_the_tutorial(small_demo: tuple[Path, dict]) -> None:
    path, _ = small_demo
    group = zarr.open_group(str(path), mode="r")
    raw = group["raw"]
    assert raw.shape == (2, 3, 256, 512) and raw.dtype == np.uint8
    assert raw.chunks == (1, 3, 128, 128)
    (blosc,) = raw.compressors
    assert (blosc.cname.value if hasattr(blosc.cname, "value") else blosc.cname) == "zstd"
    assert blosc.clevel == 5
    assert (blosc.shuffle.value if hasattr(blosc.shuffle, "value") else blosc.shuffle) == "bitshuffle"
    assert group["lr/2x"].shape == (2, 3, 128, 256)
    assert group["lr/4x"].shape == (2, 3, 64, 128)
    assert group["flow"].shape == (2, 2, 128, 256) and group["flow"].dtype == np.float16
    assert group.attrs[DEMO_ATTRIBUTE]["frames"] == 2


def test_content_is_realistic(small_demo: tuple[Path, dict]) -> None:
    path, summary = small_demo
    group = zarr.open_group(str(path), mode="r")
    frame = group["raw"][0].astype(np.float64)
    assert frame.std() > 10, "frames must have real content, not a flat colour"
    assert np.count_nonzero(frame) > 0.99 * frame.size, "never zeros"
    # Photographs are smooth at pixel scale: neighbours correlate strongly; noise would not.
    left, right = frame[:, :, :-1].ravel(), frame[:, :, 1:].ravel()
    assert np.corrcoef(left, right)[0, 1] > 0.8
    # Compresses like a photo: some, but far from everything.
    assert 1.2 < summary["raw_compression_ratio"] < 6.0
    flow = group["flow"][0].astype(np.float32)
    assert np.isfinite(flow).all() and flow.std() > 0.1
    # The pyramid is the frame downsampled, not an unrelated image.
    lr2 = group["lr/2x"][0].astype(np.float64)
    block_mean = frame.reshape(3, 128, 2, 256, 2).mean(axis=(2, 4))
    assert np.abs(lr2 - block_mean).max() <= 1.0


def test_frames_differ_but_stay_coherent(small_demo: tuple[Path, dict]) -> None:
    path, _ = small_demo
    raw = zarr.open_group(str(path), mode="r")["raw"]
    a, b = raw[0].astype(np.float64), raw[1].astype(np.float64)
    assert not np.array_equal(a, b)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.3  # a camera pan, not a new random image


def test_deterministic_for_a_seed(tmp_path: Path, small_demo: tuple[Path, dict]) -> None:
    path, _ = small_demo
    again = tmp_path / "again.zarr"
    other = tmp_path / "other.zarr"
    write_demo_dataset(again, 2, progress=False, **SMALL)
    write_demo_dataset(other, 2, seed=1, progress=False, **SMALL)
    first = zarr.open_group(str(path), mode="r")
    second = zarr.open_group(str(again), mode="r")
    for name in ("raw", "lr/2x", "lr/4x", "flow"):
        np.testing.assert_array_equal(first[name][:], second[name][:])
    assert not np.array_equal(first["raw"][:], zarr.open_group(str(other), mode="r")["raw"][:])


def test_ensure_reuses_a_complete_dataset(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    ensure_demo_dataset(path, 2, progress=False, **SMALL)
    sentinel = path / "sentinel"
    sentinel.write_text("kept")
    ensure_demo_dataset(path, 1, progress=False, **SMALL)  # fewer frames: reuse
    assert sentinel.exists()
    ensure_demo_dataset(path, 3, progress=False, **SMALL)  # more frames: rewrite
    assert not sentinel.exists()
    assert zarr.open_group(str(path), mode="r")["raw"].shape[0] == 3


def test_ensure_redoes_an_interrupted_write(tmp_path: Path) -> None:
    path = tmp_path / "demo.zarr"
    write_demo_dataset(path, 1, progress=False, **SMALL)
    group = zarr.open_group(str(path), mode="r+")
    del group.attrs[DEMO_ATTRIBUTE]  # as if the process died before the marker was written
    ensure_demo_dataset(path, 1, progress=False, **SMALL)
    assert DEMO_ATTRIBUTE in zarr.open_group(str(path), mode="r").attrs


def test_odd_frame_sizes(tmp_path: Path) -> None:
    summary = write_demo_dataset(tmp_path / "odd.zarr", 1, height=100, width=150, chunk=64, progress=False)
    raw = zarr.open_group(str(tmp_path / "odd.zarr"), mode="r")["raw"]
    assert raw.shape == (1, 3, 100, 150)
    assert summary["raw_compression_ratio"] > 1.0
    assert raw[0].std() > 5


def test_rejects_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frames"):
        write_demo_dataset(tmp_path / "x.zarr", 0, progress=False)
