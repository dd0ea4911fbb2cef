"""Images end to end: bytes -> decode -> enhance -> encode -> atomic write -> manifest row.

Three steps with no Ray in them, so they are tested with plain pytest:

* :class:`ImageReader` reads and decodes (threads for the reads: object stores are latency-bound);
* an :class:`~dce_batch.enhance.enhancer.Enhancer` enhances the decoded pixels, several images at once;
* :class:`ImageWriter` encodes, writes atomically (in threads, overlapping the next image) and
  finishes the manifest rows.

:class:`ImageProcessor` chains the three for one CPU actor of the enhancement job (the fused
pipeline); on GPU nodes the job runs the reader and writer as CPU tasks around GPU actors that
only enhance (see :mod:`dce_batch.job.engines.ray`), passing :class:`ImageState` objects between them.

A bad input never raises: it becomes an ``error`` row saying why, so one corrupt file never fails
its batch. A failure to write OUTPUT (full, read-only, unreachable) raises
:class:`~dce_batch.errors.OutputWriteError` instead: the run stops, and the manifest claims only
what was written.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow.fs as pafs

from dce_batch.errors import DceBatchError, ImageTooLargeError, OutputWriteError, StorageError, describe_error
from dce_batch.imaging import DEFAULT_MAX_PIXELS, DecodedImage, EncodeOptions, decode_image, encode_image, mean_luminance
from dce_batch.job.manifest import STATUS_ERROR, STATUS_OK, ManifestRow
from dce_batch.storage import read_bytes, temp_tag, write_bytes_atomic

__all__ = ["ImageProcessor", "ImageReader", "ImageState", "ImageWriter", "WorkItem", "wait_for_writes"]

logger = logging.getLogger(__name__)

# Errors of one output name that the filesystem rejects; any other write failure stops the run.
_PER_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ})
_IO_THREADS = 8


@dataclass(frozen=True)
class WorkItem:
    """One planned input -> output pair (planned by the driver before anything is decoded)."""

    input_uri: str
    input_relpath: str  # under INPUT: the input's identity in the manifest
    output_relpath: str  # under OUTPUT
    output_path: str  # path in the output filesystem
    output_format: str  # Pillow format name the output is written in (matches its extension)
    input_path: str | None = None  # path in the input filesystem (None: bytes come from elsewhere)
    settings: str | None = None
    settings_sha256: str | None = None
    input_size: int | None = None  # the input's fingerprint, as listed
    input_mtime: object = None
    input_etag: str | None = None

    @classmethod
    def batch_from_table(cls, table) -> list["WorkItem"]:
        """Items from planned rows (:data:`dce_batch.job.plan.TODO_COLUMNS`)."""
        names = [f.name for f in dataclasses.fields(cls)]
        columns = {name: table[name].to_pylist() for name in names if name in table.column_names}
        return [cls(**{name: values[i] for name, values in columns.items()}) for i in range(table.num_rows)]


@dataclass
class ImageState:
    """One image between the steps: its row so far, and its pixels while it has them."""

    item: WorkItem
    row: ManifestRow
    started: float  # time.time() when its read began (rows report read-to-written time)
    decoded: DecodedImage | None = None
    enhanced: object = field(default=None, repr=False)  # H x W x 3 array, the decoded dtype


def _new_row(item: WorkItem, run_id: str, constants: dict) -> ManifestRow:
    return ManifestRow(input_uri=item.input_uri, input_relpath=item.input_relpath, output_relpath=item.output_relpath,
                       status=STATUS_ERROR, output_format=item.output_format, run_id=run_id, settings=item.settings,
                       settings_sha256=item.settings_sha256, made_by_run_id=run_id, input_size=item.input_size,
                       input_mtime=item.input_mtime, input_etag=item.input_etag, **constants)


class ImageReader:
    """Reads and decodes inputs; failures become the row's error."""

    def __init__(self, input_filesystem: pafs.FileSystem | None, *, run_id: str, row_constants: dict | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, limit_reason: str | None = None) -> None:
        self.input_filesystem = input_filesystem
        self.run_id = run_id
        self.row_constants = dict(row_constants or {})
        self.max_pixels = max_pixels
        self.limit_reason = limit_reason  # why max_pixels is what it is, when not --max-pixels

    def fetch(self, item: WorkItem) -> tuple[bytes | None, str | None]:
        try:
            return read_bytes(self.input_filesystem, item.input_path), None
        except StorageError as exc:
            return None, describe_error(exc)

    def decode(self, item: WorkItem, data: bytes | None, read_error: str | None = None,
               started: float | None = None) -> ImageState:
        state = ImageState(item=item, row=_new_row(item, self.run_id, self.row_constants),
                           started=time.time() if started is None else started)
        if data is None:
            state.row.error = read_error or "StorageError: input could not be read"
            return state
        state.row.bytes_in = len(data)
        try:
            decoded = decode_image(data, max_pixels=self.max_pixels)
        except ImageTooLargeError as exc:
            reason = self.limit_reason if exc.by_pixels else None
            state.row.error = describe_error(exc) + (f" ({reason})" if reason else "")
        except DceBatchError as exc:
            state.row.error = describe_error(exc)
        except MemoryError as exc:
            state.row.error = describe_error(exc) + " (lower --max-pixels, or give actors more memory)"
        except Exception as exc:  # noqa: BLE001 - an odd file must not fail the batch
            logger.exception("unexpected error decoding %s", item.input_uri)
            state.row.error = describe_error(exc)
        else:
            state.decoded = decoded
            row = state.row
            row.input_format, row.width, row.height = decoded.format, decoded.width, decoded.height
            row.bit_depth = decoded.bit_depth
            row.mean_luma_in = mean_luminance(decoded.pixels)
        return state

    def read_batch(self, items: Sequence[WorkItem], pool: concurrent.futures.Executor | None = None):
        """Yield decoded states in order while later reads are still in flight."""
        started = time.time()
        if pool is None:
            for item in items:
                yield self.decode(item, *self.fetch(item), started=started)
            return
        futures = [pool.submit(self.fetch, item) for item in items]
        for item, future in zip(items, futures):
            yield self.decode(item, *future.result(), started=started)


class ImageWriter:
    """Encodes enhanced pixels, writes them atomically and completes the rows."""

    def __init__(self, encode: EncodeOptions, output_filesystem: pafs.FileSystem, run_id: str = "") -> None:
        self.encode = encode
        self.output_filesystem = output_filesystem
        # Temp files carry the run's tag: a later run of this OUTPUT removes exactly its debris.
        self.temp_tag = temp_tag(run_id) if run_id else None

    def encode_state(self, state: ImageState) -> bytes | None:
        """The output bytes, or None with the row's error set (the image cannot be encoded)."""
        if state.decoded is None or state.enhanced is None:
            return None
        try:
            state.row.mean_luma_out = mean_luminance(state.enhanced)
            encoded = encode_image(state.enhanced, state.decoded, self.encode, fmt=state.item.output_format)
        except DceBatchError as exc:
            state.row.error = describe_error(exc)
            return None
        except Exception as exc:  # noqa: BLE001
            logger.exception("unexpected error encoding %s", state.item.input_uri)
            state.row.error = describe_error(exc)
            return None
        finally:
            state.decoded = state.enhanced = None  # free the pixels as soon as possible
        return encoded.data

    def write(self, state: ImageState, data: bytes) -> None:
        """Write one output; per-name failures become the row's error, anything else raises."""
        try:
            write_bytes_atomic(self.output_filesystem, state.item.output_path, data, temp_tag=self.temp_tag)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in _PER_NAME_ERRNOS:
                state.row.error = describe_error(exc)
                return
            raise OutputWriteError(
                f"{exc}. OUTPUT cannot take more outputs, so the run stops; the manifest lists what was "
                "written. Fix the cause above (space, permissions, credentials, or storage that could not be "
                "reached) and run again to resume: the rerun does exactly the rest"
            ) from exc
        state.row.status = STATUS_OK
        state.row.bytes_out = len(data)
        state.row.error = None

    def finish(self, state: ImageState) -> ManifestRow:
        row = state.row
        row.duration_ms = (time.time() - state.started) * 1000.0
        if row.status != STATUS_OK:  # nothing was written: no output to point at
            row.output_relpath = row.output_format = None
            row.settings = row.settings_sha256 = row.made_by_run_id = None
        return row

    def write_batch(self, states: Sequence[ImageState], pool: concurrent.futures.Executor) -> list[ManifestRow]:
        """Encode and write every state (writes in ``pool``); the finished rows, in order."""
        writes = [self.submit(state, pool) for state in states]
        wait_for_writes(writes)
        return [self.finish(state) for state in states]

    def submit(self, state: ImageState, pool: concurrent.futures.Executor) -> concurrent.futures.Future | None:
        """Encode now, write in ``pool``; None when there is nothing to write."""
        data = self.encode_state(state)
        return None if data is None else pool.submit(self.write, state, data)


def wait_for_writes(writes: Sequence[concurrent.futures.Future | None]) -> None:
    """Wait for every write; the first OutputWriteError is re-raised (the run stops)."""
    for future in writes:
        if future is not None:
            future.result()


def _fail_enhance(state: ImageState, exc: Exception) -> None:
    if isinstance(exc, MemoryError):
        state.row.error = describe_error(exc) + " (lower --max-pixels or the tile size, or give actors more memory)"
    else:
        logger.exception("unexpected error enhancing %s", state.item.input_uri)
        state.row.error = describe_error(exc)
    state.decoded = None


def enhance_states(enhancer, states: Sequence[ImageState]) -> None:
    """Enhance the decoded images of ``states`` in one call to the network. An image it cannot
    take gets the reason in its row, and the others still go through (one at a time, when the
    batch failed): one odd image must not fail the batch."""
    todo = [s for s in states if s.decoded is not None]
    if not todo:
        return
    try:
        results = enhancer.enhance_batch([s.decoded.pixels for s in todo])
    except Exception as exc:  # noqa: BLE001 - an odd image must not fail the batch
        if len(todo) == 1:
            _fail_enhance(todo[0], exc)
            return
        results = []
        for state in todo:
            try:
                results.append(enhancer.enhance(state.decoded.pixels))
            except Exception as one:  # noqa: BLE001
                _fail_enhance(state, one)
                results.append(None)
    for state, result in zip(todo, results):
        if result is not None:
            state.enhanced, state.row.tiled = result.pixels, result.tiled


class ImageProcessor:
    """Read -> decode -> enhance -> encode -> write, overlapping the I/O with the network.

    Reads of a batch start together in threads; each image is enhanced as soon as its bytes are
    decoded; writes run in threads while the next image is enhanced.
    """

    def __init__(self, enhancer, encode: EncodeOptions, input_filesystem: pafs.FileSystem | None,
                 output_filesystem: pafs.FileSystem, *, run_id: str, worker: str = "",
                 max_pixels: int = DEFAULT_MAX_PIXELS, limit_reason: str | None = None) -> None:
        meta = enhancer.weights.meta
        constants = dict(model_name=meta.name, model_sha256=meta.sha256, strength=enhancer.config.strength,
                         variant=meta.variant, precision=enhancer.precision, worker=worker)
        self.enhancer = enhancer
        self.reader = ImageReader(input_filesystem, run_id=run_id, row_constants=constants, max_pixels=max_pixels,
                                  limit_reason=limit_reason)
        self.writer = ImageWriter(encode, output_filesystem, run_id)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="dce-io")

    def enhance_state(self, state: ImageState) -> None:
        enhance_states(self.enhancer, [state])

    def process(self, item: WorkItem, data: bytes | None, read_error: str | None = None) -> ManifestRow:
        """One image whose bytes the caller already has."""
        state = self.reader.decode(item, data, read_error)
        self.enhance_state(state)
        return self.writer.write_batch([state], self._pool)[0]

    def process_batch(self, items: Sequence[WorkItem]) -> list[ManifestRow]:
        """Several images read from the input filesystem (items need ``input_path``)."""
        states, writes = [], []
        for state in self.reader.read_batch(items, self._pool):
            self.enhance_state(state)
            writes.append(self.writer.submit(state, self._pool))  # written while the next one is enhanced
            states.append(state)
        wait_for_writes(writes)
        return [self.writer.finish(state) for state in states]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
