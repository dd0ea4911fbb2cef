"""The job on one machine without a cluster: a pool of worker processes, one per CPU.

Starting Ray costs a laptop seconds of its few cores (its own processes, then actors that import
torch): on 2 CPUs, about 12 core-seconds for DICM's 64 photos, a third of the work itself
(benchmarks/bench_pipeline.py). For a collection that small, the job runs the very same
:class:`~dce_batch.job.steps.ImageProcessor` in local worker processes instead, forked from a
server that imported torch while the driver planned, so a worker is ready in milliseconds. Rows,
the crash journal, resume, exit codes and outputs are the same as with Ray; larger collections,
GPUs and existing clusters use Ray (see :func:`dce_batch.job.pipeline.choose_engine`).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any, Iterator

import pyarrow as pa

from dce_batch.job.manifest import rows_to_table, write_pending_part

__all__ = ["LocalPool"]

# Imported once by the fork server, before any worker is forked from it.
_PRELOAD = ["dce_batch.job.engines.forkserver_guard", "torch", "dce_batch.enhance.enhancer", "dce_batch.job.steps", "dce_batch.enhance.weights"]

_processor = None  # the worker process's ImageProcessor
_journal: tuple[Any, str, str, str] | None = None


def _context() -> multiprocessing.context.BaseContext:
    # forkserver, not fork: the driver has threads (planning) and torch; a fork server is a clean
    # single-threaded process that imported torch once, and each worker is a fork of it.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _init_worker(config, weights_blob: bytes, weights_name: str, output, pixel_limit: int,
                 limit_reason: str | None) -> None:
    global _processor, _journal
    import torch

    from dce_batch.enhance.enhancer import Enhancer
    from dce_batch.job.steps import ImageProcessor
    from dce_batch.storage import MANIFEST_DIR
    from dce_batch.enhance.weights import load_weights

    _die_with_parent()
    torch.set_num_threads(1)  # one worker per CPU
    weights = load_weights(weights_blob, name=weights_name)
    enhancer = Enhancer(weights, config.inference_config(weights.meta.variant))
    worker = f"local/pid{os.getpid()}"
    _processor = ImageProcessor(enhancer, config.encode_options(), None, output.filesystem,
                                run_id=config.run_id, worker=worker, max_pixels=pixel_limit,
                                limit_reason=limit_reason)
    _journal = (output.filesystem, output.child(MANIFEST_DIR), config.run_id, worker)


def _die_with_parent() -> None:
    """Linux: end this worker when the fork server (which ends with the driver) ends.

    (See :mod:`dce_batch.job.engines.forkserver_guard` for the fork server's side.)

    A driver killed with SIGKILL must not leave workers enhancing on: a run started after it
    could plan the same images while they finish.
    """
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _process(items: list, input_filesystem) -> bytes:
    """Worker: one batch of items; returns its rows (Arrow IPC bytes), journalled first."""
    _processor.reader.input_filesystem = input_filesystem  # known once the inputs are listed
    rows = rows_to_table(_processor.process_batch(items))
    fs, manifest_path, run_id, worker = _journal
    write_pending_part(fs, manifest_path, run_id, worker, rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as stream:
        stream.write_table(rows)
    return sink.getvalue().to_pybytes()


class LocalPool:
    """``workers`` processes that each hold an ImageProcessor; :meth:`run` streams rows back."""

    def __init__(self, workers: int, init_args: tuple, plan: Any = None) -> None:
        self.workers = workers
        self.plan = plan  # what it was sized by (pipeline.ActorPool), for the run's summary
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=_context(), initializer=_init_worker, initargs=init_args)

    def start(self) -> None:
        """Fork and initialise every worker now (the driver plans meanwhile)."""
        for future in [self._executor.submit(os.getpid) for _ in range(self.workers)]:
            future.add_done_callback(lambda f: f.exception())

    def run(self, batches: Iterator[list], input_filesystem) -> Iterator[pa.Table]:
        """Submit batches, at most two per worker in flight; yield each batch's rows as it finishes."""
        pending: set[concurrent.futures.Future] = set()
        batches = iter(batches)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < 2 * self.workers:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                pending.add(self._executor.submit(_process, batch, input_filesystem))
            if not pending:
                break
            done, pending = concurrent.futures.wait(pending, timeout=0.2,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                try:
                    data = future.result()
                except concurrent.futures.process.BrokenProcessPool as exc:
                    raise RuntimeError(
                        "a worker process of the local pool died (out of memory? killed?); the rows of the images "
                        "it finished are kept: run again to resume, or lower --max-pixels") from exc
                with pa.ipc.open_stream(data) as reader:
                    yield reader.read_all()

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (at once when ``cancel``: their current images end unwritten or whole)."""
        if cancel:
            for process in list(getattr(self._executor, "_processes", {}).values()):  # no public API for this
                process.terminate()
        self._executor.shutdown(wait=not cancel, cancel_futures=cancel)
