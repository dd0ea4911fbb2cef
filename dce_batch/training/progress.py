"""What a training run tells the person who started it: one line per epoch, printed by the driver.

The workers run in other processes (on other machines, on a cluster) whose output Ray only
streams to the driver together with its own log lines. So the rank-0 worker sends each epoch's
metrics through a small Ray queue instead, and a thread on the driver prints them as they
arrive (:class:`ProgressRelay`); the workers' own output stays out of the way unless
``--verbose``. The line formats are plain functions (:func:`epoch_line`, :func:`resume_line`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dce_batch.job.progress import format_duration

__all__ = ["EpochEvent", "ProgressRelay", "ResumeEvent", "epoch_line", "resume_line", "send_progress"]

PREFIX = "[dce-batch train]"


@dataclass(frozen=True)
class EpochEvent:
    """An epoch finished: its reported metrics, and the epochs the run will have in all."""

    metrics: dict[str, Any]
    epochs: int


@dataclass(frozen=True)
class ResumeEvent:
    """The workers started from a checkpoint taken after ``after_epoch``."""

    after_epoch: int
    epochs: int
    resumes: int


def epoch_line(metrics: dict[str, Any], epochs: int, elapsed_s: float, mean_epoch_s: float) -> str:
    """``[dce-batch train] epoch 3/10 train loss 0.8123, val loss 0.7911, 52.3 images/s, elapsed 1m05s, ETA 2m20s``.

    ``elapsed_s``: since the command started; ``mean_epoch_s``: the epochs' mean duration, for
    the estimate of what is left.
    """
    epoch = int(metrics["epoch"])
    val = f", val loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
    eta = f", ETA {format_duration((epochs - epoch) * mean_epoch_s)}" if epoch < epochs else ""
    return (f"{PREFIX} epoch {epoch}/{epochs} train loss {metrics['train_loss']:.4f}{val}, "
            f"{metrics['images_per_second']:.1f} images/s, elapsed {format_duration(elapsed_s)}{eta}")


def resume_line(event: ResumeEvent) -> str:
    return (f"{PREFIX} continuing after epoch {event.after_epoch} of {event.epochs} from its checkpoint "
            f"(resume #{event.resumes})")


def send_progress(queue: Any, event: EpochEvent | ResumeEvent) -> None:
    """Put ``event`` on the driver's queue (a worker-side call); progress never fails a run."""
    if queue is None:
        return
    try:
        queue.put_nowait(event)
    except Exception:  # noqa: BLE001, S110 - a lost line is better than a lost epoch
        pass


class ProgressRelay:
    """A Ray queue the rank-0 worker writes to, and a driver thread that prints what arrives.

    Use as a context manager around ``trainer.fit()``; :attr:`queue` goes to the workers. On
    exit every event already sent is printed, then the queue's actor is released.
    """

    def __init__(self, say: Callable[[str], None], started: float, poll_s: float = 0.5) -> None:
        from ray.util.queue import Queue

        self.say = say
        self.started = started  # time.monotonic() when the command started
        self.poll_s = poll_s
        # No CPU reserved: it only passes a few small messages, and training needs every core.
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.epoch_seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dce-train-progress", daemon=True)

    def __enter__(self) -> ProgressRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            for event in self.queue.get_nowait_batch(self.queue.qsize()):
                self._show(event)
        except Exception:  # noqa: BLE001, S110 - the run's result matters, not its last progress line
            pass
        self.queue.shutdown(force=True)

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                event = self.queue.get(timeout=self.poll_s)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - e.g. Ray shutting down under an interrupted run
                return
            self._show(event)

    def _show(self, event: EpochEvent | ResumeEvent) -> None:
        if isinstance(event, ResumeEvent):
            self.say(resume_line(event))
            return
        self.epoch_seconds.append(float(event.metrics["epoch_seconds"]))
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.say(epoch_line(event.metrics, event.epochs, time.monotonic() - self.started, mean))
