"""Contract tests: what the GPU engine assumes of CuPy, libnvcomp (its batched C API) and kvikio, on both stacks.

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
            import cupyx
            import kvikio

            from gpuzarr.engines.gpu import nvcomp as nvc

            yield SimpleNamespace(cp=cupy, cupyx=cupyx, lib=nvc.library(), kvikio=kvikio, emu=emu)
    else:
        cupy = pytest.importorskip("cupy")
        cupyx = pytest.importorskip("cupyx")
        kvikio = pytest.importorskip("kvikio")
        from gpuzarr.engines.gpu import nvcomp as nvc

        try:
            lib = nvc.library()
        except nvc.NvcompUnavailableError as exc:
            pytest.skip(str(exc))
        yield SimpleNamespace(cp=cupy, cupyx=cupyx, lib=lib, kvikio=kvikio, emu=None)


def _encode(algorithm: str, raw: bytes) -> bytes:
    if algorithm == "LZ4":
        import lz4.block

        return lz4.block.compress(raw, store_size=False)
    if algorithm == "Zstd":
        return bytes(numcodecs.Zstd(level=3).encode(raw))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush()


def _decode(stack: SimpleNamespace, algorithm: str, raws: list[bytes], slack: int = 0,
            corrupt: bool = False) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray]:
    """One ``nvcompBatched<A>DecompressAsync`` through :class:`gpuzarr.engines.gpu.nvcomp.NvcompLibrary`,
    tables built as the engine builds them; returns (statuses, decoded sizes, output buffer, slot offsets)."""
    cp, lib = stack.cp, stack.lib
    encoded = [_encode(algorithm, r) for r in raws]
    if corrupt:
        encoded = [e[: len(e) // 2] + bytes(len(e) - len(e) // 2) for e in encoded]
    n = len(raws)
    src_size = np.array([len(e) for e in encoded], np.int64)
    src_off = np.concatenate([[0], np.cumsum((src_size + 255) // 256 * 256)[:-1]]).astype(np.int64)
    dst_size = np.array([len(r) + slack for r in raws], np.int64)
    dst_off = np.concatenate([[0], np.cumsum((dst_size + 255) // 256 * 256)[:-1]]).astype(np.int64)
    host = np.zeros(int(src_off[-1] + src_size[-1]), np.uint8)
    for o, e in zip(src_off, encoded, strict=True):
        host[o: o + len(e)] = np.frombuffer(e, np.uint8)
    src = cp.asarray(host)
    dst = cp.zeros(int(dst_off[-1] + dst_size[-1]), dtype=cp.uint8)
    tables = cp.asarray(np.concatenate([src_off + int(src.data.ptr), src_size, dst_size,
                                        dst_off + int(dst.data.ptr)]).astype(np.uint64))
    results = cp.zeros(12 * n, dtype=cp.uint8)
    temp_bytes = lib.temp_bytes(algorithm, n, int(dst_size.max()), int(dst_size.sum()))
    temp = cp.empty(max(temp_bytes, 1), dtype=cp.uint8)
    stream = cp.cuda.get_current_stream()
    t, r = int(tables.data.ptr), int(results.data.ptr)
    lib.decompress_async(algorithm, in_ptrs=t, in_bytes=t + 8 * n, out_capacity=t + 16 * n, out_actual=r, n=n,
                         temp=int(temp.data.ptr), temp_bytes=temp_bytes, out_ptrs=t + 24 * n, statuses=r + 8 * n,
                         stream=int(stream.ptr))
    out = stack.cupyx.empty_pinned(12 * n, dtype=np.uint8)
    results.get(stream=stream, out=out, blocking=False)
    event = cp.cuda.Event(disable_timing=True)
    event.record(stream)
    event.synchronize()
    return out[8 * n:].view(np.int32).copy(), out[: 8 * n].view(np.uint64).astype(np.int64), dst, dst_off


@pytest.mark.parametrize("algorithm", ["LZ4", "Zstd", "Deflate"])
def test_raw_batch_decodes_into_preallocated_slots_and_reports_sizes(stack: SimpleNamespace, algorithm: str) -> None:
    rng = np.random.default_rng(1)
    raws = [bytes(rng.integers(0, 4, n, dtype=np.uint8)) for n in (1, 100, 65_536, 70_001, 300_000)]
    status, sizes, dst, dst_off = _decode(stack, algorithm, raws, slack=32)
    assert status.tolist() == [0] * len(raws)
    assert sizes.tolist() == [len(r) for r in raws]
    host = dst.get()
    for o, r in zip(dst_off, raws, strict=True):
        assert host[o: o + len(r)].tobytes() == r


@pytest.mark.parametrize("algorithm", ["LZ4", "Zstd", "Deflate"])
def test_alignment_requirement_is_one_the_engine_meets(stack: SimpleNamespace, algorithm: str) -> None:
    align = stack.lib.alignment(algorithm)
    for a in (align.input, align.output, align.temp):  # the engine aligns entries to max(16, input), slots to 16
        assert a >= 1 and (a & (a - 1)) == 0 and a <= 256
    assert align.output <= 16


@pytest.mark.parametrize("algorithm", ["LZ4", "Zstd", "Deflate"])
@pytest.mark.parametrize("how", ["too small a slot", "corrupt input"])
def test_a_too_small_slot_or_corrupt_input_never_passes_silently(stack: SimpleNamespace, algorithm: str,
                                                                  how: str) -> None:
    """The engine's assumption: a bad entry gets an error status, or a decoded size other than expected."""
    raw = bytes(np.random.default_rng(2).integers(0, 4, 50_000, dtype=np.uint8))
    status, sizes, _, _ = _decode(stack, algorithm, [raw], slack=-100 if how == "too small a slot" else 0,
                                  corrupt=how == "corrupt input")
    expected = len(raw) - 100 if how == "too small a slot" else len(raw)
    assert status[0] != 0 or sizes[0] != expected


def test_async_copy_into_pinned_memory_lands_by_the_event(stack: SimpleNamespace) -> None:
    cp = stack.cp
    dev = cp.asarray(np.arange(4096, dtype=np.uint8) ^ 0x5A)
    out = stack.cupyx.empty_pinned(4096, dtype=np.uint8)
    stream = cp.cuda.Stream()
    dev.get(stream=stream, out=out, blocking=False)
    event = cp.cuda.Event(disable_timing=True)
    event.record(stream)
    event.synchronize()
    assert event.done
    np.testing.assert_array_equal(out, np.arange(4096, dtype=np.uint8) ^ 0x5A)


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


# ----------------------------------------------------------------------------- the real libnvcomp, no GPU needed
# Its host-only functions (alignments, temp sizes) run without a device: checked against the emulation here,
# for the library installed in this environment (5.3 through DALI's pin in CI).


def _real_library() -> Any:
    from gpu_emulation import _real_libnvcomp

    lib = _real_libnvcomp()
    if lib is None:
        pytest.skip("no libnvcomp installed here")
    return lib


def test_installed_libnvcomp_has_the_modelled_api_shape() -> None:
    from gpu_emulation import FakeLibnvcomp, GpuEmulation

    lib = _real_library()
    fake = FakeLibnvcomp(GpuEmulation(), lib.api)
    for alg in ("LZ4", "Zstd", "Deflate"):
        for name in (f"nvcompBatched{alg}DecompressAsync", f"nvcompBatched{alg}DecompressGetRequiredAlignments",
                     f"nvcompBatched{alg}DecompressGetTempSize" + ("" if lib.api == 6 else "Async")):
            assert hasattr(lib._lib, name) and hasattr(fake, name)
        other = f"nvcompBatched{alg}DecompressGetTempSize" + ("Async" if lib.api == 6 else "")
        assert not hasattr(lib._lib, other) and not hasattr(fake, other)


@pytest.mark.parametrize("algorithm", ["LZ4", "Zstd", "Deflate"])
def test_emulated_alignment_is_no_laxer_than_the_real_one(algorithm: str) -> None:
    from gpu_emulation import DECOMPRESSION_ALIGNMENT, TEMP_ALIGNMENT

    real = _real_library().alignment(algorithm)
    assert DECOMPRESSION_ALIGNMENT[algorithm] % real.input == 0
    assert DECOMPRESSION_ALIGNMENT[algorithm] % real.output == 0
    assert TEMP_ALIGNMENT[algorithm] % real.temp == 0


def test_zstd_temp_memory_grows_with_the_batch_so_the_budget_matters() -> None:
    lib = _real_library()
    one = lib.temp_bytes("Zstd", 1, 65_536, 65_536)
    many = lib.temp_bytes("Zstd", 65_536, 65_536, 65_536 * 65_536)
    assert one > 0 and many >= 65_536 * one // 2 and many > 4 << 30  # czarr's ~6.5 GiB per 65 536 blocks, order
