"""The demo dataset: synthetic 4K video frames shaped like the Zarr ML tutorial's.

``write_demo_dataset`` writes a Zarr 3 group that looks like a real vision training set,
so that benchmarks run on data that compresses like photographs do (not like zeros, which
compress to nothing, and not like uniform noise, which does not compress at all):

``raw``
    uint8 RGB frames ``(N, 3, H, W)`` (4K by default: 2160×3840), chunks ``(1, 3, 960, 960)``,
    Blosc zstd level 5 with bit-shuffle, exactly as in the tutorial.
``lr/2x``, ``lr/4x``
    the same frames box-downsampled by 2 and 4 (a multi-resolution pyramid).
``flow``
    float16 optical-flow-like field ``(N, 2, H/2, W/2)``: the camera pan plus a smooth
    parallax field (zero in the sky) plus a little estimator noise.

Each frame is a window into one "world": fractal terrain with a sky gradient, coloured
regions, hard-edged objects, vignetting, lit at 1/4 resolution, upsampled bilinearly
and finished with brightness-dependent sensor noise at full resolution. Everything is
vectorised NumPy and deterministic for a seed (frame ``t`` uses its own generator
seeded by ``(seed, t)``), so the same call always writes the same values.

``ensure_demo_dataset`` reuses a complete dataset that has at least the frames asked for;
the completion marker (group attribute ``gpuzarr_demo``) is written last, so an
interrupted write is detected and redone.
"""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Bumped whenever the generator changes what it writes; an older dataset is rewritten.
DEMO_FORMAT_VERSION = 1
DEMO_ATTRIBUTE = "gpuzarr_demo"
DEFAULT_DEMO_PATH = Path("demo-data") / "gpuzarr-demo.zarr"

# The scene is lit at 1/_LOW_RES_FACTOR of the frame size, then upsampled.
_LOW_RES_FACTOR = 4
# Camera pan per frame, in low-resolution pixels (rows, columns).
_PAN_PER_FRAME = (1, 5)


@dataclass(frozen=True)
class DemoSpec:
    """What a demo dataset holds; stored in the group attributes as the completion marker."""

    frames: int
    height: int = 2160
    width: int = 3840
    chunk: int = 960
    seed: int = 0
    version: int = DEMO_FORMAT_VERSION


def _blosc_codec() -> Any:
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def _upsample_bilinear(low: np.ndarray, factor: int, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear upsampling of ``(C, h, w)`` by an integer factor (pixel-centre aligned).

    Each of the ``factor`` output phases is a fixed blend of two neighbouring input
    pixels, so the whole thing is a few broadcast multiply-adds and one interleave per
    axis, with no gathers.
    """

    def along_last_axis(a: np.ndarray) -> np.ndarray:
        padded = np.concatenate([a[..., :1], a, a[..., -1:]], axis=-1)
        n = a.shape[-1]
        phases = []
        for k in range(factor):
            offset = (k + 0.5) / factor - 0.5  # source position of output k, relative to pixel i
            base = math.floor(offset)
            frac = np.float32(offset - base)
            left = padded[..., 1 + base : 1 + base + n]
            right = padded[..., 2 + base : 2 + base + n]
            phases.append(left * (np.float32(1) - frac) + right * frac)
        return np.stack(phases, axis=-1).reshape(*a.shape[:-1], n * factor)

    cols = along_last_axis(low)[..., :out_w]
    rows = along_last_axis(np.swapaxes(cols, -1, -2))
    return np.ascontiguousarray(np.swapaxes(rows, -1, -2)[..., :out_h, :])


def _fractal_noise(rng: np.random.Generator, shape: tuple[int, int], octaves: int, channels: int = 1) -> np.ndarray:
    """Sum of upsampled random grids with 1/f amplitudes: smooth, natural-looking terrain."""
    h, w = shape
    total = np.zeros((channels, h, w), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        factor = 2 ** (octaves - 1 - octave)
        grid = rng.standard_normal((channels, -(-h // factor), -(-w // factor)), dtype=np.float32)
        layer = _upsample_bilinear(grid, factor, h, w) if factor > 1 else grid
        total += np.float32(amplitude) * layer
        norm += amplitude
        amplitude *= 0.55
    return total / np.float32(norm)


@dataclass
class _World:
    """The scene every frame looks into, at low resolution and larger than one frame."""

    color: np.ndarray  # (3, H_world, W_world) float32 in [0, 255]
    parallax: np.ndarray  # (2, H_world, W_world) float32, flow in full-res pixels per frame


def _build_world(spec: DemoSpec) -> _World:
    rng = np.random.default_rng([spec.seed, 1_000_003])
    low_h = -(-spec.height // _LOW_RES_FACTOR)
    low_w = -(-spec.width // _LOW_RES_FACTOR)
    world_h = low_h + _PAN_PER_FRAME[0] * spec.frames + 1
    world_w = low_w + _PAN_PER_FRAME[1] * spec.frames + 1
    octaves = max(3, int(math.log2(max(low_h, 8))) - 1)

    terrain = _fractal_noise(rng, (world_h, world_w), octaves)[0]
    tint = _fractal_noise(rng, (world_h, world_w), max(2, octaves - 3), channels=3)
    rows = np.linspace(0.0, 1.0, world_h, dtype=np.float32)[:, None]
    horizon = 0.35 + 0.08 * np.sin(np.linspace(0, 6.0, world_w, dtype=np.float32))[None, :]
    ground = 1.0 / (1.0 + np.exp(-(rows - horizon) * 40.0))  # 0 in the sky, 1 on the ground

    sky_rows = np.stack([110 + 60 * (1 - rows), 150 + 50 * (1 - rows), 200 + 40 * (1 - rows)])  # (3, H, 1)
    clouds = np.clip(_fractal_noise(rng, (world_h, world_w), max(2, octaves - 2))[0], 0, None) * 70.0
    sky = (sky_rows + clouds[None]).astype(np.float32)  # (3, H, W): bluish gradient, white clouds
    ground_rgb = np.stack([
        95 + 55 * terrain + 25 * tint[0],
        100 + 60 * terrain + 25 * tint[1],
        70 + 40 * terrain + 20 * tint[2],
    ]).astype(np.float32)
    # Fine texture (grass, gravel) on the ground, at the finest low-res scale.
    texture = rng.standard_normal((world_h, world_w), dtype=np.float32) * 6.0
    color = sky * (1 - ground) + (ground_rgb + texture) * ground

    # Hard-edged objects (buildings, signs): rectangles and discs, lit by a gradient.
    for _ in range(max(3, (world_h * world_w) // 40_000)):
        cy, cx = rng.uniform(0, world_h), rng.uniform(0, world_w)
        half_h = rng.uniform(0.03, 0.12) * low_h
        half_w = half_h * (rng.uniform(0.4, 2.5) if rng.random() < 0.5 else 1.0)
        is_disc = half_w == half_h
        rgb = rng.uniform(40, 200, 3).astype(np.float32)
        y0, y1 = max(int(cy - half_h), 0), min(int(cy + half_h) + 1, world_h)
        x0, x1 = max(int(cx - half_w), 0), min(int(cx + half_w) + 1, world_w)
        if y1 <= y0 or x1 <= x0:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        if is_disc:
            mask = yy * yy + xx * xx < half_h * half_h
        else:
            mask = (np.abs(yy) < half_h) & (np.abs(xx) < half_w)
        # Lit by a gradient across the face, with the surface texture of the terrain below.
        shade = 1.0 + 0.15 * yy / max(half_h, 1.0) + 0.12 * terrain[y0:y1, x0:x1]
        patch = color[:, y0:y1, x0:x1]
        color[:, y0:y1, x0:x1] = np.where(mask[None], rgb[:, None, None] * shade[None], patch)

    # Vignetting belongs to the lens, not the world: applied per frame in render_frame.
    parallax = _fractal_noise(rng, (world_h, world_w), 3, channels=2) * np.float32(2.0)
    parallax *= ground[None]  # the sky is far away: no parallax
    return _World(color=np.clip(color, 0, 255).astype(np.float32), parallax=parallax)


def _vignette(low_h: int, low_w: int) -> np.ndarray:
    y = np.linspace(-1, 1, low_h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, low_w, dtype=np.float32)[None, :]
    return (1.0 - 0.22 * (x * x + y * y)).astype(np.float32)


def render_frame(world: _World, spec: DemoSpec, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t``: uint8 RGB ``(3, H, W)`` and float16 flow ``(2, H/2, W/2)``."""
    rng = np.random.default_rng([spec.seed, t])
    f = _LOW_RES_FACTOR
    low_h, low_w = -(-spec.height // f), -(-spec.width // f)
    oy, ox = _PAN_PER_FRAME[0] * t, _PAN_PER_FRAME[1] * t
    window = world.color[:, oy : oy + low_h, ox : ox + low_w]
    exposure = np.float32(1.0 + 0.04 * math.sin(0.7 * t))  # slow auto-exposure drift
    low = window * (_vignette(low_h, low_w)[None] * exposure)

    frame = _upsample_bilinear(low, f, spec.height, spec.width)
    # Sensor noise: read noise plus shot noise that grows with brightness.
    sigma = np.float32(0.9) + np.float32(0.06) * np.sqrt(np.maximum(frame, 0, out=np.empty_like(frame)))
    frame += rng.standard_normal(frame.shape, dtype=np.float32) * sigma
    rgb = np.clip(frame, 0, 255, out=frame).astype(np.uint8)

    # Flow at half resolution: camera pan (in full-res pixels) plus parallax.
    pan = np.array([_PAN_PER_FRAME[0] * f, _PAN_PER_FRAME[1] * f], dtype=np.float32)
    half_h, half_w = -(-spec.height // 2), -(-spec.width // 2)
    parallax = _upsample_bilinear(world.parallax[:, oy : oy + low_h, ox : ox + low_w], f // 2, half_h, half_w)
    flow = -pan[:, None, None] + parallax
    flow += rng.standard_normal(flow.shape, dtype=np.float32) * np.float32(0.03)  # estimator noise
    return rgb, flow.astype(np.float16)


def _box_downsample(frame: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``×``factor`` blocks of a ``(C, H, W)`` uint8 frame (edges cropped)."""
    c, h, w = frame.shape
    h2, w2 = h // factor, w // factor
    blocks = frame[:, : h2 * factor, : w2 * factor].reshape(c, h2, factor, w2, factor)
    total = blocks.sum(axis=(2, 4), dtype=np.uint32)
    return ((total + factor * factor // 2) // (factor * factor)).astype(np.uint8)


def _read_spec(path: str | os.PathLike[str]) -> DemoSpec | None:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        marker = dict(group.attrs).get(DEMO_ATTRIBUTE)
    except Exception:  # noqa: BLE001 - anything unreadable is "not a complete demo dataset"
        return None
    if not isinstance(marker, dict):
        return None
    try:
        return DemoSpec(**{k: int(v) for k, v in marker.items() if k in DemoSpec.__dataclass_fields__})
    except TypeError:
        return None


def write_demo_dataset(
    path: str | os.PathLike[str] = DEFAULT_DEMO_PATH,
    frames: int = 8,
    *,
    height: int = 2160,
    width: int = 3840,
    chunk: int = 960,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the demo dataset at ``path`` (replacing whatever is there) and return its summary.

    The summary holds the spec, the paths of the arrays and the stored / logical bytes
    and compression ratio of ``raw``. With ``progress``, a tqdm bar counts frames and the
    compression ratio is printed at the end.
    """
    import zarr

    if frames < 1 or height < 8 or width < 8 or chunk < 1:
        raise ValueError(f"demo dataset needs frames >= 1 and a frame of at least 8x8, got {frames}x{height}x{width}")
    spec = DemoSpec(frames=frames, height=height, width=width, chunk=chunk, seed=seed)
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    codec = _blosc_codec()
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    raw = group.create_array(
        "raw", shape=(frames, 3, height, width), chunks=(1, 3, min(chunk, height), min(chunk, width)),
        dtype="uint8", compressors=codec, fill_value=0,
    )
    half = max(chunk // 2, 1)
    pyramid = {}
    for factor in (2, 4):
        h, w = height // factor, width // factor
        pyramid[factor] = group.create_array(
            f"lr/{factor}x", shape=(frames, 3, h, w), chunks=(1, 3, min(half, h), min(half, w)),
            dtype="uint8", compressors=codec, fill_value=0,
        )
    half_h, half_w = -(-height // 2), -(-width // 2)
    flow = group.create_array(
        "flow", shape=(frames, 2, half_h, half_w), chunks=(1, 2, min(half, half_h), min(half, half_w)),
        dtype="float16", compressors=codec, fill_value=0.0,
    )

    world = _build_world(spec)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=frames, desc=f"writing demo dataset {path}", unit="frame")

    def store_frame(t: int, rgb: np.ndarray, flow_frame: np.ndarray) -> None:
        raw[t] = rgb
        lr2 = _box_downsample(rgb, 2)
        pyramid[2][t] = lr2
        pyramid[4][t] = _box_downsample(lr2, 2)
        flow[t] = flow_frame

    # Render frame t+1 while frame t is compressed and written (both mostly release the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuzarr-demo-writer") as writer:
        pending: Future[None] | None = None
        for t in range(frames):
            rgb, flow_frame = render_frame(world, spec, t)
            if pending is not None:
                pending.result()
                if bar is not None:
                    bar.update(1)
            pending = writer.submit(store_frame, t, rgb, flow_frame)
        if pending is not None:
            pending.result()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    summary = describe_demo_dataset(path, spec)
    group.attrs[DEMO_ATTRIBUTE] = asdict(spec)  # written last: marks the dataset complete
    if progress:
        print(
            f"demo dataset {path}: raw {summary['raw_shape']} uint8, "
            f"{summary['raw_logical_bytes'] / 1e6:.1f} MB logical, {summary['raw_stored_bytes'] / 1e6:.1f} MB stored, "
            f"compression ratio {summary['raw_compression_ratio']:.2f}x (blosc zstd-5 bitshuffle)"
        )
    return summary


def describe_demo_dataset(path: str | os.PathLike[str], spec: DemoSpec | None = None) -> dict[str, Any]:
    """Summary of a demo dataset: spec, array paths, and stored size / ratio of ``raw``."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    raw = group["raw"]
    logical = int(raw.nbytes)
    stored = int(raw.nbytes_stored()) - _metadata_bytes(Path(path) / "raw")
    spec = spec or _read_spec(path)
    return {
        "path": str(path),
        "spec": asdict(spec) if spec else None,
        "arrays": ["raw", "lr/2x", "lr/4x", "flow"],
        "raw_shape": tuple(raw.shape),
        "raw_chunks": tuple(raw.chunks),
        "raw_logical_bytes": logical,
        "raw_stored_bytes": stored,
        "raw_compression_ratio": logical / max(stored, 1),
    }


def _metadata_bytes(array_dir: Path) -> int:
    meta = array_dir / "zarr.json"
    return meta.stat().st_size if meta.exists() else 0


def ensure_demo_dataset(
    path: str | os.PathLike[str] = DEFAULT_DEMO_PATH,
    frames: int = 8,
    *,
    height: int = 2160,
    width: int = 3840,
    chunk: int = 960,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Return ``path`` holding a complete demo dataset with at least ``frames`` frames.

    A complete dataset of the same frame size, chunking, seed and generator version with
    at least ``frames`` frames is reused as is; anything else (missing, interrupted,
    different parameters) is (re)written.
    """
    path = Path(path)
    existing = _read_spec(path)
    if (
        existing is not None
        and existing.frames >= frames
        and (existing.height, existing.width, existing.chunk, existing.seed, existing.version)
        == (height, width, chunk, seed, DEMO_FORMAT_VERSION)
    ):
        return path
    write_demo_dataset(path, frames, height=height, width=width, chunk=chunk, seed=seed, progress=progress)
    return path
