"""Every kernel of ``kernels/*.cu``, compiled unchanged for the CPU (``tests/cuda_cpu``), against its NumPy mirror.

The kernels run through their real launchers (:mod:`gpuzarr.engines.gpu.kernels`) under the
GPU emulation, so what is compared is the bytes the CUDA source computes from the tables the
launchers pack — on hypothesis-drawn inputs with odd sizes, tails of every tile and
element, up to the maximum number of dimensions, and with byte offsets past 2**31 and
2**32 (sparse anonymous mappings: only the touched pages take memory). The first tests
check the harness itself: shared memory starts poisoned, a missing ``__syncthreads`` and a
barrier in divergent code are caught, and every schedule and the OS-thread mode agree.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Iterator
from typing import Any

import cuda_cpu
import numpy as np
import pytest
from gpu_emulation import KERNEL_SIGNATURES, FakeDeviceArray, GpuEmulation, gpu_emulation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuzarr.engines.gpu import kernels as K
from gpuzarr.engines.gpu import mirrors as km
from gpuzarr.plan.planner import plan_batch
from gpuzarr.plan.transform import OutputTransform

# A watchdog per test: a runaway kernel (a perturbed index or a swapped launch argument can make
# one loop for minutes on the CPU harness, as a real GPU would hang) fails in three minutes instead
# of the suite's ten. ``thread``: the kernel's threads sit in C, where no signal reaches them.
pytestmark = pytest.mark.timeout(180, method="thread")

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def emu() -> Iterator[GpuEmulation]:
    """The emulation with its per-launch mirror oracles off: every test here compares with the mirror itself."""
    with gpu_emulation() as e, e.oracles_off():
        yield e


def dev(a: np.ndarray) -> FakeDeviceArray:
    """``a`` as fake device memory (same host memory: sparse mappings stay sparse)."""
    return FakeDeviceArray(a)


def sparse(nbytes: int) -> np.ndarray:
    """A zero-filled uint8 array of ``nbytes`` whose pages exist only once touched."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
    return np.frombuffer(m, dtype=np.uint8)


# ----------------------------------------------------------------------------- the harness itself

PROBE = r"""
extern "C" __global__ void probe_shared_start(unsigned int* out) {
    __shared__ unsigned int cell[4];
    out[blockIdx.x * blockDim.x + threadIdx.x] = cell[threadIdx.x % 4];
    __syncthreads();
    if (threadIdx.x == 0) cell[0] = 7u;
}
extern "C" __global__ void probe_no_barrier(unsigned int* out) {
    __shared__ unsigned int value;
    if (threadIdx.x == 0) value = 42u;
    out[threadIdx.x] = value;
}
extern "C" __global__ void probe_barrier(unsigned int* out) {
    __shared__ unsigned int value;
    if (threadIdx.x == 0) value = 42u;
    __syncthreads();
    out[threadIdx.x] = value;
}
extern "C" __global__ void probe_divergent(unsigned int* out) {
    if (threadIdx.x < 5) return;
    __syncthreads();
    out[threadIdx.x] = 1u;
}
extern "C" __global__ void probe_fault(const long long* far, long long* out) {
    out[threadIdx.x] = far[threadIdx.x == 3 ? (1LL << 40) : 0];
}
extern "C" __global__ void probe_indices(long long* out) {
    const long long b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * (long long)blockIdx.z);
    const long long t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * (long long)threadIdx.z);
    const long long at = 4 * (b * blockDim.x * blockDim.y * blockDim.z + t);
    out[at] = b; out[at + 1] = t; out[at + 2] = gridDim.x * gridDim.y * gridDim.z; out[at + 3] = warpSize;
}
"""


@pytest.fixture(scope="module")
def probe() -> cuda_cpu.CpuModule:
    return cuda_cpu.compile_source(PROBE)


def test_shared_memory_starts_poisoned_in_every_block(probe: cuda_cpu.CpuModule) -> None:
    out = np.zeros(3 * 8, np.uint32)
    probe.get_function("probe_shared_start")((3,), (8,), (out,))
    assert (out == 0xA5A5A5A5).all()  # block 1 and 2 do not see block 0's write either


@pytest.mark.parametrize("schedule", ["reverse", "shuffle"])
def test_a_missing_barrier_is_caught(probe: cuda_cpu.CpuModule, schedule: str) -> None:
    racy = np.zeros(64, np.uint32)
    probe.get_function("probe_no_barrier")((1,), (64,), (racy,), schedule=schedule, seed=3)
    assert (racy != 42).any()
    fixed = np.zeros(64, np.uint32)
    probe.get_function("probe_barrier")((1,), (64,), (fixed,), schedule=schedule, seed=3)
    assert (fixed == 42).all()


def test_a_barrier_in_divergent_code_is_an_error(probe: cuda_cpu.CpuModule) -> None:
    with pytest.raises(cuda_cpu.KernelLaunchError, match="divergent"):
        probe.get_function("probe_divergent")((2,), (32,), (np.zeros(32, np.uint32),))


FAULT_SCRIPT = r"""
import sys
import numpy as np
import cuda_cpu
from test_kernels_on_cpu import PROBE
probe = cuda_cpu.compile_source(PROBE)
probe.get_function("probe_barrier")((1,), (8,), (np.zeros(8, np.uint32),))  # the probe's handler first
one = np.ones(1, np.int64)  # another kernel library launched after it installs its handler on top: they chain
src, dst = np.arange(4, dtype=np.uint8), np.zeros(4, np.uint8)
cuda_cpu.module("gather.cu").get_function("copy_segments")(
    (1,), (32,), (src, one * 2, dst, one, one, np.array([0, 1], np.int64), np.int64(1), np.int64(16384)))
try:
    probe.get_function("probe_fault")((2,), (8,), (np.zeros(1, np.int64), np.zeros(8, np.int64)), schedule="reverse")
except cuda_cpu.KernelLaunchError as exc:
    print("ERROR", exc)
out = np.zeros(8, np.uint32)
probe.get_function("probe_barrier")((1,), (8,), (out,))
print("AFTER", out.tolist())
"""


def test_a_memory_fault_is_an_error_not_a_crash() -> None:
    """In a child process, so that a harness bug here could not take the test session down."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-c", FAULT_SCRIPT], capture_output=True, text=True, timeout=300,
                          cwd=here, env={**__import__("os").environ, "PYTHONPATH": str(here)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "memory fault" in proc.stdout and "block (1, 0, 0), thread (3, 0, 0)" in proc.stdout, proc.stdout
    assert "AFTER [42, 42, 42, 42, 42, 42, 42, 42]" in proc.stdout


def test_indices_in_three_dimensions(probe: cuda_cpu.CpuModule) -> None:
    grid, block = (3, 2, 2), (4, 2, 3)
    nb, nt = 12, 24
    out = np.full(4 * nb * nt, -1, np.int64)
    probe.get_function("probe_indices")(grid, block, (out,), schedule="shuffle", seed=5)
    rows = out.reshape(nb * nt, 4)
    np.testing.assert_array_equal(rows[:, 0], np.repeat(np.arange(nb), nt))
    np.testing.assert_array_equal(rows[:, 1], np.tile(np.arange(nt), nb))
    assert (rows[:, 2] == nb).all() and (rows[:, 3] == 32).all()


def test_launch_arguments_are_checked_against_the_compiled_signature(probe: cuda_cpu.CpuModule) -> None:
    k = probe.get_function("probe_barrier")
    assert k.signature == ("u32*",)
    with pytest.raises(TypeError, match="u32"):
        k((1,), (4,), (np.zeros(4, np.int32),))
    with pytest.raises(TypeError, match="takes 1"):
        k((1,), (4,), (np.zeros(4, np.uint32), np.int64(1)))


@pytest.mark.parametrize("file", cuda_cpu.kernel_files())
def test_every_kernel_file_builds_and_matches_the_emulations_signatures(file: str) -> None:
    mod = cuda_cpu.module(file)
    assert mod.kernels and mod.shared_bytes > 0
    for name, kernel in mod.kernels.items():
        base = "gather_pieces_copy" if name.startswith("gather_pieces_copy_") else name
        assert kernel.signature == KERNEL_SIGNATURES[base], name


def test_os_threads_and_every_schedule_agree(emu: GpuEmulation) -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, 70_000, dtype=np.uint8)
    size = np.array([0, 1, 16383, 16384, 16385, 3], np.int64)
    so = rng.integers(0, 70_000 - 16385, size.size)
    do = np.concatenate([[0], np.cumsum(size[:-1])])
    results = []
    for schedule, mode in (("forward", "fibers"), ("reverse", "fibers"), ("shuffle", "fibers"), ("forward", "threads")):
        dst = dev(np.zeros(int(size.sum()), np.uint8))
        with cuda_cpu.execution(schedule=schedule, mode=mode, seed=11):
            K.launch_copy_segments(dev(src), so, dst, do, size)
        results.append(dst._a)
    expected = np.zeros(int(size.sum()), np.uint8)
    km.copy_segments(src, so, expected, do, size)
    for r in results:
        np.testing.assert_array_equal(r, expected)


# ----------------------------------------------------------------------------- shuffle.cu


@st.composite
def unshuffle_tables(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 6))
    size = np.array(draw(st.lists(st.one_of(st.integers(0, 64), st.integers(16_000, 40_000), st.integers(0, 5000)),
                                  min_size=n, max_size=n)), np.int64)
    ts = np.array(draw(st.lists(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 12, 16, 255]), min_size=n, max_size=n)), np.int64)
    mode = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int64)
    nsplits = np.array(draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)), np.int64)
    seed = draw(st.integers(0, 2**32 - 1))
    return {"size": size, "ts": ts, "mode": mode, "nsplits": nsplits, "seed": seed}


def _unshuffle_inputs(t: dict[str, Any], base: int = 0, out_base: int = 0,
                      arena: np.ndarray | None = None, out: np.ndarray | None = None) -> tuple[Any, ...]:
    rng = np.random.default_rng(t["seed"])
    size, nsplits = t["size"], t["nsplits"]
    neblock = size // nsplits
    last = size - (nsplits - 1) * neblock  # the last split holds the remainder
    need = int(np.maximum(last, neblock).max()) + 1
    span = need * 3 + 64
    if arena is None:
        arena = rng.integers(0, 256, base + span, dtype=np.uint8)
    else:
        arena[base: base + span] = rng.integers(0, 256, span, dtype=np.uint8)
    n_streams = int(nsplits.sum())
    stream_offset = base + rng.integers(0, span - need, n_streams)
    first = np.concatenate([[0], np.cumsum(nsplits)]).astype(np.int64)
    gaps = rng.integers(0, 9, size.size)
    out_off = out_base + np.concatenate([[0], np.cumsum(size + gaps)[:-1]]).astype(np.int64)
    total = int(out_off[-1] + size[-1] + 1)
    if out is None:
        out = rng.integers(0, 256, total, dtype=np.uint8)
    else:
        out[out_base: total] = rng.integers(0, 256, total - out_base, dtype=np.uint8)
    return arena, stream_offset, first, nsplits, size, t["ts"], t["mode"], out_off, out


def _check_unshuffle(inputs: tuple[Any, ...]) -> None:
    arena, soff, first, nsplits, size, ts, mode, out_off, out = inputs
    expected = out.copy()
    km.unshuffle_blocks(arena, soff, first, nsplits, size, ts, mode, out_off, expected)
    got = dev(out.copy())
    K.launch_unshuffle(dev(arena), soff, first, nsplits, size, ts, mode, out_off, got)
    np.testing.assert_array_equal(got._a, expected)


@SETTINGS
@given(t=unshuffle_tables())
def test_unshuffle_matches_mirror(emu: GpuEmulation, t: dict[str, Any]) -> None:
    _check_unshuffle(_unshuffle_inputs(t))


def test_unshuffle_offsets_past_2_to_the_32(emu: GpuEmulation) -> None:
    t = {"size": np.array([40_000, 17, 20_000], np.int64), "ts": np.array([4, 3, 8], np.int64),
         "mode": np.array([2, 1, 1], np.int64), "nsplits": np.array([4, 1, 2], np.int64), "seed": 1}
    base, out_base = (1 << 31) + 12_345, (1 << 32) + 7
    arena, out = sparse(base + (1 << 20)), sparse(out_base + (1 << 20))
    _, soff, first, nsplits, size, ts, mode, out_off, _ = _unshuffle_inputs(t, base, out_base, arena, out)
    window = slice(out_base, int(out_off[-1] + size[-1]))
    expected = out[window].copy()
    km.unshuffle_blocks(arena, soff, first, nsplits, size, ts, mode, out_off - out_base, expected)
    K.launch_unshuffle(dev(arena), soff, first, nsplits, size, ts, mode, out_off, dev(out))
    np.testing.assert_array_equal(out[window], expected)


# ----------------------------------------------------------------------------- copy_segments


@SETTINGS
@given(sizes=st.lists(st.one_of(st.integers(0, 40), st.integers(16_380, 50_000)), min_size=1, max_size=8),
       seed=st.integers(0, 2**32 - 1))
def test_copy_segments_matches_mirror(emu: GpuEmulation, sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = np.array(sizes, np.int64)
    src = rng.integers(0, 256, 60_000, dtype=np.uint8)
    so = rng.integers(0, 60_000 - size + 1)
    do = np.concatenate([[0], np.cumsum(size + rng.integers(0, 5, size.size))[:-1]]).astype(np.int64)
    dst = rng.integers(0, 256, int(do[-1] + size[-1] + 3), dtype=np.uint8)
    expected = dst.copy()
    km.copy_segments(src, so, expected, do, size)
    got = dev(dst.copy())
    K.launch_copy_segments(dev(src), so, got, do, size)
    np.testing.assert_array_equal(got._a, expected)


def test_copy_segments_offsets_past_2_to_the_32(emu: GpuEmulation) -> None:
    src, dst = sparse((1 << 32) + (1 << 20)), sparse((1 << 31) + (1 << 20))
    size = np.array([20_000, 5, 16_384], np.int64)
    so = np.array([(1 << 32) + 3, (1 << 31) - 2, 11], np.int64)
    do = np.array([(1 << 31) + 1, (1 << 31) + 30_001, 9], np.int64)
    rng = np.random.default_rng(4)
    for o, n in zip(so, size, strict=True):
        src[o: o + n] = rng.integers(0, 256, n, dtype=np.uint8)
    K.launch_copy_segments(dev(src), so, dev(dst), do, size)
    for s, d, n in zip(so, do, size, strict=True):
        np.testing.assert_array_equal(dst[d: d + n], src[s: s + n])


# ----------------------------------------------------------------------------- gather.cu

ITEM_DTYPES = {1: ["u1", "i1", "?"], 2: ["<u2", "<i2", "<f2"], 4: ["<u4", "<i4", "<f4"], 8: ["<u8", "<i8", "<f8"],
               16: ["<c16"]}


@st.composite
def gather_cases(draw: Any, max_ndim: int = K.MAX_NDIM) -> dict[str, Any]:
    ndim = draw(st.integers(1, max_ndim))
    budget = 4096  # elements per chunk, whatever the rank
    chunk, shape = [], []
    for _ in range(ndim):
        c = draw(st.integers(1, 5 if ndim > 4 else 9))
        if int(np.prod(chunk + [c])) > budget:
            c = 1
        chunk.append(c)
        shape.append(draw(st.integers(1, 3 * c)))
    n_regions = draw(st.integers(1, 3))
    regions = []
    for _ in range(n_regions):
        region = []
        for d in range(ndim):
            lo = draw(st.integers(0, shape[d] - 1))
            if d == 0 and draw(st.booleans()):
                region.append(lo)  # an integer index: squeezed
            else:
                region.append(slice(lo, draw(st.integers(lo + 1, shape[d]))))
        regions.append(tuple(region))
    if any(isinstance(r[0], int) for r in regions) and not all(isinstance(r[0], int) for r in regions):
        regions = [(r[0] if isinstance(r[0], int) else r[0].start, *r[1:]) for r in regions]
    # every region must have the same extents: take the first region's and clip the others' starts
    first = regions[0]
    ext = [1 if isinstance(s, int) else s.stop - s.start for s in first]
    fixed = []
    for r in regions:
        rr = []
        for d, s in enumerate(r):
            if isinstance(s, int):
                rr.append(s)
            else:
                lo = min(s.start, shape[d] - ext[d])
                rr.append(slice(lo, lo + ext[d]))
        fixed.append(tuple(rr))
    itemsize = draw(st.sampled_from(sorted(ITEM_DTYPES)))
    dtype = np.dtype(draw(st.sampled_from(ITEM_DTYPES[itemsize])))
    order = draw(st.permutations(range(ndim))) if draw(st.booleans()) else None
    return {"shape": tuple(shape), "chunk": tuple(chunk), "regions": fixed, "dtype": dtype, "order": order,
            "swap": draw(st.booleans()) and itemsize > 1 and dtype.kind != "c", "missing": draw(st.floats(0, 0.5)),
            "seed": draw(st.integers(0, 2**32 - 1)), "fill": draw(st.integers(0, 100))}


def _gather_inputs(case: dict[str, Any], chunk_base: int = 0, chunks: np.ndarray | None = None) -> tuple[Any, ...]:
    rng = np.random.default_rng(case["seed"])
    plan = plan_batch(case["regions"], case["shape"], case["chunk"])
    dtype = case["dtype"]
    n_el = int(np.prod(case["chunk"]))
    chunk_bytes = n_el * dtype.itemsize
    slot = chunk_bytes + 16 * int(rng.integers(0, 3))
    offsets = chunk_base + np.arange(plan.n_chunks, dtype=np.int64) * slot
    offsets[rng.random(plan.n_chunks) < case["missing"]] = -1
    total = chunk_base + plan.n_chunks * slot + 16
    if dtype.kind == "f" or dtype.kind == "c":
        values = (rng.standard_normal(plan.n_chunks * slot // dtype.itemsize + 16) * 100).astype(dtype)
        body = values.view(np.uint8)[: plan.n_chunks * slot + 16]
    else:
        body = rng.integers(0, 256, plan.n_chunks * slot + 16, dtype=np.uint8)
    if chunks is None:
        chunks = np.empty(total, np.uint8)
    chunks[chunk_base: total] = body
    strides = km.chunk_strides(case["chunk"], case["order"])
    return plan, chunks, offsets, strides


def _run_gather(plan: Any, chunks: np.ndarray, offsets: np.ndarray, strides: np.ndarray, case: dict[str, Any],
                transform: Any = None, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    dtype = case["dtype"]
    expected = km.gather_pieces(plan, chunks, offsets, strides, dtype, swap_bytes=case["swap"],
                                fill_value=case["fill"], transform=transform)
    sample_shape, out_strides, ch = km.gather_layout(plan, transform)
    if out is None:
        out = np.full(expected.nbytes, 0x5A, np.uint8)
    convert = transform is not None and (transform.normalises or expected.dtype != dtype)
    mean = inv = None
    if convert and transform.normalises:
        mean, inv = transform.channel_tables(plan.region_shape[ch] if ch is not None else 1)
    target = dev(out.view(expected.dtype))
    K.launch_gather(plan, dev(chunks), offsets, strides, dtype, target, sample_size=int(np.prod(sample_shape)),
                    out_strides=out_strides, swap_bytes=case["swap"], fill_value=case["fill"],
                    convert_to=expected.dtype if convert else None, channel_axis=ch if convert else None,
                    mean=mean, inv_std=inv)
    return out.view(expected.dtype)[: expected.size], expected.reshape(-1)


@SETTINGS
@given(case=gather_cases())
def test_gather_copy_matches_mirror(emu: GpuEmulation, case: dict[str, Any]) -> None:
    got, expected = _run_gather(*_gather_inputs(case), case)
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))


TRANSFORMS = [OutputTransform(dtype=np.float16), OutputTransform(dtype=np.float32, mean=[10.0, -3.0, 0.5],
                                                                  std=[2.0, 4.0, 8.0], channel_axis=-1),
              OutputTransform(dtype=np.float64, mean=1.5, std=3.0), OutputTransform(channel_axis=0, layout="HWC"),
              OutputTransform(dtype=np.float16, mean=[0.25, 1.0, 2.0], std=[0.5, 0.1, 3.0], channel_axis=2,
                              layout="CHW")]


@st.composite
def image_cases(draw: Any) -> dict[str, Any]:
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    ch, cw, cc = draw(st.integers(1, 16)), draw(st.integers(1, 16)), draw(st.integers(1, 3))
    rh, rw = draw(st.integers(1, h)), draw(st.integers(1, w))
    n = draw(st.integers(1, 3))
    regions = [(slice(a, a + rh), slice(b, b + rw), slice(0, 3))
               for a, b in zip(draw(st.lists(st.integers(0, h - rh), min_size=n, max_size=n)),
                               draw(st.lists(st.integers(0, w - rw), min_size=n, max_size=n)), strict=True)]
    dtype = np.dtype(draw(st.sampled_from(["u1", "i1", "?", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8",
                                           "<i8", "<f8"])))
    return {"shape": (h, w, 3), "chunk": (ch, cw, cc), "regions": regions, "dtype": dtype,
            "order": draw(st.sampled_from([None, (2, 0, 1), (1, 0, 2)])), "swap": draw(st.booleans()) and
            dtype.itemsize > 1, "missing": draw(st.floats(0, 0.5)), "seed": draw(st.integers(0, 2**32 - 1)),
            "fill": draw(st.integers(0, 100))}


@SETTINGS
@given(case=image_cases(), which=st.integers(0, len(TRANSFORMS) - 1))
def test_gather_convert_matches_mirror(emu: GpuEmulation, case: dict[str, Any], which: int) -> None:
    with np.errstate(over="ignore", invalid="ignore"):  # large integers to float16 are inf, as on the GPU
        got, expected = _run_gather(*_gather_inputs(case), case, transform=TRANSFORMS[which])
    np.testing.assert_array_equal(got, expected)


def test_float16_conversion_of_every_half_and_every_tie(emu: GpuEmulation) -> None:
    """Every finite float16, the midpoint between each pair of neighbours (ties: round to even), inf, nan."""
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = (halves[:-1] + halves[1:]) / 2  # exact in float64
    values = np.concatenate([halves, mids, [65504.0 + 16.0, 65520.0, np.inf, np.nan, 2.0**-26]])
    values = np.concatenate([values, -values])
    case = {"shape": values.shape, "chunk": values.shape, "regions": [(slice(0, values.size),)],
            "dtype": np.dtype("<f8"), "order": None, "swap": False, "missing": 0.0, "seed": 0, "fill": 0}
    plan = plan_batch(case["regions"], values.shape, values.shape)
    with np.errstate(over="ignore"):
        got, expected = _run_gather(plan, values.view(np.uint8), np.zeros(1, np.int64), np.ones(1, np.int64), case,
                                    transform=OutputTransform(dtype=np.float16))
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))
    np.testing.assert_array_equal(got.view(np.uint16), values.astype(np.float16).view(np.uint16))


def test_gather_at_maximum_ndim(emu: GpuEmulation) -> None:
    shape = (3, 2) * 8
    chunk = (2, 1) * 8
    case = {"shape": shape, "chunk": chunk, "regions": [tuple(slice(1, n) for n in shape),
                                                        tuple(slice(0, n - 1) for n in shape)],
            "dtype": np.dtype("<u2"), "order": tuple(reversed(range(16))), "swap": True, "missing": 0.3, "seed": 9,
            "fill": 3}
    assert len(shape) == K.MAX_NDIM
    got, expected = _run_gather(*_gather_inputs(case), case)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="at most 16"):
        plan = plan_batch([tuple(slice(0, 1) for _ in range(17))], (1,) * 17, (1,) * 17)
        K.launch_gather(plan, dev(np.zeros(8, np.uint8)), np.zeros(1, np.int64), np.ones(17, np.int64), np.uint8,
                        dev(np.zeros(1, np.uint8)), sample_size=1, out_strides=np.ones(17, np.int64))


@pytest.mark.parametrize("dtype", ["<u4", "<f8"])
def test_gather_offsets_past_2_to_the_31(emu: GpuEmulation, dtype: str) -> None:
    """Chunks at byte offsets past 2**31 and output elements past 2**31 bytes (sparse buffers)."""
    case = {"shape": (40, 30), "chunk": (16, 8), "regions": [(slice(3, 35), slice(2, 29)), (slice(0, 32), slice(1, 28))],
            "dtype": np.dtype(dtype), "order": (1, 0), "swap": False, "missing": 0.2, "seed": 2, "fill": 5}
    base = (1 << 31) + 48
    chunks = sparse(base + (1 << 20))
    plan, chunks, offsets, strides = _gather_inputs(case, chunk_base=base, chunks=chunks)
    expected = km.gather_pieces(plan, chunks, offsets, strides, case["dtype"], fill_value=5)
    # the batch sits at the end of a sparse output of more than 2**31 bytes: every element index the
    # kernel computes is past 2**31 bytes (the plan's regions are renumbered)
    sample_shape, out_strides, _ = km.gather_layout(plan, None)
    sample_size = int(np.prod(sample_shape))
    pad = ((1 << 31) + 4096) // (sample_size * case["dtype"].itemsize) + 1
    far = dataclasses.replace(plan, piece_region=plan.piece_region + pad, n_regions=plan.n_regions + pad)
    out = sparse((pad + plan.n_regions) * sample_size * case["dtype"].itemsize)
    K.launch_gather(far, dev(chunks), offsets, strides, case["dtype"], dev(out.view(case["dtype"])),
                    sample_size=sample_size, out_strides=out_strides, fill_value=5)
    assert "gather_pieces_copy_" + str(case["dtype"].itemsize) in emu.kernel_launches[-1]
    np.testing.assert_array_equal(out.view(case["dtype"])[pad * sample_size:], expected.reshape(-1))


# ----------------------------------------------------------------------------- crc32c.cu


@SETTINGS
@given(sizes=st.lists(st.one_of(st.integers(0, 9), st.sampled_from([4095, 4096, 4097, 8192, 12_289]),
                                st.integers(0, 40_000)), min_size=1, max_size=6),
       start=st.integers(0, 15), seed=st.integers(0, 2**32 - 1))
def test_crc32c_matches_mirror(emu: GpuEmulation, sizes: list[int], start: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = np.array(sizes, np.int64)
    offsets = start + np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    data = rng.integers(0, 256, int(start + size.sum() + 1), dtype=np.uint8)
    got = K.launch_crc32c(dev(data), offsets, size)
    np.testing.assert_array_equal(got._a, km.crc32c_batch(data, offsets, size))


def test_crc32c_many_segments_per_thread_and_offsets_past_2_to_the_31(emu: GpuEmulation) -> None:
    """A buffer of more than 256 segments (each combine thread folds several) and buffers past 2**31."""
    import crc32c

    rng = np.random.default_rng(7)
    base = (1 << 31) + 5
    data = sparse(base + (3 << 20))
    size = np.array([(1 << 20) + 4096 * 3 + 17, 1, 0, 5000], np.int64)
    offsets = base + np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    data[base: base + int(size.sum())] = rng.integers(0, 256, int(size.sum()), dtype=np.uint8)
    got = K.launch_crc32c(dev(data), offsets, size)
    want = [crc32c.crc32c(data[o: o + n].tobytes()) for o, n in zip(offsets, size, strict=True)]
    assert got._a.tolist() == want


def test_production_gpu_code_does_not_import_the_oracles() -> None:
    """The engine and the launchers take layout helpers from gpuzarr.plan.layout, never from the mirrors."""
    import ast
    from pathlib import Path

    import gpuzarr.engines.gpu as pkg

    for path in Path(pkg.__path__[0]).glob("*.py"):
        if path.name == "mirrors.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any("mirrors" in m for m in imported), path.name
