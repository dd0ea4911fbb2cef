"""The table of inputs every listing returns: its columns, how it is built, and :class:`InputFile`,
the same row as a Python object for small callers."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from dce_batch.errors import ConfigError
from dce_batch.storage.arrow_paths import one_array, strings

__all__ = ["INPUT_TABLE_SCHEMA", "MTIME_TYPE", "InputFile", "make_input_table"]

#: Type of the ``mtime`` column: nanoseconds since the epoch, in UTC.
MTIME_TYPE = pa.timestamp("ns", tz="UTC")

#: Columns of :func:`~dce_batch.storage.list_inputs_table`, one row per input.
INPUT_TABLE_SCHEMA = pa.schema(
    [
        # The input's URI (a local path is its own URI), for manifests and messages.
        pa.field("uri", pa.string(), nullable=False),
        # Its path in the filesystem the listing returns, for reading it.
        pa.field("path", pa.string(), nullable=False),
        # "/"-separated name under which its output is written below OUTPUT.
        pa.field("relpath", pa.string(), nullable=False),
        # What the input was when listed (its fingerprint); null where the source does not say
        # (list files without these columns are not stat-ed):
        pa.field("size", pa.int64()),  # bytes
        pa.field("mtime", MTIME_TYPE),  # last modification (local files, S3 LastModified)
        pa.field("etag", pa.string()),  # S3's ETag without the double quotes S3 puts around it
        # "TypeName: message" (the manifest's form) when the listing already knows that this
        # input cannot be processed (a file name that is not UTF-8); null for every other input.
        pa.field("listing_error", pa.string()),
    ]
)


@dataclass(frozen=True)
class InputFile:
    """One input image: a row of :data:`INPUT_TABLE_SCHEMA`.

    ``relpath`` is ``"/"``-separated; it is what gets mirrored under OUTPUT. ``size``, ``mtime``
    and ``etag`` are None when unknown; ``listing_error`` is None unless the input cannot be
    processed at all.
    """

    uri: str
    path: str
    relpath: str
    size: int | None
    mtime: datetime | None = None
    etag: str | None = None
    listing_error: str | None = None

    @property
    def root(self) -> str:
        """Filesystem path of the folder this file's ``relpath`` is relative to."""
        return self.path[: len(self.path) - len(self.relpath)].rstrip("/") or "/"


def make_input_table(
    uris,
    paths,
    relpaths,
    *,
    sizes: pa.Array | None = None,
    mtimes: pa.Array | None = None,
    etags: pa.Array | None = None,
    listing_errors: pa.Array | None = None,
) -> pa.Table:
    """A table of :data:`INPUT_TABLE_SCHEMA` from its columns; a column not given is all null."""
    rows = len(paths)

    def column(values, type_: pa.DataType) -> pa.Array:
        if values is None:
            return pa.nulls(rows, type_)
        if isinstance(values, pa.ChunkedArray):
            values = one_array(values)
        if not isinstance(values, pa.Array):
            values = pa.array(values, type_)
        return values if values.type == type_ else values.cast(type_)

    return pa.Table.from_arrays(
        [strings(uris), strings(paths), strings(relpaths), column(sizes, pa.int64()),
         column(mtimes, MTIME_TYPE), column(etags, pa.string()), column(listing_errors, pa.string())],
        schema=INPUT_TABLE_SCHEMA,
    )


def unquoted_etags(etags) -> pa.Array | pa.ChunkedArray:
    """ETags without their surrounding double quotes.

    S3 answers ListObjectsV2 and HeadObject with the ETag in quotes and S3 Inventory reports it
    without; one form makes fingerprints from either source comparable. Trimmed (a copy) only
    when some are quoted; a chunked string column (a list file's) keeps its chunks.
    """
    if not (isinstance(etags, pa.ChunkedArray) and etags.type == pa.string()):
        etags = strings(etags)
    quoted = pc.or_(pc.starts_with(etags, '"'), pc.ends_with(etags, '"'))
    return pc.utf8_trim(etags, characters='"') if pc.any(quoted).as_py() else etags


def normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """``["JPG", ".png"]`` -> ``{".jpg", ".png"}``."""
    if isinstance(extensions, str):
        extensions = [extensions]
    result = frozenset(
        ("." + ext.strip().lstrip(".")).lower() for ext in extensions if ext.strip().lstrip(".")
    )
    if not result:
        raise ConfigError("no image extensions given; pass e.g. .jpg, .jpeg, .png")
    return result


def has_extension(name: str, extensions: frozenset[str]) -> bool:
    return posixpath.splitext(name)[1].lower() in extensions
