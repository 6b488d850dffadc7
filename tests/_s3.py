"""A real S3 API on 127.0.0.1 for the tests: moto's standalone server, and a proxy in
front of it that records every request and fails chosen ones.

* ``s3_server`` (session fixture) -- moto's ``ThreadedMotoServer`` on a free port,
  as s3fs's own test suite runs it, with the process's AWS settings replaced by test
  ones (no profile, no instance metadata lookups);
* ``s3`` (fixture) -- a fresh bucket on that server and a :class:`Proxy` in front of
  it; ``s3.options`` are the storage options that reach the server through the proxy,
  with the test credentials :data:`KEY` and :data:`SECRET`.

The proxy is how the tests see what went over the wire (methods, byte ranges, bytes
sent back, TCP connections) and how a store fails at a deterministic point: the next
``n`` requests matching a predicate answer 503 ``SlowDown`` (or any status and code),
hang until released, or have their connection closed without an answer.

A test module takes the fixtures by importing them:
``from _s3 import s3_fixture, s3_server_fixture``.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

#: Test credentials: never to appear in any output.
KEY = "AKIADAGFLOWTESTKEY42"
SECRET = "dagflow-test-secret-Zq7vW2pR9sXk"

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade"}
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Request:
    """One request the proxy saw, and what it answered."""

    method: str
    path: str
    query: str
    range: tuple[int, int | None] | None  # inclusive first and last byte asked for
    status: int = 0
    sent: int = 0  # body bytes sent back
    received: int = 0  # body bytes the client sent
    failed: str = ""  # how the proxy failed it, if it did

    @property
    def key(self) -> str:
        return self.path.split("/", 2)[2] if self.path.count("/") >= 2 else ""


@dataclass
class _Fault:
    count: int
    match: Callable[[Request], bool]
    kind: str  # "status", "reset" or "hang"
    status: int = 503
    code: str = "SlowDown"
    release: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)


class Proxy:
    """An HTTP proxy to the S3 server that records requests and injects faults."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port)
        self.requests: list[Request] = []
        self.connections = 0
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy.connections += 1
                self.upstream: http.client.HTTPConnection | None = None

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                path, _, query = self.path.partition("?")
                match = _RANGE.match(self.headers.get("Range", ""))
                asked = (int(match[1]), int(match[2]) if match[2] else None) if match else None
                request = Request(self.command, path, query, asked)
                body = self._body()
                request.received = len(body)
                with proxy._lock:
                    proxy.requests.append(request)
                fault = proxy._take_fault(request)
                if fault is not None and fault.kind == "hang":
                    request.failed = "hang"
                    fault.reached.set()
                    fault.release.wait(60)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault.kind == "reset":
                    request.failed = "reset"
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None:
                    request.failed = fault.code
                    request.status = fault.status
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}'
                               f"</Code><Message>injected by the test proxy</Message>"
                               f"<RequestId>proxy</RequestId></Error>").encode()
                    # recorded before answering: the client may look as soon as it has read
                    request.sent = len(payload) if self.command != "HEAD" else 0
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy._upstream, timeout=60)
                self.upstream.request(self.command, self.path, body=body, headers=headers)
                response = self.upstream.getresponse()
                data = response.read()
                request.status = response.status
                request.sent = len(data) if self.command != "HEAD" else 0
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                length = response.getheader("Content-Length")
                self.send_header("Content-Length", length if self.command == "HEAD" and length
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="s3-test-proxy")
        self._thread.start()

    def _take_fault(self, request: Request) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and fault.match(request):
                    fault.count -= 1
                    return fault
        return None

    def fail(self, count: int, *, status: int = 503, code: str = "SlowDown",
             match: Callable[[Request], bool] = lambda r: True) -> _Fault:
        """Answer the next ``count`` matching requests with an S3 error."""
        fault = _Fault(count, match, "status", status, code)
        with self._lock:
            self._faults.append(fault)
        return fault

    def reset(self, count: int, *, match: Callable[[Request], bool] = lambda r: True
              ) -> _Fault:
        """Close the connection of the next ``count`` matching requests unanswered."""
        fault = _Fault(count, match, "reset")
        with self._lock:
            self._faults.append(fault)
        return fault

    def hang(self, count: int, *, match: Callable[[Request], bool] = lambda r: True
             ) -> _Fault:
        """Hold the next ``count`` matching requests unanswered until ``release`` is set
        (``reached`` is set when one arrives), then close their connections."""
        fault = _Fault(count, match, "hang")
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget the requests seen and the faults not yet used."""
        with self._lock:
            self.requests.clear()
            for fault in self._faults:
                fault.release.set()
            self._faults.clear()
            self.connections = 0

    def reads(self, key: str) -> list[Request]:
        """The GETs of one object's body."""
        return [r for r in self.requests if r.method == "GET" and r.key == key]

    def close(self) -> None:
        self.clear()
        self._server.shutdown()
        self._server.server_close()


class S3Server:
    """moto's S3 server in this process, on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def client(self) -> Any:
        """A boto3 client straight to the server (not through a proxy)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name="us-east-1")

    def require_auth(self, on: bool) -> None:
        """Make the server check credentials (moto's IAM), or stop checking them."""
        import urllib.request

        body = b"0" if on else b"inf"
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=body,
                                         headers={"Content-Type": "text/plain"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self._server.stop()


#: The environment the tests' S3 clients see: test credentials, no profile files, no
#: instance metadata service (whose lookup would wait for a timeout).
TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    """moto's S3 server, for the whole session."""
    pytest.importorskip("moto.server", reason="needs moto, flask and flask-cors (test extra)")
    pytest.importorskip("s3fs", reason="needs s3fs (the s3 and test extras)")
    saved = {name: os.environ.get(name) for name in TEST_ENVIRONMENT}
    os.environ.update(TEST_ENVIRONMENT)
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class S3:
    """A bucket of its own on the test server, reached through a proxy."""

    server: S3Server
    proxy: Proxy
    bucket: str

    @property
    def options(self) -> dict:
        """Storage options to the server through the proxy, with the test credentials
        given explicitly (what must never be shown)."""
        return {"key": KEY, "secret": SECRET,
                "client_kwargs": {"endpoint_url": self.proxy.endpoint,
                                  "region_name": "us-east-1"}}

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> str:
        """Store an object directly (not through the proxy); its URL."""
        self.server.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return self.url(key)

    def get(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        """Every object of the bucket, read directly from the server."""
        listing = self.server.client().list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in listing.get("Contents", ()))

    def uploads(self) -> list[str]:
        """The keys of the bucket's unfinished multipart uploads."""
        listing = self.server.client().list_multipart_uploads(Bucket=self.bucket)
        return sorted(u["Key"] for u in listing.get("Uploads", ()))


@pytest.fixture(name="s3")
def s3_fixture(s3_server: S3Server) -> Iterator[S3]:
    """A fresh bucket and a fresh proxy in front of the server."""
    bucket = f"test-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    proxy = Proxy(s3_server.endpoint)
    try:
        yield S3(s3_server, proxy, bucket)
    finally:
        proxy.close()
