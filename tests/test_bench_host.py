"""benchmarks/bench_host.py's ceilings: the fastest batch the measured CPU allows, and the ratio it bounds."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_host = pytest.importorskip("bench_host")


def _result(ts_s: float | None) -> dict:
    readers = {"gpuzarr": {"median_s": 0.004}}
    if ts_s is not None:
        readers["tensorstore"] = {"median_s": ts_s}
    return {"readers": readers, "host": {"chunks_per_batch": 250.0, "compiled_codec_us_per_chunk": 40.0,
                                         "compiled_host_us_per_chunk": 8.0}}


def test_ceilings_spread_one_thread_cpu_over_the_decode_threads() -> None:
    threads = bench_host._threads()
    got = bench_host.ceilings(_result(0.009))
    assert got["threads"] == threads
    assert got["codec_floor_ms"] == pytest.approx(250 * 40 / threads / 1e3)
    assert got["cpu_floor_ms"] == pytest.approx(250 * 48 / threads / 1e3)
    assert got["ts_over_codec_floor"] == pytest.approx(9.0 / got["codec_floor_ms"])
    assert got["ts_over_cpu_floor"] == pytest.approx(9.0 / got["cpu_floor_ms"])
    assert got["cpu_floor_ms"] > got["codec_floor_ms"]
    assert got["gpuzarr_ms"] == pytest.approx(4.0)


def test_ceilings_without_tensorstore_or_the_lane_are_nan() -> None:
    assert math.isnan(bench_host.ceilings(_result(None))["ts_over_cpu_floor"])
    no_lane = _result(0.009)
    no_lane["host"].update(compiled_codec_us_per_chunk=float("nan"), compiled_host_us_per_chunk=float("nan"))
    got = bench_host.ceilings(no_lane)
    assert math.isnan(got["codec_floor_ms"]) and math.isnan(got["ts_over_codec_floor"])
