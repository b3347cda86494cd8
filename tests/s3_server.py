"""A local S3 for tests: moto's ThreadedMotoServer plus a fault-injecting HTTP proxy.

Both listen on loopback ports chosen free at start and live for the whole test
session (fixtures are ``scope="session"``). The :class:`FaultProxy` forwards every
request to moto and, on a configurable fraction of ``GET``/``HEAD`` requests, answers
``503 SlowDown``, stalls past the client's read timeout, resets the TCP connection, or
sends the headers of the real answer followed by only part of its body; it can also
add a fixed latency to every request (for benchmarks). Faults are drawn from a seeded
RNG and counted, so tests can assert that faults really happened.

Use from ``conftest.py`` (``tests/`` is on ``sys.path`` there, as for ``strategies``)::

    from s3_server import *  # noqa: F401,F403  (fixtures: s3_server, s3_bucket, fault_proxy, ...)

or run ``python tests/s3_server.py`` to get a server (and proxy) for manual poking.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = [
    "FaultConfig",
    "FaultProxy",
    "S3Server",
    "fault_proxy",
    "fault_proxy_server",
    "free_port",
    "s3_bucket",
    "s3_server",
    "s3_storage_options",
    "start_s3_server",
]

ACCESS_KEY = "gpuzarr-test-key"
SECRET_KEY = "gpuzarr-test-secret"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto S3 server."""

    endpoint_url: str
    server: Any
    key: str = ACCESS_KEY
    secret: str = SECRET_KEY
    region: str = REGION

    def storage_options(self, endpoint_url: str | None = None, **extra: Any) -> dict[str, Any]:
        """s3fs / gpuzarr storage_options reaching this server (or a proxy in front of it)."""
        options: dict[str, Any] = {
            "endpoint_url": endpoint_url or self.endpoint_url,
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"region_name": self.region},
        }
        options.update(extra)
        return options

    def client(self, endpoint_url: str | None = None) -> Any:
        """A plain boto3 client (for setup: buckets, policies)."""
        import boto3

        return boto3.client("s3", endpoint_url=endpoint_url or self.endpoint_url, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name=self.region)

    def create_bucket(self, name: str | None = None, *, public_read: bool = False) -> str:
        """Create a fresh bucket (unique name by default), optionally world-readable."""
        import json

        name = name or f"gz-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if public_read:
            # moto checks HEAD requests against "s3:HeadObject" (AWS uses s3:GetObject for both)
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
                               "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]}],
            }
            client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
        return name

    def stop(self) -> None:
        self.server.stop()


def _latency_moto_server(ip_address: str, port: int, read_latency: float) -> Any:
    """moto's threaded server whose GET/HEAD answers wait ``read_latency`` seconds first.

    Latency added inside the server costs no extra HTTP hop, unlike the fault proxy, so a
    benchmark on a 2-core machine measures the loader rather than a second Python server.
    """
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, ThreadedMotoServer, create_backend_app
    from werkzeug.serving import make_server

    class LatencyMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:  # moto's own, with the app wrapped
            backend = DomainDispatcherApplication(create_backend_app)

            def app(environ: dict[str, Any], start_response: Any) -> Any:
                if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
                    time.sleep(read_latency)
                return backend(environ, start_response)

            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return LatencyMotoServer(ip_address=ip_address, port=port, verbose=False)


def start_s3_server(read_latency: float = 0.0) -> S3Server:
    """Start moto's ThreadedMotoServer on a free loopback port (optionally slowing reads down)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    port = free_port()
    if read_latency > 0:
        server = _latency_moto_server("127.0.0.1", port, read_latency)
    else:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # wait until it answers
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/moto-api/")
            connection.getresponse().read()
            connection.close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return S3Server(endpoint, server)


@dataclass
class FaultConfig:
    """What the proxy does to ``GET``/``HEAD`` requests (fractions are probabilities)."""

    error_503: float = 0.0
    stall: float = 0.0
    reset: float = 0.0
    truncate: float = 0.0
    stall_seconds: float = 2.0
    latency_seconds: float = 0.0
    #: requests whose path contains any of these substrings always get a 503
    always_fail: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class FaultProxy:
    """A threaded HTTP/1.1 proxy on loopback that injects faults in front of ``upstream``."""

    upstream_port: int
    config: FaultConfig = field(default_factory=FaultConfig)
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _upstream(self) -> http.client.HTTPConnection:
                connection = getattr(self, "_connection", None)
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                    self._connection = connection
                return connection

            def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                for attempt in range(2):
                    connection = self._upstream()
                    try:
                        connection.request(self.command, self.path, body=body, headers=headers)
                        response = connection.getresponse()
                        payload = response.read()
                        return response.status, response.getheaders(), payload
                    except (http.client.HTTPException, OSError):
                        connection.close()
                        self._connection = None
                        if attempt:
                            raise
                raise AssertionError("unreachable")

            def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes, *, cut: bool = False) -> None:
                self.send_response_only(status)
                for name, value in headers:
                    if name.lower() in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        continue
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if cut:
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _handle(self) -> None:
                config = proxy.config
                if config.latency_seconds:
                    time.sleep(config.latency_seconds)
                fault = proxy._draw(self.command, self.path)
                if fault == "error_503":
                    body = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>" \
                           b"<Message>Please reduce your request rate.</Message></Error>"
                    self._reply(503, [("Content-Type", "application/xml")], body)
                    return
                if fault == "reset":
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                if fault == "stall":
                    time.sleep(config.stall_seconds)
                    self.close_connection = True
                    return
                status, headers, payload = self._forward()
                self._reply(status, headers, payload, cut=fault == "truncate" and len(payload) > 1)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        class QuietServer(ThreadingHTTPServer):
            daemon_threads = True
            # the default backlog of 5 drops SYNs under a burst of parallel range reads, and the
            # client's TCP retransmit backoff (1 s, 2 s, 4 s ...) then looks like a slow server
            request_queue_size = 1024

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # injected resets / client hang-ups are expected, not worth a traceback

        self.port = free_port()
        self._server = QuietServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _draw(self, method: str, path: str) -> str | None:
        if method not in ("GET", "HEAD"):
            return None
        config = self.config
        with self._lock:
            if any(marker in path for marker in config.always_fail):
                self.counts["error_503"] += 1
                return "error_503"
            roll = self._rng.random()
            edge = 0.0
            for name in ("error_503", "stall", "reset", "truncate"):
                edge += getattr(config, name)
                if roll < edge:
                    self.counts[name] += 1
                    return name
            self.counts["passed"] += 1
        return None

    def configure(self, config: FaultConfig) -> None:
        """Swap the fault configuration (and reseed, zero the counters)."""
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)
            self.counts.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server for the whole test session."""
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's moto server."""
    return s3_server.create_bucket()


@pytest.fixture
def s3_storage_options(s3_server: S3Server) -> dict[str, Any]:
    """storage_options that reach the moto server directly."""
    return s3_server.storage_options()


@pytest.fixture(scope="session")
def fault_proxy_server(s3_server: S3Server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def fault_proxy(fault_proxy_server: FaultProxy) -> Iterator[FaultProxy]:
    """The session's fault proxy, reset to "no faults" before and after each test."""
    fault_proxy_server.configure(FaultConfig())
    yield fault_proxy_server
    fault_proxy_server.configure(FaultConfig())


if __name__ == "__main__":  # pragma: no cover - manual use and benchmarks
    import argparse

    parser = argparse.ArgumentParser(description="moto S3 + fault-injection proxy on loopback")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every proxied request")
    parser.add_argument("--read-latency", type=float, default=0.0,
                        help="seconds moto itself waits before answering a GET/HEAD (no proxy hop)")
    args = parser.parse_args()
    server = start_s3_server(read_latency=args.read_latency)
    proxy = FaultProxy(int(server.endpoint_url.rsplit(":", 1)[1]), FaultConfig(latency_seconds=args.latency))
    print(f"moto={server.endpoint_url} proxy={proxy.endpoint_url} key={ACCESS_KEY} secret={SECRET_KEY}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()
        server.stop()
