"""``gpuzarr.torch``: ZarrLoader and RegionDataset against zarr-python, in real DataLoader workers.

* batches equal zarr's values (one array and a dict of arrays at scaled windows);
* DataLoader semantics: ``len()`` per epoch, ``set_epoch``, a new ``iter()`` starts over,
  ``drop_last`` and the partial last batch;
* resume after k batches yields exactly the remaining samples, in-process and in a new process;
* RegionDataset in a stock DataLoader with fork / spawn / forkserver workers, after the
  parent has already read through the threaded reader;
* 2 real ranks (gloo) × 2 workers: every sample of an epoch exactly once, equal batch counts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import gpuzarr
import gpuzarr.torch as gt

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")

SHAPE = (4, 3, 40, 48)
CROP = (8, 12)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("torchdata")
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=SHAPE, dtype=np.uint8)
    flow = rng.standard_normal((4, 2, 20, 24)).astype(np.float32)
    group = zarr.open_group(str(root / "d.zarr"), mode="w")
    group.create_array("raw", shape=raw.shape, chunks=(1, 3, 16, 16), dtype=raw.dtype)[:] = raw
    group.create_array("flow", shape=flow.shape, chunks=(1, 2, 8, 8), dtype=flow.dtype)[:] = flow
    return root / "d.zarr", raw, flow


def open_pair(path: Path) -> dict[str, gpuzarr.ArrayHandle]:
    group = gpuzarr.open_group(str(path))
    return {"raw": group["raw"], "flow": group["flow"]}


def crop(array: np.ndarray, start: list[int], size: tuple[int, int]) -> np.ndarray:
    t, _, y, x = start
    return array[t, :, y : y + size[0], x : x + size[1]]


def ids(loader: Any) -> list[int]:
    return [i for _, meta in loader for i in meta["sample_id"].tolist()]


def test_zarr_loader_dict_batches_equal_zarr(dataset: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, raw, flow = dataset
    sampler = gpuzarr.RandomCrops(CROP, seed=1, samples_per_epoch=10)
    loader = gt.ZarrLoader(open_pair(path), sampler, 4, scale={"flow": 0.5}, metadata=True, device="auto")
    assert len(loader) == 3
    seen = 0
    for batch, meta in loader:
        assert isinstance(batch["raw"], torch.Tensor) and batch["raw"].device.type == "cpu"
        assert batch["raw"].dtype == torch.uint8 and batch["flow"].dtype == torch.float32
        for i, start in enumerate(meta["start"].tolist()):
            np.testing.assert_array_equal(batch["raw"][i].numpy(), crop(raw, start, CROP))
            half = [start[0], 0, start[2] // 2, start[3] // 2]
            np.testing.assert_array_equal(batch["flow"][i].numpy(), crop(flow, half, (CROP[0] // 2, CROP[1] // 2)))
        seen += len(meta["sample_id"])
    assert seen == 10


def test_transform_is_applied_per_array(dataset: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, raw, _ = dataset
    transform = gpuzarr.OutputTransform(mean=(10.0, 20.0, 30.0), std=2.0, channel_axis=0, layout="HWC")
    loader = gt.ZarrLoader(open_pair(path), gpuzarr.GridPatches(CROP), 5, device="cpu", scale={"flow": 0.5},
                           transform={"raw": transform}, metadata=True)
    batch, meta = next(iter(loader))
    want = transform.apply_reference(np.stack([crop(raw, s, CROP) for s in meta["start"].tolist()]))
    np.testing.assert_array_equal(batch["raw"].numpy(), want)
    assert batch["raw"].shape[1:] == (*CROP, 3) and batch["flow"].dtype == torch.float32


@pytest.mark.parametrize("drop_last", [False, True])
def test_epochs_order_len_and_partial_batch(dataset: tuple[Path, np.ndarray, np.ndarray], drop_last: bool) -> None:
    path, _, _ = dataset
    sampler = gpuzarr.RandomCrops(CROP, seed=7, samples_per_epoch=11)
    loader = gt.ZarrLoader(open_pair(path)["raw"], sampler, 4, drop_last=drop_last, metadata=True, device="cpu")
    sizes = [len(meta["sample_id"]) for _, meta in loader]
    assert sizes == ([4, 4] if drop_last else [4, 4, 3]) and len(loader) == len(sizes)
    first = ids(loader)
    assert first == ids(loader), "same seed and epoch: same order"
    assert sorted(first) == list(range(8 if drop_last else 11)) or drop_last
    starts0 = [m["start"].tolist() for _, m in loader]
    loader.set_epoch(1)
    assert [m["start"].tolist() for _, m in loader] != starts0, "another epoch: another order"
    loader.set_epoch(0)
    assert [m["start"].tolist() for _, m in loader] == starts0


def test_new_iter_after_break_starts_the_epoch_over(dataset: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = dataset
    loader = gt.ZarrLoader(open_pair(path)["raw"], gpuzarr.GridPatches(CROP, shuffle=True), 3, metadata=True)
    everything = ids(loader)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    assert loader.state_dict() == {"epoch": 0, "sample": 6}
    assert ids(loader) == everything


@pytest.mark.parametrize("k", [0, 1, 3, 4])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_after_k_batches_yields_exactly_the_rest(dataset: tuple[Path, np.ndarray, np.ndarray], k: int,
                                                        prefetch: int) -> None:
    path, _, _ = dataset
    sampler = gpuzarr.RandomCrops(CROP, seed=3, samples_per_epoch=13)

    def make() -> gt.ZarrLoader:
        loader = gt.ZarrLoader(open_pair(path), sampler, 4, scale={"flow": 0.5}, metadata=True,
                               prefetch_batches=prefetch)
        loader.set_epoch(2)
        return loader

    everything = ids(make())
    first = make()
    taken: list[int] = []
    batches = iter(first)
    for _ in range(k):
        taken += next(batches)[1]["sample_id"].tolist()
    state = json.loads(json.dumps(first.state_dict()))
    batches.close()
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the usual loop calls set_epoch again: the resume point of that epoch is kept
    assert taken + ids(resumed) == everything
    assert ids(resumed) == everything, "the iteration after the resumed one is a whole epoch"


RESUME_SCRIPT = """
import json, sys
import gpuzarr, gpuzarr.torch as gt
path, state = sys.argv[1], json.loads(sys.argv[2])
loader = gt.ZarrLoader(gpuzarr.open_group(path)["raw"], gpuzarr.RandomCrops((8, 12), seed=5, samples_per_epoch=14),
                       3, metadata=True, epoch=1)
loader.load_state_dict(state)
print(json.dumps([i for _, meta in loader for i in meta["sample_id"].tolist()]))
"""


def test_resume_across_a_process_restart(dataset: tuple[Path, np.ndarray, np.ndarray]) -> None:
    """The state of a loader stopped after 2 batches, saved as JSON, resumes in a new interpreter."""
    path = str(dataset[0])
    sampler = gpuzarr.RandomCrops((8, 12), seed=5, samples_per_epoch=14)

    def make() -> gt.ZarrLoader:
        return gt.ZarrLoader(gpuzarr.open_group(path)["raw"], sampler, 3, metadata=True, epoch=1)

    whole = ids(make())
    first = make()
    batches = iter(first)
    taken = [i for _ in range(2) for i in next(batches)[1]["sample_id"].tolist()]
    state = json.dumps(first.state_dict())
    batches.close()
    done = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, path, state], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert taken + json.loads(done.stdout) == whole and len(whole) == 14


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_region_dataset_in_workers_after_the_parent_read(dataset: tuple[Path, np.ndarray, np.ndarray],
                                                        context: str) -> None:
    path, raw, flow = dataset
    sampler = gpuzarr.RandomCrops(CROP, seed=11, samples_per_epoch=10)
    mp_context = torch.multiprocessing.get_context(context)
    if context == "forkserver":  # the server imports torch and gpuzarr once; workers fork from it
        mp_context.set_forkserver_preload(["gpuzarr.torch"])
    with gpuzarr.config.set({"threads": 4}):  # the CPU engine's thread pool runs in the parent first
        ds = gt.RegionDataset(open_pair(path), sampler, scale={"flow": 0.5}, metadata=True)
        parent = ds.__getitems__(list(range(len(ds))))  # the parent has read (pools started) before forking
        # spawn starts a fresh interpreter per worker (slow on a small shared machine): one is enough there
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1 if context == "spawn" else 2,
                                             multiprocessing_context=mp_context, timeout=300)
        got = list(loader)
    assert [len(meta["sample_id"]) for _, meta in got] == [4, 4, 2]
    assert torch.cat([meta["sample_id"] for _, meta in got]).tolist() == list(range(10))
    for batch, meta in got:
        for i, start in enumerate(meta["start"].tolist()):
            np.testing.assert_array_equal(batch["raw"][i].numpy(), crop(raw, start, CROP))
            j = int(meta["sample_id"][i])
            half = [start[0], 0, start[2] // 2, start[3] // 2]
            np.testing.assert_array_equal(batch["flow"][i].numpy(), crop(flow, half, (CROP[0] // 2, CROP[1] // 2)))
            np.testing.assert_array_equal(batch["raw"][i].numpy(), parent[j][0]["raw"].numpy())


def test_zarr_loader_with_worker_processes(dataset: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, raw, _ = dataset
    sampler = gpuzarr.RandomCrops(CROP, seed=2, samples_per_epoch=9)
    loader = gt.ZarrLoader(open_pair(path)["raw"], sampler, 4, metadata=True, num_workers=2,
                           multiprocessing_context="fork")
    batches = list(loader)
    assert [len(m["sample_id"]) for _, m in batches] == [4, 4, 1] == [len(b) for b, _ in batches]
    assert torch.cat([m["sample_id"] for _, m in batches]).tolist() == list(range(9))
    for batch, meta in batches:
        for i, start in enumerate(meta["start"].tolist()):
            np.testing.assert_array_equal(batch[i].numpy(), crop(raw, start, CROP))


DDP_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
import gpuzarr, gpuzarr.torch as gt

def main(rank, world, path, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    result = {}
    for n in (12, 5, 1):
        group = gpuzarr.open_group(path)
        loader = gt.ZarrLoader(group["raw"], gpuzarr.RandomCrops((8, 12), seed=4, samples_per_epoch=n), 2,
                               metadata=True, num_workers=2, multiprocessing_context="fork", epoch=1)
        ds = gt.RegionDataset({"raw": group["raw"], "flow": group["flow"]},
                              gpuzarr.RandomCrops((8, 12), seed=4, samples_per_epoch=n), scale={"flow": 0.5},
                              metadata=True, epoch=1)
        dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
        for name, it, length in (("zarr_loader", loader, len(loader)), ("region_dataset", dl, len(dl))):
            got, steps = [], 0
            for batch, meta in it:
                got += meta["sample_id"].tolist()
                token = torch.ones(1)
                dist.all_reduce(token)  # a DDP step: hangs if one rank has fewer batches
                steps += 1
            result[f"{name}/{n}"] = {"rank": dist.get_rank(), "ids": got, "steps": steps, "len": length}
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    path, init, out = sys.argv[1:4]
    # fork: the ranks share this interpreter's imports (a spawned rank imports torch again)
    torch.multiprocessing.start_processes(main, args=(2, path, init, out), nprocs=2, start_method="fork")
"""


def test_two_ranks_two_workers_see_every_sample_once(dataset: tuple[Path, np.ndarray, np.ndarray],
                                                     tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    done = subprocess.run([sys.executable, str(script), str(dataset[0]), f"file://{tmp_path}/init", str(out)],
                          capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = json.loads(out.read_text())
    for key in ranks[0]:
        n = int(key.split("/")[1])
        per_rank = [r[key] for r in ranks]
        assert [r["rank"] for r in per_rank] == [0, 1]
        steps = {r["steps"] for r in per_rank}
        assert len(steps) == 1 and steps == {r["len"] for r in per_rank} == {math.ceil(math.ceil(n / 2) / 2)}, key
        every = per_rank[0]["ids"] + per_rank[1]["ids"]
        if n % 2 == 0:
            assert sorted(every) == list(range(n)), f"{key}: each sample exactly once"
        else:  # one rank is one sample short and repeats one of its own
            assert set(every) == set(range(n)) and len(every) == n + 1, key
