"""Host overhead of the GPU engine's orchestration, measured under the GPU emulation (no GPU needed).

One batch of Blosc chunks (float32, zstd, bit shuffle, 1 KiB blocks: 20 480 compressed
streams) goes through ``GpuEngine.decode_and_assemble`` with the device work made free:
the emulated libnvcomp's ``DecompressAsync`` reports every entry decoded to its slot size
without decoding, every kernel launch is a no-op after its argument checks, device
allocations are not filled and host→device copies of chunk bytes are skipped (nvCOMP's
pointer tables are still copied: the free decode reads them). What remains is what the
engine does on the host per batch — packing the chunks into the pinned arena, Blosc header
and block-table parsing and validation, arena layout, pointer/size tables, the nvCOMP
calls, the result check, launcher validation — reported as host µs per chunk and per stream (median
of ``--repeat`` runs). Prints a table and writes JSON (``--out``).

    python benchmarks/bench_gpu_host.py [--chunks 80] [--repeat 7] [--label after] [--out bench-gpu-host.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _free_device(emu: object) -> None:
    """Make decode, kernels, fills and uploads free (see the module docstring)."""
    import ctypes

    import gpu_emulation as ge

    def free_decompress(self: object, alg: str, in_ptrs: int, in_bytes: int, out_cap: int, out_actual: int, n: int,
                        temp: int, temp_bytes: int, out_ptrs: int, opts: object, statuses: int, stream: int) -> int:
        """Report every entry decoded to its slot's size, without decoding (reads the capacity table)."""
        cap = np.ctypeslib.as_array((ctypes.c_uint64 * n).from_address(out_cap))
        np.ctypeslib.as_array((ctypes.c_uint64 * n).from_address(out_actual))[:] = cap
        np.ctypeslib.as_array((ctypes.c_int32 * n).from_address(statuses))[:] = 0
        return 0

    import cupy

    ge.FakeLibnvcomp._decompress = free_decompress
    cupy.empty = lambda shape, dtype=float, order="C": ge.FakeDeviceArray(np.empty(shape, dtype=dtype))
    real_set = ge.FakeDeviceArray.set

    def set_tables_only(self: object, arr: np.ndarray, stream: object = None) -> None:
        if arr.dtype == np.uint64:  # nvCOMP's pointer/size tables: the free decode reads them
            real_set(self, arr, stream)

    ge.FakeDeviceArray.set = set_tables_only
    ge.FakeKernel.__call__ = lambda self, grid, block, args, **kw: ge._check_launch(self.name, grid, block,
                                                                                     tuple(args))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--profile", action="store_true", help="print the top functions of one more run")
    args = ap.parse_args()

    import zarr
    from gpu_emulation import gpu_emulation
    from zarr.codecs import BloscCodec

    import gpuzarr

    side = 256
    with tempfile.TemporaryDirectory() as tmp, gpu_emulation() as emu:
        _free_device(emu)
        rng = np.random.default_rng(0)
        shape = (args.chunks * side, side)
        data = (rng.standard_normal(shape) * 4).round(1).astype(np.float32)
        arr = zarr.create_array(f"{tmp}/a.zarr", shape=shape, chunks=(side, side), dtype="f4",
                                compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", blocksize=1024))
        arr[...] = data
        handle = gpuzarr.open_array(f"{tmp}/a.zarr")
        plan = handle.plan([(slice(i * side, (i + 1) * side), slice(0, side)) for i in range(args.chunks)])
        encoded = handle.reader.read(plan.chunk_coords, deferred=False, to_device=False)
        keys = handle.reader.chunk_keys(plan.chunk_coords)
        from gpuzarr.codecs import blosc

        batch = blosc.parse_blosc_batch(encoded)
        n_streams = int(batch.stream_csize.size)
        from gpuzarr.engines.base import resolve_engine

        engine = resolve_engine("cuda")
        times = []
        for _ in range(args.repeat + 1):
            t0 = time.perf_counter()
            engine.decode_and_assemble(plan, encoded, handle.chain, handle.fill_value, keys=keys,
                                       array_name=handle.name)
            times.append(time.perf_counter() - t0)
        host = float(np.median(times[1:]))  # the first run compiles nothing here but warms caches
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(engine.decode_and_assemble, plan, encoded, handle.chain, handle.fill_value, keys=keys,
                         array_name=handle.name)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    result = {"label": args.label, "chunks": args.chunks, "streams": n_streams,
              "host_ms_per_batch": round(host * 1e3, 3), "host_us_per_chunk": round(host * 1e6 / args.chunks, 2),
              "host_us_per_stream": round(host * 1e6 / n_streams, 3), "repeat": args.repeat,
              "machine": f"{platform.node()} {platform.machine()} (shared: numbers indicative)",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{'label':10} {'chunks':>7} {'streams':>8} {'ms/batch':>9} {'µs/chunk':>9} {'µs/stream':>10}")
    print(f"{args.label or '-':10} {args.chunks:7d} {n_streams:8d} {result['host_ms_per_batch']:9.2f} "
          f"{result['host_us_per_chunk']:9.1f} {result['host_us_per_stream']:10.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
