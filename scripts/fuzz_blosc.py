#!/usr/bin/env python
"""Longer fuzz run of the Blosc host validator and reference decoder than tests/test_blosc_fuzz.py.

Each round mutates valid numcodecs chunks (truncation, header bytes, block starts,
stream sizes, payload bytes, boundary integers), validates the whole round as one
batch, checks that every chunk that passes is in bounds, and decodes a sample of
them: the reference must equal numcodecs or raise CorruptChunkError. Any other
outcome stops the run and prints the seed and the chunk (hex) to reproduce it.

    python scripts/fuzz_blosc.py --rounds 50 --cases 20000 --decode 2000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from test_blosc_fuzz import assert_streams_in_bounds, build_cases, check_decode

from gpuzarr.codecs import blosc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cases", type=int, default=20_000, help="mutated chunks per round")
    parser.add_argument("--decode", type=int, default=2_000, help="valid-looking chunks decoded per round")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    totals: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    for r in range(args.rounds):
        seed = args.seed + r
        cases, expected, _ = build_cases(seed, args.cases)
        verdict = blosc.check_blosc_batch(cases, expected_nbytes=expected)
        good = np.flatnonzero(verdict.ok)
        totals["rejected by validator"] += int((~verdict.ok).sum())
        totals["passed validator"] += int(good.size)
        if good.size:
            assert_streams_in_bounds([cases[i] for i in good.tolist()], [expected[i] for i in good.tolist()])
        for i in good[: args.decode].tolist():
            try:
                totals[check_decode(cases[i], expected[i], f"round{r}/{i}")] += 1
            except Exception as exc:  # noqa: BLE001 - any other exception breaks the contract: report it
                print(f"seed {seed} case {i}: {type(exc).__name__}: {exc}\n{cases[i].hex()}", file=sys.stderr)
                return 1
        print(f"round {r + 1}/{args.rounds} seed {seed}: {dict(totals)}", flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s: {dict(totals)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
