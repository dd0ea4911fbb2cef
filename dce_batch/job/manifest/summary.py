"""A run's summary, ``_manifest/_run-<run_id>.json``: counts, speed, timings, settings, versions.

Written by a run that finished (an interrupted run commits its parts but writes no summary), just
before its commit record. The report reads it; so can any tool (plain JSON).
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dce_batch.job.manifest.schema import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED

__all__ = ["RunSummary", "one_line"]

# Characters that move the cursor, restyle a terminal or reorder what it shows: line breaks and
# other control codes (ANSI escape sequences start with one), bidirectional overrides, and the
# lone surrogates of names that are not UTF-8 (which print() cannot encode).
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def one_line(text: str) -> str:
    """``text`` with control characters shown as Python escapes (``\\n``, ``\\x1b``, ``\\u202e``),
    so that a file name in a terminal line stays on that line and cannot restyle the terminal."""
    return "".join(
        ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") else ch
        for ch in text
    )


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
    refused: int = 0  # inputs refused at planning (their rows are errors)
    changed: int = 0  # inputs redone because they changed since an earlier run enhanced them
    adopted_rows: int = 0  # rows of runs that died before committing, adopted by this run
    # How many images this run enhanced in each precision: what ``settings["precision"]`` (the
    # request, ``auto`` by default) resolved to on the nodes that ran them (fp32, bf16, int8, fp16).
    precisions: dict[str, int] = field(default_factory=dict)

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
        for entry in pc.value_counts(ok["precision"].cast(pa.string())).to_pylist():
            key = entry["values"] or "unknown"
            self.precisions[key] = self.precisions.get(key, 0) + entry["counts"]
        if STATUS_ERROR in statuses:
            errors = table.filter(pc.equal(table["status"].cast(pa.string()), STATUS_ERROR))
            for uri, message in zip(errors["input_uri"].to_pylist(), errors["error"].cast(pa.string()).to_pylist()):
                kind = (message or "Error").split(":", 1)[0]
                self.errors_by_type[kind] = self.errors_by_type.get(kind, 0) + 1
                if len(self.first_errors) < 20:
                    self.first_errors.append({"input_uri": uri, "error": message or ""})

    def finish(self, elapsed_s: float, finished_at: str = "") -> None:
        """Close the counts: ``elapsed_s`` is the run's time to its last image (the progress's
        :attr:`~dce_batch.job.progress.Progress.elapsed_s`, so both say the same images/s); the
        rates count the images this run enhanced or failed (not skipped, not refused at planning)."""
        self.finished_at = finished_at or self.finished_at
        self.elapsed_s = elapsed_s
        processed = self.ok + self.error - self.refused
        self.images_per_s = processed / elapsed_s if elapsed_s > 0 else 0.0
        self.megapixels_per_s = self.megapixels / elapsed_s if elapsed_s > 0 else 0.0

    def to_json(self) -> str:
        return json.dumps(vars(self), indent=2, default=str)

    def table(self) -> str:
        """The final summary as a small text table for the terminal."""
        lines = [
            f"run {self.run_id}: {self.input} -> {self.output}",
            f"  {'inputs':<14}{self.total:>10}",
            f"  {'ok':<14}{self.ok:>10}",
            f"  {'skipped':<14}{self.skipped:>10}   (done by an earlier run)",
            *([f"  {'changed':<14}{self.changed:>10}   (inputs changed since they were enhanced: redone)"]
              if self.changed else []),
            f"  {'error':<14}{self.error:>10}",
            f"  {'elapsed':<14}{self.elapsed_s:>10.1f} s",
            f"  {'throughput':<14}{self.images_per_s:>10.2f} images/s ({self.megapixels_per_s:.2f} MP/s)",
            f"  {'bytes in/out':<14}{self.bytes_in:>10,} / {self.bytes_out:,}",
        ]
        if self.precisions:  # what --precision auto resolved to, where it ran
            ran_in = ", ".join(f"{name} {count:,}" for name, count in sorted(self.precisions.items()))
            lines.append(f"  {'precision':<14}{ran_in:>10}")
        for kind, count in sorted(self.errors_by_type.items()):
            lines.append(f"  {kind:<24}{count:>6}")
        for entry in self.first_errors[:5]:
            lines.append(f"    {one_line(entry['input_uri'])}: {one_line(entry['error'])}")
        if self.error > 5:
            lines.append(f"    ... and {self.error - 5:,} more (every error is a row of the manifest, "
                         "OUTPUT/_manifest, and in the run's report)")
        return "\n".join(lines)
