#!/usr/bin/env python
"""Decode throughput of the GPU engine vs the CPU engine vs zarr-python, on demo-like frames.

Rows (decoded GB/s over every chunk of the array):

* Blosc zstd + bit-shuffle (the demo dataset's codec), Blosc lz4 + byte-shuffle, plain Zstd;
* for each: GPU engine (nvCOMP + kernels; chunks already in host memory), CPU engine
  (numcodecs in a thread pool), zarr-python (``arr[...]`` from an in-memory store);

plus end to end: batches of random 960×960 crops (crops/s) through ``read_batch``
on each engine and a loop of ``arr[crop]`` in zarr-python.

Prints a table and writes JSON (``--out``). Without a usable GPU it says so, runs the
CPU rows and exits 0.

    python benchmarks/bench_gpu_decode.py --frames 4 --repeats 3 --out bench_gpu_decode.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import gpuzarr
from gpuzarr import _optional
from gpuzarr.engines.cpu import CpuEngine
from gpuzarr.tools.demo import DemoSpec, _build_world, render_frame

CODECS: dict[str, Callable[[], list[Any]]] = {
    "blosc-zstd-bitshuffle": lambda: [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")],
    "blosc-lz4-shuffle": lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "zstd": lambda: [ZstdCodec(level=3)],
}


def demo_frames(frames: int, height: int, width: int) -> np.ndarray:
    spec = DemoSpec(frames=frames, height=height, width=width)
    world = _build_world(spec)
    return np.stack([render_frame(world, spec, t)[0] for t in range(frames)])


def best_of(repeats: int, fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm up: compile kernels, create codecs, fill pools
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_codec(codec_name: str, compressors: list[Any], data: np.ndarray, regions: list[Any], repeats: int,
                gpu: bool) -> list[dict[str, Any]]:
    """The rows of one codec: decode-all throughput and random-crop rate for each engine."""
    arr = zarr.create_array(store={}, shape=data.shape, chunks=(1, 3, 960, 960), dtype=data.dtype,
                            compressors=compressors, fill_value=0)
    arr[...] = data
    handle = gpuzarr.open_array(arr)
    full = handle.plan([tuple(slice(None) for _ in data.shape)])
    encoded = handle.reader.read(full.chunk_coords)
    keys = handle.reader.chunk_keys(full.chunk_coords)
    stored = sum(len(e) for e in encoded)
    decoded_bytes = full.n_chunks * handle.chain.nbytes
    cpu = CpuEngine()

    def cpu_decode() -> None:
        list(cpu.pool.map(lambda u: handle.chain.decode(encoded[u], key=keys[u]), range(len(encoded))))

    timings = {"cpu": best_of(repeats, cpu_decode), "zarr-python": best_of(repeats, lambda: arr[...])}
    crops = {"cpu": best_of(repeats, lambda: handle.read_batch(regions, device="cpu")),
             "zarr-python": best_of(repeats, lambda: [arr[r] for r in regions])}
    if gpu:
        import cupy as cp

        from gpuzarr.engines.gpu.engine import GpuEngine

        engine = GpuEngine()
        sync = cp.cuda.get_current_stream().synchronize
        timings["gpu"] = best_of(repeats, lambda: engine.decode_chunks(encoded, handle.chain, keys=keys,
                                                                       array_name=handle.name), sync)
        crops["gpu"] = best_of(repeats, lambda: handle.read_batch(regions, device="cuda"), sync)
    rows: list[dict[str, Any]] = []
    for engine_name, seconds in timings.items():
        rows.append({"codec": codec_name, "engine": engine_name, "what": "decode all chunks", "seconds": seconds,
                     "GB/s decoded": decoded_bytes / seconds / 1e9, "ratio": decoded_bytes / stored})
    for engine_name, seconds in crops.items():
        rows.append({"codec": codec_name, "engine": engine_name, "what": f"{len(regions)} random 960x960 crops",
                     "seconds": seconds, "crops/s": len(regions) / seconds, "ratio": decoded_bytes / stored})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--crops", type=int, default=32, help="crops per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_gpu_decode.json")
    args = parser.parse_args()

    gpu = _optional.gpu_engine()
    if not gpu:
        print(f"no usable GPU engine ({gpu.reason}): running the CPU rows only")
    data = demo_frames(args.frames, args.height, args.width)
    rng = np.random.default_rng(0)
    crop = (1, 3, min(960, args.height), min(960, args.width))
    starts = np.stack([rng.integers(0, s - c + 1, args.crops) for s, c in zip(data.shape, crop, strict=True)], axis=1)
    regions = [(int(t), slice(None), slice(int(y), int(y) + crop[2]), slice(int(x), int(x) + crop[3]))
               for t, _, y, x in starts.tolist()]

    rows: list[dict[str, Any]] = []
    for codec_name, make in CODECS.items():
        rows += bench_codec(codec_name, make(), data, regions, args.repeats, bool(gpu))

    print(f"{'codec':24} {'engine':12} {'what':30} {'seconds':>9} {'GB/s':>8} {'crops/s':>9}")
    for r in rows:
        gbs = f"{r['GB/s decoded']:.2f}" if "GB/s decoded" in r else ""
        cps = f"{r['crops/s']:.1f}" if "crops/s" in r else ""
        print(f"{r['codec']:24} {r['engine']:12} {r['what']:30} {r['seconds']:9.4f} {gbs:>8} {cps:>9}")
    result = {"frames": args.frames, "shape": list(data.shape), "gpu": bool(gpu), "gpu_reason": gpu.reason,
              "machine": platform.node(), "rows": rows}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
