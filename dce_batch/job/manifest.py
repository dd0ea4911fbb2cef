"""The run manifest: one Parquet row per input, the resume set, the crash journal and the summary.

The manifest is a Parquet dataset under ``OUTPUT/_manifest/``:

* ``part-<run_id>-<n>.parquet``: rows written by the driver as results arrive;
* ``_pending/<run_id>/<worker>-<id>.parquet``: the crash journal. Every actor writes the rows of
  a batch here as soon as the batch's outputs are written, so a driver that is killed loses no
  row: the next run folds a dead run's journal into a ``part-<run_id>-recovered-*`` file (minus
  rows its parts already hold) and deletes it. Names starting with ``_`` are invisible to
  pandas, pyarrow, Spark and DuckDB's ``*.parquet`` glob, so readers never see a row twice;
* ``_run-<run_id>.json``, written last: the run summary, whose presence means the run completed.

Every file is written with the one explicit :data:`MANIFEST_SCHEMA`, so pandas, DuckDB and Spark
read the folder as one table; files written before a column existed read it as null.

Resume is settings-aware: each row carries the canonical JSON of the settings that determined its
output (``settings``) and its sha256 (``settings_sha256``); see :func:`dce_batch.job.plan.output_settings`.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dce_batch.errors import OutputWriteError, StorageError
from dce_batch.storage import MANIFEST_DIR, read_bytes, write_bytes_atomic

__all__ = [
    "MANIFEST_DIR",
    "COMPACT_SCHEMA",
    "MANIFEST_SCHEMA",
    "PENDING_DIR",
    "ManifestRow",
    "RunSummary",
    "latest_ok_rows",
    "read_manifest",
    "recover_pending",
    "rows_to_table",
    "table_to_parquet_bytes",
    "write_manifest_part",
    "write_pending_part",
]

STATUS_OK, STATUS_ERROR, STATUS_SKIPPED = "ok", "error", "skipped"
PENDING_DIR = "_pending"

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
        # Added in 0.2: what made the output, for settings-aware resume.
        pa.field("settings", pa.string()),
        pa.field("settings_sha256", pa.string()),
        pa.field("made_by_run_id", pa.string()),
        pa.field("bit_depth", pa.int8()),
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
    settings: str | None = None
    settings_sha256: str | None = None
    made_by_run_id: str | None = None
    bit_depth: int | None = None


def rows_to_table(rows: Iterable[ManifestRow | Mapping[str, Any]]) -> pa.Table:
    """Rows -> a table with exactly :data:`MANIFEST_SCHEMA` (also for zero rows)."""
    dicts = [vars(r) if isinstance(r, ManifestRow) else dict(r) for r in rows]
    return pa.Table.from_pylist(dicts, schema=MANIFEST_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly the manifest's columns, in order (missing ones null)."""
    columns = []
    for schema_field in MANIFEST_SCHEMA:
        if schema_field.name in table.column_names:
            columns.append(table[schema_field.name].cast(schema_field.type))
        else:
            columns.append(pa.nulls(table.num_rows, schema_field.type))
    return pa.Table.from_arrays(columns, schema=MANIFEST_SCHEMA)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(conform(table), sink, compression="zstd")
    return sink.getvalue()


def _write_rows(fs: pafs.FileSystem, path: str, table: pa.Table, what: str) -> str:
    """Write rows to ``path`` atomically. The manifest lives in OUTPUT, so a part that cannot be
    written (the disk filled up between the images and their rows) is an
    :class:`OutputWriteError`, like an image that cannot be: the run stops, and the rows it could
    not write are not claimed."""
    try:
        write_bytes_atomic(fs, path, table_to_parquet_bytes(table))
    except StorageError as exc:
        raise OutputWriteError(f"OUTPUT cannot be written ({what}): {exc}") from exc
    return path


def write_manifest_part(fs: pafs.FileSystem, manifest_path: str, run_id: str, index: int | str,
                        table: pa.Table) -> str:
    """Write one part file atomically; returns its path (:class:`OutputWriteError` if it cannot)."""
    suffix = f"{index:05d}" if isinstance(index, int) else index
    return _write_rows(fs, f"{manifest_path}/part-{run_id}-{suffix}.parquet", table, "the manifest")


def write_pending_part(fs: pafs.FileSystem, manifest_path: str, run_id: str, worker: str, table: pa.Table) -> str:
    """Journal a batch's rows (an actor calls this once the batch's outputs are written);
    :class:`OutputWriteError` if it cannot be written."""
    safe_worker = "".join(c if c.isalnum() or c in "-_" else "-" for c in worker)[:60] or "worker"
    path = f"{manifest_path}/{PENDING_DIR}/{run_id}/{safe_worker}-{uuid.uuid4().hex[:12]}.parquet"
    return _write_rows(fs, path, table, "the manifest's journal")


def _parquet_files(fs: pafs.FileSystem, folder: str, *, recursive: bool) -> list[str]:
    """Visible ``.parquet`` files in ``folder`` (none if it does not exist); StorageError if unreadable."""
    selector = pafs.FileSelector(folder, allow_not_found=True, recursive=recursive)
    try:
        infos = fs.get_file_info(selector)
    except OSError as exc:
        raise StorageError(f"cannot list the manifest {folder}: {exc}; the run stops rather than "
                           "redo work an unreadable manifest may record") from exc
    base = folder.rstrip("/") + "/"
    files = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        relative = info.path[len(base):] if info.path.startswith(base) else info.base_name
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue  # temp files, and the journal when reading the parts
        files.append(info.path)
    return sorted(files)


# Columns with few distinct values (run ids, model hashes, settings JSON): read dictionary-encoded
# by the driver, a million rows take a third of the memory (benchmarks/bench_planning.py).
_REPETITIVE = frozenset({"run_id", "status", "error", "input_format", "output_format", "model_name", "model_sha256",
                         "variant", "precision", "worker", "settings", "settings_sha256", "made_by_run_id"})
COMPACT_SCHEMA = pa.schema([
    pa.field(f.name, pa.dictionary(pa.int32(), pa.string()), f.nullable) if f.name in _REPETITIVE else f
    for f in MANIFEST_SCHEMA
])


def _read_files(fs: pafs.FileSystem, files: list[str], columns: list[str] | None, compact: bool = False) -> pa.Table:
    full = COMPACT_SCHEMA if compact else MANIFEST_SCHEMA
    schema = full if columns is None else pa.schema([full.field(c) for c in columns])
    if not files:
        return schema.empty_table()
    tables = []
    for path in files:
        # Whole files through read_bytes (retried, also for the tiny-object case pyarrow's own
        # reader does not retry), then parsed in memory.
        data = read_bytes(fs, path)
        try:
            table = pq.read_table(pa.BufferReader(data), read_dictionary=sorted(_REPETITIVE) if compact else None)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read the manifest part {path}: {exc}; fix or move the damaged file, "
                               "or start over with --overwrite") from exc
        # Files written before a column existed read it as null; every part gets one schema.
        tables.append(_to_schema(table, full, columns))
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _to_schema(table: pa.Table, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    names = columns or schema.names
    arrays = []
    for name in names:
        target = schema.field(name).type
        if name in table.column_names:
            column = table[name]
            if column.type != target:
                column = column.cast(target.value_type if pa.types.is_dictionary(target) else target)
                if pa.types.is_dictionary(target):
                    column = column.dictionary_encode()
            arrays.append(column)
        else:
            arrays.append(pa.nulls(table.num_rows, target))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in names]))


def read_manifest(fs: pafs.FileSystem, manifest_path: str, columns: list[str] | None = None, *,
                  compact: bool = False) -> pa.Table:
    """All part files under ``manifest_path`` as one table (empty, with the schema, if none).

    A missing folder is an empty manifest; a folder or file that cannot be listed or read raises
    StorageError (never "no manifest": that would make a resume redo everything). ``compact``
    reads the repetitive string columns dictionary-encoded (:data:`COMPACT_SCHEMA`).
    """
    return _read_files(fs, _parquet_files(fs, manifest_path, recursive=False), columns, compact)


def read_pending(fs: pafs.FileSystem, manifest_path: str) -> dict[str, pa.Table]:
    """The crash journal: run_id -> its journalled rows."""
    pending_root = f"{manifest_path}/{PENDING_DIR}"
    selector = pafs.FileSelector(pending_root, allow_not_found=True, recursive=True)
    try:
        infos = fs.get_file_info(selector)
    except OSError as exc:
        raise StorageError(f"cannot list the manifest journal {pending_root}: {exc}") from exc
    by_run: dict[str, list[str]] = {}
    for info in infos:
        if info.type == pafs.FileType.File and info.path.endswith(".parquet") and not info.base_name.startswith("."):
            run_id = posixpath.basename(posixpath.dirname(info.path))
            by_run.setdefault(run_id, []).append(info.path)
    return {run_id: _read_files(fs, sorted(files), None) for run_id, files in by_run.items()}


def recover_pending(fs: pafs.FileSystem, manifest_path: str, *, skip_run: str | None = None,
                    parts: pa.Table | None = None) -> int:
    """Fold the journals of runs that died into part files; returns the number of rows recovered.

    Rows already in a part (same run_id and input_uri) are not repeated; of journal rows for the
    same input (a batch retried after its actor died) the latest wins. ``skip_run`` (the run in
    progress) is left alone. ``parts`` may pass the already-read parts to save a read.
    """
    journals = read_pending(fs, manifest_path)
    recovered = 0
    for run_id, rows in journals.items():
        if run_id == skip_run:
            continue
        if parts is None:
            parts = read_manifest(fs, manifest_path, columns=["run_id", "input_uri"])
        known = parts.filter(pc.equal(parts["run_id"], run_id))["input_uri"]
        fresh = rows.filter(pc.invert(pc.is_in(rows["input_uri"], value_set=known.combine_chunks())))
        fresh = _latest_per(fresh, "input_uri")
        if fresh.num_rows:
            write_manifest_part(fs, manifest_path, run_id, f"recovered-{uuid.uuid4().hex[:8]}", fresh)
            recovered += fresh.num_rows
        delete_pending(fs, manifest_path, run_id)
    return recovered


def delete_pending(fs: pafs.FileSystem, manifest_path: str, run_id: str) -> None:
    """Delete a run's journal (its rows are in part files now)."""
    folder = f"{manifest_path}/{PENDING_DIR}/{run_id}"
    try:
        fs.delete_dir(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot delete the journal {folder}: {exc}") from exc
    if isinstance(fs, pafs.LocalFileSystem):  # the journal folder itself, once no run uses it
        try:
            os.rmdir(f"{manifest_path}/{PENDING_DIR}")
        except OSError:
            pass  # another run's journal is in it


def _latest_per(table: pa.Table, key: str) -> pa.Table:
    """One row per ``key``: the one with the latest ``finished_at``."""
    if table.num_rows == 0:
        return table
    ordered = table.sort_by([(key, "ascending"), ("finished_at", "descending")])
    keys = ordered[key].combine_chunks()
    if len(keys) < 2:
        return ordered
    first = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))
    mask = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return ordered.filter(mask)


def latest_ok_rows(manifest: pa.Table) -> pa.Table:
    """The latest ``ok`` row of each output: what made the file now at ``output_uri``."""
    ok = manifest.filter(pc.equal(manifest["status"].cast(pa.string()), STATUS_OK))
    if ok.num_rows == 0 or pc.count_distinct(ok["output_uri"]).as_py() == ok.num_rows:
        return ok  # the usual case: each output made once (a hash count, not a sort)
    return _latest_per(ok, "output_uri")


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
    timings: dict[str, float] = field(default_factory=dict)
    report: str = ""  # URI of the HTML report, when one was built (after this summary was written)

    def add(self, table: pa.Table) -> None:
        """Fold a batch of manifest rows into the counts."""
        statuses = table["status"].cast(pa.string()).to_pylist()
        self.total += len(statuses)
        self.ok += statuses.count(STATUS_OK)
        self.error += statuses.count(STATUS_ERROR)
        self.skipped += statuses.count(STATUS_SKIPPED)
        # Bytes of the inputs this run read (skipped rows repeat an earlier run's numbers).
        status = table["status"].cast(pa.string())
        processed = table.filter(pc.not_equal(status, STATUS_SKIPPED))
        self.bytes_in += int(pc.sum(processed["bytes_in"]).as_py() or 0)
        self.bytes_out += int(pc.sum(processed["bytes_out"]).as_py() or 0)
        ok = table.filter(pc.equal(status, STATUS_OK))
        pixels = pc.sum(pc.multiply(ok["width"].cast(pa.int64()), ok["height"].cast(pa.int64()))).as_py()
        self.megapixels += (pixels or 0) / 1e6
        if STATUS_ERROR in statuses:
            errors = table.filter(pc.equal(table["status"].cast(pa.string()), STATUS_ERROR))
            for uri, message in zip(errors["input_uri"].to_pylist(), errors["error"].cast(pa.string()).to_pylist()):
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
