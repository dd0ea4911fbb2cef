"""One worker of the job, whatever engine runs it: the model loaded once, then batch after batch.

A worker (a fused Ray actor, or a local worker process) enhances each batch with an
:class:`~dce_batch.job.steps.ImageProcessor` and adds the batch's rows to its rolling manifest part
(:class:`~dce_batch.job.manifest.parts.PartBuffer`), then sends them to the driver. A failure that
stops the run (OUTPUT cannot be written) comes back to the driver as the typed error itself, not
as a traceback to be read: :func:`fatal_table` / :func:`raise_if_fatal`.
"""

from __future__ import annotations

import os
import pickle
import uuid

import pyarrow as pa

from dce_batch.errors import DceBatchError
from dce_batch.job.manifest.parts import BatchRows, PartBuffer
from dce_batch.job.manifest.schema import rows_to_table
from dce_batch.job.manifest.store import ManifestStore
from dce_batch.job.steps import ImageProcessor, WorkItem

__all__ = ["EnhanceWorker", "build_enhancer", "fatal_table", "raise_if_fatal", "writer_name"]

_FATAL_COLUMN = "_fatal"


def writer_name(prefix: str) -> str:
    """A name for one process's part writer: ``prefix``, the process id and random digits.

    Unique per process, never reused: Ray restarts a dead actor under the same actor id, and a
    restarted writer that reused its predecessor's name would overwrite that one's parts (its
    sequence starts at 0 again), losing rows the driver already counts as written."""
    return f"{prefix}{os.getpid()}x{uuid.uuid4().hex[:8]}"


def read_weights_spec(config) -> tuple[bytes, str]:
    """The bytes of ``config.weights`` (a shipped name, a file, or a URI) and the name they go by."""
    from dce_batch.enhance.registry import read_weights_bytes
    from dce_batch.storage import filesystem_for, read_bytes

    spec = config.weights
    if spec and "://" in spec and not spec.startswith("file://"):
        fs, path = filesystem_for(spec, config.s3)
        return read_bytes(fs, path), path.rsplit("/", 1)[-1]
    return read_weights_bytes(spec.removeprefix("file://") if spec else None, variant=config.variant)


def weights_travel_by_name(config) -> bool:
    """Whether a worker can read ``config.weights`` itself (a shipped name, or a URI every node
    reaches), so its constructor need not carry the bytes."""
    from dce_batch.enhance.registry import PACKAGED_WEIGHTS

    spec = config.weights
    return spec is None or spec in PACKAGED_WEIGHTS or ("://" in spec and not spec.startswith("file://"))


def weights_for_worker(config, weights_blob: bytes | None, expected_sha256: str) -> bytes:
    """The weights a worker loads: the bytes it was given, or read by name; the same the driver planned with."""
    if weights_blob is not None:
        return weights_blob
    from dce_batch.enhance.registry import read_header_metadata
    from dce_batch.errors import WeightsError

    blob, _ = read_weights_spec(config)
    header = read_header_metadata(blob)
    if header is not None and header.sha256 != expected_sha256:
        raise WeightsError(f"the weights {config.weights!r} changed while the run was starting (sha256 "
                           f"{header.sha256[:12]} instead of {expected_sha256[:12]}); run again")
    return blob


def build_enhancer(config, weights_blob: bytes, weights_name: str, threads: int | None):
    """The network with ``config``'s settings, in this process (torch imported here, not in the driver)."""
    import torch

    from dce_batch.enhance.enhancer import Enhancer
    from dce_batch.enhance.weights import load_weights

    if threads is not None:
        # Without this every worker would use every core and they would fight each other.
        torch.set_num_threads(threads)
    weights = load_weights(weights_blob, name=weights_name)
    return Enhancer(weights, config.inference_config())


class EnhanceWorker:
    """Reads, enhances and writes batches of images; buffers their rows into rolling parts."""

    def __init__(self, config, weights_blob: bytes, weights_name: str, output, *, pixel_limit: int,
                 limit_reason: str | None, worker: str, writer: str, threads: int | None = 1,
                 input_filesystem=None) -> None:
        enhancer = build_enhancer(config, weights_blob, weights_name, threads)
        self.processor = ImageProcessor(enhancer, config.encode_options(), input_filesystem, output.filesystem,
                                        run_id=config.run_id, worker=worker, max_pixels=pixel_limit,
                                        limit_reason=limit_reason)
        self.parts = PartBuffer(ManifestStore.of(output), config.run_id, writer, max_rows=config.part_rows,
                                max_age_s=config.part_flush_s)

    def process(self, items: list[WorkItem], input_filesystem=None) -> BatchRows:
        if input_filesystem is not None:
            self.processor.reader.input_filesystem = input_filesystem
        rows = rows_to_table(self.processor.process_batch(items))
        return self.parts.add(rows)  # the last step: a batch is in a part's buffer exactly when it returns


def fatal_table(exc: DceBatchError) -> pa.Table:
    """A run-stopping error as a one-row table a Ray Data stage can return."""
    return pa.table({_FATAL_COLUMN: pa.array([pickle.dumps(exc)], pa.binary())})


def raise_if_fatal(table: pa.Table) -> None:
    if _FATAL_COLUMN in table.column_names and table.num_rows:
        raise pickle.loads(table[_FATAL_COLUMN][0].as_py())

