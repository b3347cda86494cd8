"""Adaptive batch size: grow the batch while reads get faster, shrink it when memory runs short.

Bigger batches share more chunks between their regions and amortise per-batch overheads
(planning, kernel launches, Python), up to the point where memory runs out or nothing is
gained. :class:`AdaptiveBatchSize` finds that point while an epoch runs: it measures the
read throughput (samples/s) over a few batches at each size, grows the size by ``growth``
while throughput improves by more than ``tolerance``, then settles on the best size seen;
independently, it caps the size so that ``in_flight`` batches fit in ``memory_fraction``
of the free memory (NVML's free device memory for ``device="cuda"``, the host's available
memory otherwise), re-checked at every decision, so it shrinks when memory gets scarce.

Only the cut of the epoch changes: the loader still reads every sample of the epoch, in
order (:class:`gpuzarr.loading.loader.Loader` with ``adaptive=``). Single-process only —
DDP ranks must run equal batch counts, which a per-rank controller cannot promise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpuzarr.errors import ConfigurationError


def free_memory_bytes(device: str = "cpu", index: int = 0) -> int:
    """Free memory where batches live: NVML's free device memory for ``"cuda"``, host available otherwise."""
    if device == "cuda":
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
        finally:
            pynvml.nvmlShutdown()
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass
class AdaptiveBatchSize:
    """Picks each batch's size within ``[min_size, max_size]`` from throughput and free memory.

    ``device``: ``"auto"`` (the GPU when gpuzarr's GPU engine is usable), ``"cuda"`` or
    ``"cpu"`` — whose free memory bounds the batch. ``free_memory``: a callable returning
    free bytes, replacing the NVML / host probe. ``history`` records ``(size, samples/s)``
    per decision.
    """

    min_size: int
    max_size: int
    start: int | None = None
    device: str = "auto"
    gpu_index: int = 0
    memory_fraction: float = 0.8
    in_flight: int = 4
    growth: float = 1.5
    window: int = 3
    tolerance: float = 0.05
    free_memory: Callable[[], int] | None = None
    history: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ConfigurationError(f"need 1 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.growth <= 1 or self.window < 1 or not 0 < self.memory_fraction <= 1 or self.in_flight < 1:
            raise ConfigurationError("growth must be > 1, window >= 1, 0 < memory_fraction <= 1, in_flight >= 1")
        start = self.min_size if self.start is None else self.start
        self.size = min(self.max_size, max(self.min_size, int(start)))
        if self.device == "auto":
            from gpuzarr import _optional

            self.device = "cuda" if _optional.gpu_engine() else "cpu"
        self._lock = threading.Lock()
        self._samples = 0
        self._seconds = 0.0
        self._batches = 0
        self._bytes_per_sample = 0.0
        self._best: tuple[int, float] | None = None
        self._settled = False

    def _free(self) -> int:
        if self.free_memory is not None:
            return int(self.free_memory())
        return free_memory_bytes(self.device, self.gpu_index)

    def memory_cap(self) -> int:
        """The largest size whose ``in_flight`` batches fit in ``memory_fraction`` of free memory."""
        if self._bytes_per_sample <= 0:
            return self.max_size
        return int(self.memory_fraction * self._free() / (self._bytes_per_sample * self.in_flight))

    def next_size(self) -> int:
        """The size of the next batch to cut."""
        with self._lock:
            return self.size

    def observe(self, samples: int, seconds: float, nbytes: int) -> None:
        """A batch of ``samples`` was read in ``seconds`` and holds ``nbytes``."""
        with self._lock:
            if samples > 0:
                self._bytes_per_sample = max(self._bytes_per_sample, nbytes / samples)
            self._samples += samples
            self._seconds += max(seconds, 1e-9)
            self._batches += 1
            if self._batches < self.window:
                return
            rate = self._samples / self._seconds
            self.history.append((self.size, rate))
            self._samples, self._seconds, self._batches = 0, 0.0, 0
            if not self._settled:
                if self._best is None or rate > self._best[1] * (1 + self.tolerance):
                    self._best = (self.size, rate)
                    grown = max(self.size + 1, int(self.size * self.growth))
                    if grown > self.max_size and self.size == self.max_size:
                        self._settled = True
                    self.size = min(self.max_size, grown)
                else:  # no gain from the last growth: go back to the best size and stay
                    self.size = self._best[0]
                    self._settled = True
            self.size = max(self.min_size, min(self.size, self.memory_cap()))

    def state(self) -> dict[str, Any]:
        """What the controller has learnt (for logs)."""
        with self._lock:
            return {"size": self.size, "settled": self._settled, "best": self._best,
                    "bytes_per_sample": self._bytes_per_sample}
