"""benchmarks/bench_loader.py runs end to end on a tiny dataset: every reader's batches equal zarr-python's.

No timing is asserted (performance claims live in the benchmark's own output).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_bench_loader_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_loader

    out = tmp_path / "r.json"
    assert bench_loader.main(["--work-dir", str(tmp_path), "--frames", "2", "--height", "96", "--width", "128",
                              "--chunk", "32", "--crop", "24", "--samples", "40", "--batch-size", "8",
                              "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["reader"].split(" ")[0]: r for r in result["rows"]}
    assert {rows[k]["status"] for k in ("ZarrLoader", "RegionDataset", "zarr-python")} == {"ok"}
    assert all(rows[k]["samples"] == 40 for k in ("ZarrLoader", "RegionDataset", "zarr-python"))
    assert rows["zarrdataset"]["status"] == "skipped" or rows["zarrdataset"]["status"] == "ok"
    assert "samples/s" in capsys.readouterr().out
    del sys.modules["bench_loader"]
