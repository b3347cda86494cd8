"""Train a small CNN on random crops of raw frames + optical flow at half resolution, with gpuzarr.torch.

    python examples/train_torch.py --epochs 3            # tiny dataset made on first run; GPU when torch sees one

The model predicts the flow crop (2, h/2, w/2) from the raw crop (3, h, w). One
ZarrLoader reads both arrays at the same window (``scale={"flow": 0.5}``), normalises
``raw`` while assembling the batch (OutputTransform), and hands over tensors on the
training device. Prints the mean loss per epoch; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json

import torch
from _tiny import tiny_dataset
from torch import nn

import gpuzarr
import gpuzarr.torch as gt


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),   # to half resolution, like flow
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 2, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a gpuzarr demo group (default: a tiny one, made on first run)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128, help="random crops per epoch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)

    group = gpuzarr.open_group(args.data or tiny_dataset())
    loader = gt.ZarrLoader(
        {"raw": group["raw"], "flow": group["flow"]},
        gpuzarr.RandomCrops((args.crop, args.crop), seed=0, samples_per_epoch=args.samples),
        args.batch_size,
        scale={"flow": 0.5},
        transform={"raw": gpuzarr.OutputTransform(mean=127.5, std=64.0)},   # float32, fused into assembly
        device=args.device,
    )
    device = loader.target
    torch.manual_seed(0)
    net = model().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    losses = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        total, n = 0.0, 0
        for batch in loader:
            pred = net(batch["raw"])
            loss = nn.functional.mse_loss(pred, batch["flow"].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(pred)
            n += len(pred)
        losses.append(total / n)
        print(f"epoch {epoch}: {len(loader)} batches on {device}, mean loss {losses[-1]:.4f}")
    print(json.dumps({"losses": losses, "device": str(device)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
