"""Batch buffers: where the encoded chunks of one batch live, packed for a batched decoder.

Every batched decoder (nvCOMP on the GPU, the Blosc batch parser on the host) reads a
batch's chunks from one buffer, each entry at an aligned offset. :func:`aligned_slots`
is the one alignment rule, :func:`concatenate_aligned` packs host chunks by it, and
:class:`DeviceBatch` is a batch read straight into device memory (kvikio) by the same
rule. Storage backends produce these; engines and codecs consume them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BATCH_ALIGN", "DeviceBatch", "aligned_slots", "concatenate_aligned"]


#: alignment of every entry in a batch buffer: nvCOMP wants 8-byte aligned Zstd/Deflate inputs; 16 is safe for all
BATCH_ALIGN = 16


def aligned_slots(sizes: np.ndarray | Sequence[int], start: int = 0, align: int = BATCH_ALIGN) -> tuple[np.ndarray, int]:
    """Offsets (multiples of ``align``) for buffers of ``sizes`` packed from ``start``; returns ``(offsets, end)``."""
    start = -(-int(start) // align) * align
    padded = -(-np.asarray(sizes, dtype=np.int64) // align) * align
    offsets = np.full(len(padded), start, dtype=np.int64)
    if len(padded) > 1:
        offsets[1:] += np.cumsum(padded[:-1])
    return offsets, int(start + padded.sum())


def _as_bytes_view(chunk: Any) -> memoryview:
    view = memoryview(chunk)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def concatenate_aligned(chunks: Sequence[Any], align: int = BATCH_ALIGN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunks (bytes-like) back to back in one uint8 array, each at an offset from :func:`aligned_slots`.

    Returns ``(blob, base, length)``. One ``bytes.join`` call: no per-chunk copies in Python.
    """
    views = [_as_bytes_view(c) for c in chunks]
    length = np.fromiter((v.nbytes for v in views), dtype=np.int64, count=len(views))
    base, end = aligned_slots(length, align=align)
    pads = np.diff(np.append(base, end)) - length
    zero = bytes(align)
    parts: list[Any] = []
    for v, p in zip(views, pads.tolist(), strict=True):
        parts.append(v)
        if p:
            parts.append(zero[:p])
    blob = np.frombuffer(b"".join(parts), dtype=np.uint8) if parts else np.zeros(0, dtype=np.uint8)
    return blob, base, length


@dataclass(frozen=True, slots=True)
class DeviceBatch:
    """Encoded bytes of a batch in one device buffer (CuPy ``uint8``).

    Entry ``i`` occupies ``data[offsets[i] : offsets[i] + lengths[i]]`` when
    ``present[i]``; a missing key has ``present[i] == False`` and length 0.
    """

    data: Any
    offsets: np.ndarray
    lengths: np.ndarray
    present: np.ndarray
