"""``dce-batch manifest upgrade|repair|unlock OUTPUT``: keeping a manifest usable.

* :func:`upgrade` rewrites a manifest of the earlier format (absolute output URIs; rows written to
  a worker journal under ``_pending/`` and again to the driver's parts) into this one: paths
  relative to OUTPUT, one part per earlier run, one commit record. No image is touched. Runs once.
* :func:`repair` is for a damaged manifest (a part or commit record that cannot be read, a part a
  commit lists that is gone): damaged parts are moved to ``_manifest/_damaged/`` (kept, never
  deleted), and one commit record replaces all others, listing every part that reads (the records
  it replaces, readable or not, are kept in ``_damaged/`` too, named ``commit-<run>.json``). Nothing that was readable is lost;
  the inputs the damaged parts described are redone by the next run, which overwrites their
  outputs (still one output each).
* unlock: see :func:`dce_batch.job.manifest.lease.break_lease`.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import LegacyManifestError, ManifestError, StorageError
from dce_batch.job.manifest.schema import MANIFEST_SCHEMA, is_current_format
from dce_batch.job.manifest.store import (
    LEGACY_JOURNAL_DIR,
    CommitRecord,
    ManifestStore,
    PartInfo,
    part_name,
)
from dce_batch.storage import Location, read_bytes

__all__ = ["RepairResult", "UpgradeResult", "repair", "upgrade"]

DAMAGED_DIR = "_damaged"


@dataclass
class UpgradeResult:
    runs: int = 0
    rows: int = 0
    journal_rows: int = 0  # rows only the earlier format's journal held (a driver killed mid-run)
    unplaced: int = 0  # rows whose output could not be placed under OUTPUT (they will be redone)
    parts: list[str] = field(default_factory=list)


@dataclass
class RepairResult:
    parts: int = 0
    rows: int = 0
    damaged: list[str] = field(default_factory=list)
    outputs_without_rows: int = 0


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


def _summaries(store: ManifestStore) -> dict[str, dict]:
    found = {}
    for info in store._infos(store.path):  # noqa: SLF001 - the store's own listing
        if info.type == pafs.FileType.File and info.base_name.startswith("_run-") and info.base_name.endswith(".json"):
            try:
                raw = json.loads(read_bytes(store.filesystem, info.path))
            except (ValueError, StorageError):
                continue
            if isinstance(raw, dict):
                found[info.base_name[len("_run-"):-len(".json")]] = raw
    return found


def _relative(uri: str | None, roots: list[str]) -> str | None:
    if not uri:
        return None
    for root in roots:
        prefix = root.rstrip("/") + "/"
        if root and uri.startswith(prefix):
            return uri[len(prefix):]
    return None


def upgrade(output: Location, *, log: Callable[[str], None] = lambda line: None) -> UpgradeResult:
    """Rewrite OUTPUT's earlier-format manifest in this format (see the module docstring)."""
    store = ManifestStore.of(output)
    result = UpgradeResult()
    legacy = []
    for name in store.part_names():
        table = store.read_part(name, allow_legacy=True)
        if not is_current_format(table.schema):
            legacy.append((name, table))
    journal_root = store.file(LEGACY_JOURNAL_DIR)
    journals: dict[str, list[pa.Table]] = {}
    if store.has_legacy_journal():
        infos = output.filesystem.get_file_info(pafs.FileSelector(journal_root, recursive=True))
        for info in infos:
            if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
                run = posixpath.basename(posixpath.dirname(info.path))
                journals.setdefault(run, []).append(store.read_part(info.path[len(store.path) + 1:], allow_legacy=True))
    if not legacy and not journals:
        log(f"{output.uri}: nothing to upgrade (the manifest is already in this format, or empty)")
        return result
    summaries = _summaries(store)
    by_run: dict[str, list[pa.Table]] = {}
    for _, table in legacy:
        for run in pc.unique(table["run_id"].cast(pa.string())).to_pylist():
            by_run.setdefault(run, []).append(table.filter(pc.equal(table["run_id"].cast(pa.string()), run)))
    for run, tables in journals.items():
        rows = pa.concat_tables(tables, promote_options="permissive")
        known = set()
        for table in by_run.get(run, []):
            known.update(table["input_uri"].to_pylist())
        fresh = rows.filter(pc.invert(pc.is_in(rows["input_uri"], value_set=pa.array(sorted(known), pa.string()))))
        if fresh.num_rows:
            # Latest row per input (a batch retried after its worker died was journalled twice).
            fresh = fresh.sort_by([("input_uri", "ascending"), ("finished_at", "descending")])
            uris = fresh["input_uri"].to_pylist()
            keep = [i for i in range(len(uris)) if i == 0 or uris[i] != uris[i - 1]]
            fresh = fresh.take(pa.array(keep, pa.int64()))
            result.journal_rows += fresh.num_rows
            by_run.setdefault(run, []).append(fresh)
    written = []
    for run in sorted(by_run):
        rows = pa.concat_tables(by_run[run], promote_options="permissive").to_pylist()
        # Where OUTPUT was for this run, then for any run (a run that died wrote no summary), then now.
        known = [str(summary.get("output", "")) for summary in summaries.values()]
        roots = [summaries.get(run, {}).get("output", ""), *known, output.uri, output.path]
        input_roots = [summaries.get(run, {}).get("input", "")]
        converted = []
        for row in rows:
            made_by = row.get("made_by_run_id") or run
            out_roots = [summaries.get(made_by, {}).get("output", "")] + roots
            out_rel = _relative(row.get("output_uri"), out_roots)
            if row.get("output_uri") and out_rel is None:
                result.unplaced += 1
            if out_rel is not None:
                in_rel = posixpath.join(posixpath.dirname(out_rel), posixpath.basename(row["input_uri"]))
            else:
                in_rel = _relative(row["input_uri"], input_roots) or posixpath.basename(row["input_uri"])
            new = {k: v for k, v in row.items() if k in MANIFEST_SCHEMA.names}
            new.update(input_relpath=in_rel, output_relpath=out_rel)
            if out_rel is None and new.get("status") == "ok":
                new.update(status="error", error="ManifestError: its output could not be placed under OUTPUT when the "
                                                 "manifest was upgraded; redone by the next run")
            converted.append(new)
        table = pa.Table.from_pylist(converted, schema=MANIFEST_SCHEMA)
        info = store.write_part(part_name(run, "upgrade", 0), table)
        written.append(info)
        result.rows += info.rows
    result.runs = len(written)
    result.parts = [p.name for p in written]
    stamp = _stamp()  # once: the record's run id and its file name must agree
    store.write_commit(CommitRecord(run_id=f"upgrade-{stamp}", status="upgraded", parts=written,
                                    counts={"rows": result.rows, "journal_rows": result.journal_rows}),
                       name=f"upgrade-{stamp}")
    # Only now the earlier files go: a crash before this leaves both, and upgrading again writes
    # the same part names (one file each), so no row is ever in two parts.
    for name, _ in legacy:
        output.filesystem.delete_file(store.file(name))
    if journals or store.has_legacy_journal():
        output.filesystem.delete_dir(journal_root)
    log(f"upgraded {output.uri}: {result.rows} rows of {result.runs} runs "
        f"({result.journal_rows} from the journal of an interrupted run)"
        + (f"; {result.unplaced} outputs could not be placed under OUTPUT and will be redone" if result.unplaced else ""))
    return result


def _set_aside(store: ManifestStore, path: str, name: str) -> str:
    target = f"{store.file(DAMAGED_DIR)}/{name}"
    store.filesystem.create_dir(store.file(DAMAGED_DIR), recursive=True)
    store.filesystem.move(path, target)
    return target


def repair(output: Location, *, log: Callable[[str], None] = lambda line: None,
           list_outputs: Callable[[Location], set[str]] | None = None) -> RepairResult:
    """Rebuild OUTPUT's manifest from the parts that read (see the module docstring)."""
    store = ManifestStore.of(output)
    if store.has_legacy_journal():
        raise LegacyManifestError(f"{output.uri} holds a manifest of an earlier version: run `dce-batch manifest "
                                  f"upgrade {output.uri}` first")
    result = RepairResult()
    good: list[PartInfo] = []
    ok_outputs: set[str] = set()
    for name in store.part_names():
        try:
            table = store.read_part(name)
        except ManifestError:
            result.damaged.append(_set_aside(store, store.file(name), name))
            continue
        good.append(PartInfo(name, table.num_rows))
        result.rows += table.num_rows
        ok = table.filter(pc.equal(table["status"], "ok"))
        ok_outputs.update(r for r in ok["output_relpath"].to_pylist() if r)
    for name in store.commit_names():
        path = store.commit_path(name)
        result.damaged.append(_set_aside(store, path, f"commit-{name}.json"))
    stamp = _stamp()  # once: the record's run id and its file name must agree
    store.write_commit(CommitRecord(run_id=f"repair-{stamp}", status="repaired", parts=good,
                                    counts={"rows": result.rows}), name=f"repair-{stamp}")
    result.parts = len(good)
    if list_outputs is not None:
        result.outputs_without_rows = len(list_outputs(output) - ok_outputs)
    log(f"repaired {output.uri}: {result.parts} parts with {result.rows} rows committed; "
        f"{len([d for d in result.damaged if not d.endswith('.json')])} damaged part(s) set aside in "
        f"{store.uri}/{DAMAGED_DIR}/"
        + (f"; {result.outputs_without_rows} outputs have no row: the next run redoes their inputs"
           if result.outputs_without_rows else ""))
    return result


