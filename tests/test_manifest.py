"""The manifest without Ray: parts written once, commit records, adoption, the lease, upgrade and repair."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dce_batch.errors import LeaseLostError, LegacyManifestError, ManifestError, OutputInUseError, OutputWriteError
from dce_batch.job.manifest import MANIFEST_SCHEMA, CommitRecord, ManifestRow, ManifestStore, read_manifest, rows_to_table
from dce_batch.job.manifest.lease import STALE_AFTER_S, LeaseHolder, acquire_lease, break_lease, read_lease
from dce_batch.job.manifest.maintenance import repair, upgrade
from dce_batch.job.manifest.parts import PartBuffer, PartLedger, tag_rows, untag_rows
from dce_batch.job.manifest.store import part_name
from dce_batch.storage import Location


def _row(run_id: str, name: str, status: str = "ok", age_s: float = 0.0) -> ManifestRow:
    return ManifestRow(run_id=run_id, input_relpath=name, input_uri=f"/in/{name}", status=status,
                       output_relpath=name if status == "ok" else None,
                       finished_at=datetime.now(timezone.utc) - timedelta(seconds=age_s))


def _store(tmp_path: Path) -> ManifestStore:
    return ManifestStore.of(Location.parse(str(tmp_path / "out")))


def test_parts_carry_the_schema_and_format_and_read_as_one_table_anywhere(tmp_path):
    store = _store(tmp_path)
    store.write_part(part_name("r1", "a1", 0), rows_to_table([_row("r1", "a.png"), _row("r1", "b.png", "error")]))
    store.write_part(part_name("r1", "a2", 0), rows_to_table([_row("r1", "c.png")]))
    files = sorted((tmp_path / "out" / "_manifest").glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-r1-a1-00000.parquet", "part-r1-a2-00000.parquet"]
    schema = pq.read_schema(files[0])
    assert schema.metadata[b"dce_batch.manifest"] == b"dce_batch.manifest/2"
    assert schema.remove_metadata().equals(MANIFEST_SCHEMA.remove_metadata())
    import pandas as pd

    assert sorted(pd.read_parquet(tmp_path / "out" / "_manifest")["input_relpath"]) == ["a.png", "b.png", "c.png"]
    assert read_manifest(str(tmp_path / "out")).num_rows == 3


def test_a_worker_s_part_rolls_over_by_rows_and_by_age(tmp_path):
    store = _store(tmp_path)
    buffer = PartBuffer(store, "r1", "w1", max_rows=3, max_age_s=3600)
    first = buffer.add(rows_to_table([_row("r1", "a"), _row("r1", "b")]))
    assert first.part == "part-r1-w1-00000.parquet" and first.flushed == []
    second = buffer.add(rows_to_table([_row("r1", "c")]))  # 3 rows: full
    assert second.part == "part-r1-w1-00000.parquet" and [p.name for p in second.flushed] == [second.part]
    assert pq.read_table(store.file(second.part)).num_rows == 3
    third = buffer.add(rows_to_table([_row("r1", "d")]))
    assert third.part == "part-r1-w1-00001.parquet" and third.flushed == []
    aged = PartBuffer(store, "r1", "w2", max_rows=1000, max_age_s=0.0)
    assert [p.rows for p in aged.add(rows_to_table([_row("r1", "e")])).flushed] == [1]  # due at once


def test_the_driver_writes_the_parts_workers_did_not_under_the_same_names(tmp_path):
    """Batches arrive tagged with their part (in any order); the ledger holds rows until their part is
    written and writes the rest itself: each row in exactly one file."""
    store = _store(tmp_path)
    buffer = PartBuffer(store, "r1", "w1", max_rows=2, max_age_s=3600)
    batches = [buffer.add(rows_to_table([_row("r1", n)])) for n in "abc"]  # a+b flushed, c buffered
    ledger = PartLedger(store)
    for batch in [batches[1], batches[2], batches[0]]:  # out of order: a arrives after its part was written
        for received in untag_rows(tag_rows(batch)):
            ledger.add(received)
    assert ledger.held_rows == 1
    written = ledger.write_held()
    assert [p.name for p in written] == ["part-r1-w1-00001.parquet"]
    assert sorted(p.name for p in ledger.parts()) == ["part-r1-w1-00000.parquet", "part-r1-w1-00001.parquet"]
    rows = read_manifest(str(tmp_path / "out"))
    assert sorted(rows["input_relpath"].to_pylist()) == ["a", "b", "c"]


def test_a_part_whose_worker_died_before_replying_keeps_only_rows_no_retry_wrote(tmp_path):
    """Worker w1 wrote parts 0 (a, b) and 1 (c) and died before replying; Ray ran both batches again
    on w2, which finished a and c only before the run was interrupted. Part 0 keeps b (its image
    is written, its row never reached the driver); part 1 is deleted; the others are untouched."""
    store = _store(tmp_path)
    dead = PartBuffer(store, "r1", "w1", max_rows=1000, max_age_s=0.0)
    dead.add(rows_to_table([_row("r1", "a", "error"), _row("r1", "b")]))
    dead.add(rows_to_table([_row("r1", "c")]))
    store.write_part(part_name("r0", "w1", 0), rows_to_table([_row("r0", "a")]))  # an earlier run's: not a stray
    ledger = PartLedger(store)
    retry = PartBuffer(store, "r1", "w2", max_rows=1000, max_age_s=0.0)
    for rows in (rows_to_table([_row("r1", "a")]), rows_to_table([_row("r1", "c")])):
        ledger.add(retry.add(rows))
    assert ledger.settle_strays("r1") == (2, 2)
    assert sorted(p.name for p in ledger.parts()) == ["part-r1-w1-00000.parquet", "part-r1-w2-00000.parquet",
                                                     "part-r1-w2-00001.parquet"]
    assert not Path(store.file("part-r1-w1-00001.parquet")).exists()
    raw = [(r["run_id"], r["input_relpath"], r["status"]) for n in store.part_names()
           for r in pq.read_table(store.file(n)).to_pylist()]
    assert sorted(raw) == [("r0", "a", "ok"), ("r1", "a", "ok"), ("r1", "b", "ok"), ("r1", "c", "ok")]
    assert ledger.settle_strays("r1") == (0, 0)  # settled: nothing left to do


def test_a_part_the_storage_acknowledged_but_lost_is_left_out_of_the_commit(tmp_path):
    """A store that confirms a write and then does not hold it (seen behind a faulty proxy): the
    commit lists only the parts that exist, so the next run is not stopped by a missing part and
    redoes the inputs whose rows were lost; the record then reads as a clean manifest."""
    store = _store(tmp_path)
    ledger = PartLedger(store)
    for worker in ("w1", "w2"):
        buffer = PartBuffer(store, "r1", worker, max_rows=1000, max_age_s=0.0)
        ledger.add(buffer.add(rows_to_table([_row("r1", f"{worker}-a"), _row("r1", f"{worker}-b")])))
    # A worker that wrote a part and died before replying: a stray, which settling reads the run's
    # known parts against, so the lost part must be forgotten first.
    PartBuffer(store, "r1", "w3", max_rows=1000, max_age_s=0.0).add(rows_to_table([_row("r1", "w1-a"),
                                                                                   _row("r1", "w3-c")]))
    Path(store.file("part-r1-w2-00000.parquet")).unlink()  # acknowledged, then gone
    present = store.part_names()
    assert [(p.name, p.rows) for p in ledger.drop_lost("r1", present)] == [("part-r1-w2-00000.parquet", 2)]
    assert [p.name for p in ledger.parts()] == ["part-r1-w1-00000.parquet"]
    assert ledger.drop_lost("r1") == []
    assert ledger.settle_strays("r1", present=present) == (1, 1)
    store.write_commit(CommitRecord(run_id="r1", status="finished", parts=ledger.parts()))
    rows = read_manifest(str(tmp_path / "out")).to_pylist()
    assert sorted(r["input_relpath"] for r in rows) == ["w1-a", "w1-b", "w3-c"]


def test_uncommitted_parts_are_adopted_and_committed_ones_checked(tmp_path):
    store = _store(tmp_path)
    committed = store.write_part(part_name("r1", "w1", 0), rows_to_table([_row("r1", "a")]))
    store.write_commit(CommitRecord(run_id="r1", status="finished", parts=[committed]))
    store.write_part(part_name("r2", "w1", 0), rows_to_table([_row("r2", "b"), _row("r2", "c")]))  # r2 died
    state = store.state()
    assert [p.name for p in state.committed] == [committed.name]
    assert [(p.name, p.rows) for p in state.uncommitted] == [("part-r2-w1-00000.parquet", 2)]
    assert state.runs == ["r1", "r2"] and state.rows.num_rows == 3
    os.unlink(store.file(committed.name))
    with pytest.raises(ManifestError, match="lost 1 part"):
        store.state()


def test_a_damaged_part_or_commit_record_is_named_and_refused(tmp_path):
    store = _store(tmp_path)
    store.write_part(part_name("r1", "w1", 0), rows_to_table([_row("r1", "a")]))
    (tmp_path / "out" / "_manifest" / "part-r1-w2-00000.parquet").write_bytes(b"PAR1 damaged")
    with pytest.raises(ManifestError, match="part-r1-w2-00000.parquet.*dce-batch manifest repair"):
        store.state()
    os.unlink(tmp_path / "out" / "_manifest" / "part-r1-w2-00000.parquet")
    (tmp_path / "out" / "_manifest" / "_commits").mkdir()
    (tmp_path / "out" / "_manifest" / "_commits" / "r1.json").write_text("{not json")
    with pytest.raises(ManifestError, match="r1.json"):
        store.state()


def test_a_row_written_twice_in_a_run_reads_once_the_latest(tmp_path):
    """Only a batch retried after its worker wrote the part but before the result came back can
    do this; readers see one row per run and input."""
    store = _store(tmp_path)
    store.write_part(part_name("r1", "w1", 0), rows_to_table([_row("r1", "a", "error", age_s=10)]))
    store.write_part(part_name("r1", "w2", 0), rows_to_table([_row("r1", "a", "ok")]))
    rows = read_manifest(str(tmp_path / "out"))
    assert rows.num_rows == 1 and rows["status"][0].as_py() == "ok"
    # Another run's row for the same input is that run's own: kept, and r1's duplicate still folds.
    store.write_part(part_name("r2", "w1", 0), rows_to_table([_row("r2", "a", "skipped"), _row("r2", "b")]))
    rows = read_manifest(str(tmp_path / "out"))
    assert sorted((r["run_id"], r["input_relpath"], r["status"]) for r in rows.to_pylist()) == [
        ("r1", "a", "ok"), ("r2", "a", "skipped"), ("r2", "b", "ok")]


def test_two_inputs_of_one_name_keep_their_rows(tmp_path):
    """A list file's entries s3://b/in/a.png and in/a.png (relative: another object) share the
    name in/a.png; the one refused for the collision keeps its error row beside the other's."""
    import dataclasses

    store = _store(tmp_path)
    kept = _row("r1", "in/a.png")
    refused = dataclasses.replace(_row("r1", "in/a.png", "error"), input_uri="/lists/in/a.png")
    store.write_part(part_name("r1", "w1", 0), rows_to_table([kept, refused]))
    rows = read_manifest(str(tmp_path / "out"))
    assert sorted((r["input_uri"], r["status"]) for r in rows.to_pylist()) == [
        ("/in/in/a.png", "ok"), ("/lists/in/a.png", "error")]


def test_writing_a_part_where_output_cannot_be_written_is_an_output_write_error(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_manifest").write_bytes(b"a file where the manifest folder must go")
    with pytest.raises(OutputWriteError):
        _store(tmp_path).write_part(part_name("r1", "w1", 0), rows_to_table([_row("r1", "a")]))


# --------------------------------------------------------------------------------------------
# The lease
# --------------------------------------------------------------------------------------------


def _write_lease(store: ManifestStore, **changes) -> None:
    now = time.time()
    holder = dict(run_id="old", host=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now)
    holder.update(changes)
    Path(store.lease_path).parent.mkdir(parents=True, exist_ok=True)
    Path(store.lease_path).write_text(json.dumps(holder))


def test_one_run_holds_output_and_a_second_is_refused_naming_it(tmp_path):
    store = _store(tmp_path)
    lease = acquire_lease(store, "run-a", heartbeat_s=3600)
    try:
        with pytest.raises(OutputInUseError) as info:
            acquire_lease(store, "run-b")
        message = str(info.value)
        assert "run-a" in message and f"pid {os.getpid()}" in message and "dce-batch manifest unlock" in message
    finally:
        lease.release()
    assert read_lease(store) == (None, None)
    acquire_lease(store, "run-b", heartbeat_s=3600).release()


def test_of_two_runs_starting_together_exactly_one_wins(tmp_path):
    store = _store(tmp_path)
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(acquire_lease(store, f"run-{i}", heartbeat_s=3600))
        except OutputInUseError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(winners) == 1 and len(outcomes) == 8
    winners[0].release()


def test_a_run_whose_lease_write_landed_but_whose_answer_was_lost_keeps_its_lease(tmp_path):
    """On S3 a create whose answer is lost is retried by the SDK and refused (412) by the lease it
    wrote itself; a heartbeat likewise. The run must recognise its own lease, not refuse itself."""
    store = _store(tmp_path)
    started = 1_000_000.0
    _write_lease(store, run_id="mine", started_at=started, heartbeat_at=started)  # "our" write, answer lost
    lease = acquire_lease(store, "mine", heartbeat_s=3600, now=lambda: started)
    try:
        assert lease.holder.run_id == "mine" and lease.taken_over is None
        lease.heartbeat()  # the token it holds is the lease's: its heartbeats go on
        assert read_lease(store)[0].heartbeat_at > started
    finally:
        lease.release()


def test_a_lease_whose_holder_is_gone_is_taken_over(tmp_path):
    store = _store(tmp_path)
    _write_lease(store, pid=2**22 + 12345)  # no such process on this host
    lease = acquire_lease(store, "new", heartbeat_s=3600)
    assert lease.previous.run_id == "old" and "no longer exists" in lease.taken_over
    lease.release()
    _write_lease(store, host="another-host", heartbeat_at=time.time() - STALE_AFTER_S - 5)
    lease = acquire_lease(store, "new2", heartbeat_s=3600)
    assert "heartbeat" in lease.taken_over
    lease.release()
    _write_lease(store, host="another-host")  # alive elsewhere: refused
    with pytest.raises(OutputInUseError, match="another-host"):
        acquire_lease(store, "new3")


def test_a_run_whose_lease_was_taken_over_stops(tmp_path):
    store = _store(tmp_path)
    lease = acquire_lease(store, "slow", heartbeat_s=3600)
    _write_lease(store, run_id="usurper", host="another-host")  # what a takeover leaves
    with pytest.raises(LeaseLostError, match="usurper"):
        lease.heartbeat()
    lease.release()  # does not delete the other run's lease
    assert read_lease(store)[0].run_id == "usurper"


def test_unlock_refuses_a_live_holder_on_this_host(tmp_path):
    store = _store(tmp_path)
    lease = acquire_lease(store, "live", heartbeat_s=3600)
    with pytest.raises(OutputInUseError, match="alive"):
        break_lease(store)
    lease.release()
    _write_lease(store, pid=2**22 + 12345)
    assert break_lease(store).run_id == "old" and read_lease(store) == (None, None)


@pytest.mark.s3
def test_the_lease_on_s3_is_a_conditional_create(s3_server, s3_bucket):
    """moto honours If-None-Match / If-Match on PUT like S3 (checked here: a second create fails)."""
    output = Location.parse(f"s3://{s3_bucket}/out", s3_server.s3_options())
    store = ManifestStore.of(output)
    lease = acquire_lease(store, "run-a", heartbeat_s=3600)
    with pytest.raises(OutputInUseError, match="run-a"):
        acquire_lease(store, "run-b")
    lease.heartbeat()  # If-Match on the version it wrote
    client = s3_server.client()
    stale = dict(run_id="old", host="another-host", pid=1, started_at=0, heartbeat_at=time.time() - STALE_AFTER_S - 5)
    client.put_object(Bucket=s3_bucket, Key="out/_manifest/_lease.json", Body=json.dumps(stale).encode())
    with pytest.raises(LeaseLostError):
        lease.heartbeat()
    taker = acquire_lease(store, "run-c", heartbeat_s=3600)
    assert taker.previous.run_id == "old"
    taker.release()
    assert "out/_manifest/_lease.json" not in s3_server.list_keys(s3_bucket, "out/")


def test_lease_holder_reads_a_damaged_lease_as_nobody():
    assert LeaseHolder.from_bytes(b"{") is None


# --------------------------------------------------------------------------------------------
# Upgrade and repair
# --------------------------------------------------------------------------------------------

_LEGACY_SCHEMA = pa.schema([("run_id", pa.string()), ("input_uri", pa.string()), ("output_uri", pa.string()),
                            ("status", pa.string()), ("error", pa.string()),
                            ("finished_at", pa.timestamp("us", tz="UTC")), ("made_by_run_id", pa.string())])


def test_an_earlier_manifest_is_refused_with_one_command_and_upgraded_by_it(tmp_path):
    out = tmp_path / "out"
    manifest = out / "_manifest"
    (manifest / "_pending" / "r2").mkdir(parents=True)
    now = datetime.now(timezone.utc)
    part = pa.table({"run_id": ["r1", "r1"], "input_uri": ["/old/in/a.jpg", "/old/in/sub/b.png"],
                     "output_uri": ["/old/out/a.jpg", "/old/out/sub/b.png"], "status": ["ok", "ok"],
                     "error": [None, None], "finished_at": [now, now], "made_by_run_id": ["r1", "r1"]},
                    schema=_LEGACY_SCHEMA)
    pq.write_table(part, manifest / "part-r1-00000.parquet")
    journal = pa.table({"run_id": ["r2"], "input_uri": ["/old/in/c.gif"], "output_uri": ["/old/out/c.png"],
                        "status": ["ok"], "error": [None], "finished_at": [now], "made_by_run_id": ["r2"]},
                       schema=_LEGACY_SCHEMA)
    pq.write_table(journal, manifest / "_pending" / "r2" / "w1.parquet")
    (manifest / "_run-r1.json").write_text(json.dumps({"run_id": "r1", "input": "/old/in", "output": "/old/out"}))
    with pytest.raises(LegacyManifestError, match=f"dce-batch manifest upgrade {out}"):
        ManifestStore.of(Location.parse(str(out))).state()
    result = upgrade(Location.parse(str(out)))
    assert (result.runs, result.rows, result.journal_rows) == (2, 3, 1)
    rows = {r["input_relpath"]: r for r in read_manifest(str(out)).to_pylist()}
    assert rows["sub/b.png"]["output_relpath"] == "sub/b.png"
    assert rows["c.gif"]["output_relpath"] == "c.png" and rows["c.gif"]["run_id"] == "r2"
    assert not (manifest / "_pending").exists() and not (manifest / "part-r1-00000.parquet").exists()
    assert upgrade(Location.parse(str(out))).rows == 0  # once


def test_repair_sets_damaged_files_aside_and_commits_every_part_that_reads(tmp_path):
    out = tmp_path / "out"
    store = _store(tmp_path)
    good = store.write_part(part_name("r1", "w1", 0), rows_to_table([_row("r1", "a.png")]))
    store.write_commit(CommitRecord(run_id="r1", status="finished",
                                    parts=[good, good.__class__("part-r1-w9-00000.parquet", 5)]))  # lost part
    (out / "_manifest" / "part-r1-w2-00000.parquet").write_bytes(b"damaged")
    for name in ("a.png", "b.png"):
        (out / name).write_bytes(b"x")
    result = repair(Location.parse(str(out)), list_outputs=lambda o: {"a.png", "b.png"})
    assert result.parts == 1 and result.rows == 1 and result.outputs_without_rows == 1
    assert (out / "_manifest" / "_damaged" / "part-r1-w2-00000.parquet").exists()
    state = store.state()  # reads again
    assert [p.name for p in state.committed] == [good.name] and not state.uncommitted


def test_a_lock_file_removed_while_another_run_waits_on_it_still_excludes(tmp_path):
    """A refused run removes the lease's lock file it created (discard_local_lock). A run that was
    waiting on that file must then lock the file at the path, not the removed one: else a third
    run creating a new lock file would hold the lock at the same time."""
    from dce_batch.storage.conditional import _local_lock, discard_local_lock

    lease = str(tmp_path / "_manifest" / "_lease.json")
    held = []

    def waiter() -> None:
        with _local_lock(lease):
            held.append(os.path.exists(lease + ".lock"))

    with _local_lock(lease):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)  # the waiter has opened the lock file and waits in flock
        os.unlink(lease + ".lock")  # what discard_local_lock does while it holds the lock
    thread.join(timeout=10)
    assert held == [True], "the waiter locked a file no longer at the path"
    assert discard_local_lock(lease) and not os.path.exists(lease + ".lock")
    Path(lease).write_text("{}")
    assert not discard_local_lock(lease) and os.path.exists(lease + ".lock"), "kept while a lease exists"


def test_a_stray_part_that_cannot_be_deleted_is_left_with_a_warning(tmp_path):
    """Deleting a stray whose rows all repeat other parts' is clean-up: when the delete fails
    (a real failing filesystem), the ledger warns and goes on; the stray's rows are older than
    the parts that repeat them, so the manifest still reads one (the latest) row per input."""
    from tests.failing_fs import no_part_deletes

    local = Location.parse(str(tmp_path / "out"))
    store = ManifestStore.of(Location(uri=local.uri, filesystem=no_part_deletes(), path=local.path))
    dead = PartBuffer(store, "r1", "w1", max_rows=1000, max_age_s=0.0)
    dead.add(rows_to_table([_row("r1", "c", "error", age_s=60)]))  # written, then its worker died
    ledger = PartLedger(store)
    retry = PartBuffer(store, "r1", "w2", max_rows=1000, max_age_s=0.0)
    ledger.add(retry.add(rows_to_table([_row("r1", "c")])))
    warnings = []
    assert ledger.settle_strays("r1", warn=warnings.append) == (1, 1)
    assert len(warnings) == 1 and "part-r1-w1-00000.parquet" in warnings[0] and "injected failure" in warnings[0]
    assert [p.name for p in ledger.parts()] == ["part-r1-w2-00000.parquet"]
    assert Path(store.file("part-r1-w1-00000.parquet")).exists()
    rows = store.state().rows.to_pylist()
    assert [(r["input_relpath"], r["status"]) for r in rows] == [("c", "ok")]
