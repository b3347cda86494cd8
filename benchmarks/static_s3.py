"""A tiny read-only S3-compatible HTTP endpoint over a local directory, for benchmarks.

Why not moto: on our 2-core benchmark box moto spends about 2 ms of CPU on every GET, so a
latency benchmark run against it ends up measuring moto's CPU, which a real remote S3
never spends on the client's machine. This server answers a GET of a 16 KiB object for a
small fraction of that (the target is at most 0.2 ms of server CPU per GET here): it is a
single-threaded stdlib ``asyncio`` server with hand-written HTTP/1.1 parsing and keep-alive,
and it serves object bytes from an in-memory cache, so a GET is a dict lookup and a slice.
A fixed per-request latency (``--latency``) is added with ``await asyncio.sleep``, which
costs no CPU and never blocks other requests, so the client sees a "remote" store whose
round trip is the latency, not the server's CPU.

What it serves (path-style addressing only; any credentials and signature are accepted)::

    GET  /<bucket>/<key>   ->  <root>/<bucket>/<key>   200, or 206 with a Range header
    HEAD /<bucket>/<key>   ->  the same headers, no body
    HEAD /<bucket>         ->  200 when <root>/<bucket> is a directory (head_bucket)
    GET  /<bucket>?list-type=2&prefix=..&delimiter=/  ->  a plain ListObjects(V2) answer

``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` give 206 with ``Content-Range``; a range
that starts past the end gives 416 ``InvalidRange``, a missing key 404 ``NoSuchKey``, a
missing bucket 404 ``NoSuchBucket``, a ``..`` path segment 400, any other method 405
(S3-style XML error bodies). The listing exists because s3fs needs it: its ``_info`` (called
before every whole-object read) falls back to ``list_objects_v2`` when a HEAD says 404, and
zarr probes keys that do not exist. There are no writes and no invalidation: file contents,
bucket listings and misses are cached on first use, so write the directory before starting
the server.

Use from a benchmark (the server runs in its own process, so it does not share the
client's GIL)::

    from static_s3 import start_static_s3
    process, endpoint = start_static_s3(Path("/tmp/x"), latency=0.02)
    try:
        zarr.open_array("s3://bench/data.zarr", storage_options={"endpoint_url": endpoint, "key": "k", "secret": "s"})
    finally:
        process.terminate()
        process.wait()

or from a shell: ``python benchmarks/static_s3.py --root /tmp/x --latency 0.02 --port 0``
(prints ``endpoint=http://127.0.0.1:PORT`` once it listens).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

__all__ = ["StaticS3", "main", "start_static_s3"]

_MAX_DISCARDED_BODY = 1 << 20  # a request body up to this size is read and dropped; larger closes the connection
_STATUS = {
    100: "Continue", 200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 416: "Requested Range Not Satisfiable", 500: "Internal Server Error",
}
_LIST_START = ('<?xml version="1.0" encoding="UTF-8"?>\n'
               '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">')
_ERROR_MESSAGES = {
    "NoSuchKey": "The specified key does not exist.",
    "NoSuchBucket": "The specified bucket does not exist.",
    "InvalidRange": "The requested range is not satisfiable",
    "MethodNotAllowed": "The specified method is not allowed against this resource.",
    "InternalError": "We encountered an internal error. Please try again.",
    "BadRequest": "Malformed request.",
}


class _Object:
    """One cached file: its bytes and the header lines every answer about it carries."""

    __slots__ = ("data", "etag", "headers", "iso_mtime", "size")

    def __init__(self, data: bytes, mtime: float) -> None:
        self.data = memoryview(data)
        self.size = len(data)
        self.etag = f'"{hashlib.md5(data).hexdigest()}"'
        self.iso_mtime = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        self.headers = (
            f"ETag: {self.etag}\r\n"
            f"Last-Modified: {formatdate(mtime, usegmt=True)}\r\n"
            "Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n"
        ).encode("latin-1")


def _parse_range(value: str, size: int) -> tuple[int, int] | None | bool:
    """``(first, last)`` inclusive; ``None``: ignore the header (serve all); ``False``: unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # S3 serves the whole object for multi-range or unknown units
    start, dash, end = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not start:  # suffix: the last n bytes
            n = int(end)
            if n < 0:
                return None
            if n == 0 or size == 0:
                return False
            return max(0, size - n), size - 1
        first = int(start)
        last = int(end) if end else None
    except ValueError:
        return None
    if first < 0 or (last is not None and last < first):
        return None  # syntactically invalid: RFC 9110 says ignore it, as S3 does
    if first >= size:
        return False
    return first, size - 1 if last is None else min(last, size - 1)


class StaticS3:
    """The request handler: ``root`` holds one directory per bucket."""

    def __init__(self, root: Path, latency: float = 0.0) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"static_s3 root {self.root} is not a directory")
        self.latency = float(latency)
        self._objects: dict[tuple[str, str], _Object | None] = {}
        self._buckets: dict[str, bool] = {}
        self._listings: dict[str, list[str]] = {}
        self.requests = 0

    # -- storage -------------------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        known = self._buckets.get(bucket)
        if known is None:
            known = self._buckets[bucket] = (self.root / bucket).is_dir()
        return known

    def lookup(self, bucket: str, key: str) -> _Object | None:
        try:
            return self._objects[bucket, key]
        except KeyError:
            pass
        obj = None
        path = f"{self.root}/{bucket}/{key}"  # not Path "/": a key starting with "/" must stay under root
        try:
            with open(path, "rb") as f:
                obj = _Object(f.read(), os.fstat(f.fileno()).st_mtime)
        except OSError:  # missing, a directory, unreadable: all "no such key"
            pass
        self._objects[bucket, key] = obj
        return obj

    def _keys(self, bucket: str) -> list[str]:
        keys = self._listings.get(bucket)
        if keys is None:
            base = f"{self.root}/{bucket}"
            keys = sorted(os.path.relpath(os.path.join(d, name), base).replace(os.sep, "/")
                          for d, _, names in os.walk(base) for name in names)
            self._listings[bucket] = keys
        return keys

    def list_objects(self, bucket: str, query: str) -> bytes:
        """A ListObjects (V2, or V1 without ``list-type=2``) answer: prefix, delimiter, max-keys, paging."""
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        v2 = params.get("list-type") == "2"
        prefix, delimiter = params.get("prefix", ""), params.get("delimiter", "")
        max_keys = int(params.get("max-keys") or 1000)
        after = max(params.get("continuation-token" if v2 else "marker", ""), params.get("start-after", ""))
        entries: list[tuple[str, bool]] = []  # (key or common prefix, is_prefix), in key order
        for key in self._keys(bucket):
            if not key.startswith(prefix):
                continue
            if delimiter and (cut := key.find(delimiter, len(prefix))) >= 0:
                common = key[:cut + len(delimiter)]
                if common > after and (not entries or entries[-1][0] != common):
                    entries.append((common, True))
            elif key > after:
                entries.append((key, False))
        page, truncated = entries[:max_keys], len(entries) > max_keys
        xml = [_LIST_START,
               f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys>",
               f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if delimiter:
            xml.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if v2:
            xml.append(f"<KeyCount>{len(page)}</KeyCount>")
            if truncated:
                xml.append(f"<NextContinuationToken>{escape(page[-1][0])}</NextContinuationToken>")
        elif truncated:
            xml.append(f"<NextMarker>{escape(page[-1][0])}</NextMarker>")
        for name, is_prefix in page:
            if is_prefix:
                xml.append(f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>")
                continue
            obj = self.lookup(bucket, name)
            if obj is not None:
                xml.append(f"<Contents><Key>{escape(name)}</Key><LastModified>{obj.iso_mtime}</LastModified>"
                           f"<ETag>{escape(obj.etag)}</ETag><Size>{obj.size}</Size>"
                           "<StorageClass>STANDARD</StorageClass></Contents>")
        xml.append("</ListBucketResult>")
        return "".join(xml).encode()

    # -- HTTP ----------------------------------------------------------------------
    @staticmethod
    def _response(status: int, headers: bytes = b"", body: bytes | memoryview = b"", *,
                  close: bool = False, head: bool = False) -> bytes:
        """Status line, headers and (unless ``head``) body; Content-Length is always the body's."""
        start = f"HTTP/1.1 {status} {_STATUS[status]}\r\nContent-Length: {len(body)}\r\n".encode("latin-1")
        if close:
            start += b"Connection: close\r\n"
        if head or not body:
            return start + headers + b"\r\n"
        return start + headers + b"\r\n" + body

    def _error(self, status: int, code: str, resource: str, *, extra: str = "", headers: bytes = b"",
               close: bool = False, head: bool = False) -> bytes:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{_ERROR_MESSAGES[code]}</Message>{extra}<Resource>{escape(resource)}</Resource>"
                f"<RequestId>{self.requests:016X}</RequestId></Error>").encode()
        return self._response(status, headers + b"Content-Type: application/xml\r\n", body,
                              close=close, head=head)

    def answer(self, method: str, target: str, range_header: str | None, close: bool) -> bytes:
        """The full response (status line, headers, body) to one GET or HEAD."""
        head = method == "HEAD"
        path = unquote(target.partition("?")[0])
        bucket, _, key = path.lstrip("/").partition("/")
        parts = key.split("/")
        if not bucket or bucket in (".", "..") or "\\" in bucket or "\x00" in path or ".." in parts:
            return self._error(400, "BadRequest", path, close=close, head=head)
        if not self.bucket_exists(bucket):
            return self._error(404, "NoSuchBucket", path, extra=f"<BucketName>{escape(bucket)}</BucketName>",
                               close=close, head=head)
        if not key:
            if head:  # head_bucket
                return self._response(200, close=close)
            return self._response(200, b"Content-Type: application/xml\r\n",
                                  self.list_objects(bucket, target.partition("?")[2]), close=close)
        obj = self.lookup(bucket, key)
        if obj is None:
            return self._error(404, "NoSuchKey", path, extra=f"<Key>{escape(key)}</Key>", close=close, head=head)
        if range_header is not None:
            span = _parse_range(range_header, obj.size)
            if span is False:
                return self._error(416, "InvalidRange", path,
                                   extra=f"<RangeRequested>{escape(range_header)}</RangeRequested>"
                                         f"<ActualObjectSize>{obj.size}</ActualObjectSize>",
                                   headers=f"Content-Range: bytes */{obj.size}\r\n".encode("latin-1"),
                                   close=close, head=head)
            if span is not None:
                first, last = span
                headers = obj.headers + f"Content-Range: bytes {first}-{last}/{obj.size}\r\n".encode("latin-1")
                return self._response(206, headers, obj.data[first:last + 1], close=close, head=head)
        return self._response(200, obj.headers, obj.data, close=close, head=head)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (HTTP/1.1 keep-alive; requests answered in order)."""
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed (between requests, or mid-header)
                except asyncio.LimitOverrunError:
                    writer.write(self._error(400, "BadRequest", "", close=True))
                    await writer.drain()
                    return
                self.requests += 1
                lines = raw.decode("latin-1").split("\r\n")
                request = lines[0].split(" ")
                if len(request) != 3 or not request[2].startswith("HTTP/1."):
                    writer.write(self._error(400, "BadRequest", "", close=True))
                    await writer.drain()
                    return
                method, target, version = request
                range_header = expect = connection = None
                content_length = 0
                chunked = False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.lower()
                    if name == "range":
                        range_header = value.strip()
                    elif name == "content-length":
                        try:
                            content_length = int(value)
                        except ValueError:
                            content_length = -1
                    elif name == "transfer-encoding":
                        chunked = "chunked" in value.lower()
                    elif name == "expect":
                        expect = value.strip().lower()
                    elif name == "connection":
                        connection = value.strip().lower()
                close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
                if method not in ("GET", "HEAD"):
                    # answer at once; with "Expect: 100-continue" the client never sends its body
                    has_body = chunked or content_length != 0
                    drop = has_body and (expect == "100-continue" or chunked
                                         or not 0 < content_length <= _MAX_DISCARDED_BODY)
                    if has_body and not drop:
                        await reader.readexactly(content_length)
                    writer.write(self._error(405, "MethodNotAllowed", target, headers=b"Allow: GET, HEAD\r\n",
                                             close=close or drop))
                    await writer.drain()
                    if close or drop:
                        return
                    continue
                if chunked or content_length < 0 or content_length > _MAX_DISCARDED_BODY:
                    close = True  # a body we will not read: answer, then drop the connection
                elif content_length:
                    if expect == "100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await reader.readexactly(content_length)
                if self.latency > 0:
                    await asyncio.sleep(self.latency)
                try:
                    response = self.answer(method, target, range_header, close)
                except (ValueError, OSError) as exc:  # odd input (e.g. max-keys=abc): answer, keep serving
                    response = self._error(500, "InternalError", target, close=close,
                                           extra=f"<Detail>{escape(repr(exc))}</Detail>")
                writer.write(response)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def serve(root: Path, latency: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:
    """Listen on ``host:port`` (0: any free port), print ``endpoint=http://HOST:PORT``, serve forever."""
    app = StaticS3(root, latency)
    server = await asyncio.start_server(app.handle, host, port, backlog=1024)
    bound_port = server.sockets[0].getsockname()[1]
    print(f"endpoint=http://{host}:{bound_port}", flush=True)
    async with server:
        await server.serve_forever()


def start_static_s3(root: Path, latency: float = 0.0) -> tuple[subprocess.Popen, str]:
    """Run this server over ``root`` in a separate process; ``(process, endpoint_url)``.

    The caller owns the process: ``process.terminate(); process.wait()`` when done.
    """
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--root", str(root), "--latency", repr(float(latency)),
         "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("endpoint="):
        process.kill()
        process.wait()
        raise RuntimeError(f"static_s3 server did not start (exit code {process.returncode}, said {line!r})")
    return process, line.partition("=")[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Read-only S3-compatible endpoint over a local directory "
                                                 "(one directory per bucket), for benchmarks.")
    parser.add_argument("--root", type=Path, required=True, help="directory holding one directory per bucket")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before answering a GET/HEAD")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.root, args.latency, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
