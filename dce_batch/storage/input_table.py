"""The table of inputs every listing returns: its columns, how it is built, and :class:`InputFile`,
the same row as a Python object for small callers."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from dce_batch.errors import ConfigError
from dce_batch.storage.arrow_paths import strings

__all__ = ["INPUT_TABLE_SCHEMA", "InputFile", "make_input_table"]

#: Columns of :func:`~dce_batch.storage.list_inputs_table`.
INPUT_TABLE_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # path in the returned filesystem
        pa.field("relpath", pa.string(), nullable=False),  # "/"-separated, under the input root
        pa.field("size", pa.int64()),  # bytes; null when unknown (list files are not stat-ed)
    ]
)


@dataclass(frozen=True)
class InputFile:
    """One input image.

    ``relpath`` is ``"/"``-separated and relative to the input root; it is what gets mirrored
    under OUTPUT. ``size`` is None when unknown (list files are not stat-ed, to stay fast).
    """

    uri: str
    path: str
    relpath: str
    size: int | None

    @property
    def root(self) -> str:
        """Filesystem path of the input root this file's ``relpath`` is relative to."""
        return self.path[: len(self.path) - len(self.relpath)].rstrip("/") or "/"


def make_input_table(uris, paths, relpaths, *, sizes: pa.Array | None = None) -> pa.Table:
    """A table of :data:`INPUT_TABLE_SCHEMA` from its columns; sizes not given are null."""
    if sizes is None:
        sizes = pa.nulls(len(paths), pa.int64())
    return pa.Table.from_arrays(
        [strings(uris), strings(paths), strings(relpaths), sizes.cast(pa.int64())],
        schema=INPUT_TABLE_SCHEMA,
    )


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
