"""Ctrl-C and SIGTERM stop a run between batches, never in the middle of a write.

The first SIGINT or SIGTERM only sets a flag (:class:`StopRequest`); the driver checks it between
batches, writes the rows of what finished, commits and leaves with 130 or 143. No exception is
raised inside a write, so no part and no output is left half-written by the driver. A second
signal means "now": the process ends at once (exit 130/143) with one line; the next run adopts
whatever parts were written and redoes the rest.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["StopRequest"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Whether a stop was asked for, and by which signal. Install in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def reinstall(self) -> None:
        """After a library replaced the handlers (``ray.init`` does for SIGTERM)."""
        if self._previous:
            for signum in _SIGNALS:
                signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.signum is not None:
            os.write(2, b"dce-batch: stopping now; the next run adopts what was written and redoes the rest\n")
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, b"dce-batch: stopping after the batches in flight (again to stop at once)\n")
