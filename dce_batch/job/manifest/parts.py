"""Rows written once: workers buffer them into rolling parts, the driver commits the parts.

The Datasink pattern (Ray Data's ``Datasink.write`` / ``on_write_complete``), made to survive a
killed driver:

* a worker (a fused actor, a local worker process, or a staged write task's process) adds the
  rows of each batch it finished to a :class:`PartBuffer`. The buffer becomes a Parquet part when
  it holds :attr:`~PartBuffer.max_rows` rows or its oldest row is :attr:`~PartBuffer.max_age_s`
  old, checked after each batch: a few large files, not a file per call;
* every batch's rows also go back to the driver, tagged with the part they are buffered in and
  the parts the worker wrote during that call. The driver's :class:`PartLedger` keeps the rows of
  parts not yet written (at most one buffer per worker), and when the work is done writes those
  parts itself, under the very names the workers would have used. A name is written by one
  writer at a time, so a part is never in two files;
* a worker that dies after writing a part but before replying leaves a part the driver never
  heard of, while Ray runs the batch again on another worker: before committing, the driver
  finds such strays and drops from them the rows the retry wrote again
  (:meth:`PartLedger.settle_strays`), so no input has two rows of one run;
* the driver's last act is the commit record listing the parts (:mod:`.store`).

A driver killed mid-run loses the rows still buffered (their images are redone by the next run,
which overwrites them atomically: still one output each) and nothing else: the parts already
written are adopted by the next run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from dce_batch.errors import StorageError, describe_error
from dce_batch.job.manifest.schema import conform
from dce_batch.job.manifest.store import ManifestStore, PartInfo, part_name, run_of_part
from dce_batch.storage.arrow_paths import one_array

__all__ = ["DEFAULT_PART_MAX_AGE_S", "DEFAULT_PART_MAX_ROWS", "BatchRows", "PartBuffer", "PartLedger",
           "tag_rows", "untag_rows"]

#: Rows per part at most, and seconds a row may wait in a worker's buffer before its part is
#: written (checked after each batch): the work a killed driver makes the next run redo.
DEFAULT_PART_MAX_ROWS = 10_000
DEFAULT_PART_MAX_AGE_S = 60.0

_PART_COLUMN, _FLUSHED_COLUMN = "_part", "_flushed"


@dataclass
class BatchRows:
    """A finished batch as the driver receives it."""

    rows: pa.Table  # manifest rows
    part: str  # the part these rows are buffered in
    flushed: list[PartInfo] = field(default_factory=list)  # parts the worker wrote during this call


class PartBuffer:
    """A worker's rolling part: rows buffered, written when full or old enough."""

    def __init__(self, store: ManifestStore, run_id: str, writer: str, *, max_rows: int = DEFAULT_PART_MAX_ROWS,
                 max_age_s: float = DEFAULT_PART_MAX_AGE_S) -> None:
        self.store, self.run_id, self.writer = store, run_id, writer
        self.max_rows, self.max_age_s = max_rows, max_age_s
        self.sequence = 0
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._oldest = 0.0

    @property
    def name(self) -> str:
        return part_name(self.run_id, self.writer, self.sequence)

    def add(self, rows: pa.Table) -> BatchRows:
        """Buffer a batch's rows; write the part when due. What to send back to the driver."""
        part = self.name
        if rows.num_rows:
            if not self._tables:
                self._oldest = time.monotonic()
            self._tables.append(rows)
            self._rows += rows.num_rows
        flushed = []
        if self._rows and (self._rows >= self.max_rows or time.monotonic() - self._oldest >= self.max_age_s):
            flushed.append(self.flush())
        return BatchRows(rows, part, flushed)

    def flush(self) -> PartInfo:
        table = pa.concat_tables([conform(t) for t in self._tables])
        info = self.store.write_part(self.name, table)
        self.sequence += 1
        self._tables, self._rows = [], 0
        return info


def tag_rows(batch: BatchRows) -> pa.Table:
    """A batch as one Arrow table (what a Ray Data stage returns): rows plus two tag columns."""
    flushed = json.dumps([[p.name, p.rows] for p in batch.flushed])
    n = batch.rows.num_rows
    return batch.rows.append_column(_PART_COLUMN, pa.array([batch.part] * n, pa.string())) \
        .append_column(_FLUSHED_COLUMN, pa.array([flushed] * n, pa.string()))


def untag_rows(table: pa.Table) -> list[BatchRows]:
    """:func:`tag_rows` undone (a block may hold several batches: one BatchRows per part named)."""
    if table.num_rows == 0 or _PART_COLUMN not in table.column_names:
        return []
    parts = table[_PART_COLUMN].to_pylist()
    flushed = table[_FLUSHED_COLUMN].to_pylist()
    rows = table.drop_columns([_PART_COLUMN, _FLUSHED_COLUMN])
    batches: list[BatchRows] = []
    start = 0
    for i in range(1, len(parts) + 1):
        if i == len(parts) or parts[i] != parts[start] or flushed[i] != flushed[start]:
            batches.append(BatchRows(rows.slice(start, i - start), parts[start],
                                     [PartInfo(name, count) for name, count in json.loads(flushed[start])]))
            start = i
    return batches


class PartLedger:
    """The driver's account of the run's parts: which are written, and the rows of those not yet."""

    def __init__(self, store: ManifestStore) -> None:
        self.store = store
        self.written: dict[str, PartInfo] = {}
        self._held: dict[str, list[pa.Table]] = {}

    def add(self, batch: BatchRows) -> None:
        if batch.part not in self.written and batch.rows.num_rows:
            self._held.setdefault(batch.part, []).append(batch.rows)
        for info in batch.flushed:
            self.written[info.name] = info
            self._held.pop(info.name, None)

    def add_written(self, info: PartInfo) -> None:
        """A part the driver wrote itself (planning rows)."""
        self.written[info.name] = info

    @property
    def held_rows(self) -> int:
        return sum(t.num_rows for tables in self._held.values() for t in tables)

    def write_held(self) -> list[PartInfo]:
        """Write every part the workers have not (run over, or interrupted): same names, same rows."""
        infos = []
        for name in sorted(self._held):
            info = self.store.write_part(name, pa.concat_tables([conform(t) for t in self._held[name]]))
            self.written[name] = info
            infos.append(info)
        self._held.clear()
        return infos

    def settle_strays(self, run_id: str, *, warn: Callable[[str], None] | None = None,
                      present: Iterable[str] | None = None) -> tuple[int, int]:
        """Account for the parts of this run whose rows never came back: a worker wrote the part,
        then died before replying, and Ray ran the batch again elsewhere. A stray's rows that a
        known part of this run also holds are dropped (the stray is rewritten without them, or
        deleted); the rest (images finished whose rows the driver never received) are kept, and
        the part is listed in the commit like the others. Call it once the workers have stopped
        and :meth:`write_held` has run. Returns (stray parts, duplicate rows dropped).

        Deleting a stray that only repeats rows is clean-up: if the storage refuses the delete,
        ``warn`` is told and the stray stays, unlisted (the next run adopts it). Its rows are
        those of a worker that died before the retry that repeated them, and the manifest reads
        the latest row per run and input. ``present``: the store's part names, when the caller has
        listed them already (see :meth:`drop_lost`, which comes first)."""
        names = self.store.part_names() if present is None else present
        strays = [name for name in names if run_of_part(name) == run_id and name not in self.written]
        if not strays:
            return 0, 0
        known = pa.concat_arrays([one_array(self.store.read_part(info.name)["input_relpath"])
                                  for info in self.parts() if run_of_part(info.name) == run_id]
                                 or [pa.array([], pa.string())])
        dropped = 0
        for name in strays:
            table = self.store.read_part(name)
            keep = pc.invert(pc.is_in(table["input_relpath"], value_set=known))
            kept = table.filter(keep)
            dropped += table.num_rows - kept.num_rows
            if kept.num_rows == 0:
                try:
                    self.store.delete_part(name)
                except StorageError as exc:
                    if warn is not None:
                        warn(f"could not delete the manifest part {name}, whose rows all repeat rows of this run's "
                             f"other parts ({describe_error(exc)}); it stays unlisted, the next run adopts it, and "
                             "the manifest reads one row per run and input")
                continue
            self.written[name] = (self.store.write_part(name, kept) if kept.num_rows < table.num_rows
                                  else PartInfo(name, table.num_rows))
        return len(strays), dropped

    def drop_lost(self, run_id: str, present: Iterable[str] | None = None) -> list[PartInfo]:
        """Forget the parts of this run that the storage acknowledged but does not hold, so that
        the commit lists only parts that exist, and return them. A store that loses acknowledged
        writes would otherwise get a commit record that names a missing part, which stops every
        later run until ``dce-batch manifest repair``; without it the next run simply redoes the
        inputs whose rows were lost. Call it after :meth:`write_held` and before
        :meth:`settle_strays`, which reads this run's parts. ``present``: as for that method."""
        present = set(self.store.part_names() if present is None else present)
        lost = [info for name, info in sorted(self.written.items())
                if run_of_part(name) == run_id and name not in present]
        for info in lost:
            del self.written[info.name]
        return lost

    def parts(self) -> list[PartInfo]:
        return [self.written[name] for name in sorted(self.written)]
