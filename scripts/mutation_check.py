"""Mutation check of the kernel evidence: perturb a kernel, a launcher or the compiled lane, see which test fails.

Each mutation edits one file of this checkout (``kernels/*.cu``,
``gpuzarr/engines/gpu/kernels.py`` or the CPU engine's compiled lane) in place, runs the tests that should catch it, and
restores the file with ``git checkout`` (the script refuses to start while those files have
uncommitted changes). Prints a table and writes JSON (``--out``). The kernels are rebuilt
for the CPU automatically (the harness caches builds by source hash).

    python scripts/mutation_check.py [--only K1,L3] [--out mutations.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TESTS = ["tests/test_kernels_on_cpu.py"]
LANE_TESTS = ["tests/test_compiled_lane.py"]
PIPELINE_TESTS = ["tests/test_zarr_pipeline.py"]
ENGINE_TESTS = ["tests/test_kernels_on_cpu.py", "tests/test_gpu_engine_emulated.py::test_blosc_random_geometry",
                "tests/test_gpu_engine_emulated.py::test_output_transform_matches_cpu_engine",
                "tests/test_gpu_engine_emulated.py::test_missing_chunks_read_fill"]

#: id, file, old text, new text, what it does
MUTATIONS = [
    ("K1", "kernels/shuffle.cu", "neblock, j * n + i);", "neblock, i * n + j);",
     "byte unshuffle: source index i*n+j instead of j*n+i"),
    ("K2", "kernels/shuffle.cu", "(unsigned int)(i & 7);", "(unsigned int)(i & 3);",
     "bit unshuffle: bit shift i&3 instead of i&7"),
    ("K3", "kernels/shuffle.cu", "if (s > nsplits - 1) s = nsplits - 1;", "if (s > nsplits) s = nsplits - 1;",
     "split streams: last-stream clamp off by one"),
    ("K4", "kernels/shuffle.cu", "long long hi = lo + tile_bytes;", "long long hi = lo + tile_bytes - 1;",
     "unshuffle: tile end one byte short"),
    ("K5", "kernels/common.cuh", "if (row_tile_start[mid] <= tile) lo = mid;",
     "if (row_tile_start[mid] < tile) lo = mid;", "gz_find_row: < instead of <= (tile -> row lookup)"),
    ("K6", "kernels/gather.cu", "s_seg = gz_find_row(seg_tile_start, n_segments, tile);\n    __syncthreads();",
     "s_seg = gz_find_row(seg_tile_start, n_segments, tile);\n", "copy_segments: __syncthreads removed"),
    ("K7", "kernels/gather.cu", "for (int d = ndim - 1; d >= 0; --d) {", "for (int d = ndim - 1; d > 0; --d) {",
     "gz_locate: axis 0 skipped"),
    ("K8", "kernels/gather.cu", "s_geo->dst_base = piece_region[p] * sample_size + dst_base;",
     "s_geo->dst_base = piece_region[p] + dst_base;", "gather: region base not scaled by sample_size"),
    ("K9", "kernels/gather.cu", "unsigned char* d = out + (s_geo.dst_base + dst_el) * ITEMSIZE;",
     "unsigned char* d = out + (int)(s_geo.dst_base + dst_el) * ITEMSIZE;",
     "gather copy: output element offset truncated to 32 bits"),
    ("K10", "kernels/gather.cu", "for (int k = 0; k < ITEMSIZE; ++k) d[k] = fill[k];",
     "for (int k = 0; k < ITEMSIZE; ++k) d[k] = fill[0];", "gather copy: fill bytes all from byte 0"),
    ("K11", "kernels/gather.cu", "d[k] = s[ITEMSIZE - 1 - k];", "d[k] = s[k];", "gather copy: byte swap dropped"),
    ("K12", "kernels/gather.cu", "channel_axis >= 0 ? s_geo.channel0 + channel : 0;",
     "channel_axis >= 0 ? channel : 0;", "gather convert: channel index ignores the piece's first channel"),
    ("K13", "kernels/gather.cu", "if (rem > halfway || (rem == halfway && (h & 1ull))) ++h;",
     "if (rem >= halfway) ++h;", "float16 rounding: ties away from zero instead of to even"),
    ("K14", "kernels/crc32c.cu", "for (int t = threadIdx.x; t < 256; t += blockDim.x) {",
     "for (int t = threadIdx.x; t < 255; t += blockDim.x) {", "crc32c: last table entry never built"),
    ("K15", "kernels/crc32c.cu", "const long long per = (count + threads - 1) / threads;",
     "const long long per = count / threads;", "crc32c combine: segments per thread rounded down"),
    ("K16", "kernels/crc32c.cu", "const unsigned char* __restrict__ p = data + seg_offset[s];",
     "const unsigned char* __restrict__ p = data + (int)seg_offset[s];", "crc32c: segment offset truncated to 32 bits"),
    ("K17", "kernels/crc32c.cu", "        part_len[threadIdx.x] = len;\n    }\n    __syncthreads();",
     "        part_len[threadIdx.x] = len;\n    }\n", "crc32c combine: __syncthreads removed"),
    ("L1", "gpuzarr/engines/gpu/kernels.py", "(arena, d_soff, d_first, d_ns, d_size, d_ts, d_mode,",
     "(arena, d_soff, d_first, d_ns, d_ts, d_size, d_mode,", "launch_unshuffle: block_size and typesize swapped"),
    ("L2", "gpuzarr/engines/gpu/kernels.py", "(src, d_so, dst, d_do, d_size, d_tiles,",
     "(src, d_do, dst, d_so, d_size, d_tiles,", "launch_copy_segments: src and dst offsets swapped"),
    ("L3", "gpuzarr/engines/gpu/kernels.py", "common = (chunks, d_coff, d_chunk, d_region, d_src, d_dst,",
     "common = (chunks, d_coff, d_chunk, d_region, d_dst, d_src,", "launch_gather: piece src/dst starts swapped"),
    ("L4", "gpuzarr/engines/gpu/kernels.py", "fill[: src_dtype.itemsize] = np.frombuffer(",
     "fill[1: src_dtype.itemsize + 1] = np.frombuffer(", "launch_gather: fill bytes packed one byte late"),
    ("L5", "gpuzarr/engines/gpu/kernels.py",
     "(*common, np.int32(DTYPE_CODES[src_dtype]), np.int32(src_dtype.itemsize),",
     "(*common, np.int32(src_dtype.itemsize), np.int32(DTYPE_CODES[src_dtype]),",
     "launch_gather convert: dtype code and itemsize swapped (both int)"),
    ("L6", "gpuzarr/engines/gpu/kernels.py", "np.int32(ndim),\n              d_sstr, d_ostr,",
     "np.int32(ndim),\n              d_ostr, d_sstr,", "launch_gather: source and output strides swapped"),
    ("L7", "gpuzarr/engines/gpu/kernels.py", "(data, d_off, d_len, np.int64(n_segs), seg_crc)",
     "(data, d_len, d_off, np.int64(n_segs), seg_crc)", "launch_crc32c: segment offsets and lengths swapped"),
    ("L8", "gpuzarr/engines/gpu/kernels.py", "d_mean, d_inv, out_bytes))", "d_inv, d_mean, out_bytes))",
     "launch_gather convert: mean and inv_std swapped"),
    ("L9", "gpuzarr/engines/gpu/kernels.py", "np.int64(n_blocks), np.int64(UNSHUFFLE_TILE_BYTES), out)",
     "np.int64(n_blocks), np.int64(UNSHUFFLE_TILE_BYTES // 2), out)",
     "launch_unshuffle: tile size differs from the tile table's"),
    # the CPU engine's compiled lane (Numba): its checks, its copies, and the tables it is handed
    ("C1", "gpuzarr/engines/_compiled_kernel.py", "!= _load_u32(src + body):", "!= _load_u32(src + body) and False:",
     "compiled lane: CRC32C mismatch ignored"),
    ("C2", "gpuzarr/engines/_compiled_kernel.py", "if cbytes != body or nbytes != chunk_bytes:",
     "if nbytes != chunk_bytes:", "compiled lane: Blosc cbytes not checked against the bytes read"),
    ("C3", "gpuzarr/engines/_compiled_kernel.py", "_memcpy(do, so, run)", "_memcpy(do, so, run - 1)",
     "compiled lane: each row copy one byte short"),
    ("C4", "gpuzarr/engines/_compiled_kernel.py", "do += index[d] * dst_strides[d]", "do += index[d] * src_strides[d]",
     "compiled lane: output rows stepped by the chunk's strides"),
    ("C5", "gpuzarr/engines/_compiled_kernel.py", "status[u] = _CORRUPT  # a zstd error",
     "status[u] = _DONE  # a zstd error", "compiled lane: a failed Zstd decode reported done"),
    ("C6", "gpuzarr/engines/compiled.py", "+ plan.piece_region.astype(np.int64) * out_strides[0]", "",
     "compiled lane tables: the region's offset in the batch dropped"),
    ("C7", "gpuzarr/engines/compiled.py", "order = np.lexsort((starts, path_index))",
     "order = np.lexsort((path_index, starts))", "compiled lane tables: chunks ordered by offset, then file"),
    ("C8", "gpuzarr/engines/_compiled_kernel.py", "x = x ^ t ^ (t << _U14)", "x = x ^ t",
     "compiled Blosc decoder: the bit transpose's middle step half done"),
    ("C9", "gpuzarr/engines/_compiled_kernel.py", "if csize >= 0x80000000 or csize > body - cursor - 4:",
     "if csize >= 0x80000000:", "compiled Blosc decoder: a stream size not checked against the chunk"),
    ("C10", "gpuzarr/engines/_compiled_kernel.py", "for b in range(so // blocksize, b1 + 1):",
     "for b in range(so // blocksize, b1):", "compiled lane: the last block a piece row reaches not decoded"),
    ("C11", "gpuzarr/integrations/zarr_pipeline.py", "keys[m], starts[m], lengths[m] = key, r.start, r.end - r.start",
     "keys[m], starts[m], lengths[m] = key, r.start, r.end - r.start - 1",
     "zarr plug-in: a LocalStore shard's inner chunks handed to the lane one byte short"),
    ("C12", "gpuzarr/engines/_compiled_kernel.py", "for b in range(segments[j, 0] // blocksize, b1 + 1):",
     "for b in range(segments[j, 0] // blocksize, b1):",
     "compiled lane: the last block a row unshuffled into the batch reaches not decoded"),
    ("C13", "gpuzarr/engines/_compiled_kernel.py", "g0, g1 = lo // group, min((hi + group - 1) // group, rows)",
     "g0, g1 = lo // group, min(hi // group, rows)",
     "compiled lane: a row's last group of bit-shuffled items not unshuffled"),
    ("C14", "gpuzarr/engines/_compiled_kernel.py",
     "if r and so == segments[r - 1, 0] + segments[r - 1, 1] and do == segments[r - 1, 2] + segments[r - 1, 1]:",
     "if r and so == segments[r - 1, 0] + segments[r - 1, 1]:",
     "compiled lane: rows merged when they continue each other in the chunk only, not in the batch"),
]


def run(mutation: tuple[str, str, str, str, str], python: str) -> dict[str, object]:
    mid, rel, old, new, what = mutation
    path = ROOT / rel
    text = path.read_text()
    if text.count(old) != 1:
        return {"id": mid, "file": rel, "what": what, "error": f"pattern found {text.count(old)} times"}
    tests = (KERNEL_TESTS if rel.startswith("kernels/") else LANE_TESTS if "compiled" in rel
             else PIPELINE_TESTS if "zarr_pipeline" in rel else ENGINE_TESTS)
    t0 = time.perf_counter()
    try:
        path.write_text(text.replace(old, new))
        env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation"}  # a failing example is enough: no shrinking
        proc = subprocess.run([python, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False, env=env)
    finally:
        subprocess.run(["git", "checkout", "--", rel], cwd=ROOT, check=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+?)(?:\[.*?\])?(?: - |$)", proc.stdout, re.MULTILINE)))
    errors = sorted(set(re.findall(r"^ERROR (\S+)", proc.stdout, re.MULTILINE)))
    # the process died (a wild write or a fault outside a fiber), or a test's watchdog (pytest-timeout,
    # thread method) ended a runaway kernel by exiting the process: either way the mutation is caught
    timed_out = "+ Timeout +" in proc.stdout + proc.stderr
    crashed = proc.returncode < 0 or "Fatal Python error" in proc.stderr or timed_out
    if crashed:  # name the frames of the tests
        where = re.findall(r'File "[^"]*(tests/test_\w+\.py)", line \d+,? in (\w+)', proc.stdout + proc.stderr)
        kind = "timeout" if timed_out else "crash"
        errors += [f"{kind} in {f}::{fn}" for f, fn in dict.fromkeys(where)] or [kind]
    return {"id": mid, "file": rel, "what": what, "caught": crashed or (bool(failed or errors) and proc.returncode != 0),
            "failed": failed + errors, "seconds": round(time.perf_counter() - t0, 1),
            "tail": (proc.stdout + proc.stderr)[-1500:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    files = sorted({m[1] for m in MUTATIONS})
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *files], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    if dirty:
        print(f"refusing: uncommitted changes in\n{dirty}", file=sys.stderr)
        return 2
    only = {x for x in args.only.split(",") if x}
    results = []
    for m in MUTATIONS:
        if only and m[0] not in only:
            continue
        r = run(m, sys.executable)
        results.append(r)
        status = "caught" if r.get("caught") else ("ERROR " + str(r["error"]) if "error" in r else "MISSED")
        print(f"{r['id']:4} {status:7} {r['what']}\n       by: {', '.join(r.get('failed', [])) or '-'}", flush=True)
        if not r.get("caught"):
            print(r.get("tail", ""), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r.get("caught") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
