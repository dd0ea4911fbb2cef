"""The manifest without Ray: reading, schema evolution, the crash journal."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dce_batch.errors import OutputWriteError, StorageError
from dce_batch.job.manifest import (
    MANIFEST_SCHEMA,
    ManifestRow,
    latest_ok_rows,
    read_manifest,
    recover_pending,
    rows_to_table,
    write_manifest_part,
    write_pending_part,
)

FS = pafs.LocalFileSystem()


def _row(run_id, name, status="ok", age_s=0):
    return ManifestRow(run_id=run_id, input_uri=f"/in/{name}", output_uri=f"/out/{name}" if status == "ok" else None,
                       status=status, finished_at=datetime.now(timezone.utc) - timedelta(seconds=age_s))


def test_a_journal_that_cannot_be_written_is_an_output_write_error(tmp_path):
    """The journal lives in OUTPUT: failing to write it stops the run like a failed image write
    (the CLI then says OutputWriteError whichever of the two hit a full disk first)."""
    manifest = tmp_path / "_manifest"
    manifest.mkdir()
    (manifest / "_pending").write_bytes(b"a file where the journal's folder must go")
    with pytest.raises(OutputWriteError, match="OUTPUT cannot be written .*journal") as caught:
        write_pending_part(FS, str(manifest), "r1", "actor/1", rows_to_table([_row("r1", "a.png")]))
    assert isinstance(caught.value, StorageError)  # callers that catch StorageError still do


def test_a_manifest_part_that_cannot_be_written_is_an_output_write_error(tmp_path):
    """The driver's part files live in OUTPUT too: a full disk there is an OutputWriteError
    (found by the disk-full test: the driver's part hit the full disk before any image did)."""
    (tmp_path / "_manifest").write_bytes(b"a file where the manifest's folder must go")
    with pytest.raises(OutputWriteError, match="OUTPUT cannot be written .the manifest.") as caught:
        write_manifest_part(FS, str(tmp_path / "_manifest"), "r1", 0, rows_to_table([_row("r1", "a.png")]))
    assert isinstance(caught.value, StorageError)


def test_a_missing_manifest_is_empty_but_an_unreadable_one_fails(tmp_path):
    assert read_manifest(FS, str(tmp_path / "nope")).num_rows == 0
    manifest = tmp_path / "_manifest"
    write_manifest_part(FS, str(manifest), "r1", 0, rows_to_table([_row("r1", "a.png")]))
    assert read_manifest(FS, str(manifest)).num_rows == 1
    (manifest / "part-r1-00001.parquet").write_bytes(b"PAR1 truncated garbage")
    with pytest.raises(StorageError, match="cannot read the manifest"):
        read_manifest(FS, str(manifest))


def test_a_manifest_that_cannot_be_listed_fails(tmp_path):
    blocker = tmp_path / "_manifest"
    blocker.write_text("a file where the manifest folder should be")
    with pytest.raises(StorageError, match="cannot list the manifest"):
        read_manifest(FS, str(blocker))


def test_parts_written_before_a_column_existed_read_it_as_null(tmp_path):
    manifest = tmp_path / "_manifest"
    manifest.mkdir()
    old_schema = pa.schema([f for f in MANIFEST_SCHEMA if f.name not in ("settings", "settings_sha256",
                                                                        "made_by_run_id", "bit_depth")])
    old = rows_to_table([_row("r0", "a.png")]).select(old_schema.names).cast(old_schema)
    pq.write_table(old, manifest / "part-r0-00000.parquet")
    write_manifest_part(FS, str(manifest), "r1", 0, rows_to_table([_row("r1", "b.png")]))
    table = read_manifest(FS, str(manifest))
    assert table.schema.equals(MANIFEST_SCHEMA)
    by_input = {r["input_uri"]: r for r in table.to_pylist()}
    assert by_input["/in/a.png"]["settings"] is None and by_input["/in/b.png"]["run_id"] == "r1"


def test_journal_of_a_dead_run_is_folded_in_once(tmp_path):
    manifest = str(tmp_path / "_manifest")
    # The dead run flushed a part with a.png, and journalled a.png and b.png; b.png twice (a
    # batch retried after its actor died).
    write_manifest_part(FS, manifest, "dead", 0, rows_to_table([_row("dead", "a.png")]))
    write_pending_part(FS, manifest, "dead", "actor/1", rows_to_table([_row("dead", "a.png"), _row("dead", "b.png", age_s=5)]))
    write_pending_part(FS, manifest, "dead", "actor/2", rows_to_table([_row("dead", "b.png")]))
    write_pending_part(FS, manifest, "live", "actor/3", rows_to_table([_row("live", "c.png")]))
    # The journal is invisible to readers of the parts...
    assert read_manifest(FS, manifest)["input_uri"].to_pylist() == ["/in/a.png"]
    assert recover_pending(FS, manifest, skip_run="live") == 1
    rows = read_manifest(FS, manifest).to_pylist()
    assert sorted(r["input_uri"] for r in rows) == ["/in/a.png", "/in/b.png"]
    assert not (tmp_path / "_manifest" / "_pending" / "dead").exists()
    assert (tmp_path / "_manifest" / "_pending" / "live").is_dir(), "the run in progress keeps its journal"
    assert recover_pending(FS, manifest, skip_run="live") == 0


def test_latest_ok_row_per_output():
    table = rows_to_table([_row("r1", "a.png", age_s=100), _row("r2", "a.png", age_s=10), _row("r2", "b.png"),
                           _row("r3", "c.png", status="error")])
    latest = latest_ok_rows(table)
    assert sorted(zip(latest["input_uri"].to_pylist(), latest["run_id"].to_pylist())) == [
        ("/in/a.png", "r2"), ("/in/b.png", "r2")]
