"""An HTTP server on 127.0.0.1 that refuses every request the way S3 does (stdlib only).

For answers moto_server never gives: S3 rejects an expired or malformed session token with
``400 ExpiredToken`` / ``400 InvalidToken`` (an XML body naming the code), and a HEAD request,
which has no body, with a bare ``400``; it throttles with codes moto does not use. The server
answers every request with one configured status and error code (no body for HEAD, as S3), or
leaves every request unanswered for a while (a hung endpoint).

Fixture: ``s3_error_server`` (function scope); call :meth:`S3ErrorServer.answer` first.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest


class S3ErrorServer:
    """Answers every request with S3's error response for ``status`` and ``code``."""

    def __init__(self) -> None:
        self.status, self.code, self.message = 500, "InternalError", "We encountered an internal error."
        self.stall_s = 0.0
        self._released = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-error-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, status: int, code: str, message: str = "refused by the test server") -> None:
        """Answer every following request with this error."""
        self.status, self.code, self.message, self.stall_s = status, code, message, 0.0

    def stall(self, seconds: float) -> None:
        """Leave every following request unanswered for ``seconds``, then close the connection."""
        self.stall_s = seconds

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def _answer(self) -> None:
        owner: S3ErrorServer = self.server.owner  # type: ignore[attr-defined]
        self._read_body()
        if owner.stall_s:
            owner._released.wait(owner.stall_s)
            self.close_connection = True
            return
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{owner.code}</Code>'
                f"<Message>{owner.message}</Message><RequestId>TESTREQUEST</RequestId></Error>").encode()
        self.send_response(owner.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "TESTREQUEST")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> None:
        """Read the whole request body before answering. An answer sent while the client is still
        sending makes the client's next write fail (a broken pipe instead of the error under test).
        pyarrow sends uploads with ``Transfer-Encoding: chunked`` and no Content-Length."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then the end
                        pass
                    return
                self.rfile.read(size + 2)  # the chunk and its CRLF
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer


@pytest.fixture
def s3_error_server() -> Iterator[S3ErrorServer]:
    server = S3ErrorServer()
    try:
        yield server
    finally:
        server.stop()

