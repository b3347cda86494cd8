"""A lean install: the base dependencies are what the CPU path needs; commands of an extra say what to install."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: packages only the benchmark and the demo use: `import gpuzarr` must not load them at all
BENCH_ONLY = ("rich", "tqdm", "psutil", "pynvml", "matplotlib", "tensorstore", "zarrs")
#: optional packages gpuzarr itself must not import at import time (zarr may: it imports fsspec
#: when installed, and fsspec imports lz4 when installed)
NOT_AT_IMPORT = (*BENCH_ONLY, "moto", "hypothesis", "icechunk", "s3fs", "obstore", "aiohttp", "torch", "cupy",
                 "nvidia.dali", "kvikio", "lz4", "pytest", "numba", "llvmlite")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_import_gpuzarr_loads_no_optional_package() -> None:
    proc = _run("import json, sys, numpy, numcodecs, zarr\n"
                "before = set(sys.modules)\n"
                "import gpuzarr\n"
                f"print(json.dumps([[m for m in {NOT_AT_IMPORT!r} if m in sys.modules and m not in before],\n"
                f"                  [m for m in {BENCH_ONLY!r} if m in sys.modules]]))")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[], []]


def test_base_dependencies_are_the_cpu_path_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=\[ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    assert base == {"numpy", "zarr", "numcodecs", "crc32c", "donfig"}
    extras = project["optional-dependencies"]
    assert {"fast", "demo", "bench", "s3", "gpu", "torch", "dali", "test"} <= set(extras)
    demo = {re.split(r"[<>=\[ ;]", dep, maxsplit=1)[0].lower() for dep in extras["demo"]}
    assert not demo & {"moto", "icechunk", "hypothesis", "pytest", "tensorstore", "zarrs"}


def _cli_without(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a base install without ``module`` runs it (``sys.modules[module] = None`` blocks the import)."""
    return _run(f"import sys; sys.modules[{module!r}] = None\n"
                f"from gpuzarr.tools.cli import main\nsys.exit(main({list(argv)!r}))")


def test_commands_of_a_missing_extra_say_what_to_install() -> None:
    for module, argv, extra in (("rich", ("demo", "--no-progress"), "demo"), ("tqdm", ("bench",), "bench"),
                                ("psutil", ("demo",), "demo"), ("rich", ("info",), "demo")):
        proc = _cli_without(module, *argv)
        assert proc.returncode == 3, (argv, proc.stderr)
        assert f"pip install 'gpuzarr[{extra}]'" in proc.stderr and module in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_info_json_needs_no_extra() -> None:
    proc = _cli_without("rich", "info", "--json", "--timeout", "30")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report and all("status" in entry and "usable" in entry for entry in report.values())
