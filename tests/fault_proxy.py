"""A fault-injecting HTTP proxy on 127.0.0.1, put in front of ``moto_server`` (stdlib only).

S3 clients are pointed at the proxy as if it were the endpoint. The proxy forwards every request
to the real server and, for a seeded share of them, answers with a fault instead:

* ``slow_down``: ``503 SlowDown`` with S3's XML error body (S3's throttling answer);
* ``internal_error``: ``500 InternalError`` with its XML body;
* ``drop``: the connection is reset before the request reaches the server;
* ``drop_after``: the request is executed by the server, then the connection is reset instead
  of answering (the client cannot know its request took effect);
* ``truncate``: the server's answer is sent with only half of its body (or, without a body, only
  its status line), then the connection is reset (a connection dropped mid-download);
* ``stall``: no answer for ``stall_s`` seconds, then a reset (a hung server or network).

Which requests fail is decided per request from ``seed``, the request's method, path and
query, and how many times that same request was seen before, so it is the same from run to run
whatever order concurrent clients send their requests in (names that differ from run to run,
such as run ids, can be mapped to a constant with ``normalise``). Retries of a failed request are
new draws: a request fails ``n`` times in a row with probability ``fault_rate ** n``.

Bodies are passed through as sent: ``Content-Length`` bodies, ``Transfer-Encoding: chunked``
bodies (re-sent chunked, so ``Content-Encoding: aws-chunked`` payloads with their own framing and
trailers arrive intact) and ``Expect: 100-continue`` (answered by the proxy, which then reads the
body and forwards the request without the expectation).

Requests, injected faults and retries (a request repeating one whose last attempt was faulted)
are counted per operation (``GET`` ``PUT`` ``HEAD`` ``DELETE`` ``POST`` and ``LIST`` for bucket
listings), so tests can assert that faults really happened and were retried. ``fail_first=n``
fails the first ``n`` attempts of every request, for tests that need an exact retry count;
``first_fault_on=("LIST", ...)`` faults the first request of those operations whatever the draw,
so that a short run cannot miss an operation that makes only a few requests.

``outage_after(method, pattern, seconds=S)`` takes the store down: from the first matching
request on (that one included), every request for ``S`` seconds is answered with one fault kind
(``drop`` by default: a store whose connections fail), counted in ``outage_faults``;
``outage_started`` is set when it begins. ``requests=N`` instead of ``seconds`` ends it after N
requests, whatever the clock: for tests whose requests come one at a time, an exact count.

``hold(method, pattern)`` makes the first matching request (its path matched by the regex
``pattern``) reach the server and then wait for :meth:`FaultProxy.release` without an answer
(then the connection is reset): the moment after a write took effect and before its writer heard
so, for a test to kill the writer in. ``held`` is set once such a request waits; ``held_path``
says which.

Fixtures: ``fault_proxy`` (function scope: a proxy in front of the session's ``s3_server``,
faults off until a test sets ``fault_rate``).
"""

from __future__ import annotations

import collections
import http.client
import http.server
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import pytest

FAULT_KINDS = ("slow_down", "internal_error", "drop", "drop_after", "truncate", "stall")
#: The faults of issue 9: throttling, server errors and dropped connections.
DEFAULT_KINDS = ("slow_down", "internal_error", "drop")

# Query parameters whose values are random per attempt or per upload: left out of the key that
# decides faults, so that the decision is the same from run to run.
_RANDOM_PARAMS = frozenset({"uploadid", "x-id"})

# Headers that belong to one hop of a connection, never forwarded (RFC 9110 7.6.1), plus Expect,
# which the proxy answers itself.
_HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
})

_ERROR_BODIES = {
    "slow_down": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "Internal Server Error", "InternalError",
                       "We encountered an internal error. Please try again."),
}


def operation_of(method: str, path: str) -> str:
    """``LIST`` for a GET of a bucket or of the service (path-style addressing), else the method."""
    parts = [p for p in path.split("/") if p]
    if method == "GET" and len(parts) <= 1:
        return "LIST"
    return method


@dataclass
class ProxyStats:
    """Counts since the proxy started (or since :meth:`FaultProxy.reset_stats`)."""

    requests: collections.Counter = field(default_factory=collections.Counter)  # operation -> n
    faults: collections.Counter = field(default_factory=collections.Counter)  # (operation, kind) -> n
    #: operation -> requests that repeated a request whose previous attempt was faulted (retries)
    retries: collections.Counter = field(default_factory=collections.Counter)

    def faults_on(self, operation: str) -> int:
        return sum(n for (op, _kind), n in self.faults.items() if op == operation)

    def faults_of(self, kind: str) -> int:
        return sum(n for (_op, k), n in self.faults.items() if k == kind)

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_retries(self) -> int:
        return sum(self.retries.values())

    def summary(self) -> str:
        ops = ", ".join(f"{op} {n} ({self.faults_on(op)} faulted)" for op, n in sorted(self.requests.items()))
        return (f"{self.total_requests} requests, {self.total_faults} faults injected, "
                f"{self.total_retries} retries seen: {ops}")


class FaultProxy:
    """A threaded HTTP/1.1 proxy from ``127.0.0.1:<port>`` to ``upstream`` with seeded faults."""

    def __init__(
        self,
        upstream: str,
        *,
        fault_rate: float = 0.0,
        kinds: Iterable[str] = DEFAULT_KINDS,
        seed: int = 0,
        stall_s: float = 30.0,
        normalise: Callable[[str], str] | None = None,
        fail_first: int = 0,
        first_fault_on: Iterable[str] = (),
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.seed = seed
        self.stall_s = stall_s
        self.fail_first = fail_first  # fail the first n attempts of every request, whatever the rate
        # Operations whose first request is faulted whatever the draw: a short run then cannot
        # miss one of them by chance.
        self.first_fault_on = frozenset(first_fault_on)
        self._faulted_operations: set[str] = set()
        self.normalise = normalise or (lambda key: key)
        self._lock = threading.Lock()
        self._seen: collections.Counter = collections.Counter()
        self._last_faulted: set[str] = set()
        self._stats = ProxyStats()
        self._released = threading.Event()  # set on stop: stalled handlers give up at once
        self._hold: tuple[str, re.Pattern] | None = None
        self.held = threading.Event()
        self.held_path: str | None = None
        self._hold_released = threading.Event()
        self._outage: tuple[str, re.Pattern, float | None, int | None, str] | None = None
        self._outage_until = 0.0
        self._outage_left = 0
        self._outage_kind = "drop"
        self.outage_started = threading.Event()
        self.outage_faults = 0
        self.configure(fault_rate=fault_rate, kinds=kinds)
        self._server = _Server(("127.0.0.1", 0), _Handler, proxy=self)
        self._thread: threading.Thread | None = None

    # --- settings and counts ---------------------------------------------------------------

    def configure(self, *, fault_rate: float | None = None, kinds: Iterable[str] | None = None) -> None:
        """Change the fault rate and/or kinds (takes effect for the next request)."""
        with self._lock:
            if fault_rate is not None:
                if not 0.0 <= fault_rate <= 1.0:
                    raise ValueError(f"fault_rate must be within 0..1, got {fault_rate}")
                self.fault_rate = float(fault_rate)
            if kinds is not None:
                kinds = tuple(kinds)
                unknown = set(kinds) - set(FAULT_KINDS)
                if not kinds or unknown:
                    raise ValueError(f"fault kinds must be among {FAULT_KINDS}, got {kinds}")
                self.kinds = kinds

    def stats(self) -> ProxyStats:
        """A snapshot of the counts."""
        with self._lock:
            return ProxyStats(*(collections.Counter(counter) for counter in
                                (self._stats.requests, self._stats.faults, self._stats.retries)))

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ProxyStats()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def hold(self, method: str, pattern: str) -> None:
        """Hold the answer to the next ``method`` request whose path matches ``pattern`` (see above)."""
        with self._lock:
            self._hold = (method, re.compile(pattern))
            self.held.clear()
            self._hold_released.clear()

    def release(self) -> None:
        self._hold_released.set()

    def outage_after(self, method: str, pattern: str, seconds: float | None = None, *, requests: int | None = None,
                     kind: str = "drop") -> None:
        """Fail every request, for ``seconds`` or for ``requests`` of them, from the next ``method``
        request whose path matches ``pattern`` on (see above)."""
        if (seconds is None) == (requests is None):
            raise ValueError("an outage lasts either some seconds or some requests")
        if kind not in FAULT_KINDS or kind == "stall":
            raise ValueError(f"an outage answers with a fault kind other than stall, got {kind!r}")
        with self._lock:
            self._outage = (method, re.compile(pattern), seconds, requests, kind)
            self.outage_started.clear()

    def _takes_hold(self, method: str, path: str) -> bool:
        with self._lock:
            if self._hold is None or self._hold[0] != method or not self._hold[1].search(path):
                return False
            self._hold, self.held_path = None, path
            return True

    def stop(self) -> None:
        self._released.set()
        self._hold_released.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the decision ----------------------------------------------------------------------

    def decide(self, method: str, target: str) -> tuple[str, str | None]:
        """Count the request; return its operation and the fault to inject (None: forward)."""
        split = urlsplit(target)
        operation = operation_of(method, split.path)
        query = sorted((k, v) for k, v in parse_qsl(split.query, keep_blank_values=True)
                       if k.lower() not in _RANDOM_PARAMS)
        key = self.normalise(f"{method} {split.path} {query}")
        with self._lock:
            attempt = self._seen[key]
            self._seen[key] += 1
            self._stats.requests[operation] += 1
            if key in self._last_faulted:
                self._stats.retries[operation] += 1
            rate, kinds = self.fault_rate, self.kinds
            fault = None
            if self._outage is not None and self._outage[0] == method and self._outage[1].search(split.path):
                _, _, seconds, requests, self._outage_kind = self._outage
                self._outage_until = time.monotonic() + seconds if seconds is not None else 0.0
                self._outage_left = requests or 0
                self._outage = None
                self.outage_started.set()
            # A fresh generator per request: the draw depends on what the request is, not on
            # the order in which concurrent requests arrived.
            rng = random.Random(f"{self.seed}|{key}|{attempt}")
            forced = operation in self.first_fault_on and operation not in self._faulted_operations
            if self._outage_left > 0 or time.monotonic() < self._outage_until:
                self._outage_left = max(0, self._outage_left - 1)
                fault = self._outage_kind
                self.outage_faults += 1
            elif forced or attempt < self.fail_first or (rate > 0 and rng.random() < rate):
                fault = rng.choice(kinds)
            if fault is not None:
                self._stats.faults[(operation, fault)] += 1
                self._faulted_operations.add(operation)
                self._last_faulted.add(key)
            else:
                self._last_faulted.discard(key)
        return operation, fault


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not keep the test process alive
    allow_reuse_address = True

    def __init__(self, address, handler, *, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as S3 clients expect
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass  # quiet: tests assert on the counts instead

    # Every method goes through one path.
    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _read_body(self) -> tuple[bytes, bool]:
        """The request body and whether it came chunked (chunks joined, trailers dropped)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields of the HTTP framing
                    return b"".join(chunks), True
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # the CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), False

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, as a failing load balancer or network would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _send_error_xml(self, kind: str) -> None:
        status, reason, code, message = _ERROR_BODIES[kind]
        request_id = uuid.uuid4().hex[:16].upper()
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                f"</Message><RequestId>{request_id}</RequestId></Error>").encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes, chunked: bool) -> tuple[int, str, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        # A new upstream connection per request: never a stale keep-alive connection to retry.
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_HEADERS and not (chunked and name.lower() == "content-length"):
                    upstream.putheader(name, value)
            if chunked:
                upstream.putheader("Transfer-Encoding", "chunked")
                upstream.endheaders()
                if body:
                    upstream.send(b"%x\r\n%s\r\n" % (len(body), body))
                upstream.send(b"0\r\n\r\n")
            else:
                upstream.endheaders(body if body else None)
            response = upstream.getresponse()
            data = b"" if self.command == "HEAD" else response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
            return response.status, response.reason, headers, data
        finally:
            upstream.close()

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body, chunked = self._read_body()
        _operation, fault = proxy.decide(self.command, self.path)
        if fault in _ERROR_BODIES:
            self._send_error_xml(fault)
            return
        if fault == "drop":
            self._reset()
            return
        if fault == "stall":
            proxy._released.wait(proxy.stall_s)
            self._reset()
            return
        try:
            status, reason, headers, data = self._forward(body, chunked)
        except OSError:
            self._reset()  # the real server failed: the client sees a dropped connection
            return
        if fault == "drop_after":
            self._reset()
            return
        if proxy._takes_hold(self.command, self.path):
            proxy.held.set()
            proxy._hold_released.wait(300)
            self._reset()
            return
        if fault == "truncate" and (self.command == "HEAD" or len(data) < 2):
            # Nothing to cut short in the body: cut the head instead, after the status line.
            self.wfile.write(f"HTTP/1.1 {status} {reason}\r\n".encode())
            self.wfile.flush()
            self._reset()
            return
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() != "content-length" or self.command == "HEAD":
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._reset()
            return
        self.wfile.write(data)


_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{6}")
_TEST_BUCKET = re.compile(r"test-[0-9a-f]{16}")  # tests/s3_server.py's s3_bucket names


def normalise_names(key: str) -> str:
    """Map names that differ from run to run (dce_batch run ids such as
    ``20250101T120000-abc123``, the ``s3_bucket`` fixture's bucket names) to constants."""
    return _TEST_BUCKET.sub("<bucket>", _RUN_ID.sub("<run>", key))


@pytest.fixture
def fault_proxy(s3_server) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the session's moto_server; no faults until configured."""
    with FaultProxy(s3_server.endpoint_url, normalise=normalise_names) as proxy:
        yield proxy

