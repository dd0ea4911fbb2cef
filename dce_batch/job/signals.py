"""Ctrl-C and SIGTERM stop a run between batches, never in the middle of a write.

The first SIGINT or SIGTERM only sets a flag (:class:`StopRequest`); the driver checks it between
batches, writes the rows of what finished, commits and leaves with 130 or 143. No exception is
raised inside a write, so no part and no output is left half-written by the driver. A second
signal means "now": the process ends at once (exit 130/143) with one line; the next run adopts
whatever parts were written and redoes the rest.

"At once" holds even while the main thread is inside a long call that does not return to Python
(a storage request that hangs until its retries run out, for minutes): Python runs signal
handlers only between bytecodes of the main thread, so the signals also reach a watchdog thread
through :func:`signal.set_wakeup_fd`, written by the C-level handler as they arrive, and the
watchdog ends the process on the second one.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

__all__ = ["StopRequest"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOPPING_NOW = b"dce-batch: stopping now; the next run adopts what was written and redoes the rest\n"
_STOPPING_SOON = b"dce-batch: stopping after the batches in flight (again to stop at once)\n"


class StopRequest:
    """Whether a stop was asked for, and by which signal. Install in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._previous_wakeup_fd = -1
        self._exiting = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            self._start_watchdog()
        return self

    def reinstall(self) -> None:
        """After a library replaced the handlers (``ray.init`` does for SIGTERM)."""
        if self._previous:
            for signum in _SIGNALS:
                signal.signal(signum, self._handle)
            if self._wakeup is not None:
                signal.set_wakeup_fd(self._wakeup[1].fileno(), warn_on_full_buffer=False)

    def restore(self) -> None:
        """Give the signals back to the handlers they had, unless a stop was asked for: then the
        process is on its way out, and a second signal still means "now" (one line, exit
        130/143) instead of Python's KeyboardInterrupt with a traceback from wherever the
        process's last steps happen to be."""
        for signum, handler in self._previous.items():
            signal.signal(signum, self._handle if self.requested else handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            reader, writer = self._wakeup
            self._wakeup = None
            writer.close()  # the watchdog's recv returns b"" and it ends
            reader.close()

    def _start_watchdog(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)  # set_wakeup_fd requires it; a full buffer drops bytes, never blocks
        try:
            self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread of the main interpreter
            reader.close()
            writer.close()
            return
        self._wakeup = (reader, writer)
        threading.Thread(target=self._watch, args=(reader,), name="dce-batch-signals", daemon=True).start()

    def _watch(self, reader: socket.socket) -> None:
        heard = 0  # stop signals read so far; only this thread counts them
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in _SIGNALS:
                    continue
                heard += 1
                if heard >= 2:
                    self._exit_now(signum)
                os.write(2, _STOPPING_SOON)  # said here: the handler may wait on a call for minutes

    def _exit_now(self, signum: int) -> None:
        """One line and exit; the handler and the watchdog may both get here, only one speaks."""
        if self._exiting.acquire(blocking=False):
            os.write(2, _STOPPING_NOW)
            os._exit(128 + signum)
        threading.Event().wait()  # the other one is ending the process

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.signum is not None:
            self._exit_now(signum)
        self.signum = signum
        if self._wakeup is None:  # no watchdog to say it
            os.write(2, _STOPPING_SOON)
