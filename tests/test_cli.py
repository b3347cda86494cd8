"""The ``gpuzarr`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuzarr.tools.cli import build_parser, main


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuzarr", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, check=False)


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["demo", "--help"], ["info", "--help"]])
def test_help(args: list[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "usage: gpuzarr" in proc.stdout


def test_bench_help_names_presets_and_readers() -> None:
    out = run_cli("bench", "--help").stdout
    for word in ("tiny", "demo", "full", "gpuzarr-cuda", "tensorstore", "zarrs", "--no-plots", "--json", "--out"):
        assert word in out


def test_info_table_does_not_hang() -> None:
    proc = run_cli("info", timeout=90)
    assert proc.returncode == 0, proc.stderr
    for word in ("cupy", "nvcomp", "kvikio", "nvml", "gpu engine", "tensorstore", "zarrs", "torch", "dali"):
        assert word in proc.stdout


def test_info_json_says_why() -> None:
    proc = run_cli("info", "--json", timeout=90)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for name in ("python", "gpuzarr", "numpy", "zarr", "numcodecs", "cpu lane", "cupy", "cuda", "nvcomp", "kvikio",
                 "gpu engine", "nvml", "dali", "torch", "tensorstore", "zarrs"):
        entry = report[name]
        assert entry["status"] == "usable" if entry["usable"] else entry["status"].startswith("not usable: ")
        if not entry["usable"]:
            assert entry["detail"], f"{name} is not usable but gives no reason"
    assert report["python"]["usable"] and report["zarr"]["usable"]
    from gpuzarr.engines import compiled

    assert report["cpu lane"]["usable"] == compiled.available()
    from gpuzarr import _optional

    assert report["gpu engine"]["usable"] == bool(_optional.gpu_engine())
    assert report["gpu engine"]["extra"]["auto_device"] in ("cpu", "cuda")


def test_bench_tiny_json(tmp_path: Path) -> None:
    proc = run_cli("bench", "--preset", "tiny", "--readers", "zarr-python,gpuzarr-cpu", "--repeats", "2",
                   "--json", "--no-plots", "--no-progress", "--data-dir", str(tmp_path / "data"),
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["readers"]) == {"zarr-python", "gpuzarr-cpu"}
    assert all(e["status"] == "ok" for e in result["readers"].values())
    assert Path(result["files"]["json"]).exists()
    assert not any(name.endswith(".png") for name in (p.name for p in (tmp_path / "out").iterdir()))


def test_bench_table_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--preset", "tiny", "--readers", "zarr-python", "--repeats", "2", "--no-progress",
                 "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "zarr-python" in out and "crops/s" in out
    assert (tmp_path / "out" / "bench-tiny-throughput.png").exists()


@pytest.mark.parametrize("args", [
    ["bench", "--crop", "0"],
    ["bench", "--crop", "ax3"],
    ["bench", "--batch", "-1"],
    ["bench", "--readers", "nope"],
    ["bench", "--preset", "huge"],
    ["bench", "--storage-option", "novalue"],
    [],
])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(args)
    assert exc.value.code == 2


def test_argument_parsing() -> None:
    args = build_parser().parse_args(["bench", "--crop", "64x128", "--readers", "zarr-python,tensorstore",
                                      "--storage-option", "anon=true", "--storage-option", "endpoint_url=http://x"])
    assert args.crop == (64, 128)
    assert args.readers == ["zarr-python", "tensorstore"]
    assert dict(args.storage_options) == {"anon": True, "endpoint_url": "http://x"}
    assert build_parser().parse_args(["bench", "--crop", "96"]).crop == (96, 96)


def test_bad_dataset_is_one_clear_line(tmp_path: Path) -> None:
    import zarr

    missing = run_cli("bench", "--dataset", str(tmp_path / "missing.zarr"), "--no-progress", "--out", str(tmp_path))
    assert missing.returncode == 2
    assert "missing.zarr" in missing.stderr and "Traceback" not in missing.stderr
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("images", shape=(4, 4), dtype="uint8")
    as_group = run_cli("bench", "--dataset", str(tmp_path / "g.zarr"), "--no-progress", "--out", str(tmp_path))
    assert as_group.returncode == 2
    assert "group" in as_group.stderr and "images" in as_group.stderr
