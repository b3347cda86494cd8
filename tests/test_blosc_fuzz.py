"""Fuzzed corrupt Blosc chunks: the host validator rejects them by key, or everything it passes is in bounds.

The validator runs once over a batch of ≥10 000 mutated chunks (vectorised, no
decoding). Chunks it passes must have every stream inside the buffer, and the
reference decoder must then either reproduce numcodecs exactly or raise
CorruptChunkError — never another exception. ``scripts/fuzz_blosc.py`` runs the same
mutations for longer.
"""

from __future__ import annotations

import numcodecs
import numcodecs.blosc
import numpy as np
import pytest

from gpuzarr.codecs import blosc
from gpuzarr.errors import CorruptChunkError

N_CASES = 12_000


def make_valid_chunks(rng: np.random.Generator) -> list[tuple[bytes, bytes]]:
    """(raw, encoded) pairs over every cname, shuffle and a few typesizes and block sizes."""
    pairs = []
    for cname in ("lz4", "lz4hc", "zstd", "zlib"):
        for shuffle in (0, 1, 2):
            for ts, bs in ((1, 0), (4, 256), (8, 1024), (2, 4096)):
                n = int(rng.integers(100, 6000))
                raw = np.concatenate([np.repeat(rng.integers(0, 3, n // 8 + 1, dtype=np.uint8), 8)[: n // 2],
                                      rng.integers(0, 256, n - n // 2, dtype=np.uint8)]).tobytes()
                pairs.append((raw, numcodecs.Blosc(cname, 5, shuffle, blocksize=bs, typesize=ts).encode(raw)))
    return pairs


def mutate(rng: np.random.Generator, enc: bytes) -> bytes:
    """One of: truncate, flip a header byte, corrupt a block start, corrupt a stream size, flip any byte."""
    buf = bytearray(enc)
    kind = int(rng.integers(0, 6))
    batch = blosc.parse_blosc_batch([enc])
    if kind == 0:
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    if kind == 1:
        at = int(rng.integers(0, 16))
        buf[at] ^= int(rng.integers(1, 256))
    elif kind == 2 and batch.n_blocks and not batch.chunk_memcpyed[0]:
        b = int(rng.integers(0, batch.n_blocks))
        value = int(rng.choice([-1, 0, 15, len(buf) - 2, len(buf), 2**31 - 1, int(rng.integers(-(2**31), 2**31))]))
        buf[16 + 4 * b: 20 + 4 * b] = value.to_bytes(4, "little", signed=True)
    elif kind == 3 and batch.n_streams and not batch.chunk_memcpyed[0]:
        s = int(rng.integers(0, batch.n_streams))
        at = int(batch.stream_offset[s]) - int(batch.chunk_base[0]) - 4
        value = int(rng.choice([-1, 0, int(batch.stream_csize[s]) + 1, int(batch.stream_csize[s]) - 1, 2**31 - 1]))
        buf[at: at + 4] = value.to_bytes(4, "little", signed=True)
    elif kind == 4:
        at = int(rng.integers(0, len(buf)))
        buf[at] ^= int(rng.integers(1, 256))
    else:  # header integers set to boundary values
        field = int(rng.choice([4, 8, 12]))
        value = int(rng.choice([0, 1, -1, len(buf), len(buf) + 1, 2**31 - 1]))
        buf[field: field + 4] = value.to_bytes(4, "little", signed=True)
    return bytes(buf)


def build_cases(seed: int, n_cases: int) -> tuple[list[bytes], list[int], list[bytes]]:
    rng = np.random.default_rng(seed)
    pairs = make_valid_chunks(rng)
    which = rng.integers(0, len(pairs), n_cases)
    cases = [mutate(rng, pairs[i][1]) for i in which.tolist()]
    return cases, [len(pairs[i][0]) for i in which.tolist()], [pairs[i][0] for i in which.tolist()]


def assert_streams_in_bounds(chunks: list[bytes], expected: list[int]) -> blosc.BloscBatch:
    batch = blosc.parse_blosc_batch(chunks, expected_nbytes=expected)
    length = np.array([len(c) for c in chunks], dtype=np.int64)
    lo = batch.chunk_base[batch.stream_chunk]
    hi = lo + length[batch.stream_chunk]
    assert (batch.stream_offset >= lo + blosc.HEADER_BYTES).all()
    assert (batch.stream_offset + batch.stream_csize <= hi).all()
    assert (batch.stream_usize * batch.block_nsplits[batch.stream_block] <= batch.block_size[batch.stream_block]).all()
    assert (batch.block_out_offset + batch.block_size <= batch.chunk_nbytes[batch.block_chunk]).all()
    return batch


def check_decode(chunk: bytes, nbytes: int, key: str) -> str:
    """Reference decode of a validated chunk: exact (vs numcodecs) or CorruptChunkError. Returns the outcome."""
    try:
        (got,) = blosc.decode_blosc_reference([chunk], keys=[key], array_name="fuzz", expected_nbytes=nbytes)
    except CorruptChunkError as exc:
        assert exc.key == key
        return "rejected"
    try:
        expected = numcodecs.blosc.decompress(chunk)
    except RuntimeError:
        return "decoded-numcodecs-rejects"
    assert got.tobytes() == bytes(expected), f"{key}: reference differs from numcodecs"
    return "decoded"


def test_fuzzed_chunks_are_rejected_or_in_bounds() -> None:
    cases, expected, _ = build_cases(seed=1234, n_cases=N_CASES)
    verdict = blosc.check_blosc_batch(cases, expected_nbytes=expected)
    assert verdict.ok.shape == (N_CASES,)
    bad = np.flatnonzero(~verdict.ok)
    good = np.flatnonzero(verdict.ok)
    assert bad.size > N_CASES // 3, "the mutations should break most chunks"
    assert good.size > 100, "some mutations (payload flips) keep chunks well-formed"
    assert all(verdict.reasons[i] for i in bad.tolist())

    # everything that passed is in bounds, parsed together as one batch
    assert_streams_in_bounds([cases[i] for i in good.tolist()], [expected[i] for i in good.tolist()])

    # a rejected chunk in a batch raises CorruptChunkError naming exactly its key
    rng = np.random.default_rng(7)
    for i in rng.choice(bad, size=min(200, bad.size), replace=False).tolist():
        with pytest.raises(CorruptChunkError) as info:
            blosc.parse_blosc_batch([cases[good[0]], cases[i]], keys=["ok/0", f"bad/{i}"], array_name="fuzz",
                                    expected_nbytes=[expected[good[0]], expected[i]])
        assert info.value.key == f"bad/{i}"
        assert f"bad/{i}" in str(info.value)

    # chunks that passed decode exactly or raise CorruptChunkError — nothing else
    outcomes = [check_decode(cases[i], expected[i], f"good/{i}") for i in good[:600].tolist()]
    assert "decoded" in outcomes
