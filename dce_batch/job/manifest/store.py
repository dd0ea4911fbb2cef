"""The ``_manifest/`` folder under OUTPUT: parts, commit records, run summaries and the lease.

    OUTPUT/_manifest/
      part-<run>-<writer>-<n>.parquet   rows, each written once: by a worker (rolling parts of the
                                        images it finished) or by the driver (planning rows)
      _commits/<run>.json               a run's commit record: its parts and counts, written last
      _run-<run>.json                   a finished run's summary (counts, timings, settings)
      _lease.json                       the run that holds OUTPUT right now

A part is complete or absent (written atomically). A part no commit record lists was written by
a run that died before committing: the next run (which holds the lease, so no run that wrote it
is alive) reads it like any other and lists it in its own commit ("adopts" it), so its rows are
neither lost nor written again. Names starting with ``_`` are invisible to pandas, pyarrow, Spark
and DuckDB's ``*.parquet`` glob, which read the parts as one table.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dce_batch.errors import LegacyManifestError, ManifestError, OutputWriteError, StorageError
from dce_batch.job.manifest.schema import FORMAT, MANIFEST_SCHEMA, is_current_format, parquet_bytes
from dce_batch.storage import MANIFEST_DIR, Location, read_bytes, temp_tag, write_bytes_atomic
from dce_batch.storage.arrow_paths import has_duplicates
from dce_batch.storage.outages import call_through_outages, outage_wait_s

__all__ = ["COMMITS_DIR", "LEASE_NAME", "CommitRecord", "ManifestState", "ManifestStore", "PartInfo", "part_name"]

COMMITS_DIR = "_commits"
LEASE_NAME = "_lease.json"
LEGACY_JOURNAL_DIR = "_pending"

# Columns with few distinct values (run ids, model hashes, settings JSON): read dictionary-encoded
# by the driver, a million rows take a third of the memory (benchmarks/bench_planning.py).
REPETITIVE_COLUMNS = frozenset({"run_id", "status", "error", "input_format", "output_format", "model_name",
                                "model_sha256", "variant", "precision", "worker", "settings", "settings_sha256",
                                "made_by_run_id"})
COMPACT_SCHEMA = pa.schema([
    pa.field(f.name, pa.dictionary(pa.int32(), pa.string()), f.nullable) if f.name in REPETITIVE_COLUMNS else f
    for f in MANIFEST_SCHEMA
])

_WRITER_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def part_name(run_id: str, writer: str, sequence: int) -> str:
    """``part-<run>-<writer>-<n>.parquet``: the same writer and sequence always name the same file,
    so writing a part twice (a worker and, after it, the driver) leaves one file, not two."""
    if not _WRITER_NAME.match(writer):
        raise ValueError(f"writer names are 1-64 letters, digits or '_', got {writer!r}")
    return f"part-{run_id}-{writer}-{sequence:05d}.parquet"


def run_of_part(name: str) -> str:
    """The run id in a part's name."""
    return name[len("part-"):].rsplit("-", 2)[0]


@dataclass(frozen=True)
class PartInfo:
    name: str
    rows: int


@dataclass
class CommitRecord:
    """What a run committed: the parts that hold its rows (and those of dead runs it adopted)."""

    run_id: str
    status: str  # finished | interrupted | failed | upgraded | repaired
    parts: list[PartInfo]
    counts: dict[str, int] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)
    committed_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> "CommitRecord":
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} commit record")
            parts = [PartInfo(str(p["name"]), int(p["rows"])) for p in raw["parts"]]
            return cls(run_id=str(raw["run_id"]), status=str(raw["status"]), parts=parts,
                       counts={str(k): int(v) for k, v in dict(raw.get("counts") or {}).items()},
                       adopted=[str(a) for a in raw.get("adopted") or []],
                       committed_at=str(raw.get("committed_at", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"the commit record {where} cannot be read ({exc}); run `dce-batch manifest repair "
                                "OUTPUT` to rebuild the manifest from its parts") from exc


@dataclass
class ManifestState:
    """What ``_manifest/`` holds, read once at the start of a run."""

    rows: pa.Table  # every part's rows (compact schema), one row per run and input
    committed: list[PartInfo]
    uncommitted: list[PartInfo]  # parts of runs that died before committing: to adopt
    commits: list[CommitRecord]

    @property
    def runs(self) -> list[str]:
        """Every run this OUTPUT's manifest knows: those that committed, and those whose parts are here."""
        parts = self.committed + self.uncommitted
        return sorted({c.run_id for c in self.commits} | {run_of_part(p.name) for p in parts})


class ManifestStore:
    """Reads and writes one OUTPUT's ``_manifest/`` folder (local disk or object storage)."""

    def __init__(self, filesystem: pafs.FileSystem, path: str, uri: str | None = None) -> None:
        self.filesystem, self.path = filesystem, path.rstrip("/")
        self.uri = (uri or path).rstrip("/")

    @classmethod
    def of(cls, output: Location) -> "ManifestStore":
        return cls(output.filesystem, output.child(MANIFEST_DIR), f"{output.uri.rstrip('/')}/{MANIFEST_DIR}")

    # -- paths -------------------------------------------------------------------------------

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    @property
    def lease_path(self) -> str:
        return self.file(LEASE_NAME)

    def summary_path(self, run_id: str) -> str:
        return self.file(f"_run-{run_id}.json")

    def commit_path(self, name: str) -> str:
        return f"{self.path}/{COMMITS_DIR}/{name}.json"

    # -- listing -----------------------------------------------------------------------------

    def _infos(self, folder: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
        try:
            return call_through_outages(lambda: self.filesystem.get_file_info(selector),
                                        wait_s=outage_wait_s(self.filesystem), what=f"listing the manifest {self.uri}")
        except OSError as exc:
            raise StorageError(f"cannot list the manifest {self.uri}: {exc}; the run stops rather than redo work an "
                               "unreadable manifest may record") from exc

    def part_names(self) -> list[str]:
        return sorted(info.base_name for info in self._infos(self.path)
                      if info.type == pafs.FileType.File and info.base_name.startswith("part-")
                      and info.base_name.endswith(".parquet"))

    def has_legacy_journal(self) -> bool:
        return any(info.base_name == LEGACY_JOURNAL_DIR and info.type == pafs.FileType.Directory
                   for info in self._infos(self.path))

    def commit_names(self) -> list[str]:
        return sorted(info.base_name[: -len(".json")] for info in self._infos(f"{self.path}/{COMMITS_DIR}")
                      if info.type == pafs.FileType.File and info.base_name.endswith(".json"))

    # -- reading -----------------------------------------------------------------------------

    def read_commits(self) -> list[CommitRecord]:
        return [CommitRecord.from_json(read_bytes(self.filesystem, self.commit_path(name)).decode("utf-8", "replace"),
                                       f"{self.uri}/{COMMITS_DIR}/{name}.json")
                for name in self.commit_names()]

    def read_part(self, name: str, *, compact: bool = False, allow_legacy: bool = False) -> pa.Table:
        data = read_bytes(self.filesystem, self.file(name))
        try:
            table = pq.read_table(pa.BufferReader(data), read_dictionary=sorted(REPETITIVE_COLUMNS) if compact else None)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestError(f"the manifest part {self.uri}/{name} cannot be read ({exc}); run `dce-batch manifest "
                                f"repair {self.uri.rsplit('/', 1)[0]}` to set it aside and rebuild the manifest from the "
                                "other parts (the next run then redoes the inputs it described)") from exc
        if not allow_legacy and not is_current_format(table.schema):
            raise _legacy_error(self.uri)
        return table if allow_legacy else _to_schema(table, COMPACT_SCHEMA if compact else MANIFEST_SCHEMA)

    def state(self, *, compact: bool = True) -> ManifestState:
        """Everything under ``_manifest/``: commit records, committed and uncommitted parts, and
        their rows. Raises :class:`LegacyManifestError` for an earlier format and
        :class:`ManifestError` for a damaged or inconsistent one."""
        names = self.part_names()
        if self.has_legacy_journal():
            raise _legacy_error(self.uri)
        commits = self.read_commits()
        listed = {part.name: part for commit in commits for part in commit.parts}
        present = set(names)
        missing = sorted(set(listed) - present)
        if missing:
            raise ManifestError(
                f"the manifest {self.uri} lost {len(missing)} part(s) its commit records list (e.g. {missing[0]}); the "
                f"rows in them are gone. Run `dce-batch manifest repair {self.uri.rsplit('/', 1)[0]}` to rebuild the "
                "manifest from the parts that are there; the next run then redoes what the lost parts described")
        tables = {name: self.read_part(name, compact=compact) for name in names}
        schema = COMPACT_SCHEMA if compact else MANIFEST_SCHEMA
        rows = (pa.concat_tables(list(tables.values()), promote_options="permissive") if tables
                else schema.empty_table())
        committed = [listed[n] for n in names if n in listed]
        uncommitted = [PartInfo(n, tables[n].num_rows) for n in names if n not in listed]
        return ManifestState(rows=_one_row_per_run_and_input(rows), committed=committed, uncommitted=uncommitted,
                             commits=commits)

    # -- writing -----------------------------------------------------------------------------

    def write_part(self, name: str, table: pa.Table) -> PartInfo:
        """Write a part atomically (:class:`OutputWriteError` if OUTPUT cannot take it: the rows of
        images whose part is not written are not claimed, and those images are redone)."""
        self._write(self.file(name), parquet_bytes(table), "the manifest", run_of_part(name))
        return PartInfo(name, table.num_rows)

    def delete_part(self, name: str) -> None:
        try:
            self.filesystem.delete_file(self.file(name))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputWriteError(f"OUTPUT cannot be written (removing the manifest part {name}): {exc}") from exc

    def write_commit(self, record: CommitRecord, name: str | None = None) -> str:
        path = self.commit_path(name or record.run_id)
        self._write(path, record.to_json().encode(), "the manifest's commit record", record.run_id)
        return path

    def write_summary(self, run_id: str, text: str) -> str:
        path = self.summary_path(run_id)
        self._write(path, text.encode(), "the run summary", run_id)
        return path

    def _write(self, path: str, data: bytes, what: str, run_id: str) -> None:
        try:
            write_bytes_atomic(self.filesystem, path, data, temp_tag=temp_tag(run_id))
        except StorageError as exc:
            raise OutputWriteError(f"OUTPUT cannot be written ({what}): {exc}") from exc

    def delete_all(self, *, keep: Iterable[str] = (LEASE_NAME,)) -> None:
        """Delete everything under ``_manifest/`` but ``keep`` (``--overwrite``: a new history)."""
        kept = set(keep)
        for info in self._infos(self.path):
            if info.base_name in kept:
                continue
            try:
                if info.type == pafs.FileType.Directory:
                    self.filesystem.delete_dir(info.path)
                else:
                    self.filesystem.delete_file(info.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise OutputWriteError(f"cannot replace the manifest {self.uri} (--overwrite): {exc}") from exc


def _legacy_error(uri: str) -> LegacyManifestError:
    output = uri.rsplit("/", 1)[0]
    return LegacyManifestError(
        f"OUTPUT {output} holds a manifest written by an earlier version of dce_batch (absolute output URIs, rows "
        f"journalled twice). Upgrade it once with `dce-batch manifest upgrade {output}` (it rewrites the manifest "
        "with paths relative to OUTPUT; no image is touched), then run again")


def _to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    arrays = []
    for target in schema:
        if target.name in table.column_names:
            column = table[target.name]
            if column.type != target.type:
                column = column.cast(target.type.value_type if pa.types.is_dictionary(target.type) else target.type)
                if pa.types.is_dictionary(target.type):
                    column = column.dictionary_encode()
            arrays.append(column)
        else:
            arrays.append(pa.nulls(table.num_rows, target.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _one_row_per_run_and_input(table: pa.Table) -> pa.Table:
    """The rows with each (run, input) once: the latest. A run writes one row per input; only a
    batch retried after its worker wrote its part but before the result came back can give two.
    An input is its name and its URI: two entries of a list file may share a name
    (``input_relpath``), and the one refused for it keeps its row."""
    if table.num_rows < 2:
        return table
    # Rows of one run are keyed by their input paths as they are; only rows of several runs need a
    # key joined from run id and path (a new column of a million strings).
    if len(pc.unique(table["run_id"])) == 1:
        keys = table["input_relpath"]
    else:
        keys = pc.binary_join_element_wise(table["run_id"].cast(pa.string()), table["input_relpath"], "\x00")
    if not has_duplicates(keys):
        return table  # the usual case: a hash pass, no sort
    keys = pc.binary_join_element_wise(keys, table["input_uri"], "\x00")
    if not has_duplicates(keys):
        return table
    indices = pa.array(range(table.num_rows), pa.int64())
    order = pa.table({"k": keys, "t": table["finished_at"], "i": indices}).sort_by([("k", "ascending"),
                                                                                 ("t", "descending")])
    sorted_keys = order["k"].combine_chunks()
    first = pc.not_equal(sorted_keys.slice(1), sorted_keys.slice(0, len(sorted_keys) - 1))
    keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return table.take(order["i"].filter(keep))
