"""Every script in ``examples/`` runs on the CPU on a tiny dataset it makes itself, and its ``--help`` works.

The training examples' loss goes down; the DDP example runs 2 processes under torchrun
(gloo) with the same number of batches and samples on each rank; the S3 example streams
from a loopback moto server. Most run in this process (importing torch once on a small
machine); ``simple_access.py`` and ``ddp_torchrun.py`` run as real scripts.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ["simple_access", "train_torch", "train_dali", "s3_streaming", "ddp_torchrun"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("example-data")


@pytest.fixture
def examples(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("GPUZARR_EXAMPLE_DATA", str(data_dir))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return lambda name: importlib.import_module(name)


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(examples: Any, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        examples(name).main(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_simple_access_as_a_script(data_dir: Path) -> None:
    env = {**os.environ, "GPUZARR_EXAMPLE_DATA": str(data_dir)}
    done = subprocess.run([sys.executable, str(EXAMPLES / "simple_access.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "equal to zarr-python: yes" in done.stdout


@pytest.mark.parametrize("name", ["train_torch", "train_dali"])
def test_training_loss_goes_down(examples: Any, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert examples(name).main(["--epochs", "3"]) == 0
    losses = last_json(capsys.readouterr().out)["losses"]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0]


def test_s3_streaming(examples: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert examples("s3_streaming").main(["--samples", "32"]) == 0
    report = last_json(capsys.readouterr().out)
    assert report["samples"] == 32 and report["plain_samples_per_s"] > 0 and report["prefetch_samples_per_s"] > 0


def test_ddp_torchrun_two_processes(data_dir: Path) -> None:
    env = {**os.environ, "GPUZARR_EXAMPLE_DATA": str(data_dir), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "ddp_torchrun.py"), "--cpu", "--samples", "21"],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json(done.stdout)
    assert report["world_size"] == 2
    # 21 samples on 2 ranks: 11 each (one repeated), in 2 batches of 8 + 3, for 2 epochs
    assert [r["batches"] for r in report["ranks"]] == [2, 2]
    assert [r["samples"] for r in report["ranks"]] == [22, 22]
    assert report["losses"][-1] < report["losses"][0]
