"""Corrupt Blosc chunks on the CPU decode path: a CorruptChunkError naming the key, never a crash.

The fuzz loop runs in a child process, so a crash inside c-blosc would fail this test
instead of killing the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

FUZZ = textwrap.dedent(
    """
    import numpy as np, numcodecs, zarr
    from zarr.codecs import BloscCodec
    from gpuzarr.errors import CorruptChunkError

    rng = np.random.default_rng(SEED)
    arr = zarr.create_array({}, shape=(20000,), chunks=(20000,), dtype="int32",
                            compressors=BloscCodec(cname="zstd", typesize=4))
    from gpuzarr import open_array
    chain = open_array(arr).chain
    bases = []
    for cname in ["lz4", "zstd", "zlib", "blosclz", "lz4hc"]:
        for shuffle in [0, 1, 2]:
            raw = np.cumsum(rng.integers(-2, 3, size=20000)).astype("int32")
            bases.append(numcodecs.Blosc(cname=cname, shuffle=shuffle, blocksize=4096).encode(raw))
    scratch = np.empty(chain.stored_nbytes, np.uint8)
    counts = {"ok": 0, "corrupt": 0}
    for i in range(N):
        b = bytearray(bases[i % len(bases)])
        kind = i % 4
        if kind == 0:
            b = b[: rng.integers(0, len(b))]
        elif kind == 1:
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(0, min(len(b), 64))] = rng.integers(0, 256)
        elif kind == 2:
            for _ in range(rng.integers(1, 8)):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
        else:
            p = rng.integers(16, 200)
            b[p : p + 4] = int(rng.integers(-2**31, 2**31)).to_bytes(4, "little", signed=True)
        intervals = np.array([[int(rng.integers(0, 70000)), 80000]]) if i % 2 else None
        try:
            out = chain.decode(bytes(b), key=f"c/{i}", array="fuzz", scratch=scratch, intervals=intervals)
            assert out.shape == (20000,)
            counts["ok"] += 1
        except CorruptChunkError as exc:
            assert exc.key == f"c/{i}" and f"c/{i}" in str(exc), exc
            counts["corrupt"] += 1
    print(counts)
    assert counts["corrupt"] > N // 2
    """
)


def test_corrupt_blosc_chunks_on_cpu_never_crash() -> None:
    code = FUZZ.replace("SEED", "20261121").replace("range(N)", "range(10000)").replace("N // 2", "5000")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"child exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
