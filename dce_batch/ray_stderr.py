"""Ray's C++ log lines on the driver's standard error: the benign ones held back, the rest passed on.

Ray's core worker lives inside the driver process and writes its log lines straight to file
descriptor 2, below Python's ``sys.stderr``, so no Python logging setting reaches them. One of
them appears on every healthy Ray Data run with an actor pool: an ERROR line saying that the
actor "has constructor arguments in the object store and max_restarts > 0"
(ray-project/ray#57733: Ray Data itself puts each pool's map transformer in the object store).
A user reads it as a failure. Lowering Ray's C++ log level would hide real errors with it, and
Ray's core announces that setting with a log line of its own.

So for the length of a quiet run :class:`FilteredStderr` sends descriptor 2 through a pipe; a
thread passes every line on to the real standard error except those :func:`is_benign` names
(that one ERROR line, and C++ lines below ERROR). Python's own ``sys.stderr`` keeps writing to
the real standard error directly, so a terminal stays a terminal (progress bars stay live).
This module does not import Ray.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = ["FilteredStderr", "is_benign", "is_core_log_line"]

# Ray's C++ log prefix (spdlog pattern "[%Y-%m-%d %H:%M:%S,%e %L %P %t] file:line: "), e.g.
# "[2025-01-02 10:11:12,345 E 1234 5678] core_worker.cc:2465: ...". %L is spdlog's short level:
# T(race), D(ebug), I(nfo), W(arning), E(rror), C(ritical: Ray's FATAL).
CORE_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([A-Z]) \d+ \d+\] [\w./-]+:\d+: ")
_BELOW_ERROR = frozenset("TDIW")
# The stable part of the message of ray-project/ray#57733 (the actor's name and ID vary).
_CONSTRUCTOR_ARGUMENTS = "has constructor arguments in the object store and max_restarts > 0"


def is_core_log_line(line: str) -> bool:
    """Whether ``line`` is one of Ray's C++ log lines (any level)."""
    return CORE_LOG_LINE.match(line) is not None


def is_benign(line: str) -> bool:
    """Whether a quiet run may drop ``line``: a C++ log line below ERROR, or the ERROR line Ray Data
    causes on every actor pool. Everything else (Python's output, real C++ errors and fatal
    lines with the stack traces that follow them) is kept."""
    match = CORE_LOG_LINE.match(line)
    if match is None:
        return False
    return match.group(1) in _BELOW_ERROR or _CONSTRUCTOR_ARGUMENTS in line


class FilteredStderr:
    """File descriptor 2 through a line filter, between :meth:`start` and :meth:`stop` (or ``with``).

    ``drop(line)`` says which lines (text without the newline) are held back. A partial line is
    passed on at once unless it may still become a C++ log line (it starts with ``[``), so text
    written without a newline (a redrawn bar) is not delayed. Processes started while the filter
    is on inherit the pipe; :meth:`stop` restores descriptor 2, then waits up to ``drain_s`` for
    what is left in the pipe and leaves the thread to pass on whatever such processes write later.
    """

    def __init__(self, drop: Callable[[str], bool] = is_benign, drain_s: float = 2.0) -> None:
        self.drop = drop
        self.drain_s = drain_s
        self._saved: int | None = None
        self._thread: threading.Thread | None = None
        self._python_stderr = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def start(self) -> Self:
        if self.active:
            return self
        try:
            os.fstat(2)
        except OSError:  # no standard error to filter
            return self
        _flush(sys.stderr)
        self._saved = os.dup(2)
        out = os.dup(self._saved)  # the thread's own: it may outlive stop()
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        if _writes_to_fd_2(sys.stderr):
            # Python's writes go straight to the real standard error: same tty, no delay.
            self._python_stderr = sys.stderr
            real = open(os.dup(self._saved), "wb")  # noqa: SIM115 - sys.stderr from now on, not closed here
            sys.stderr = io.TextIOWrapper(real, encoding=sys.stderr.encoding, errors=sys.stderr.errors,
                                          line_buffering=True, write_through=True)
        self._thread = threading.Thread(target=self._forward, args=(read, out), daemon=True,
                                        name="dce-filtered-stderr")
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self.active:
            return
        if self._python_stderr is not None:
            _flush(sys.stderr)
            # Left open: something may still hold it; it writes where the restored stream does.
            sys.stderr, self._python_stderr = self._python_stderr, None
        os.dup2(self._saved, 2)  # the pipe's last writer here is gone: the thread sees its end
        os.close(self._saved)
        self._saved = None
        self._thread.join(timeout=self.drain_s)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _forward(self, read: int, out: int) -> None:
        pending = b""  # a partial line held back: it starts like a C++ log line
        passing = False  # the current line's beginning was passed on: pass on the rest as it comes
        try:
            while True:
                chunk = os.read(read, 65536)
                if not chunk:
                    break
                data = pending + chunk
                pending = b""
                *lines, rest = data.split(b"\n")
                for line in lines:
                    if passing or not self.drop(line.decode(errors="replace")):
                        _write_all(out, line + b"\n")
                    passing = False
                if rest:
                    if passing or not rest.startswith(b"["):
                        _write_all(out, rest)
                        passing = True
                    else:
                        pending = rest
            if pending and not self.drop(pending.decode(errors="replace")):
                _write_all(out, pending)
        except OSError:  # the real standard error went away: nothing left to write to
            pass
        finally:
            os.close(read)
            os.close(out)


def _writes_to_fd_2(stream) -> bool:
    try:
        return stream is not None and stream.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _flush(stream) -> None:
    try:
        stream.flush()
    except (AttributeError, ValueError, OSError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
