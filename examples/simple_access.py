"""Open a Zarr array (local path or S3 URL) and read a batch of crops with gpuzarr.

    python examples/simple_access.py                      # a tiny local dataset, made on first run
    python examples/simple_access.py s3://bucket/data.zarr/raw --endpoint-url http://127.0.0.1:9000 --anon

Prints the batch's shape, dtype and where it lives, and checks it against zarr-python.
"""

from __future__ import annotations

import argparse

import numpy as np
import zarr
from _tiny import tiny_dataset

import gpuzarr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", help="array path or URL (default: raw of a tiny local dataset)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto, ...)")
    parser.add_argument("--anon", action="store_true", help="anonymous S3 access")
    parser.add_argument("--crop", type=int, default=64, help="crop edge in pixels")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)

    url = args.url or tiny_dataset() + "/raw"
    options = {}
    if args.endpoint_url:
        options["endpoint_url"] = args.endpoint_url
    if args.anon:
        options["anon"] = True
    arr = gpuzarr.open_array(url, **options)
    print(arr)
    c = min(args.crop, arr.shape[-1], arr.shape[-2])
    lead = (0,) * (arr.ndim - 3) + (slice(None),) if arr.ndim >= 3 else ()
    regions = [(*lead, slice(0, c), slice(0, c)), (*lead, slice(arr.shape[-2] - c, None), slice(arr.shape[-1] - c, None))]
    batch = arr.read_batch(regions, device=args.device)
    print(f"batch {tuple(batch.shape)} {batch.dtype} on {type(batch).__module__.split('.')[0]}")
    host = batch.get() if hasattr(batch, "get") else batch
    reference = zarr.open_array(url, mode="r", **({"storage_options": options} if options else {}))
    for got, region in zip(host, regions, strict=True):
        np.testing.assert_array_equal(got, reference[region])
    print("equal to zarr-python: yes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
