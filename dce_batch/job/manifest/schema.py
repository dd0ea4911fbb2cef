"""The manifest's rows: one explicit Arrow schema, so every part reads as one table anywhere.

Each row is one input's outcome in one run. Paths are relative, so OUTPUT and INPUT can move or
be remounted and resume still finds what was done:

* ``input_relpath``: the input's path under INPUT (for list files: named from the entry, see
  :func:`dce_batch.storage.list_inputs_table`); ``input_uri`` is where it was read, for people;
* ``output_relpath``: the output's path under OUTPUT (null when nothing was written);
* ``input_size``, ``input_mtime``, ``input_etag``: the input's fingerprint from the listing, so a
  replaced input is redone.

Every part is written with :data:`MANIFEST_SCHEMA` and carries ``dce_batch.manifest`` =
:data:`FORMAT` in its Parquet metadata, so pandas, DuckDB and Spark read the folder as one table
and a reader can tell this format from an earlier one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FORMAT",
    "MANIFEST_SCHEMA",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_SKIPPED",
    "ManifestRow",
    "conform",
    "parquet_bytes",
    "rows_to_table",
]

#: The manifest format this version writes (in every part's metadata and every commit record).
FORMAT = "dce_batch.manifest/2"
FORMAT_KEY = b"dce_batch.manifest"

STATUS_OK, STATUS_ERROR, STATUS_SKIPPED = "ok", "error", "skipped"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("input_relpath", pa.string(), nullable=False),
        pa.field("input_uri", pa.string(), nullable=False),
        pa.field("output_relpath", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("input_format", pa.string()),
        pa.field("output_format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bit_depth", pa.int8()),
        pa.field("bytes_in", pa.int64()),
        pa.field("bytes_out", pa.int64()),
        pa.field("input_size", pa.int64()),
        pa.field("input_mtime", pa.timestamp("ns", tz="UTC")),
        pa.field("input_etag", pa.string()),
        pa.field("mean_luma_in", pa.float32()),
        pa.field("mean_luma_out", pa.float32()),
        pa.field("model_name", pa.string()),
        pa.field("model_sha256", pa.string()),
        pa.field("strength", pa.float32()),
        pa.field("variant", pa.string()),
        pa.field("precision", pa.string()),
        pa.field("tiled", pa.bool_()),
        pa.field("settings", pa.string()),
        pa.field("settings_sha256", pa.string()),
        pa.field("made_by_run_id", pa.string()),
        pa.field("duration_ms", pa.float32()),
        pa.field("worker", pa.string()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={FORMAT_KEY: FORMAT.encode()},
)


@dataclass
class ManifestRow:
    """One input's outcome. Field names are the manifest's column names."""

    run_id: str
    input_relpath: str
    input_uri: str
    status: str
    output_relpath: str | None = None
    error: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    input_size: int | None = None
    input_mtime: datetime | None = None
    input_etag: str | None = None
    mean_luma_in: float | None = None
    mean_luma_out: float | None = None
    model_name: str | None = None
    model_sha256: str | None = None
    strength: float | None = None
    variant: str | None = None
    precision: str | None = None
    tiled: bool | None = None
    settings: str | None = None
    settings_sha256: str | None = None
    made_by_run_id: str | None = None
    duration_ms: float | None = None
    worker: str | None = None
    finished_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def rows_to_table(rows: Iterable[ManifestRow | Mapping[str, Any]]) -> pa.Table:
    """Rows -> a table with exactly :data:`MANIFEST_SCHEMA` (also for zero rows)."""
    dicts = [vars(r) if isinstance(r, ManifestRow) else dict(r) for r in rows]
    return pa.Table.from_pylist(dicts, schema=MANIFEST_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly the manifest's columns, in order (missing ones null)."""
    columns = []
    for schema_field in MANIFEST_SCHEMA:
        if schema_field.name in table.column_names:
            column = table[schema_field.name]
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            columns.append(column.cast(schema_field.type))
        else:
            columns.append(pa.nulls(table.num_rows, schema_field.type))
    return pa.Table.from_arrays(columns, schema=MANIFEST_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a Parquet file in the manifest's schema (zstd)."""
    sink = io.BytesIO()
    pq.write_table(conform(table), sink, compression="zstd")
    return sink.getvalue()


def is_current_format(schema: pa.Schema) -> bool:
    """Whether a part's schema says it was written in :data:`FORMAT`."""
    return (schema.metadata or {}).get(FORMAT_KEY) == FORMAT.encode()
