"""Stream training crops from S3 with chunk prefetch: gpuzarr reads the next batches' chunks ahead.

    python examples/s3_streaming.py                       # a loopback moto S3 server (pip install 'moto[server]')
    python examples/s3_streaming.py --url s3://bucket/data.zarr --endpoint-url http://... --anon

Without ``--url`` it starts moto on 127.0.0.1, uploads a tiny dataset, and reads it
back. The array is opened with an encoded-chunk cache; ``prefetch_chunks=4`` makes the
loader fetch the chunks of the next 4 batches while the current one decodes, which hides
S3's per-request latency. Prints samples/s with and without prefetch; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

import zarr
from _tiny import tiny_dataset

import gpuzarr
import gpuzarr.torch as gt


def start_moto() -> tuple[Any, dict[str, Any]]:
    """A moto S3 server on a free loopback port, and storage options reaching it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "key": "example", "secret": "example",
               "client_kwargs": {"region_name": "us-east-1"}}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="example", aws_secret_access_key="example",
                 region_name="us-east-1").create_bucket(Bucket="gpuzarr-example")
    return server, options


def upload(local: str, url: str, options: dict[str, Any]) -> None:
    """Copy the local group's ``raw`` array to ``url`` with zarr-python."""
    src = zarr.open_group(local, mode="r")["raw"]
    dst = zarr.create_array(url, shape=src.shape, chunks=src.chunks, dtype=src.dtype, compressors=src.compressors,
                            storage_options=options, overwrite=True)
    dst[:] = src[:]


def epoch_rate(url: str, options: dict[str, Any], prefetch: int, args: argparse.Namespace) -> tuple[float, int]:
    arr = gpuzarr.open_array(url, cache=gpuzarr.PinnedLRUCache(256 << 20), **options)
    loader = gt.ZarrLoader(arr, gpuzarr.RandomCrops((args.crop, args.crop), seed=1, samples_per_epoch=args.samples),
                           args.batch_size, device="cpu", prefetch_chunks=prefetch)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch)
    arr.close()
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an S3 array URL (default: a loopback moto server with a tiny dataset)")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--anon", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=4, help="batches whose chunks are fetched ahead")
    args = parser.parse_args(argv)

    server = None
    if args.url:
        url, options = args.url, {}
        if args.endpoint_url:
            options["endpoint_url"] = args.endpoint_url
        if args.anon:
            options["anon"] = True
    else:
        server, options = start_moto()
        url = "s3://gpuzarr-example/tiny.zarr/raw"
        upload(tiny_dataset(), url, options)
    try:
        plain, n = epoch_rate(url, options, 0, args)
        ahead, _ = epoch_rate(url, options, args.prefetch, args)
    finally:
        if server is not None:
            server.stop()
    print(f"{n} crops from {url}: {plain:.0f} samples/s without prefetch, {ahead:.0f} with prefetch_chunks="
          f"{args.prefetch}")
    print(json.dumps({"samples": n, "plain_samples_per_s": plain, "prefetch_samples_per_s": ahead}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
