"""Contract tests: what the GPU engine assumes of CuPy, nvCOMP and kvikio, asserted on both stacks.

Every test takes the ``stack`` fixture: ``emulated`` (``tests/gpu_emulation.py``, always, in CI)
and ``real`` (marked ``gpu``: ``pytest -m gpu`` on a GPU machine; skipped without one). The
same assertions run on both, so a difference between the emulation and the real libraries
fails here first, by name. Where the real behaviour is unknown the assertion accepts only
what the engine handles (see docs/gpu-validation.md, "The emulation's remaining assumptions").
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numcodecs
import numpy as np
import pytest
from gpu_emulation import gpu_emulation


@pytest.fixture(params=["emulated", pytest.param("real", marks=pytest.mark.gpu)])
def stack(request: pytest.FixtureRequest) -> Iterator[SimpleNamespace]:
    if request.param == "emulated":
        with gpu_emulation(kvikio=True) as emu:
            import cupy
            import kvikio
            from nvidia import nvcomp

            yield SimpleNamespace(cp=cupy, nvcomp=nvcomp, kvikio=kvikio, emu=emu)
    else:
        cupy = pytest.importorskip("cupy")
        nvcomp = pytest.importorskip("nvidia.nvcomp")
        kvikio = pytest.importorskip("kvikio")
        yield SimpleNamespace(cp=cupy, nvcomp=nvcomp, kvikio=kvikio, emu=None)


def _encode(algorithm: str, raw: bytes) -> bytes:
    if algorithm == "LZ4":
        import lz4.block

        return lz4.block.compress(raw, store_size=False)
    if algorithm == "Zstd":
        return bytes(numcodecs.Zstd(level=3).encode(raw))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush()


def _batch(stack: SimpleNamespace, algorithm: str, raws: list[bytes], slack: int = 0) -> tuple[Any, ...]:
    cp, nv = stack.cp, stack.nvcomp
    encoded = [_encode(algorithm, r) for r in raws]
    src_size = np.array([len(e) for e in encoded], np.int64)
    src_off = np.concatenate([[0], np.cumsum((src_size + 255) // 256 * 256)[:-1]]).astype(np.int64)
    dst_size = np.array([len(r) + slack for r in raws], np.int64)
    dst_off = np.concatenate([[0], np.cumsum((dst_size + 255) // 256 * 256)[:-1]]).astype(np.int64)
    host = np.zeros(int(src_off[-1] + src_size[-1]), np.uint8)
    for o, e in zip(src_off, encoded, strict=True):
        host[o: o + len(e)] = np.frombuffer(e, np.uint8)
    src = cp.asarray(host)
    dst = cp.zeros(int(dst_off[-1] + dst_size[-1]), dtype=cp.uint8)
    stream = int(cp.cuda.get_current_stream().ptr)
    codec = nv.Codec(algorithm=algorithm, bitstream_kind=nv.BitstreamKind.RAW, device_id=0, cuda_stream=stream)
    srcs = nv.as_arrays(src, src_off.tolist(), src_size.tolist(), cuda_stream=stream)
    outs = nv.as_arrays(dst, dst_off.tolist(), dst_size.tolist(), cuda_stream=stream)
    return codec, srcs, outs, dst, dst_off


@pytest.mark.parametrize("algorithm", ["LZ4", "Zstd", "Deflate"])
def test_raw_batch_decodes_into_preallocated_slots_and_reports_sizes(stack: SimpleNamespace, algorithm: str) -> None:
    rng = np.random.default_rng(1)
    raws = [bytes(rng.integers(0, 4, n, dtype=np.uint8)) for n in (1, 100, 65_536, 70_001, 300_000)]
    codec, srcs, outs, dst, dst_off = _batch(stack, algorithm, raws, slack=32)
    result = codec.decode(srcs, out=outs)
    assert [int(n) for n in result.buffer_sizes] == [len(r) for r in raws]
    host = dst.get()
    for o, r in zip(dst_off, raws, strict=True):
        assert host[o: o + len(r)].tobytes() == r


@pytest.mark.parametrize("algorithm", ["LZ4", "Zstd", "Deflate"])
def test_alignment_requirement_is_one_the_engine_meets(stack: SimpleNamespace, algorithm: str) -> None:
    codec = stack.nvcomp.Codec(algorithm=algorithm, bitstream_kind=stack.nvcomp.BitstreamKind.RAW, device_id=0,
                               cuda_stream=0)
    align = int(codec.get_required_decompression_alignment())
    assert align >= 1 and (align & (align - 1)) == 0 and align <= 256  # the engine aligns to max(16, align)


@pytest.mark.parametrize("algorithm", ["LZ4", "Zstd", "Deflate"])
def test_a_too_small_slot_or_corrupt_input_never_passes_silently(stack: SimpleNamespace, algorithm: str) -> None:
    """The engine's assumption: an error is raised, or the reported size differs from the expectation."""
    raw = bytes(np.random.default_rng(2).integers(0, 4, 50_000, dtype=np.uint8))
    codec, srcs, outs, _, _ = _batch(stack, algorithm, [raw], slack=-100)
    try:
        sizes = [int(n) for n in codec.decode(srcs, out=outs).buffer_sizes]
    except (RuntimeError, ValueError):
        sizes = None
    assert sizes is None or sizes != [len(raw)]


def test_device_arrays_never_convert_implicitly(stack: SimpleNamespace) -> None:
    dev = stack.cp.zeros(8, dtype=stack.cp.uint8)
    with pytest.raises(TypeError):
        np.asarray(dev)
    dev[:4].set(np.arange(4, dtype=np.uint8))
    assert dev.get().tolist() == [0, 1, 2, 3, 0, 0, 0, 0]


def test_kvikio_pread_fills_a_slice_of_device_memory(stack: SimpleNamespace, tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 256, 100_000, dtype=np.uint8)
    path = tmp_path / "f.bin"
    path.write_bytes(data.tobytes())
    dev = stack.cp.zeros(200_000, dtype=stack.cp.uint8)
    f = stack.kvikio.CuFile(str(path), "r")
    try:
        n = f.pread(dev[4096: 4096 + 50_000], 50_000, 1000).get()
    finally:
        f.close()
    assert n == 50_000
    np.testing.assert_array_equal(dev[4096: 4096 + 50_000].get(), data[1000: 51_000])
