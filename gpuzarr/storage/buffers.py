"""Batch buffers: where the encoded chunks of one batch live, packed for a batched decoder.

Every batched decoder (nvCOMP on the GPU, the Blosc batch parser on the host) reads a
batch's chunks from one buffer, each entry at an aligned offset. :func:`aligned_slots`
is the one alignment rule, :func:`concatenate_aligned` packs host chunks by it (into
pageable memory, or into memory the caller provides), and :class:`DeviceBatch` is a batch
read straight into device memory (kvikio) by the same rule. :class:`PinnedStaging` is the
one page-locked host staging path to the GPU: a reusable per-thread arena whose copies
run asynchronously on a CUDA stream, guarded by an event, and :func:`stage_to_device`
packs and uploads a batch through it. Storage backends produce these; engines and codecs
consume them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BATCH_ALIGN", "DeviceBatch", "PinnedStaging", "aligned_slots", "concatenate_aligned", "pinned_staging",
           "stage_to_device"]


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


def concatenate_aligned(chunks: Sequence[Any], align: int = BATCH_ALIGN,
                        allocate: Callable[[int], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunks (bytes-like) back to back in one uint8 array, each at an offset from :func:`aligned_slots`.

    Returns ``(blob, base, length)``. One ``bytes.join`` call (into new pageable memory), or
    with ``allocate`` (``nbytes -> uint8 array``, e.g. :meth:`PinnedStaging.take`) one
    ``np.concatenate`` into the memory it returns: no per-chunk copies in Python either way.
    """
    views = [_as_bytes_view(c) for c in chunks]
    length = np.fromiter((v.nbytes for v in views), dtype=np.int64, count=len(views))
    base, end = aligned_slots(length, align=align)
    pads = np.diff(np.append(base, end)) - length
    zero: Any = bytes(align) if allocate is None else np.zeros(align, dtype=np.uint8)
    parts: list[Any] = []
    for v, p in zip(views, pads.tolist(), strict=True):
        parts.append(v)
        if p:
            parts.append(zero[:p])
    if allocate is not None:
        blob = allocate(end)[:end]
        if parts:
            np.concatenate([np.frombuffer(p, dtype=np.uint8) for p in parts], out=blob)
        return blob, base, length
    blob = np.frombuffer(b"".join(parts), dtype=np.uint8) if parts else np.zeros(0, dtype=np.uint8)
    return blob, base, length


class PinnedStaging:
    """Reusable page-locked host memory for one thread's asynchronous host↔device copies.

    :meth:`take` hands out the arena (grown to the next power of two when too small, never
    shrunk), first waiting for the event :meth:`queued` recorded after the copies from its
    previous use, so a copy still in flight is never overwritten; nothing waits when the
    previous copies are done. One arena per thread and role (:func:`pinned_staging`): the
    engine is shared by the threads of a process.
    """

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None
        self._event: Any = None

    def take(self, nbytes: int) -> np.ndarray:
        """The arena as a uint8 array of at least ``nbytes`` (its previous copies waited for)."""
        self.wait()
        nbytes = int(nbytes)
        if self._buf is None or self._buf.size < nbytes:
            import cupyx

            self._buf = None  # give the old block back to CuPy's pinned pool before asking for a larger one
            self._buf = cupyx.empty_pinned(max(1 << 16, 1 << max(nbytes - 1, 0).bit_length()), dtype=np.uint8)
        return self._buf[:nbytes]

    def queued(self, stream: Any) -> None:
        """Record that copies from or into the arena were queued on ``stream`` (the next take waits for them)."""
        import cupy

        event = cupy.cuda.Event(disable_timing=True)
        event.record(stream)
        self._event = event

    def wait(self) -> None:
        """Wait for the copies recorded by :meth:`queued` (an event, never the whole stream or device)."""
        if self._event is not None:
            if not self._event.done:  # a query first: copies that already landed cost no wait
                self._event.synchronize()
            self._event = None


_STAGING = threading.local()


def pinned_staging(role: str) -> PinnedStaging:
    """This thread's :class:`PinnedStaging` for ``role`` ("upload", "results", ...)."""
    arenas = getattr(_STAGING, "arenas", None)
    if arenas is None:
        arenas = _STAGING.arenas = {}
    arena = arenas.get(role)
    if arena is None:
        arena = arenas[role] = PinnedStaging()
    return arena


def stage_to_device(chunks: Sequence[Any], *, dev: Any = None, stream: Any = None,
                    align: int = BATCH_ALIGN) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Pack ``chunks`` into this thread's pinned upload arena and copy them to the device asynchronously.

    Returns ``(dev, base, length, host)``: the device buffer (``dev``, or a new CuPy
    ``uint8`` buffer), each chunk's offset and length, and the pinned host image (valid
    until this thread's next upload). The copy is queued on ``stream`` (CuPy's current
    stream when ``None``), so work queued after it on that stream sees the bytes.
    """
    import cupy

    stream = cupy.cuda.get_current_stream() if stream is None else stream
    staging = pinned_staging("upload")
    host, base, length = concatenate_aligned(chunks, align, allocate=staging.take)
    if dev is None:
        dev = cupy.empty(max(host.size, 1), dtype=cupy.uint8)
    if host.size:
        dev[: host.size].set(host, stream=stream)
        staging.queued(stream)
    return dev, base, length, host


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
