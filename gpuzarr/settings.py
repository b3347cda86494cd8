"""gpuzarr's settings: one object, in the style of ``zarr.config`` and ``kvikio.defaults``.

Every tuning knob of the package lives here, read where it is used (never copied into a
module constant at import), so a change takes effect on the next read::

    import gpuzarr
    gpuzarr.config.get("threads")                       # the thread budget
    with gpuzarr.config.set({"partial_decode.min_chunk_bytes": 1 << 20}):
        arr.read_batch(regions)                          # only inside the block
    gpuzarr.config.set({"s3.client": "s3fs"})           # from now on

Thread budgets, partial decode and the retry policy are read at each use. The remote
fetcher's client choice, concurrency and timeout are read when a fetcher is made (when an
array is opened), because its clients and connection pools are built then. An explicit
keyword argument (``open_array(url, s3_client="s3fs")``, ``LocalFileFetcher(root,
max_workers=8)``, ``RetryPolicy(max_attempts=3)``) overrides the setting.

Environment variables override the defaults at import: ``GPUZARR_THREADS=8``,
``GPUZARR_S3__CLIENT=s3fs`` (a double underscore separates nested keys; values are parsed
as Python literals where they are one). Built on donfig, the configuration library zarr
itself uses.

=====================================  =====================================================
key                                    meaning
=====================================  =====================================================
``threads``                            CPU threads for decode, fetch and fallback work
                                       together (``None``: the usable cores of this process)
``io_threads``                         blocking-I/O threads of a fetcher (``None``: 4 per
                                       core, at most 32); I/O waits, it does not compute
``partial_decode.min_chunk_bytes``     Blosc chunks at least this large decode only the
                                       blocks a batch's pieces touch
``partial_decode.max_fraction``        ... unless the touched blocks are more than this
                                       fraction of the chunk (then the whole chunk decodes)
``cpu.compiled``                       the CPU engine's compiled lane
                                       (:mod:`gpuzarr.engines.compiled`, needs Numba) and
                                       the planner's compiled twins (built on their own,
                                       for either engine): ``"background"`` compiles each
                                       on first use in a thread and uses it once ready,
                                       ``"eager"`` waits for it on first use, ``"off"``
                                       never uses them
``cpu.compile_after_chunks``           chunks read (the lane) or regions planned (the
                                       twins) before the background compile starts
                                       (a script reading a few chunks never imports Numba)
``cpu.map_min_bytes``                  the compiled lane maps (``mmap``, pages read in up
                                       front) a local chunk at least this large instead of
                                       copying it with ``pread``; 0: never
``retry.max_attempts`` ...             defaults of :class:`gpuzarr.storage.retry.RetryPolicy`
``s3.client``                          ``"auto"``, ``"obstore"`` or ``"s3fs"``
``s3.max_concurrency``                 range GETs in flight per remote fetcher (S3 or HTTP)
``s3.request_timeout``                 seconds one remote request may wait for a connection
                                       or for data before it counts as failed (and retried)
``gpu.scratch_bytes``                  nVCOMP temporary-memory budget of one decode call
                                       (a batch whose temp size would exceed it is split)
=====================================  =====================================================
"""

from __future__ import annotations

import os

from donfig import Config

__all__ = ["config", "io_thread_budget", "thread_budget", "usable_cores"]

DEFAULTS: dict = {
    "threads": None,
    "io_threads": None,
    "partial_decode": {
        "min_chunk_bytes": 1 << 18,
        "max_fraction": 0.85,
    },
    "cpu": {
        "compiled": "background",
        "compile_after_chunks": 256,
        "map_min_bytes": 1 << 19,
    },
    "retry": {
        "max_attempts": 6,
        "base_delay": 0.05,
        "max_delay": 2.0,
        "multiplier": 2.0,
        "deadline": 120.0,
    },
    "s3": {
        "client": "auto",
        "max_concurrency": 64,
        "request_timeout": 30.0,
    },
    "gpu": {
        "scratch_bytes": 1 << 30,
    },
}

config = Config("gpuzarr", defaults=[DEFAULTS])


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def thread_budget() -> int:
    """The ``threads`` setting, resolved: the CPU threads gpuzarr's pools share."""
    value = config.get("threads")
    return max(1, int(value)) if value else usable_cores()


def io_thread_budget() -> int:
    """The ``io_threads`` setting, resolved: blocking-read threads of one fetcher."""
    value = config.get("io_threads")
    return max(1, int(value)) if value else min(32, 4 * usable_cores())
