"""Decompression bombs and lying headers: decoding stops at the chunk's known size.

Each case replaces one 8 KiB chunk of a real array (v3 or v2, plain or sharded) with a
hostile stream — 1 GiB of zeros through zstd, gzip, zlib, bz2 or LZMA; a Zstd frame
header claiming 2⁴⁰ bytes; a Blosc or LZ4 header lying about its size; a pcodec stream
of far more elements than the chunk — and reads it in a child process (one for all cases). The read must
fail with :class:`~gpuzarr.errors.CorruptChunkError` naming the array and the chunk key,
and the child's peak RSS (``resource.getrusage(...).ru_maxrss``) may grow by at most
:data:`RSS_BOUND_MIB` over its peak after normal reads of the same arrays (for each case, and
for all of them together).
"""

from __future__ import annotations

import bz2
import functools
import json
import lzma
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

#: the most a bomb may raise the reader's peak RSS (the chunk itself is 8 KiB)
RSS_BOUND_MIB = 32
GIB = 1 << 30
_BLOCK = 16 << 20  # bombs are built from identical 16 MiB pieces: fast to make, 1 GiB to decode

CHILD = r"""
import json, resource, sys
import gpuzarr
from gpuzarr.errors import CorruptChunkError

cases = json.loads(sys.argv[1])  # [[name, path, good region, bad region], ...]
as_region = lambda r: tuple(slice(a, b) for a, b in r)
handles = {name: gpuzarr.open_array(path) for name, path, _, _ in cases}
for name, _, good, _ in cases:  # warm: imports, pools, one real decode per codec path
    handles[name].read_batch([as_region(good)], device="cpu")
results = {}
start = before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, _, _, bad in cases:
    result = {"error": None}
    try:
        handles[name].read_batch([as_region(bad)], device="cpu")
    except CorruptChunkError as exc:
        result = {"error": "CorruptChunkError", "message": str(exc), "key": exc.key, "array": exc.array}
    except BaseException as exc:  # anything else is a failure the parent reports
        result = {"error": type(exc).__name__, "message": str(exc)[:500]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["grew_kib"], before = peak - before, peak
    results[name] = result
results["__total__"] = {"grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start}
print(json.dumps(results))
"""


# ----------------------------------------------------------------------------- bomb streams


def _deflate_zeros(n_blocks: int) -> tuple[bytes, int, int]:
    """A raw deflate stream of ``n_blocks`` × 16 MiB zeros (identical byte-aligned pieces), its crc32 and adler32."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(_BLOCK)
    piece = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH) == piece  # the dictionary is reset: pieces repeat
    crc, adler = 0, 1
    for _ in range(n_blocks):
        crc, adler = zlib.crc32(zeros, crc), zlib.adler32(zeros, adler)
    return piece * n_blocks + co.flush(), crc, adler


@functools.cache
def gzip_bomb(total: int = GIB) -> bytes:
    body, crc, _ = _deflate_zeros(total // _BLOCK)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + crc.to_bytes(4, "little") + (
        total & 0xFFFFFFFF).to_bytes(4, "little")


@functools.cache
def zlib_bomb(total: int = GIB) -> bytes:
    body, _, adler = _deflate_zeros(total // _BLOCK)
    return b"\x78\xda" + body + adler.to_bytes(4, "big")


@functools.cache
def zstd_bomb(total: int = GIB, *, declare_size: bool = True) -> bytes:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=1, write_content_size=declare_size)
    co = cctx.compressobj(size=total if declare_size else -1)
    zeros = bytes(_BLOCK)
    return b"".join([co.compress(zeros) for _ in range(total // _BLOCK)] + [co.flush()])


def zstd_header_claiming(size: int) -> bytes:
    """A well-formed, empty Zstd frame whose header claims ``size`` decoded bytes."""
    fhd = 0b11100000  # 8-byte Frame_Content_Size, single segment, no checksum, no dictionary
    last_empty_raw_block = (1).to_bytes(3, "little")
    return (0xFD2FB528).to_bytes(4, "little") + bytes([fhd]) + size.to_bytes(8, "little") + last_empty_raw_block


@functools.cache
def bz2_bomb(total: int = GIB) -> bytes:
    return bz2.compress(bytes(_BLOCK), 9) * (total // _BLOCK)  # concatenated streams, as bz2.decompress reads them


@functools.cache
def lzma_bomb(total: int = GIB) -> bytes:
    return lzma.compress(bytes(_BLOCK), preset=0) * (total // _BLOCK)  # concatenated .xz streams


def blosc_lying(chunk: bytes, nbytes: int) -> bytes:
    """A real Blosc chunk whose header's decoded size is replaced."""
    return chunk[:4] + nbytes.to_bytes(4, "little") + chunk[8:]


def lz4_lying(nbytes: int) -> bytes:
    """numcodecs' LZ4 framing (4-byte decoded size) claiming ``nbytes`` in front of a tiny block."""
    return nbytes.to_bytes(4, "little") + numcodecs.LZ4().encode(bytes(64))[4:]


@functools.cache
def pcodec_bomb() -> bytes:
    return numcodecs.PCodec().encode(np.zeros(20_000_000))


# ----------------------------------------------------------------------------- arrays


def _v3(path: Path, **kwargs) -> tuple[zarr.Array, Callable[[str], Path]]:
    arr = zarr.create_array(str(path), shape=(4096,), chunks=(1024,), dtype="float64", fill_value=0, **kwargs)
    arr[:] = np.arange(4096, dtype="float64")
    return arr, lambda tail: path / "c" / tail


def _v2(path: Path, **kwargs) -> tuple[zarr.Array, Callable[[str], Path]]:
    arr = zarr.create_array(str(path), shape=(4096,), chunks=(1024,), dtype="<f8", fill_value=0, zarr_format=2,
                            **kwargs)
    arr[:] = np.arange(4096, dtype="float64")
    return arr, lambda tail: path / tail


CASES: dict[str, tuple[Callable[..., tuple[zarr.Array, Callable[[str], Path]]], dict, Callable[[bytes], bytes]]] = {
    "zstd-1GiB-declared": (_v3, {"compressors": [ZstdCodec()]}, lambda _: zstd_bomb()),
    "zstd-1GiB-streamed": (_v3, {"compressors": [ZstdCodec()]}, lambda _: zstd_bomb(declare_size=False)),
    "zstd-header-2^40": (_v3, {"compressors": [ZstdCodec()]}, lambda _: zstd_header_claiming(1 << 40)),
    "gzip-1GiB": (_v3, {"compressors": [GzipCodec()]}, lambda _: gzip_bomb()),
    "gzip-inside-zstd": (_v3, {"compressors": [ZstdCodec(), GzipCodec()]}, lambda _: gzip_bomb()),
    "blosc-header-2GiB": (_v3, {"compressors": [BloscCodec(cname="lz4")]}, lambda c: blosc_lying(c, 2**31 - 1)),
    "blosc-header-larger": (_v3, {"compressors": [BloscCodec(cname="zstd")]}, lambda c: blosc_lying(c, 16384)),
    "sharded-zstd-inner": (_v3, {"compressors": [ZstdCodec()], "shards": (2048,)}, None),
    "v3-numcodecs-zlib": (_v3, {"compressors": [zarr.codecs.numcodecs.Zlib()]}, lambda _: zlib_bomb()),
    "pcodec-elements": (_v3, {"serializer": zarr.codecs.numcodecs.PCodec(), "compressors": None},
                        lambda _: pcodec_bomb()),
    "v2-zlib-1GiB": (_v2, {"compressors": numcodecs.Zlib()}, lambda _: zlib_bomb()),
    "v2-gzip-1GiB": (_v2, {"compressors": numcodecs.GZip()}, lambda _: gzip_bomb()),
    "v2-zstd-header-2^40": (_v2, {"compressors": numcodecs.Zstd()}, lambda _: zstd_header_claiming(1 << 40)),
    "v2-blosc-header": (_v2, {"compressors": numcodecs.Blosc()}, lambda c: blosc_lying(c, 2**31 - 1)),
    "v2-lz4-header": (_v2, {"compressors": numcodecs.LZ4()}, lambda _: lz4_lying(2**31 - 1)),
    "v2-bz2-1GiB": (_v2, {"compressors": numcodecs.BZ2()}, lambda _: bz2_bomb()),
    "v2-lzma-1GiB": (_v2, {"compressors": numcodecs.LZMA()}, lambda _: lzma_bomb()),
    "v2-delta-filter-zlib": (_v2, {"compressors": numcodecs.Zlib(), "filters": [numcodecs.Delta(dtype="<f8")]},
                             lambda _: zlib_bomb()),
}


def _shard_with_bomb(path: Path) -> None:
    """Rewrite shard 1 so its first inner chunk is a 1 GiB zstd bomb (index kept consistent)."""
    from gpuzarr.codecs.chain import _crc32c_value

    shard = path / "c" / "1"
    bomb = zstd_bomb(declare_size=False)
    raw = shard.read_bytes()
    n_inner = 2
    index = np.frombuffer(raw[-(16 * n_inner + 4):-4], dtype="<u8").reshape(n_inner, 2).copy()
    chunks = [raw[int(o):int(o + n)] for o, n in index]
    chunks[0] = bomb
    body = b"".join(chunks)
    offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    index = np.stack([offsets, [len(c) for c in chunks]], axis=1).astype("<u8").tobytes()
    shard.write_bytes(body + index + int(_crc32c_value(index)).to_bytes(4, "little"))


@pytest.fixture(scope="module")
def bomb_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Build every case's array, plant its bomb, read them all in one child process."""
    tmp = tmp_path_factory.mktemp("bombs")
    cases = []
    for case, (make, kwargs, bomb) in CASES.items():
        path = tmp / f"{case}.zarr"
        _, chunk_file = make(path, **kwargs)
        if bomb is None:
            _shard_with_bomb(path)
        else:
            target = chunk_file("2")
            target.write_bytes(bomb(target.read_bytes()))
        cases.append([case, str(path), [[0, 1024]], [[2048, 3072]]])
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (case, path, _, _) in cases:
        results[case]["path"] = path
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_bomb_is_refused_within_the_memory_bound(bomb_results: dict[str, dict], case: str) -> None:
    result = bomb_results[case]
    assert result["error"] == "CorruptChunkError", result
    key_part = "2" if CASES[case][0] is _v2 else ("c/1" if CASES[case][2] is None else "c/2")
    assert key_part in result["key"] and repr(result["key"]) in result["message"], result
    assert result["path"] in result["message"], "the error names the array"
    assert result["grew_kib"] < RSS_BOUND_MIB * 1024, (
        f"{case}: peak RSS grew by {result['grew_kib'] / 1024:.0f} MiB decoding one 8 KiB chunk")


def test_all_bombs_together_stay_within_the_memory_bound(bomb_results: dict[str, dict]) -> None:
    """Every case ran in one process: its peak RSS over all of them grew by less than the bound."""
    assert bomb_results["__total__"]["grew_kib"] < RSS_BOUND_MIB * 1024, bomb_results["__total__"]


def test_bombs_are_real() -> None:
    """The bomb streams are valid: built the same way at 64 MiB they decode in full, integrity checks included.

    (Decoding the 1 GiB ones here would cost seconds per stream; they differ only in
    how many identical pieces are repeated, and their own headers say 1 GiB.)
    """
    small = 4 * _BLOCK
    for name, stream, make in [("gzip", gzip_bomb.__wrapped__(small), lambda: zlib.decompressobj(31)),
                               ("zlib", zlib_bomb.__wrapped__(small), zlib.decompressobj)]:
        d = make()
        total, data = 0, stream
        while data:
            piece = d.decompress(data, 1 << 24)
            assert not any(piece)
            total += len(piece)
            data = d.unconsumed_tail
        assert d.eof and total == small, name  # eof: the crc32 / adler32 trailer matched
    assert int.from_bytes(gzip_bomb()[-4:], "little") == GIB  # ISIZE
    import zstandard

    for declared in (True, False):
        reader = zstandard.ZstdDecompressor().stream_reader(zstd_bomb.__wrapped__(small, declare_size=declared))
        total = 0
        while piece := reader.read(1 << 24):
            total += len(piece)
        assert total == small
    assert len(bz2.decompress(bz2_bomb.__wrapped__(small))) == small
    assert len(lzma.decompress(lzma_bomb.__wrapped__(small))) == small
    from gpuzarr.codecs.chain import zstd_content_size

    assert zstd_content_size(zstd_header_claiming(1 << 40)) == 1 << 40
    assert zstd_content_size(zstd_bomb()) == GIB and zstd_content_size(zstd_bomb(declare_size=False)) is None
