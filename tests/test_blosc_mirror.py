"""The NumPy reference of the GPU Blosc path (host parse → CPU stream decode → unshuffle mirror) equals numcodecs."""

from __future__ import annotations

import numcodecs
import numcodecs.blosc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuzarr.codecs import blosc
from gpuzarr.errors import CorruptChunkError

CNAMES = ("lz4", "lz4hc", "zstd", "zlib")
SHUFFLES = (numcodecs.Blosc.NOSHUFFLE, numcodecs.Blosc.SHUFFLE, numcodecs.Blosc.BITSHUFFLE)
SEEN_KINDS: set[str] = set()


def _payload(rng: np.random.Generator, nbytes: int, style: int) -> bytes:
    """Compressible-ish data: smooth, repeated, random, or a mix, so every stream kind occurs."""
    if style == 0:  # smooth
        data = (np.sin(np.arange(nbytes) / 37.0) * 100 + 128).astype(np.uint8)
    elif style == 1:  # runs
        data = np.repeat(rng.integers(0, 4, nbytes // 16 + 1, dtype=np.uint8), 16)[:nbytes]
    elif style == 2:  # random: incompressible streams and memcpyed chunks
        data = rng.integers(0, 256, nbytes, dtype=np.uint8)
    else:  # half smooth, half random: some streams compress, some are stored raw
        data = np.concatenate([np.zeros(nbytes // 2, np.uint8), rng.integers(0, 256, nbytes - nbytes // 2, np.uint8)])
    return data.tobytes()


def _record_kinds(enc: bytes) -> None:
    batch = blosc.parse_blosc_batch([enc])
    if batch.chunk_memcpyed.any():
        SEEN_KINDS.add("memcpyed")
    kinds = batch.stream_kind[~batch.chunk_memcpyed[batch.stream_chunk]]
    if (kinds == blosc.STREAM_RAW).any():
        SEEN_KINDS.add("raw")
    if (kinds == blosc.STREAM_COMPRESSED).any():
        SEEN_KINDS.add("compressed")
    if (batch.block_nsplits > 1).any():
        SEEN_KINDS.add("split")
    if (batch.block_size % np.maximum(batch.block_typesize, 1) != 0).any():
        SEEN_KINDS.add("tail")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cname=st.sampled_from(CNAMES),
    shuffle=st.sampled_from(SHUFFLES),
    typesize=st.sampled_from((1, 2, 4, 8)),
    clevel=st.integers(0, 9),
    blocksize=st.sampled_from((0, 0, 128, 256, 1000, 4096)),
    nbytes=st.one_of(st.integers(0, 300), st.integers(300, 40_000), st.sampled_from((1, 7, 127, 128, 129, 65_537))),
    style=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_reference_matches_numcodecs(cname: str, shuffle: int, typesize: int, clevel: int, blocksize: int,
                                     nbytes: int, style: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = _payload(rng, nbytes, style)
    codec = numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=shuffle, blocksize=blocksize, typesize=typesize)
    enc = codec.encode(raw)
    _record_kinds(enc)
    expected = np.frombuffer(numcodecs.blosc.decompress(enc), np.uint8) if nbytes else np.zeros(0, np.uint8)
    (got,) = blosc.decode_blosc_reference([enc], expected_nbytes=nbytes)
    np.testing.assert_array_equal(got, expected)
    assert got.tobytes() == raw


def test_every_stream_kind_was_exercised() -> None:
    """Runs after the property test (file order): compressed, raw-copied, memcpyed, split and tail blocks all occurred."""
    # a deterministic sweep guarantees coverage even if hypothesis drew few examples
    rng = np.random.default_rng(1)
    for cname in CNAMES:
        for style in range(4):
            for shuffle, ts in ((1, 4), (2, 8), (0, 1)):
                raw = _payload(rng, 70_001, style)
                enc = numcodecs.Blosc(cname=cname, clevel=5, shuffle=shuffle, blocksize=4096, typesize=ts).encode(raw)
                _record_kinds(enc)
                assert blosc.decode_blosc_reference([enc])[0].tobytes() == raw
    assert {"compressed", "raw", "memcpyed", "split", "tail"} <= SEEN_KINDS


def test_batch_of_mixed_chunks_decodes_in_one_call() -> None:
    rng = np.random.default_rng(2)
    raws, encs = [], []
    for i, cname in enumerate(CNAMES * 3):
        raw = _payload(rng, 3000 + 17 * i, i % 4)
        enc = numcodecs.Blosc(cname=cname, clevel=1 + i % 9, shuffle=SHUFFLES[i % 3], blocksize=512,
                              typesize=(1, 2, 4, 8)[i % 4]).encode(raw)
        raws.append(raw)
        encs.append(enc)
    got = blosc.decode_blosc_reference(encs, keys=[f"c/{i}" for i in range(len(encs))])
    assert [g.tobytes() for g in got] == raws
    batch = blosc.parse_blosc_batch(encs)
    assert (batch.chunk_base % 16 == 0).all()
    assert batch.n_chunks == len(encs)


def test_blosclz_chunks_use_numcodecs() -> None:
    raw = _payload(np.random.default_rng(3), 5000, 1)
    enc = numcodecs.Blosc(cname="blosclz", clevel=5, shuffle=1, typesize=4).encode(raw)
    batch = blosc.parse_blosc_batch([enc])
    assert batch.chunks_needing_cpu().tolist() == [True]
    assert blosc.decode_blosc_reference([enc])[0].tobytes() == raw


def test_split_rule_follows_c_blosc() -> None:
    """lz4/zlib split shuffled blocks into typesize streams (FORWARD_COMPAT); zstd never splits."""
    raw = _payload(np.random.default_rng(4), 64 * 1024, 0)
    lz4 = blosc.parse_blosc_batch([numcodecs.Blosc("lz4", 5, 1, blocksize=8192, typesize=4).encode(raw)])
    assert (lz4.block_nsplits == 4).all() and (lz4.chunk_flags & blosc.FLAG_DONT_SPLIT == 0).all()
    zstd = blosc.parse_blosc_batch([numcodecs.Blosc("zstd", 5, 1, blocksize=8192, typesize=4).encode(raw)])
    assert (zstd.block_nsplits == 1).all() and (zstd.chunk_flags & blosc.FLAG_DONT_SPLIT != 0).all()
    # a leftover block is never split, even when the flags allow it
    # (c-blosc multiplies a splittable block size by the typesize: 8192 -> 32768 -> at least 65536)
    long = _payload(np.random.default_rng(4), 3 * 65536 + 4000, 1)
    odd = blosc.parse_blosc_batch([numcodecs.Blosc("lz4", 5, 1, blocksize=8192, typesize=4).encode(long)])
    assert odd.n_blocks == 4 and odd.block_size[-1] == 4000
    assert odd.block_nsplits[-1] == 1 and (odd.block_nsplits[:-1] == 4).all()
    assert blosc.decode_blosc_reference([numcodecs.Blosc("lz4", 5, 1, blocksize=8192, typesize=4).encode(long)])[
        0].tobytes() == long


def test_wrong_expected_size_names_the_key() -> None:
    enc = numcodecs.Blosc("lz4", 5, 1).encode(bytes(1000))
    with pytest.raises(CorruptChunkError) as info:
        blosc.parse_blosc_batch([enc, enc], keys=["a/0", "a/1"], array_name="arr", expected_nbytes=[1000, 999])
    assert info.value.key == "a/1" and info.value.array == "arr"
    assert "a/1" in str(info.value)


def test_corrupt_inner_stream_raises_corrupt_chunk_error() -> None:
    raw = _payload(np.random.default_rng(5), 20_000, 1)
    enc = bytearray(numcodecs.Blosc("zstd", 5, 1, blocksize=4096, typesize=4).encode(raw))
    batch = blosc.parse_blosc_batch([bytes(enc)])
    s = int(np.flatnonzero(batch.stream_kind == blosc.STREAM_COMPRESSED)[0])
    enc[int(batch.stream_offset[s])] ^= 0xFF  # break the Zstd magic of the first compressed stream
    with pytest.raises(CorruptChunkError) as info:
        blosc.decode_blosc_reference([bytes(enc)], keys=["k/0"], array_name="arr")
    assert info.value.key == "k/0"
