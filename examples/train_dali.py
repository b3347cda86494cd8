"""Train a small CNN from a DALI pipeline fed by gpuzarr.dali (raw frames + flow at half resolution).

    python examples/train_dali.py --epochs 3     # CPU pipeline (device_id=None) without a GPU, GPU pipeline with one

gpuzarr.dali.pipeline builds: gpuzarr ExternalSource (whole batches; CuPy on the pipeline's
stream on a GPU) → normalise ``raw`` → outputs; DALIGenericIterator hands torch tensors
to the loop, the last partial batch included. Prints the mean loss per epoch; the last
line is JSON.
"""

from __future__ import annotations

import argparse
import json

import torch
from _tiny import tiny_dataset
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
from torch import nn
from train_torch import model

import gpuzarr
import gpuzarr.dali as gd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a gpuzarr demo group (default: a tiny one, made on first run)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--samples", type=int, default=120, help="random crops per epoch")
    parser.add_argument("--cpu", action="store_true", help="a CPU pipeline even when a GPU is usable")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)

    gpu = bool(gpuzarr._optional.gpu_engine()) and torch.cuda.is_available() and not args.cpu
    group = gpuzarr.open_group(args.data or tiny_dataset())
    pipe = gd.pipeline(
        {"raw": group["raw"], "flow": group["flow"]},
        gpuzarr.RandomCrops((args.crop, args.crop), seed=0, samples_per_epoch=args.samples),
        args.batch_size,
        scale={"flow": 0.5},
        device="gpu" if gpu else "cpu",
        device_id=0 if gpu else None,
        mean=[127.5] * 3, std=[64.0] * 3,
    )
    batches = DALIGenericIterator(pipe, ["raw", "flow"], last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
    device = torch.device("cuda" if gpu else "cpu")
    torch.manual_seed(0)
    net = model().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    losses = []
    for epoch in range(args.epochs):
        total, n = 0.0, 0
        for (batch,) in batches:   # epochs advance by themselves: each DALI reset reads the next one
            pred = net(batch["raw"].to(device))
            loss = nn.functional.mse_loss(pred, batch["flow"].to(device).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(pred)
            n += len(pred)
        losses.append(total / n)
        print(f"epoch {epoch}: {n} samples through DALI ({'GPU' if gpu else 'CPU'} pipeline), mean loss {losses[-1]:.4f}")
    print(json.dumps({"losses": losses, "pipeline": "gpu" if gpu else "cpu"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
