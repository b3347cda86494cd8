"""The ``gpuzarr`` command line: ``demo``, ``bench`` and ``info``.

* ``gpuzarr demo`` — write the demo dataset if missing, then read random 4K crops with
  gpuzarr (``device="auto"``) and zarr-python and print crops/s and GB/s.
* ``gpuzarr bench`` — the full comparison (see :mod:`gpuzarr.tools.bench`): presets ``tiny``,
  ``demo``, ``full``; any dataset path / URL; table, JSON and plots in ``--out``.
* ``gpuzarr info`` — what is installed and usable, and why a path is or is not taken.

Heavy imports happen inside the subcommands, so ``gpuzarr --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _parse_crop(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"crop must be N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"crop must be N or HxW with positive sizes, got {text!r}")
    return values[0], values[1]


def _parse_readers(text: str) -> list[str]:
    from gpuzarr.tools.bench.readers import READER_CLASSES

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in READER_CLASSES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown reader(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(READER_CLASSES)}")
    return names


def _parse_storage_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"storage option must be KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # true / 3 / "x" / {...}
    except json.JSONDecodeError:
        return key, value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``, with a clear message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gpuzarr`` command."""
    from gpuzarr.tools.bench.readers import DEFAULT_READERS, READER_CLASSES
    from gpuzarr.tools.bench.runner import DEFAULT_DATA_DIR, PRESETS

    parser = argparse.ArgumentParser(
        prog="gpuzarr", description="GPU-direct batched reads of Zarr 3 arrays: demo, benchmark, environment report.")
    sub = parser.add_subparsers(dest="command", metavar="{demo,bench,info}")
    sub.required = True

    demo = sub.add_parser("demo", help="make the demo dataset if missing, then compare gpuzarr with zarr-python",
                          description="Write the 4K demo dataset (if missing) and read random 960x960 crops with "
                                      "gpuzarr (device='auto') and zarr-python.")
    demo.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                      help="where demo datasets live (default: %(default)s)")
    demo.add_argument("--frames", type=_positive_int, default=None,
                      help=f"frames in the demo dataset (default: {PRESETS['demo'].frames})")
    demo.add_argument("--out", default="bench-out", help="output directory for JSON and plots (default: %(default)s)")
    demo.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    bench = sub.add_parser(
        "bench", help="benchmark random-crop reads through several readers, interleaved and verified",
        description="Read the same random crops through several readers (interleaved round-robin, each verified "
                    "against zarr-python) and report throughput, latency and resource use.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                       help="; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    bench.add_argument("--dataset", default=None,
                       help="path or URL of a Zarr group/array "
                            "(default: the preset's demo dataset, written if missing)")
    bench.add_argument("--array", dest="array_path", default=None,
                       help="array path inside --dataset (default: 'raw' for the demo dataset)")
    bench.add_argument("--storage-option", dest="storage_options", type=_parse_storage_option, action="append",
                       default=[], metavar="KEY=VALUE", help="store option for remote datasets (repeatable)")
    bench.add_argument("--crop", type=_parse_crop, default=None, help="crop size N or HxW (default: from the preset)")
    bench.add_argument("--batch", dest="batch_size", type=_positive_int, default=None,
                       help="crops per batch (default: from the preset)")
    bench.add_argument("--repeats", type=_positive_int, default=None, help="timed batches per reader (default: preset)")
    bench.add_argument("--warmup", type=_non_negative_int, default=None,
                       help="untimed batches per reader before timing (default: preset)")
    bench.add_argument("--frames", type=_positive_int, default=None,
                       help="frames of the demo dataset (default: preset)")
    bench.add_argument("--readers", type=_parse_readers, default=list(DEFAULT_READERS),
                       help=f"comma-separated readers, from: {', '.join(READER_CLASSES)}")
    bench.add_argument("--gpuzarr-cache-mb", type=_non_negative_int, default=0,
                       help="give each gpuzarr reader an encoded-chunk LRU cache of this many MB (0: no cache); "
                            "its hit rate is then reported")
    bench.add_argument("--seed", type=int, default=0, help="seed of the crop positions")
    bench.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where demo datasets live")
    bench.add_argument("--out", default="bench-out", help="output directory for JSON and plots")
    bench.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of the table")
    bench.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")

    info = sub.add_parser("info", help="what is installed and usable (GPU, CUDA, nvCOMP, kvikio, ...) and why",
                          description="Report every component gpuzarr can use, with why it is or is not usable.")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.add_argument("--timeout", type=float, default=20.0, help="seconds each probe may take (default: %(default)s)")
    return parser


def _exit_status(result: dict[str, Any], command: str) -> int:
    """1 (after naming them on stderr) when any reader returned wrong values or crashed, else 0."""
    failed = [name for name, entry in result["readers"].items() if entry["status"] == "failed"]
    if failed:
        print(f"{command}: reader(s) returned wrong values or crashed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cache_factory(megabytes: int) -> Any:
    if not megabytes:
        return None
    from gpuzarr.storage.cache import PinnedLRUCache

    return lambda: PinnedLRUCache(megabytes * 10**6)


def _cmd_bench(args: argparse.Namespace) -> int:
    from gpuzarr import _optional

    _optional.require_extra("bench", "gpuzarr bench")
    from gpuzarr.tools.bench.report import make_console, render_table, save_outputs
    from gpuzarr.tools.bench.runner import run_benchmark

    result = run_benchmark(
        args.preset, dataset=args.dataset, array_path=args.array_path, storage_options=dict(args.storage_options),
        crop=args.crop, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, frames=args.frames,
        readers=args.readers, seed=args.seed, data_dir=args.data_dir, progress=not args.no_progress,
        gpuzarr_cache_factory=_cache_factory(args.gpuzarr_cache_mb),
    )
    files = save_outputs(result, args.out, plots=not args.no_plots)
    if args.json:
        from gpuzarr.tools.bench.report import dumps_result

        print(dumps_result(result))
    else:
        console = make_console()
        render_table(result, console)
        console.print("wrote " + ", ".join(files.values()))
        if "plots_skipped" in result:
            console.print(f"no plots: {result['plots_skipped']}")
    return _exit_status(result, "gpuzarr bench")


def _cmd_demo(args: argparse.Namespace) -> int:
    from gpuzarr import _optional

    _optional.require_extra("demo", "gpuzarr demo")
    from gpuzarr.tools.bench.report import make_console, save_outputs, throughput_table
    from gpuzarr.tools.bench.runner import run_benchmark

    console = make_console()
    result = run_benchmark("demo", readers=["gpuzarr", "zarr-python"], frames=args.frames, data_dir=args.data_dir,
                           progress=not args.no_progress)
    files = save_outputs(result, args.out, plots=not args.no_plots)
    throughput_table(result, console)
    console.print(f"dataset {result['dataset']['location']}: compression ratio "
                  f"{result['dataset']['compression_ratio']:.2f}x; results in {files['json']}")
    console.print("next: `gpuzarr bench --preset full` compares every reader; `gpuzarr info` shows what is usable.")
    return _exit_status(result, "gpuzarr demo")


def _cmd_info(args: argparse.Namespace) -> int:
    from gpuzarr import _optional

    if not args.json:  # the JSON report needs nothing beyond the base install; the table needs rich
        _optional.require_extra("demo", "gpuzarr info (the table; --json works without it)")
    from gpuzarr.tools.info import collect_components, info_dict, render_info

    components = collect_components(timeout_s=args.timeout)
    if args.json:
        print(json.dumps(info_dict(components), indent=2, default=str))
    else:
        render_info(components)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpuzarr`` command line; returns the exit status."""
    from gpuzarr import _optional
    from gpuzarr.errors import GpuzarrError

    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"bench": _cmd_bench, "demo": _cmd_demo, "info": _cmd_info}
    try:
        return handlers[args.command](args)
    except (GpuzarrError, ValueError) as exc:  # bad input: one clear line, not a traceback
        print(f"gpuzarr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except _optional.MissingExtraError as exc:  # a base install running a command of an extra
        print(f"gpuzarr {args.command}: {exc}", file=sys.stderr)
        return 3
