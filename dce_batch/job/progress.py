"""Driver-side progress of a batch run, as people expect it where they are looking.

* On a terminal (the stream is a tty): a live tqdm bar with images done, images/s, errors and ETA.
* In a non-interactive log (CI, ``ray job logs``, a file): a plain line every ``interval_s``
  seconds and one at the end, because a redrawn bar turns into thousands of lines there.
* ``quiet``: nothing but the errors (each failed input with its reason, up to a cap) and, from
  the caller, the final summary.

Failed inputs are printed as they arrive in every mode (a long run should not hide its first
failures until the end), capped at ``max_error_lines`` so a broken bucket does not flood the log;
the manifest has every one.

This module imports neither Ray nor torch.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, TextIO

__all__ = ["Progress", "format_duration"]

MAX_ERROR_LINES = 20


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``3700`` -> ``"1h01m"``; ``"?"`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Progress of ``total`` images, reported on ``stream`` (stderr by default).

    Args:
        total: images the run will process (what is left to do, not what an earlier run did).
        quiet: print only failed inputs; the caller prints the final summary.
        interactive: ``True`` for the live bar, ``False`` for periodic lines; ``None`` decides
            from ``stream.isatty()``.
        interval_s: seconds between plain lines (non-interactive mode).
        stream: where to write (the bar and the lines). Standard error by default, so that
            standard output stays free for the final summary.
        max_error_lines: failed inputs printed before the rest are left to the manifest.
        refresh_s: least time between redraws of the live bar (tqdm's ``mininterval``).
        clock: monotonic seconds; replaceable so tests need no sleeps.
        started: when the run started on ``clock`` (default: now), so that images/s here and in
            the run summary are the same figure.

    Use :meth:`update` with counts, or :meth:`update_batch` with a batch of manifest rows
    (a ``pyarrow.Table``), then :meth:`close` (or use it as a context manager).
    """

    def __init__(
        self,
        total: int,
        *,
        quiet: bool = False,
        interactive: bool | None = None,
        interval_s: float = 10.0,
        stream: TextIO | None = None,
        max_error_lines: int = MAX_ERROR_LINES,
        refresh_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = total
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        if interactive is None:
            interactive = _isatty(self.stream)
        self.interactive = bool(interactive) and not quiet
        self.interval_s = interval_s
        self.max_error_lines = max_error_lines
        self.clock = clock
        self.done = 0
        self.errors = 0
        self.error_lines = 0
        # ``started``: when the run began on ``clock`` (so the rate agrees with the run summary's).
        self.started = clock() if started is None else started
        self.last_line = clock()
        self.closed = False
        self.finished: float | None = None  # when close() was called, on ``clock``
        self._bar = None
        if self.interactive:
            from tqdm.auto import tqdm

            # miniters=1: redraw on any update once refresh_s has passed (not tqdm's adaptive
            # skipping, which would leave a slow run's bar stale for many batches).
            # A terminal that reports 0 columns (some container ttys) would get an empty bar.
            sized = _terminal_columns(self.stream) > 0
            # Always images/s (tqdm turns a rate under 1 into s/img), the unit of the summary.
            self._bar = tqdm(total=total, unit="img", file=self.stream, dynamic_ncols=sized,
                             ncols=None if sized else 100, mininterval=refresh_s, miniters=1, smoothing=0.1,
                             desc="enhance", bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                                        "[{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]")
            self._bar.set_postfix_str("0 errors", refresh=False)

    # -- counting -----------------------------------------------------------------------------

    def update(self, images: int, errors: int = 0) -> None:
        """``images`` more inputs finished, ``errors`` of them failed."""
        if images < 0 or errors < 0 or errors > images:
            raise ValueError(f"need 0 <= errors <= images, got images={images}, errors={errors}")
        self.done += images
        self.errors += errors
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.errors} error{'s' if self.errors != 1 else ''}", refresh=False)
            self._bar.update(images)
        elif not self.quiet:
            now = self.clock()
            if now - self.last_line >= self.interval_s:
                self._line(now)

    def update_batch(self, batch: Any) -> None:
        """Count a batch of manifest rows (a ``pyarrow.Table`` with ``status``, ``input_uri``,
        ``error``) and print its failed inputs."""
        statuses = batch.column("status").to_pylist()
        failed = [i for i, status in enumerate(statuses) if status == "error"]
        if failed:
            uris = batch.column("input_uri").to_pylist()
            messages = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(uris)
            for i in failed:
                self.error(uris[i], messages[i] or "unknown error")
        self.update(len(statuses), len(failed))

    def error(self, input_uri: str, message: str) -> None:
        """Print one failed input (in every mode, up to ``max_error_lines``)."""
        self.error_lines += 1
        if self.error_lines <= self.max_error_lines:
            self._write(f"error: {input_uri}: {message}")
        elif self.error_lines == self.max_error_lines + 1:
            self._write(f"error: more inputs failed; the manifest lists every one with its reason "
                        f"(only the first {self.max_error_lines} are printed here)")

    # -- output ---------------------------------------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        """Seconds from the start to :meth:`close` (to now while open): the interval of the
        closing line's images/s, which the run summary takes too (:meth:`RunSummary.finish`)."""
        return (self.clock() if self.finished is None else self.finished) - self.started

    def rate(self, now: float | None = None) -> float:
        """Images per second since the start (until :meth:`close`)."""
        elapsed = (self.clock() if now is None else now) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        """The plain progress line: done/total, errors, images/s and ETA."""
        now = self.clock() if now is None else now
        rate = self.rate(now)
        remaining = self.total - self.done
        eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else float("nan"))
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.done}/{self.total} images ({percent:.0f}%), {self.errors} error"
                f"{'s' if self.errors != 1 else ''}, {rate:.2f} images/s, "
                f"elapsed {format_duration(now - self.started)}, ETA {format_duration(eta)}")

    def _line(self, now: float) -> None:
        self._write(self.line(now))
        self.last_line = now

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish: close the bar, or print the last plain line (not when quiet)."""
        if self.closed:
            return
        self.closed = True
        self.finished = self.clock()
        if self._bar is not None:
            # tqdm's last redraw shows the mean rate over its own elapsed time: make that the
            # run's (it started before the bar was made), as in the summary.
            self._bar.start_t = self._bar._time() - (self.finished - self.started)
            self._bar.close()
        elif not self.quiet:
            self._line(self.finished)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _terminal_columns(stream: TextIO) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0
