"""The issue-2 CPU comparison: gpuzarr's CPU engine vs zarr-python, tensorstore and zarrs.

Runs the ``full`` preset (batches of 32 random 960x960 crops of the 4K demo dataset,
written to ``demo-data/`` first if missing) with the CPU readers only, prints the table
and writes ``bench-out/bench-full.json`` plus plots. Any ``gpuzarr bench`` flag can be
appended to override the defaults, e.g.::

    python benchmarks/bench_cpu.py --repeats 40 --out bench-out/cpu
"""

from __future__ import annotations

import sys

from gpuzarr.tools.cli import main

CPU_READERS = "gpuzarr-cpu,zarr-python,tensorstore,zarrs"

if __name__ == "__main__":
    raise SystemExit(main(["bench", "--preset", "full", "--readers", CPU_READERS, *sys.argv[1:]]))
