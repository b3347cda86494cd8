"""Data-parallel training with torchrun: each rank reads its own share with gpuzarr.torch.ZarrLoader.

    torchrun --nproc-per-node 2 examples/ddp_torchrun.py          # 2 processes, gloo on CPU (nccl on GPUs)
    python examples/ddp_torchrun.py                                # the same: starts torchrun for you

ZarrLoader takes rank and world size from torch.distributed; every rank gets the same
number of batches (shares are padded, never short), so no collective waits forever;
``set_epoch`` reshuffles each epoch. Multi-node runs are torchrun's job
(``--nnodes``, ``--rdzv-endpoint``); nothing in gpuzarr changes. Rank 0 prints the loss per
epoch; the last line is JSON with every rank's sample count and batch count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
from _tiny import tiny_dataset
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from train_torch import model

import gpuzarr
import gpuzarr.torch as gt


def train(args: argparse.Namespace) -> None:
    gpu = torch.cuda.is_available() and not args.cpu
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    group = gpuzarr.open_group(args.data)
    loader = gt.ZarrLoader(
        {"raw": group["raw"], "flow": group["flow"]},
        gpuzarr.RandomCrops((args.crop, args.crop), seed=0, samples_per_epoch=args.samples),
        args.batch_size, scale={"flow": 0.5}, device=device, metadata=True,
        transform={"raw": gpuzarr.OutputTransform(mean=127.5, std=64.0)},
    )
    torch.manual_seed(0)
    net = DistributedDataParallel(model().to(device))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    seen, losses = [], []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        total = torch.zeros(2, device=device)
        for batch, meta in loader:
            pred = net(batch["raw"])
            loss = nn.functional.mse_loss(pred, batch["flow"].float())
            opt.zero_grad()
            loss.backward()          # DDP all-reduces gradients here: every rank must take this step
            opt.step()
            total += torch.stack([loss.detach() * len(pred), torch.tensor(float(len(pred)), device=device)])
            seen += meta["sample_id"].tolist()
        dist.all_reduce(total)
        losses.append((total[0] / total[1]).item())
        if rank == 0:
            print(f"epoch {epoch}: {len(loader)} batches per rank x {world} ranks, mean loss {losses[-1]:.4f}")
    report = [None] * world
    dist.all_gather_object(report, {"rank": rank, "samples": len(seen), "batches": len(loader)})
    if rank == 0:
        print(json.dumps({"world_size": world, "ranks": report, "losses": losses}))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a gpuzarr demo group (default: a tiny one, made on first run)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--samples", type=int, default=50, help="random crops per epoch (all ranks together)")
    parser.add_argument("--nproc", type=int, default=2, help="processes when started without torchrun")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU even when GPUs are present")
    args = parser.parse_args(argv)
    args.data = args.data or tiny_dataset()
    if "LOCAL_RANK" not in os.environ:   # not under torchrun: start it with this script
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]), "--data", args.data]
        return subprocess.call(cmd)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
