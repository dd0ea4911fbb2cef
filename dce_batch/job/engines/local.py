"""The job on one machine without a cluster: a pool of worker processes, one per CPU.

Starting Ray costs a laptop seconds of its few cores (its own processes, then actors that import
torch): for a collection of a few hundred photos that is a large share of the work
(benchmarks/bench_pipeline.py). So with no cluster around, the job runs the very same
:class:`~dce_batch.job.worker.EnhanceWorker` in local worker processes instead, forked from a
server that imported torch while the driver planned, so a worker is ready in milliseconds. Rows,
parts, resume, exit codes and outputs are the same as on Ray; larger collections, GPUs and
existing clusters use Ray (see :func:`dce_batch.job.driver.choose_engine`).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Iterator

import pyarrow as pa

from dce_batch.errors import WorkerLostError
from dce_batch.job.manifest.parts import BatchRows
from dce_batch.job.sizing import WorkerPlan, plan_workers
from dce_batch.job.steps import WorkItem

__all__ = ["LocalEngine"]

# Imported once by the fork server, before any worker is forked from it.
_PRELOAD = ["dce_batch.job.engines.forkserver_guard", "torch", "dce_batch.enhance.enhancer", "dce_batch.job.worker"]

_worker = None  # the worker process's EnhanceWorker


def _context() -> multiprocessing.context.BaseContext:
    # forkserver, not fork: the driver has threads (planning) and torch; a fork server is a clean
    # single-threaded process that imported torch once, and each worker is a fork of it.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _init_worker(config, weights_blob: bytes, weights_name: str, output, pixel_limit: int,
                 limit_reason: str | None) -> None:
    global _worker
    import signal

    from dce_batch.job.worker import EnhanceWorker, writer_name

    # A terminal's Ctrl-C reaches the whole process group. The driver decides what it means
    # (finish the batches in flight, or stop at once, which ends the workers with it): a worker
    # that took it as KeyboardInterrupt would drop its batch mid-write with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _worker = EnhanceWorker(config, weights_blob, weights_name, output, pixel_limit=pixel_limit,
                            limit_reason=limit_reason, worker=f"local/pid{os.getpid()}",
                            writer=writer_name("l"), threads=1)


def _die_with_parent() -> None:
    """Linux: end this worker when the fork server (which ends with the driver) ends.

    (See :mod:`dce_batch.job.engines.forkserver_guard` for the fork server's side.) A driver
    killed with SIGKILL must not leave workers enhancing on: a run started after it could plan
    the same images while they finish.
    """
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _process(items: list[WorkItem], input_filesystem) -> BatchRows:
    """Worker: one batch of items; its rows, in the worker's rolling part."""
    return _worker.process(items, input_filesystem)


def _available_memory() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with Ray; a bare install may lack it
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class LocalEngine:
    """Worker processes on this machine; :meth:`batches` streams each finished batch back."""

    name = "local"

    def __init__(self, config, output, weights_blob: bytes, weights_name: str) -> None:
        self.config = config
        self.plan_ = plan_workers(config, {"CPU": float(os.cpu_count() or 1), "memory": _available_memory() * 0.8},
                                  local_cluster=True)
        self.workers = self.plan_.max_size
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=_context(), initializer=_init_worker,
            initargs=(config, weights_blob, weights_name, output, self.plan_.image_pixel_limit,
                      self.plan_.limit_reason))

    def start(self) -> None:
        """Fork and initialise every worker now (the driver plans meanwhile)."""
        for future in [self._executor.submit(os.getpid) for _ in range(self.workers)]:
            future.add_done_callback(lambda f: f.exception())

    def plan(self) -> tuple[WorkerPlan, dict]:
        return self.plan_, {"CPU": os.cpu_count()}

    def batches(self, todo: pa.Table, plan: WorkerPlan, input_fs, output, weights) -> Iterator[BatchRows | None]:
        """Submit batches, at most two per worker in flight; yield each batch's rows as it finishes
        (and None now and then, so the caller can notice a stop request)."""
        per_call = plan.images_per_call
        starts = iter(range(0, todo.num_rows, per_call))
        pending: set[concurrent.futures.Future] = set()
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < 2 * self.workers:
                start = next(starts, None)
                if start is None:
                    exhausted = True
                    break
                items = WorkItem.batch_from_table(todo.slice(start, per_call))
                pending.add(self._executor.submit(_process, items, input_fs))
            if not pending:
                break
            done, pending = concurrent.futures.wait(pending, timeout=0.2,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                yield None
            for future in done:
                try:
                    yield future.result()
                except concurrent.futures.process.BrokenProcessPool as exc:
                    raise WorkerLostError(
                        "a worker process died (killed, or out of memory); the run stopped and kept the rows of the "
                        "images that finished: run again to resume (lower --max-pixels or --batch-size if memory "
                        "ran out)") from exc

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (at once when ``cancel``: their current images end unwritten or whole)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if cancel:
            for process in list(getattr(self._executor, "_processes", {}).values()):  # no public API for this
                process.terminate()
        # Waiting even after terminating: the pool's queues and semaphores are then released in
        # order, and the resource tracker has nothing to warn about at exit.
        self._executor.shutdown(wait=True, cancel_futures=cancel)
