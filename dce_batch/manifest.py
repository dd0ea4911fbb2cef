"""The run manifest: one Parquet row per input, the resume set, and the run summary.

The manifest is a Parquet dataset under ``OUTPUT/_manifest/``: ``part-<run_id>-<n>.parquet``
files written as results arrive (so an interrupted run keeps what it finished) and, last,
``_run-<run_id>.json`` whose presence means the run completed. Every file is written with the
one explicit :data:`MANIFEST_SCHEMA`, so pandas, DuckDB and Spark read the folder as one table
(a null-typed column in one file and a string column in another is what usually breaks that).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .storage import MANIFEST_DIR, write_bytes_atomic

__all__ = [
    "MANIFEST_DIR",
    "MANIFEST_SCHEMA",
    "ManifestRow",
    "RunSummary",
    "completed_inputs",
    "read_manifest",
    "rows_to_table",
    "table_to_parquet_bytes",
]

STATUS_OK, STATUS_ERROR, STATUS_SKIPPED = "ok", "error", "skipped"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("input_uri", pa.string(), nullable=False),
        pa.field("output_uri", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("input_format", pa.string()),
        pa.field("output_format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes_in", pa.int64()),
        pa.field("bytes_out", pa.int64()),
        pa.field("mean_luma_in", pa.float32()),
        pa.field("mean_luma_out", pa.float32()),
        pa.field("model_name", pa.string()),
        pa.field("model_sha256", pa.string()),
        pa.field("strength", pa.float32()),
        pa.field("variant", pa.string()),
        pa.field("precision", pa.string()),
        pa.field("tiled", pa.bool_()),
        pa.field("duration_ms", pa.float32()),
        pa.field("worker", pa.string()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass
class ManifestRow:
    """One input's outcome. Field names are the manifest's column names."""

    run_id: str
    input_uri: str
    status: str
    output_uri: str | None = None
    error: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    width: int | None = None
    height: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    mean_luma_in: float | None = None
    mean_luma_out: float | None = None
    model_name: str | None = None
    model_sha256: str | None = None
    strength: float | None = None
    variant: str | None = None
    precision: str | None = None
    tiled: bool | None = None
    duration_ms: float | None = None
    worker: str | None = None
    finished_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def rows_to_table(rows: Iterable[ManifestRow | Mapping[str, Any]]) -> pa.Table:
    """Rows -> a table with exactly :data:`MANIFEST_SCHEMA` (also for zero rows)."""
    dicts = [vars(r) if isinstance(r, ManifestRow) else dict(r) for r in rows]
    return pa.Table.from_pylist(dicts, schema=MANIFEST_SCHEMA)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table.cast(MANIFEST_SCHEMA), sink, compression="zstd")
    return sink.getvalue()


def write_manifest_part(fs: pafs.FileSystem, manifest_path: str, run_id: str, index: int, table: pa.Table) -> str:
    """Write one part file atomically; returns its path."""
    path = f"{manifest_path}/part-{run_id}-{index:05d}.parquet"
    write_bytes_atomic(fs, path, table_to_parquet_bytes(table))
    return path


def read_manifest(fs: pafs.FileSystem, manifest_path: str, columns: list[str] | None = None) -> pa.Table:
    """All part files under ``manifest_path`` as one table (empty, with the schema, if none)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(manifest_path, allow_not_found=True, recursive=False))
    except OSError:
        infos = []
    parts = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                   and not i.base_name.startswith("."))
    schema = MANIFEST_SCHEMA if columns is None else pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])
    if not parts:
        return schema.empty_table()
    tables = [pq.read_table(p, filesystem=fs, columns=columns, schema=schema) for p in parts]
    return pa.concat_tables(tables)


def completed_inputs(manifest: pa.Table, existing_outputs: set[str]) -> set[str]:
    """Input URIs with an ``ok`` row whose output still exists: what a resumed run skips."""
    if manifest.num_rows == 0:
        return set()
    ok = manifest.filter(pc.equal(manifest["status"], STATUS_OK))
    return {
        input_uri
        for input_uri, output_uri in zip(ok["input_uri"].to_pylist(), ok["output_uri"].to_pylist())
        if output_uri in existing_outputs
    }


@dataclass
class RunSummary:
    """Counts and settings of one run; written as ``_manifest/_run-<run_id>.json``."""

    run_id: str
    input: str
    output: str
    started_at: str
    finished_at: str = ""
    elapsed_s: float = 0.0
    total: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    images_per_s: float = 0.0
    megapixels_per_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    megapixels: float = 0.0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    first_errors: list[dict[str, str]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        """Fold a batch of manifest rows into the counts."""
        statuses = table["status"].to_pylist()
        self.total += len(statuses)
        self.ok += statuses.count(STATUS_OK)
        self.error += statuses.count(STATUS_ERROR)
        self.skipped += statuses.count(STATUS_SKIPPED)
        self.bytes_in += int(pc.sum(table["bytes_in"]).as_py() or 0)
        self.bytes_out += int(pc.sum(table["bytes_out"]).as_py() or 0)
        ok = table.filter(pc.equal(table["status"], STATUS_OK))
        pixels = pc.sum(pc.multiply(ok["width"].cast(pa.int64()), ok["height"].cast(pa.int64()))).as_py()
        self.megapixels += (pixels or 0) / 1e6
        if STATUS_ERROR in statuses:
            errors = table.filter(pc.equal(table["status"], STATUS_ERROR))
            for uri, message in zip(errors["input_uri"].to_pylist(), errors["error"].to_pylist()):
                kind = (message or "Error").split(":", 1)[0]
                self.errors_by_type[kind] = self.errors_by_type.get(kind, 0) + 1
                if len(self.first_errors) < 20:
                    self.first_errors.append({"input_uri": uri, "error": message or ""})

    def to_json(self) -> str:
        return json.dumps(vars(self), indent=2, default=str)

    def write(self, fs: pafs.FileSystem, manifest_path: str) -> str:
        # A leading "_" keeps pandas/pyarrow/Spark from reading it as part of the Parquet dataset.
        path = f"{manifest_path}/_run-{self.run_id}.json"
        write_bytes_atomic(fs, path, self.to_json().encode())
        return path

    def table(self) -> str:
        """The final summary as a small text table for the terminal."""
        lines = [
            f"run {self.run_id}: {self.input} -> {self.output}",
            f"  {'inputs':<14}{self.total:>10}",
            f"  {'ok':<14}{self.ok:>10}",
            f"  {'skipped':<14}{self.skipped:>10}   (done by an earlier run)",
            f"  {'error':<14}{self.error:>10}",
            f"  {'elapsed':<14}{self.elapsed_s:>10.1f} s",
            f"  {'throughput':<14}{self.images_per_s:>10.2f} images/s ({self.megapixels_per_s:.2f} MP/s)",
            f"  {'bytes in/out':<14}{self.bytes_in:>10,} / {self.bytes_out:,}",
        ]
        for kind, count in sorted(self.errors_by_type.items()):
            lines.append(f"  {kind:<24}{count:>6}")
        for entry in self.first_errors[:5]:
            lines.append(f"    {entry['input_uri']}: {entry['error']}")
        return "\n".join(lines)
