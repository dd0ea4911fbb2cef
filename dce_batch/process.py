"""One image, end to end: bytes -> decode -> enhance -> encode -> atomic write -> manifest row.

:class:`ImageProcessor` is what each Ray actor of the enhancement job holds (built once per
actor: it owns the loaded network), but it has no Ray in it, so it is tested with plain pytest.
It never raises for a bad input: every failure becomes an ``error`` row saying why, so one
corrupt file never fails its batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from .errors import DceBatchError, describe_error
from .imageio import DEFAULT_MAX_PIXELS, EncodeOptions, decode_image, encode_image, mean_luminance
from .inference import Enhancer
from .manifest import STATUS_ERROR, STATUS_OK, ManifestRow
from .storage import write_bytes_atomic

__all__ = ["ImageProcessor", "WorkItem"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One planned input -> output pair (planned by the driver before anything is decoded)."""

    input_uri: str
    output_uri: str
    output_path: str  # path in the output filesystem
    output_format: str  # Pillow format name the output is written in (matches its extension)


class ImageProcessor:
    """Turns input bytes into a written output and its manifest row."""

    def __init__(
        self,
        enhancer: Enhancer,
        encode: EncodeOptions,
        output_filesystem: pafs.FileSystem,
        *,
        run_id: str,
        worker: str = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.enhancer = enhancer
        self.encode = encode
        self.output_filesystem = output_filesystem
        self.run_id = run_id
        self.worker = worker
        self.max_pixels = max_pixels
        meta = enhancer.weights.meta
        # Columns identical for every row this processor writes.
        self._constant = dict(
            run_id=run_id, model_name=meta.name, model_sha256=meta.sha256, strength=enhancer.config.strength,
            variant=meta.variant, precision=enhancer.config.precision, worker=worker,
        )

    def process(self, item: WorkItem, data: bytes | None, read_error: str | None = None) -> ManifestRow:
        started = time.perf_counter()
        row = ManifestRow(input_uri=item.input_uri, output_uri=item.output_uri, status=STATUS_ERROR,
                          output_format=item.output_format, **self._constant)
        if data is None:
            row.error = read_error or "StorageError: input could not be read"
            return self._finish(row, started)
        row.bytes_in = len(data)
        try:
            decoded = decode_image(data, max_pixels=self.max_pixels)
            row.input_format, row.width, row.height = decoded.format, decoded.width, decoded.height
            row.mean_luma_in = mean_luminance(decoded.pixels)
            result = self.enhancer.enhance(decoded.to_float())
            row.tiled = result.tiled
            row.mean_luma_out = mean_luminance(result.pixels)
            encoded = encode_image(result.pixels, decoded, self.encode, fmt=item.output_format)
            write_bytes_atomic(self.output_filesystem, item.output_path, encoded.data)
        except DceBatchError as exc:
            row.error = describe_error(exc)
        except MemoryError as exc:
            row.error = describe_error(exc) + " (lower --max-pixels or the tile size, or give actors more memory)"
        except Exception as exc:  # noqa: BLE001 - a bug or an odd file must not fail the batch
            logger.exception("unexpected error on %s", item.input_uri)
            row.error = describe_error(exc)
        else:
            row.status = STATUS_OK
            row.bytes_out = len(encoded.data)
        return self._finish(row, started)

    @staticmethod
    def _finish(row: ManifestRow, started: float) -> ManifestRow:
        row.duration_ms = (time.perf_counter() - started) * 1000.0
        if row.status != STATUS_OK:  # nothing was written: no output to point at
            row.output_uri = row.output_format = None
        return row
