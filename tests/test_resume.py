"""Exactly once, by design: fingerprints, one run per OUTPUT, relative names, the manifest's
commit, its repair, and S3 uploads a killed run left open. Local workers: the driver and the
manifest are the same code for both engines (tests/test_pipeline.py runs them on Ray)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from dce_batch.cli import main
from dce_batch.errors import LegacyManifestError, ManifestError, OutputInUseError
from dce_batch.job import EnhanceConfig, run_enhance
from dce_batch.job.manifest import ManifestStore, read_manifest
from dce_batch.job.manifest.lease import acquire_lease
from dce_batch.report import build_report
from dce_batch.storage import Location

from .ray_cluster import descendants


def _image(path: Path, seed: int, size=(40, 56)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((*size, 3)) * 50).astype(np.uint8)).save(path)


def _inputs(folder: Path, count: int = 3) -> None:
    for i in range(count):
        _image(folder / f"img{i}.png", i)


def _run(source, out, **settings):
    settings = {"engine": "local", "report": False, **settings}
    return run_enhance(EnhanceConfig(input=str(source), output=str(out), **settings))


def test_a_replaced_input_is_redone_and_the_summary_says_so(tmp_path, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source)
    pa.set_memory_pool(pa.mimalloc_memory_pool())  # pyarrow's default, whatever ran before
    first = _run(source, out)
    assert pa.default_memory_pool().backend_name == "system"  # the driver's pool (use_driver_memory_pool)
    before = (out / "img1.png").read_bytes()
    _image(source / "img1.png", 99, size=(44, 60))  # retouched: other pixels, other size
    second = _run(source, out)
    assert (second.ok, second.skipped, second.changed) == (1, 2, 1)
    err = capsys.readouterr().err
    assert "1 changed since they were enhanced" in err
    # The closing progress line and the summary count the same images over the same interval.
    closing = [line for line in err.splitlines() if "images (100%)" in line][-1]
    assert f"{second.images_per_s:.2f} images/s" in closing, (closing, second.images_per_s)
    assert "changed" in second.table() and (out / "img1.png").read_bytes() != before
    latest = {r["input_relpath"]: r for r in read_manifest(str(out)).to_pylist() if r["run_id"] == second.run_id}
    assert latest["img1.png"]["status"] == "ok" and latest["img1.png"]["width"] == 60
    assert latest["img0.png"]["made_by_run_id"] == first.run_id


def test_a_touched_but_equal_input_is_redone_to_the_same_output(tmp_path):
    """Decided: the listing's modification time is the signal (as for rsync and make); a file whose
    time changed is redone, which rewrites the same output."""
    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source)
    _run(source, out)
    before = (out / "img2.png").read_bytes()
    later = time.time() + 10
    os.utime(source / "img2.png", (later, later))
    again = _run(source, out)
    assert (again.ok, again.skipped, again.changed) == (1, 2, 1)
    assert (out / "img2.png").read_bytes() == before


def test_a_replaced_input_that_no_longer_decodes_keeps_its_earlier_output_and_is_retried(tmp_path):
    """Decided: a finished output is never deleted because its input went bad (it may be the only
    good copy); the latest row says error and every rerun tries the input again."""
    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source, 2)
    _run(source, out)
    before = (out / "img1.png").read_bytes()
    (source / "img1.png").write_bytes(b"garbage")
    failed = _run(source, out)
    assert (failed.ok, failed.error, failed.skipped, failed.changed) == (0, 1, 1, 1)
    assert (out / "img1.png").read_bytes() == before
    latest = {r["input_relpath"]: r for r in read_manifest(str(out)).to_pylist() if r["run_id"] == failed.run_id}
    assert latest["img1.png"]["status"] == "error" and latest["img1.png"]["output_relpath"] is None
    again = _run(source, out)
    assert (again.error, again.skipped) == (1, 1)
    _image(source / "img1.png", 7)  # repaired
    repaired = _run(source, out)
    assert (repaired.ok, repaired.skipped) == (1, 1) and (out / "img1.png").read_bytes() != before


def test_a_moved_output_resumes_and_its_report_still_works(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source)
    _run(source, out)
    moved = tmp_path / "elsewhere" / "out"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    again = _run(source, moved)
    assert (again.ok, again.skipped) == (0, 3)
    html = Path(build_report(str(moved))).read_text()
    assert "../img0.png" in html, "outputs linked where they are now"


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source, 1)
    holder = acquire_lease(ManifestStore.of(Location.parse(str(out))), "the-first-run", heartbeat_s=3600)
    try:
        with pytest.raises(OutputInUseError, match="the-first-run"):
            _run(source, out)
        code = main(["enhance", str(source), str(out), "--engine", "local"])
        err = capsys.readouterr().err
        assert code == 2 and "the-first-run" in err and "dce-batch manifest unlock" in err
        assert not list(out.glob("*.png")), "the refused run wrote nothing"
        for action in ("repair", "upgrade"):  # nor may the manifest be rewritten under a running job
            assert main(["manifest", action, str(out)]) == 2 and "the-first-run" in capsys.readouterr().err
    finally:
        holder.release()
    assert _run(source, out).ok == 1


def test_a_damaged_part_stops_the_run_and_repair_rebuilds_the_manifest(tmp_path, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source, 4)
    _run(source, out, batch_size=1, part_flush_s=0.0)  # a part per image
    parts = sorted((out / "_manifest").glob("part-*.parquet"))
    assert len(parts) == 4
    parts[0].write_bytes(b"PAR1 not any more")
    with pytest.raises(ManifestError, match=parts[0].name):
        _run(source, out)
    assert main(["enhance", str(source), str(out), "--engine", "local"]) == 1
    assert "dce-batch manifest repair" in capsys.readouterr().err
    assert main(["manifest", "repair", str(out)]) == 0
    assert "1 damaged part(s) set aside" in capsys.readouterr().err
    again = _run(source, out)
    assert (again.ok, again.skipped) == (1, 3), "only the input the damaged part described is redone"


def test_an_output_of_the_earlier_format_is_refused_with_one_command_to_upgrade(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source, 1)
    (out / "_manifest").mkdir(parents=True)
    shutil.copy(source / "img0.png", out / "img0.png")
    now = pa.array([pd_now()], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"run_id": ["old"], "input_uri": [str(source / "img0.png")],
                             "output_uri": [str(out / "img0.png")], "status": ["ok"], "finished_at": now}),
                   out / "_manifest" / "part-old-00000.parquet")
    with pytest.raises(LegacyManifestError):
        _run(source, out)
    assert main(["enhance", str(source), str(out), "--engine", "local"]) == 2
    assert f"dce-batch manifest upgrade {out}" in capsys.readouterr().err
    assert main(["manifest", "upgrade", str(out)]) == 0
    # Its row recorded no settings: the run says so rather than resume blindly (as before the upgrade).
    with pytest.raises(Exception, match="settings not recorded"):
        _run(source, out)


def pd_now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def test_every_run_commits_its_parts_last(tmp_path, monkeypatch):
    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source, 3)
    written: list[str] = []

    def recording(method: str, label: str):
        original = getattr(ManifestStore, method)

        def write(self, *args, **kwargs):
            written.append(label)
            return original(self, *args, **kwargs)
        return write

    for method, label in (("write_part", "part"), ("write_summary", "summary"), ("write_commit", "commit")):
        monkeypatch.setattr(ManifestStore, method, recording(method, label))
    first = _run(source, out)
    second = _run(source, out)
    commits = {p.stem: json.loads(p.read_text()) for p in (out / "_manifest" / "_commits").glob("*.json")}
    assert set(commits) == {first.run_id, second.run_id}
    assert commits[second.run_id]["counts"] == {"ok": 0, "error": 0, "skipped": 3, "refused": 0, "changed": 0}
    listed = {p["name"] for c in commits.values() for p in c["parts"]}
    assert listed == {p.name for p in (out / "_manifest").glob("part-*.parquet")}
    summary_time = (out / "_manifest" / f"_run-{second.run_id}.json").stat().st_mtime_ns
    assert (out / "_manifest" / "_commits" / f"{second.run_id}.json").stat().st_mtime_ns >= summary_time
    # The order of the driver's writes themselves (file times share a coarse clock tick): each
    # run's parts, then its summary, then its commit record, last.
    runs = "".join(w[0] for w in written).replace("p", "").split("c")
    assert written[-2:] == ["summary", "commit"] and runs == ["s", "s", ""]


@pytest.mark.s3
def test_on_s3_a_run_aborts_the_uploads_a_killed_run_left_open_and_holds_a_lease(s3_server, s3_bucket, tmp_path):
    client = s3_server.client()
    for i in range(2):
        source = tmp_path / f"img{i}.png"
        _image(source, i)
        client.put_object(Bucket=s3_bucket, Key=f"raw/img{i}.png", Body=source.read_bytes())
    left_open = client.create_multipart_upload(Bucket=s3_bucket, Key="out/big.png")["UploadId"]
    elsewhere = client.create_multipart_upload(Bucket=s3_bucket, Key="other/big.png")["UploadId"]
    # Another job's OUTPUT nested in this one (it has a manifest): its uploads are its own.
    client.put_object(Bucket=s3_bucket, Key="out/theirs/_manifest/_lease.json", Body=b"{}")
    nested = client.create_multipart_upload(Bucket=s3_bucket, Key="out/theirs/big.png")["UploadId"]
    options = s3_server.s3_options()
    store = ManifestStore.of(Location.parse(f"s3://{s3_bucket}/out", options))
    holder = acquire_lease(store, "holder", heartbeat_s=3600)
    with pytest.raises(OutputInUseError, match="holder"):
        run_enhance(EnhanceConfig(input=f"s3://{s3_bucket}/raw/", output=f"s3://{s3_bucket}/out", s3=options,
                                  engine="local"))
    holder.release()
    summary = run_enhance(EnhanceConfig(input=f"s3://{s3_bucket}/raw/", output=f"s3://{s3_bucket}/out", s3=options,
                                        engine="local"))
    assert summary.ok == 2
    uploads = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])}
    assert left_open not in uploads and elsewhere in uploads and nested in uploads
    assert "out/_manifest/_lease.json" not in s3_server.list_keys(s3_bucket, "out/")


@pytest.mark.slow
def test_a_killed_local_worker_stops_the_run_with_one_line_and_loses_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    source, out = tmp_path / "in", tmp_path / "out"
    for i in range(24):
        _image(source / f"img{i:02d}.png", i, size=(300, 400))
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, str(repo / "jobs" / "enhance.py"), str(source), str(out), "--engine",
                                "local", "--batch-size", "1", "--num-actors", "1:2", "--manifest-flush-seconds", "0",
                                "--no-report"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("_manifest/part-*.parquet"))) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "no parts"
            time.sleep(0.05)
        workers = sorted(descendants(process.pid, generation=2))
        assert workers, "the local pool's workers (children of its fork server)"
        os.kill(workers[0], signal.SIGKILL)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    own = [line for line in err.splitlines() if line.startswith("dce-batch enhance:")]
    assert own == [own[0]] and own[0].startswith("dce-batch enhance: WorkerLostError: a worker process died"), err
    assert "warn" not in err.lower(), err
    in_parts = sum(1 for r in read_manifest(str(out)).to_pylist() if r["status"] == "ok")
    assert in_parts >= 2
    summary = _run(source, out)
    assert summary.skipped == in_parts and summary.ok == 24 - in_parts and summary.error == 0


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under ``root``."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _refusals(tmp_path: Path) -> dict[str, list[str]]:
    """Runs refused with exit 2 once listing or sizing has begun, each with an INPUT that exists."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    (tmp_path / "empty.txt").write_text("")
    return {
        "an empty list file": [str(tmp_path / "empty.txt")],
        "an empty INPUT folder": [str(tmp_path / "empty")],
        "more actors than CPUs": [str(tmp_path / "in"), "--num-actors", "64"],
        "an actor memory no machine has": [str(tmp_path / "in"), "--actor-memory", "1000T"],
    }


def test_a_refused_run_leaves_no_output_behind(tmp_path, capsys):
    _inputs(tmp_path / "in", 1)
    for case, argv in _refusals(tmp_path).items():
        out = tmp_path / "new" / "out"  # its parent is new too
        code = main(["enhance", argv[0], str(out), *argv[1:], "--engine", "local", "--no-report"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (case, err)
        assert not (tmp_path / "new").exists(), f"{case}: {_tree(tmp_path / 'new')}"


def test_a_refused_run_leaves_an_existing_output_as_it_was(tmp_path, capsys):
    _inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    first = _run(tmp_path / "in", out)
    assert first.ok == 2
    from dce_batch.storage import temp_tag

    # A write of the first run killed midway: debris the next run that goes ahead removes.
    (out / f".img0.png.{temp_tag(first.run_id)}456789.tmp").write_bytes(b"half")
    before = _tree(out)
    cases = {**_refusals(tmp_path),
             "other settings than the outputs were made with": [str(tmp_path / "in"), "--strength", "0.5"],
             "--overwrite on a machine too small": [str(tmp_path / "in"), "--overwrite", "--num-actors", "64"]}
    for case, argv in cases.items():
        code = main(["enhance", argv[0], str(out), *argv[1:], "--engine", "local", "--no-report"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (case, err)
        assert _tree(out) == before, case


def test_a_finished_run_whose_clean_up_fails_keeps_its_result(tmp_path, monkeypatch, capsys):
    """A worker wrote a part and died before replying; its batch ran again. Deleting that stray
    part (all its rows repeat) fails on the storage: the run still finishes, with its summary and
    commit record, and says what it left."""
    import dce_batch.job.driver as driver
    from dce_batch.job.manifest.parts import PartLedger
    from dce_batch.job.manifest.store import part_name, run_of_part
    from tests.failing_fs import no_part_deletes

    source, out = tmp_path / "in", tmp_path / "out"
    _inputs(source, 2)

    class FailingOutput(Location):
        @classmethod
        def parse(cls, uri, s3=None):
            location = Location.parse(uri, s3)
            if location.uri != str(out):
                return location
            return Location(uri=location.uri, filesystem=no_part_deletes(), path=location.path)

    write_held = PartLedger.write_held

    def write_held_and_a_dead_worker_s_part(self):
        written = write_held(self)
        name = sorted(self.written)[0]  # what a worker that died before replying had written too
        self.store.write_part(part_name(run_of_part(name), "wdead", 0), self.store.read_part(name))
        return written

    monkeypatch.setattr(driver, "Location", FailingOutput)
    monkeypatch.setattr(PartLedger, "write_held", write_held_and_a_dead_worker_s_part)
    summary = _run(source, out)
    assert (summary.ok, summary.error) == (2, 0)
    err = capsys.readouterr().err
    assert "could not delete" in err and "injected failure" in err, err
    store = ManifestStore.of(Location.parse(str(out)))
    assert (out / "_manifest" / f"_run-{summary.run_id}.json").exists()
    assert [c.status for c in store.read_commits() if c.run_id == summary.run_id] == ["finished"]
    rows = [r for r in read_manifest(str(out)).to_pylist() if r["run_id"] == summary.run_id]
    assert sorted(r["input_relpath"] for r in rows) == ["img0.png", "img1.png"]
