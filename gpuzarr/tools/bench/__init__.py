"""The benchmark users trust: one workload, every reader, interleaved and verified.

``gpuzarr bench`` (and :func:`run_benchmark`) reads random crops of one array through
gpuzarr's GPU and CPU engines, zarr-python (CPU and ``enable_gpu``), tensorstore and
zarrs in one run, checks each reader's first batch against zarr-python, and reports
throughput, latency, CPU / GPU utilisation, memory and PCIe traffic as a table, JSON
and PNG plots. See ``docs/benchmarks.md``.

* :mod:`gpuzarr.tools.bench.runner` — presets, crop lists, the interleaved timing loop, metrics
* :mod:`gpuzarr.tools.bench.readers` — one class per reader
* :mod:`gpuzarr.tools.bench.monitor` — psutil and NVML sampler threads
* :mod:`gpuzarr.tools.bench.report` — terminal tables and JSON
* :mod:`gpuzarr.tools.bench.plots` — PNG plots
"""

from __future__ import annotations

from gpuzarr.tools.bench.readers import DEFAULT_READERS, READER_CLASSES
from gpuzarr.tools.bench.report import render_table, save_outputs, throughput_table
from gpuzarr.tools.bench.runner import PRESETS, Preset, run_benchmark

__all__ = [
    "DEFAULT_READERS",
    "PRESETS",
    "READER_CLASSES",
    "Preset",
    "render_table",
    "run_benchmark",
    "save_outputs",
    "throughput_table",
]
