"""The enhancement job end to end on a real local Ray cluster."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dce_batch.errors import ConfigError, InputNotFoundError
from dce_batch.imaging import decode_image, mean_luminance
from dce_batch.enhance.precision import resolve_precision
from dce_batch.job import EnhanceConfig, run_enhance
from dce_batch.job.manifest import MANIFEST_SCHEMA, read_manifest
from dce_batch.job.sizing import ACTOR_BASE_MEMORY, FUSED_BYTES_PER_PIXEL
from dce_batch.ray_stderr import is_core_log_line
from dce_batch.enhance.weights import load_weights

from .ray_cluster import alive, cli_env, descendants, processes_of, stop_processes_of, writers_of

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def _dark(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.25 + 0.2 * np.sin(yy / 13.0)[..., None] * np.cos(xx / 17.0)[..., None] + 0.1 * rng.random((h, w, 3))
    return (np.clip(base * 0.35, 0, 1) * 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray, fmt: str, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt, **kwargs)


@pytest.fixture()
def mixed_inputs(tmp_path: Path) -> Path:
    """Mixed sizes and formats in nested folders, plus a corrupt and a truncated file."""
    root = tmp_path / "in"
    _save(root / "a.jpg", _dark(120, 160, 1), "JPEG", quality=92)
    _save(root / "sub" / "b.png", _dark(97, 131, 2), "PNG")
    _save(root / "sub" / "deeper" / "c.webp", _dark(64, 80, 3), "WEBP", quality=90)
    _save(root / "d.bmp", _dark(50, 70, 4), "BMP")
    gray = _dark(60, 90, 5)[..., 0]
    _save(root / "e_gray.png", gray, "PNG")
    rgba = np.dstack([_dark(40, 60, 6), np.full((40, 60), 200, np.uint8)])
    _save(root / "f_alpha.png", rgba, "PNG")
    _save(root / "large.png", _dark(700, 900, 7), "PNG")  # tiled with the small budget below
    (root / "corrupt.jpg").write_bytes(b"this is not an image at all")
    buffer = io.BytesIO()
    Image.fromarray(_dark(200, 200, 8)).save(buffer, "JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (root / "notes.txt").write_text("not an input: wrong extension")
    return root


# A pool of one actor where its size is not what a test is about: each actor is a process that
# imports torch and loads the model, seconds on a 2-core machine. The default pool (an actor per
# CPU) runs in test_local_folder_end_to_end, the staged run of the staged-pipeline test, and the
# kill and interrupt tests.
ONE_ACTOR = (1, 1)


def _config(input_dir, output_dir, **overrides) -> EnhanceConfig:
    settings = dict(input=str(input_dir), output=str(output_dir), batch_size=2, max_full_frame_pixels=300_000,
                    tile_size=256, progress_interval_s=0.5)
    settings.update(overrides)
    return EnhanceConfig(**settings)


def _manifest(output_dir) -> list[dict]:
    return read_manifest(str(output_dir)).to_pylist()


@pytest.mark.slow
def test_local_folder_end_to_end(ray_local, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    summary = run_enhance(_config(mixed_inputs, out))
    rows = {Path(r["input_uri"]).name: r for r in _manifest(out)}
    assert set(rows) == {"a.jpg", "b.png", "c.webp", "d.bmp", "e_gray.png", "f_alpha.png", "large.png",
                         "corrupt.jpg", "truncated.jpg"}
    assert (summary.total, summary.ok, summary.error, summary.skipped) == (9, 7, 2, 0)
    weights = load_weights()
    auto_precision = resolve_precision("auto", torch.device("cpu"))
    for name, row in rows.items():
        assert row["run_id"] == summary.run_id
        assert row["model_sha256"] == weights.meta.sha256 and row["model_name"] == weights.meta.name
        # The precision that really ran: what "auto" means on this CPU (int8 on x86).
        assert row["strength"] == 1.0 and row["variant"] == "full" and row["precision"] == auto_precision
        assert row["duration_ms"] > 0 and row["worker"] and row["finished_at"] is not None
        if name in ("corrupt.jpg", "truncated.jpg"):
            assert row["status"] == "error" and row["output_relpath"] is None
            expected = "UnsupportedImageError" if name == "corrupt.jpg" else "CorruptImageError"
            assert row["error"].startswith(expected + ": ")
            continue
        assert row["status"] == "ok" and row["error"] is None
        assert row["made_by_run_id"] == summary.run_id and json.loads(row["settings"])["strength"] == 1.0
        source = decode_image(Path(row["input_uri"]).read_bytes())
        output_path = out / row["output_relpath"]
        assert output_path.is_file() and str(output_path).startswith(str(out))
        # mirrors the input's relative path, and both are recorded relative
        assert row["output_relpath"] == row["input_relpath"] == str(Path(row["input_uri"]).relative_to(mixed_inputs))
        assert row["input_size"] == Path(row["input_uri"]).stat().st_size and row["input_mtime"] is not None
        result = decode_image(output_path.read_bytes())
        assert (result.width, result.height) == (source.width, source.height) == (row["width"], row["height"])
        assert row["bytes_in"] == Path(row["input_uri"]).stat().st_size
        assert row["bytes_out"] == output_path.stat().st_size
        assert row["mean_luma_in"] == pytest.approx(mean_luminance(source.pixels), abs=1e-5)
        assert mean_luminance(result.pixels) > mean_luminance(source.pixels) + 0.05
        assert row["mean_luma_out"] > row["mean_luma_in"]
        assert row["input_format"] == source.format == row["output_format"]
        assert row["tiled"] == (name == "large.png")
    assert decode_image((out / "e_gray.png").read_bytes()).grayscale
    assert decode_image((out / "f_alpha.png").read_bytes()).alpha is not None
    # One schema for every file; the summary JSON sits beside the parts and is not read as data.
    for part in (out / "_manifest").glob("*.parquet"):
        assert pq.read_schema(part).equals(MANIFEST_SCHEMA, check_metadata=False)
    summary_file = out / "_manifest" / f"_run-{summary.run_id}.json"
    saved = json.loads(summary_file.read_text())
    assert saved["ok"] == 7 and saved["error"] == 2 and saved["versions"]["ray"]
    assert "s3" not in saved["settings"]
    commit = json.loads((out / "_manifest" / "_commits" / f"{summary.run_id}.json").read_text())
    assert commit["status"] == "finished" and sum(p["rows"] for p in commit["parts"]) == 9
    assert sorted(p["name"] for p in commit["parts"]) == sorted(p.name for p in (out / "_manifest").glob("*.parquet"))
    assert not (out / "_manifest" / "_lease.json").exists(), "the lease is given back"
    import pandas as pd

    frame = pd.read_parquet(out / "_manifest")
    assert len(frame) == 9 and set(frame["status"]) == {"ok", "error"}
    import duckdb

    counts = dict(duckdb.sql(f"SELECT status, count(*) FROM '{out}/_manifest/*.parquet' GROUP BY 1").fetchall())
    assert counts == {"ok": 7, "error": 2}
    assert not any(out.rglob("*.tmp")), "no temporary files may be left behind"


@pytest.mark.slow
def test_resume_skips_finished_inputs_and_overwrite_redoes_all(ray_local, tmp_path):
    source = tmp_path / "in"
    for i in range(4):
        _save(source / f"img{i}.png", _dark(40, 50, i), "PNG")
    out = tmp_path / "out"
    first = run_enhance(_config(source, out, num_actors=ONE_ACTOR))
    assert first.ok == 4
    (out / "img2.png").unlink()  # an output lost since: must be redone, not skipped
    second = run_enhance(_config(source, out, num_actors=ONE_ACTOR))
    assert (second.ok, second.skipped, second.error) == (1, 3, 0)
    rows = _manifest(out)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert sorted(Path(r["input_uri"]).name for r in ok_rows if r["run_id"] == second.run_id) == ["img2.png"]
    skipped = [r for r in rows if r["run_id"] == second.run_id and r["status"] == "skipped"]
    assert sorted(Path(r["input_uri"]).name for r in skipped) == ["img0.png", "img1.png", "img3.png"]
    assert all(r["output_relpath"] and r["made_by_run_id"] == first.run_id for r in skipped)

    # --overwrite is decided when the driver plans, as for either engine: local workers spare a
    # third Ray run here
    third = run_enhance(_config(source, out, overwrite=True, engine="local"))
    assert (third.ok, third.skipped) == (4, 0)
    rows = _manifest(out)
    assert {r["run_id"] for r in rows} == {third.run_id}, "--overwrite replaces the manifest"
    per_input = {}
    for r in rows:
        per_input.setdefault(r["input_uri"], []).append(r["status"])
    assert all(statuses == ["ok"] for statuses in per_input.values())


def test_resuming_with_other_settings_is_refused_and_changes_nothing(tmp_path):
    # Planning refuses before any engine starts, so local worker processes serve (the Ray engine
    # plans with the same code: test_resume_skips_finished_inputs_and_overwrite_redoes_all).
    source = tmp_path / "in"
    for i in range(3):
        _save(source / f"img{i}.png", _dark(40, 50, i), "PNG")
    out = tmp_path / "out"
    run_enhance(_config(source, out, strength=1.0, engine="local"))
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    with pytest.raises(ConfigError, match=r"strength 1\.0 -> 0\.3") as info:
        run_enhance(_config(source, out, strength=0.3, engine="local"))
    assert "--overwrite" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before
    assert len(_manifest(out)) == 3, "the refused run wrote no rows"
    redo = run_enhance(_config(source, out, strength=0.3, overwrite=True, engine="local"))
    assert redo.ok == 3 and all(r["strength"] == pytest.approx(0.3) for r in _manifest(out))


def test_a_rerun_removes_the_temp_files_of_writes_a_killed_run_never_finished(tmp_path, capsys):
    # A writer killed mid-write leaves ".<name>.<run tag><random>.tmp" (tests below kill real runs;
    # here the debris is laid down by hand so that every case is certain to occur). The dead run
    # is known to this OUTPUT by the part it wrote; temp files of other writers are not touched.
    from dce_batch.job.manifest import ManifestStore, rows_to_table
    from dce_batch.job.manifest.store import part_name
    from dce_batch.storage import Location, temp_tag

    source = tmp_path / "in"
    for i in range(2):
        _save(source / f"img{i}.png", _dark(30, 40, i), "PNG")
    out = tmp_path / "out"
    ManifestStore.of(Location.parse(str(out))).write_part(part_name("dead-run", "w1", 0), rows_to_table([]))
    tag, foreign = temp_tag("dead-run"), temp_tag("another job")
    debris = [out / f".img0.png.{tag}456789.tmp", out / "sub" / f".x.png.{tag}012345.tmp",
              out / "_manifest" / f".part-1.parquet.{tag}00ffff.tmp"]
    users = [out / "notes.tmp", out / ".draft.tmp", out / "sub" / "img.png.tmp", out / f".y.png.{foreign}000000.tmp"]
    for path in debris + users:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    first = run_enhance(_config(source, out, engine="local"))
    assert first.ok == 2
    assert [p for p in debris if p.exists()] == []
    assert all(p.read_bytes() == b"half" for p in users), "files this OUTPUT's runs did not make are kept"
    assert "removed 3 temp files" in capsys.readouterr().err
    # With outputs in the manifest (the resume path lists OUTPUT anyway)
    debris[0].write_bytes(b"half")
    (out / "img1.png").unlink()
    second = run_enhance(_config(source, out, engine="local"))
    assert (second.ok, second.skipped) == (1, 1) and not debris[0].exists()
    assert sorted(out.rglob("*.tmp")) == sorted(users)


def test_a_broken_link_a_named_pipe_or_an_oversized_file_becomes_a_row_with_the_reason(tmp_path):
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    (source / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    os.mkfifo(source / "pipe.png")  # opened, it would wait for a writer forever
    with open(source / "huge.jpg", "wb") as sparse:  # 1.2 GB (sparse, no disk), more than 100 MP can take
        sparse.truncate(1_200_000_000)
    out = tmp_path / "out"
    summary = run_enhance(_config(source, out, engine="local"))
    assert (summary.total, summary.ok, summary.error) == (4, 1, 3)
    rows = {Path(r["input_uri"]).name: r for r in _manifest(out)}
    assert rows["gone.jpg"]["status"] == "error" and rows["gone.jpg"]["output_relpath"] is None
    assert "a broken symbolic link" in rows["gone.jpg"]["error"] and "deleted.jpg" in rows["gone.jpg"]["error"]
    assert "it is a named pipe (FIFO), not a regular file" in rows["pipe.png"]["error"]
    assert rows["huge.jpg"]["error"].startswith("ImageTooLargeError: the file is 1.20 GB, more than any image of up")


def test_link_loops_and_names_that_are_not_utf8_neither_hang_nor_fail_the_run(tmp_path, capsys):
    """A loop of folder links is listed once and reported; an input named with byte 0xff gets an
    error row; a file with such a name in OUTPUT is left alone; the other inputs are enhanced."""
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    _save(source / "sub" / "y.png", _dark(30, 30, 1), "PNG")
    (source / "loop").symlink_to(".")
    (source / "sub" / "back").symlink_to("..")
    bad_name = os.fsdecode(b"bad\xff.png")
    _save(source / bad_name, _dark(20, 20, 2), "PNG")
    out = tmp_path / "out"
    out.mkdir()
    (out / os.fsdecode(b"theirs\xfe.txt")).write_bytes(b"not the job's")
    summary = run_enhance(_config(source, out, engine="local"))
    assert (summary.total, summary.ok, summary.error) == (3, 2, 1)
    rows = {r["input_relpath"]: r for r in _manifest(out)}
    assert rows["bad\\xff.png"]["error"].startswith("UnsupportedNameError") and rows["x.png"]["status"] == "ok"
    assert (out / os.fsdecode(b"theirs\xfe.txt")).read_bytes() == b"not the job's"
    assert "loop" in capsys.readouterr().err
    again = run_enhance(_config(source, out, engine="local"))  # a rerun: the good ones are done
    assert (again.skipped, again.error) == (2, 1)


def test_images_without_usable_signal_each_get_an_output_and_a_row(tmp_path):
    """All black, all white, one colour, 1x1: valid outputs, ok rows, finite figures, no crash."""
    source = tmp_path / "in"
    _save(source / "black.png", np.zeros((48, 64, 3), np.uint8), "PNG")
    _save(source / "white.png", np.full((48, 64, 3), 255, np.uint8), "PNG")
    _save(source / "colour.png", np.broadcast_to(np.array([80, 10, 150], np.uint8), (48, 64, 3)).copy(), "PNG")
    _save(source / "one.png", np.full((1, 1, 3), 7, np.uint8), "PNG")
    out = tmp_path / "out"
    summary = run_enhance(_config(source, out, engine="local"))
    assert (summary.total, summary.ok, summary.error) == (4, 4, 0)
    rows = {r["input_relpath"]: r for r in _manifest(out)}
    assert all(np.isfinite(r["mean_luma_out"]) for r in rows.values())
    for name, expected in (("black.png", 0), ("white.png", 255)):
        pixels = decode_image((out / name).read_bytes()).pixels
        assert int(pixels.min()) == int(pixels.max()) == expected, name  # black stays black, white white
    assert decode_image((out / "one.png").read_bytes()).pixels.shape[:2] == (1, 1)


def test_changing_the_format_is_not_a_resume(tmp_path):
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    out = tmp_path / "out"
    run_enhance(_config(source, out, engine="local"))
    again = run_enhance(_config(source, out, format="webp", quality=80, engine="local"))
    assert again.ok == 1 and again.skipped == 0
    assert (out / "x.webp").is_file() and decode_image((out / "x.webp").read_bytes()).format == "WEBP"


@pytest.mark.slow
def test_published_checkpoint_as_weights(ray_local, tmp_path):
    """--weights also takes the authors' .pth checkpoints, imported on the fly."""
    from .shared_data import shared_path

    checkpoint = shared_path("reference_weights", "zero_dce_pp_epoch99.pth")
    source = tmp_path / "in"
    _save(source / "x.png", _dark(90, 120), "PNG")
    summary = run_enhance(_config(source, tmp_path / "out", weights=str(checkpoint), scale=4, num_actors=ONE_ACTOR))
    rows = _manifest(tmp_path / "out")
    assert summary.ok == 1 and rows[0]["model_name"] == "zero_dce_pp_epoch99" and rows[0]["variant"] == "fast"
    assert rows[0]["mean_luma_out"] > rows[0]["mean_luma_in"]


@pytest.mark.slow
def test_list_file_input(ray_local, tmp_path):
    """A list of URIs instead of a listing: an entry under the list file's folder keeps its path
    below it, whatever else the list holds, so adding an entry renames nothing."""
    source = tmp_path / "photos"
    _save(source / "2024" / "a.jpg", _dark(40, 40, 1), "JPEG")
    _save(source / "2025" / "b.png", _dark(40, 40, 2), "PNG")
    _save(source / "2025" / "c.png", _dark(40, 40, 3), "PNG")
    _save(source / "2025" / "not_listed.png", _dark(40, 40, 4), "PNG")
    listing = source / "todo.txt"
    listing.write_text(f"# inputs\n{source / '2025' / 'b.png'}\n2025/c.png\n")
    summary = run_enhance(_config(listing, tmp_path / "out", num_actors=ONE_ACTOR))
    assert summary.ok == 2 and summary.total == 2
    assert (tmp_path / "out" / "2025" / "b.png").is_file() and (tmp_path / "out" / "2025" / "c.png").is_file()
    assert not (tmp_path / "out" / "2025" / "not_listed.png").exists()
    # An entry in another folder: b and c keep their names, only the new one is done (local workers:
    # planning is the same for both engines).
    listing.write_text(listing.read_text() + "2024/a.jpg\n")
    again = run_enhance(_config(listing, tmp_path / "out", engine="local"))
    assert (again.ok, again.skipped) == (1, 2)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").glob("20*/*")) == \
        ["2024/a.jpg", "2025/b.png", "2025/c.png"]


def test_output_inside_input_is_refused(tmp_path):
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    with pytest.raises(ConfigError, match="inside INPUT"):
        run_enhance(_config(source, source / "enhanced"))
    with pytest.raises(ConfigError, match="inside INPUT"):
        run_enhance(_config(source, source))
    with pytest.raises(InputNotFoundError, match="does not exist"):
        run_enhance(_config(tmp_path / "nope", tmp_path / "out"))
    assert not (source / "enhanced").exists()


def test_a_heic_photo_gets_a_row_that_says_to_convert_it(tmp_path):
    source = tmp_path / "in"
    _save(source / "a.png", _dark(30, 30), "PNG")
    (source / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    summary = run_enhance(_config(source, tmp_path / "out", engine="local", report=False))
    assert (summary.ok, summary.error, summary.refused) == (1, 1, 1)
    rows = {r["input_relpath"]: r for r in _manifest(tmp_path / "out")}
    assert rows["IMG_0001.HEIC"]["status"] == "error" and rows["IMG_0001.HEIC"]["output_relpath"] is None
    assert rows["IMG_0001.HEIC"]["error"].startswith("UnsupportedImageError: HEIC/HEIF photos cannot be decoded")


@pytest.mark.parametrize("name", ["photos[1]", "q?x", "star*x"])
def test_a_folder_named_like_a_glob_is_that_folder(tmp_path, name):
    """INPUT "photos[1]" exists as named: it is a folder, not a pattern, for the listing and for
    the check that keeps OUTPUT out of INPUT: an OUTPUT beside it is allowed, one inside it refused."""
    source = tmp_path / name
    _save(source / "x.png", _dark(30, 30), "PNG")
    summary = run_enhance(_config(source, tmp_path / "out", engine="local", report=False))
    assert summary.ok == 1 and (tmp_path / "out" / "x.png").is_file()
    with pytest.raises(ConfigError, match="inside INPUT"):
        run_enhance(_config(source, source / "enhanced", engine="local", report=False))
    # A pattern is still a pattern: its fixed leading folder is what OUTPUT must stay out of.
    with pytest.raises(ConfigError, match="inside INPUT"):
        run_enhance(_config(tmp_path / "*" / "*.png", tmp_path / "enhanced", engine="local", report=False))


@pytest.mark.slow
def test_a_cluster_too_small_for_the_pool_is_refused_before_the_manifest_changes(ray_local, tmp_path):
    """Ray sizes the pool once the cluster is up: a refusal there (exit 2) writes no planning row
    and no commit record into an OUTPUT that holds finished runs."""
    source, out = tmp_path / "in", tmp_path / "out"
    _save(source / "a.png", _dark(30, 30), "PNG")
    assert run_enhance(_config(source, out, engine="local", report=False)).ok == 1
    _save(source / "b.png", _dark(30, 30, 1), "PNG")  # something to do, and a skipped row to write
    before = {str(p.relative_to(out)): (None if p.is_dir() else p.read_bytes()) for p in sorted(out.rglob("*"))}
    with pytest.raises(ConfigError, match="do not fit"):
        run_enhance(_config(source, out, engine="ray", num_actors=(64, 64), report=False))
    assert {str(p.relative_to(out)): (None if p.is_dir() else p.read_bytes()) for p in sorted(out.rglob("*"))} == before


@pytest.mark.slow
def test_output_inside_input_when_allowed(ray_local, tmp_path):
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    summary = run_enhance(_config(source, source / "enhanced", allow_output_inside_input=True, num_actors=ONE_ACTOR))
    assert summary.ok == 1 and (source / "enhanced" / "x.png").is_file()


@pytest.mark.slow
def test_staged_pipeline_gives_the_fused_pipeline_s_outputs(ray_local, mixed_inputs, tmp_path):
    """The GPU-node pipeline (decode tasks -> network actors on batches of windows -> encode
    tasks) runs on CPUs too: same images, same rows, as the fused one."""
    fused = run_enhance(_config(mixed_inputs, tmp_path / "fused", precision="fp32", num_actors=ONE_ACTOR))
    staged = run_enhance(_config(mixed_inputs, tmp_path / "staged", precision="fp32", pipeline="staged",
                                 cpus_per_actor=0.5, batch_size=4))
    assert (staged.ok, staged.error) == (fused.ok, fused.error) == (7, 2)
    fused_rows = {Path(r["input_uri"]).name: r for r in _manifest(tmp_path / "fused")}
    for row in _manifest(tmp_path / "staged"):
        name = Path(row["input_uri"]).name
        assert row["status"] == fused_rows[name]["status"] and row["error"] == fused_rows[name]["error"]
        if row["status"] == "ok":
            a = decode_image((tmp_path / "staged" / row["output_relpath"]).read_bytes()).pixels.astype(int)
            b = decode_image((tmp_path / "fused" / fused_rows[name]["output_relpath"]).read_bytes()).pixels.astype(int)
            if row["output_format"] in ("PNG", "BMP"):  # lossless: the pixels themselves
                assert np.abs(a - b).max() <= 1
            assert row["worker"] and row["precision"] == "fp32" and row["tiled"] == fused_rows[name]["tiled"]


@pytest.mark.slow
def test_an_image_larger_than_the_actor_memory_allows_is_a_row_not_a_crash(ray_local, tmp_path):
    source = tmp_path / "in"
    _save(source / "small.png", _dark(40, 50), "PNG")
    _save(source / "large.png", _dark(1000, 1200), "PNG")  # 1.2 MP
    memory = ACTOR_BASE_MEMORY + 1_000_000 * FUSED_BYTES_PER_PIXEL  # room for one image of 1 MP per call
    summary = run_enhance(_config(source, tmp_path / "out", actor_memory=memory, batch_size=1, num_actors=ONE_ACTOR))
    rows = {Path(r["input_uri"]).name: r for r in _manifest(tmp_path / "out")}
    assert (summary.ok, summary.error) == (1, 1) and rows["small.png"]["status"] == "ok"
    assert rows["large.png"]["error"].startswith("ImageTooLargeError") and "--actor-memory" in rows["large.png"]["error"]


def test_a_machine_short_of_memory_still_runs_and_rows_say_which_images_need_more(tmp_path, monkeypatch):
    """The local engine reads free memory once; too little for --max-pixels is a warning, not exit 2."""
    import dce_batch.job.engines.local as local

    source = tmp_path / "in"
    _save(source / "small.png", _dark(40, 50), "PNG")
    _save(source / "large.png", np.zeros((3000, 4400, 3), np.uint8), "PNG")  # 13.2 MP, refused from its header
    free = ACTOR_BASE_MEMORY + 2 * 12_000_000 * FUSED_BYTES_PER_PIXEL  # the pool is given: 2 images of 12 MP a call
    monkeypatch.setattr(local, "_available_memory", lambda: free / 0.8)  # a machine with that much free
    said = []
    summary = run_enhance(_config(source, tmp_path / "out", engine="local"), log=said.append)
    rows = {Path(r["input_uri"]).name: r for r in _manifest(tmp_path / "out")}
    assert (summary.ok, summary.error) == (1, 1) and rows["small.png"]["status"] == "ok"
    assert rows["large.png"]["error"].startswith("ImageTooLargeError"), rows["large.png"]["error"]
    assert "up to 12 MP; run again with more memory free" in rows["large.png"]["error"], rows["large.png"]["error"]
    assert any(line.startswith("warning: images over 12 MP will get error rows") for line in said), said


@pytest.mark.slow
def test_s3_prefix_to_prefix(ray_local, s3_server, s3_bucket, tmp_path):
    client = s3_server.client()
    for i, (fmt, ext) in enumerate([("JPEG", "jpg"), ("PNG", "png"), ("JPEG", "jpg")]):
        buffer = io.BytesIO()
        Image.fromarray(_dark(48, 64, i)).save(buffer, fmt)
        client.put_object(Bucket=s3_bucket, Key=f"raw/day{i % 2}/img{i}.{ext}", Body=buffer.getvalue())
    client.put_object(Bucket=s3_bucket, Key="raw/day0/broken.png", Body=b"\x89PNG\r\n\x1a\n broken")
    summary = run_enhance(_config(f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/enhanced/", s3=s3_server.s3_options(),
                                  num_actors=ONE_ACTOR))
    assert (summary.ok, summary.error) == (3, 1)
    keys = set(s3_server.list_keys(s3_bucket))
    assert {"enhanced/day0/img0.jpg", "enhanced/day1/img1.png", "enhanced/day0/img2.jpg"} <= keys
    assert any(k.startswith("enhanced/_manifest/part-") and k.endswith(".parquet") for k in keys)
    assert f"enhanced/_manifest/_run-{summary.run_id}.json" in keys
    assert f"enhanced/_manifest/_commits/{summary.run_id}.json" in keys
    assert "enhanced/_manifest/_lease.json" not in keys, "the lease is given back"
    body = client.get_object(Bucket=s3_bucket, Key="enhanced/day1/img1.png")["Body"].read()
    assert decode_image(body).width == 64
    rows = read_manifest(f"s3://{s3_bucket}/enhanced", s3=s3_server.s3_options()).to_pylist()
    assert sorted(r["status"] for r in rows) == ["error", "ok", "ok", "ok"]
    assert all(r["input_uri"].startswith(f"s3://{s3_bucket}/raw/") for r in rows)
    assert all(r["input_etag"] and r["input_size"] for r in rows)
    assert sorted(r["output_relpath"] for r in rows if r["status"] == "ok") == ["day0/img0.jpg", "day0/img2.jpg",
                                                                               "day1/img1.png"]
    # resume against object storage too
    again = run_enhance(_config(f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/enhanced/", s3=s3_server.s3_options(),
                                num_actors=ONE_ACTOR))
    assert (again.ok, again.skipped, again.error) == (0, 3, 1)
    # An object overwritten with new content (a new ETag) is redone, and the summary says so.
    buffer = io.BytesIO()
    Image.fromarray(_dark(48, 64, 99)).save(buffer, "PNG")
    client.put_object(Bucket=s3_bucket, Key="raw/day1/img1.png", Body=buffer.getvalue())
    third = run_enhance(_config(f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/enhanced/", s3=s3_server.s3_options(),
                                engine="local"))
    assert (third.ok, third.skipped, third.changed) == (1, 2, 1)


# --------------------------------------------------------------------------------------------
# The command line, and processes that die
# --------------------------------------------------------------------------------------------


def _run_cli(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "enhance.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_default_run_enhances_the_bundled_samples(tmp_path, ray_tmp):
    """The README's first command: no arguments, samples -> ./enhanced/ and a report; with no cluster
    running, 5 images run in local worker processes. The same run on Ray gives the same images."""
    result = _run_cli([], cwd=tmp_path, env=cli_env(ray_tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(p.name for p in (tmp_path / "enhanced").iterdir() if p.is_file())
    samples = sorted(p.name for p in (REPO / "dce_batch" / "samples").iterdir() if p.suffix in (".jpg", ".png"))
    assert outputs == samples and len(samples) >= 4
    assert "ok" in result.stdout and "error" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == f"report: {tmp_path / 'enhanced' / '_report' / 'index.html'}"
    summary = json.loads(next((tmp_path / "enhanced" / "_manifest").glob("_run-*.json")).read_text())
    assert summary["cluster"]["engine"] == "local" and "local processes" in result.stderr
    # What "auto" ran as, per image (the settings keep the request).
    assert summary["settings"]["precision"] == "auto"
    assert sum(summary["precisions"].values()) == len(samples) and set(summary["precisions"]) <= {"fp32", "bf16", "int8"}
    precision_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("precision"))
    ran_in = ", ".join(f"{name} {count:,}" for name, count in sorted(summary["precisions"].items()))
    assert precision_line.split(None, 1)[1].strip() == ran_in, precision_line
    assert "Warning" not in result.stderr, "nothing for the user to puzzle over (e.g. leaked semaphores)"
    on_ray = _run_cli(["--engine", "ray", "--no-report", str(REPO / "dce_batch" / "samples"), str(tmp_path / "ray")],
                      cwd=tmp_path, env=cli_env(ray_tmp))
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    # Quiet: none of Ray's C++ log lines (Ray Data's ERROR about constructor arguments included),
    # though a real C++ error would get through (tests/test_ray_stderr.py).
    assert not [line for line in on_ray.stderr.splitlines() if is_core_log_line(line)], on_ray.stderr[-3000:]
    # Nor Ray's Python warnings (token authentication on the local cluster the run started).
    assert "WARNING" not in on_ray.stderr, on_ray.stderr[-3000:]
    for name in samples:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "enhanced" / name).read_bytes()
    _wait_for(lambda: not processes_of(ray_tmp), 30, what="the local cluster it started to stop with it")


@pytest.mark.slow
def test_cli_exit_codes(tmp_path, ray_tmp):
    source = tmp_path / "in"
    _save(source / "good.png", _dark(30, 30), "PNG")
    (source / "bad.jpg").write_bytes(b"nope")
    env = cli_env(ray_tmp)
    # Exit statuses do not depend on the engine: local processes spare starting a Ray cluster here
    # (the CLI's own Ray cluster is tested by test_cli_default_run_enhances_the_bundled_samples and
    # the interrupted and killed runs below)
    result = _run_cli([str(source), str(tmp_path / "out"), "--engine", "local"], cwd=tmp_path, env=env)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "UnsupportedImageError" in result.stdout
    # 2: invalid arguments, each with a message that says what to change
    refused = _run_cli([str(source), str(source / "out")], cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "inside INPUT" in refused.stderr
    invalid = _run_cli([str(source), str(tmp_path / "o2"), "--strength", "3"], cwd=tmp_path, env=env)
    assert invalid.returncode == 2 and "strength" in invalid.stderr
    missing = _run_cli([str(tmp_path / "nothing-here"), str(tmp_path / "o3")], cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    changed = _run_cli([str(source), str(tmp_path / "out"), "--strength", "0.5"], cwd=tmp_path, env=env)
    assert changed.returncode == 2 and "strength 1.0 -> 0.5" in changed.stderr, changed.stderr[-2000:]
    # 1: the job failed at run time (here OUTPUT cannot be written: it is a file)
    (tmp_path / "blocked").write_text("a file where OUTPUT should be")
    failed = _run_cli([str(source), str(tmp_path / "blocked")], cwd=tmp_path, env=env)
    assert failed.returncode == 1 and "cannot be written" in failed.stderr, failed.stderr[-2000:]


def _wait_for(condition, timeout_s: float, process: subprocess.Popen | None = None, what: str = "",
              stderr_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            said = (stderr_file.read_text()[-3000:] if stderr_file else
                    process.stderr.read()[-3000:] if process.stderr else "(its stderr was not kept)")
            raise AssertionError(f"the job ended (exit {process.returncode}) before {what}: {said}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _outputs_written(out: Path) -> int:
    return len(list(out.glob("*.png")))


def _parts_written(out: Path) -> int:
    return len(list((out / "_manifest").glob("part-*.parquet")))


# Inputs of the kill and interrupt tests: with at most two workers (_start_job), a run is still
# working when the signal comes.
KILLED_RUN_INPUTS = 24


def _many_inputs(source: Path, count: int = 40, height: int = 400, width: int = 600) -> None:
    for i in range(count):
        _save(source / f"img{i:02d}.png", _dark(height, width, i), "PNG", compress_level=1)


def _check_exactly_once(out: Path, source: Path) -> None:
    """Every input ends with exactly one valid output and one row per run, and the latest row of
    each input says ok; no (run, input) pair twice in any file; no half-written file."""
    names = sorted(p.name for p in source.glob("*.png"))
    width = decode_image((source / names[0]).read_bytes()).width
    rows = _manifest(out)
    raw = [r for part in (out / "_manifest").glob("part-*.parquet")
           for r in pq.read_table(part, columns=["run_id", "input_relpath"]).to_pylist()]
    assert len(raw) == len({(r["run_id"], r["input_relpath"]) for r in raw}), "a row written twice"
    latest = {}
    for row in sorted(rows, key=lambda r: r["finished_at"]):
        latest[row["input_relpath"]] = row
    assert sorted(latest) == names
    assert all(row["status"] in ("ok", "skipped") for row in latest.values())
    assert sorted(p.name for p in out.glob("*.png")) == names
    for name in names:
        assert decode_image((out / name).read_bytes()).width == width
    assert not list(out.rglob("*.tmp")), "no half-written outputs"


def _stop_everything_it_started(process_pid: int, workers: set[int], ray_tmp: str, engine: str) -> None:
    """After a SIGKILL: its cluster and workers die with it; make sure before looking (stopping
    exactly its processes)."""
    stop_processes_of(ray_tmp)
    _wait_for(lambda: not processes_of(ray_tmp), 30, what="the killed run's processes to exit")
    if engine == "ray":
        # Ray's workers outlive a killed raylet until their next call to it fails (minutes when
        # busy): stop exactly those this run started before the next run plans.
        for pid in alive(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # The local pool's fork server and workers end with the driver (PR_SET_PDEATHSIG).
    _wait_for(lambda: not alive(workers), 30, what=f"the killed run's workers to exit: {_describe(workers)}")


def _describe(pids: set[int]) -> str:
    return "; ".join(f"{pid}: {(Path('/proc') / str(pid) / 'cmdline').read_bytes()[:80]!r}" for pid in alive(pids))


def _start_job(source: Path, out: Path, ray_tmp: str, engine: str, stderr, *extra: str,
               own_group: bool = False) -> subprocess.Popen:
    """The job as a user starts it; ``own_group``: in a process group of its own, which the test
    can signal whole, as a terminal's Ctrl-C does."""
    return subprocess.Popen(
        # At most two workers: on a many-core machine a pool per CPU could finish every image
        # before the test's signal lands.
        [sys.executable, str(REPO / "jobs" / "enhance.py"), str(source), str(out), "--batch-size", "1",
         "--num-actors", "1:2", "--engine", engine, "--no-report", *extra], env=cli_env(ray_tmp),
        stdout=subprocess.DEVNULL, stderr=stderr,
        # A suite started in the background (`cmd &`) inherits SIGINT ignored, and Python then
        # installs no KeyboardInterrupt handler: give the job the disposition a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), process_group=0 if own_group else None)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_with_one_line_and_the_rerun_finishes_the_rest(tmp_path, ray_tmp):
    """Two SIGINTs (an impatient user): the first only sets a flag, so the process is alive for the
    second, which ends it at once: exit 130, one line, no traceback. Whatever the workers wrote is
    adopted by the rerun, which ends with every input done once. The second is sent once the first
    was handled (two sent back to back may reach the process as one)."""
    source, out = tmp_path / "in", tmp_path / "out"
    _many_inputs(source, 12)
    stderr_file = tmp_path / "stderr.txt"
    with open(stderr_file, "w") as stderr:
        process = _start_job(source, out, ray_tmp, "local", stderr, "--manifest-flush-seconds", "0")
    try:
        _wait_for(lambda: _outputs_written(out) >= 1, 300, process, "the first output", stderr_file)
        process.send_signal(signal.SIGINT)
        _wait_for(lambda: "stopping after the batches in flight" in stderr_file.read_text()
                  or process.poll() is not None, 60, what="the first Ctrl-C's line")
        # Sent while the run still finishes its batches in flight (it almost always is; if it ended
        # first, there was no second Ctrl-C to handle and only the rest is checked).
        second_while_running = process.poll() is None
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    said = stderr_file.read_text()
    assert process.returncode == 130, said[-2000:]
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said[-2000:]
    if second_while_running and "stopping now" not in said:
        # The run may have left in the instant between the check and the signal: then it committed.
        assert list((out / "_manifest" / "_commits").glob("*.json")), said[-2000:]
    summary = run_enhance(EnhanceConfig(input=str(source), output=str(out), engine="local"))
    assert summary.ok + summary.skipped == 12 and summary.error == 0
    _check_exactly_once(out, source)


@pytest.mark.slow
# SIGINT and SIGTERM go through one handler (only the exit status differs): each status and each
# engine is covered once; SIGTERM is what `ray job stop` sends to a job on a cluster.
@pytest.mark.parametrize("sig,code,engine", [(signal.SIGTERM, 143, "ray"), (signal.SIGINT, 130, "local")])
def test_an_interrupted_run_commits_what_finished_and_the_rerun_does_exactly_the_rest(ray_local, tmp_path, ray_tmp,
                                                                                      sig, code, engine):
    """What is compared does not depend on how many images finished before the signal (the CPU's
    speed): the rerun skips exactly the inputs whose rows the interrupted run left, and does the rest.
    Workers write a part after each batch, so the signal comes once rows are on disk."""
    source, out = tmp_path / "in", tmp_path / "out"
    _many_inputs(source, KILLED_RUN_INPUTS)
    stderr_file = tmp_path / "stderr.txt"
    with open(stderr_file, "w") as stderr:
        process = _start_job(source, out, ray_tmp, engine, stderr, "--manifest-flush-seconds", "0",
                             own_group=sig == signal.SIGINT)
    try:
        _wait_for(lambda: _parts_written(out) >= 1, 300, process, "the first part", stderr_file)
        if sig == signal.SIGINT:
            os.killpg(process.pid, sig)  # Ctrl-C in a terminal: the job's workers get it too
        else:
            process.send_signal(sig)  # what `ray job stop` does
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    said = stderr_file.read_text()
    assert process.returncode == code, said[-2000:]
    assert "run again to resume" in said and "Traceback" not in said
    assert not list(out.glob("_manifest/_run-*.json")), "an interrupted run writes no summary"
    commit = json.loads(next((out / "_manifest" / "_commits").glob("*.json")).read_text())
    assert commit["status"] == "interrupted"
    # Workers finish the batch in hand as the cluster stops: read what is on disk once they are gone.
    _wait_for(lambda: not writers_of(ray_tmp), 60, what="its local cluster's workers to stop")
    committed_ok = sum(1 for r in _manifest(out) if r["status"] == "ok")
    # The commit counts the rows that reached the driver; a part a worker wrote whose batch had not
    # reached it yet is adopted by the rerun.
    assert committed_ok >= max(1, commit["counts"]["ok"])
    summary = run_enhance(EnhanceConfig(input=str(source), output=str(out), engine=engine))  # as a user reruns it
    assert summary.skipped == committed_ok, "every image the interrupted run committed is kept"
    assert summary.ok == KILLED_RUN_INPUTS - committed_ok and summary.error == 0, "the rerun does only the remainder"
    _check_exactly_once(out, source)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "local"])
def test_a_killed_driver_s_written_parts_are_adopted_and_nothing_is_done_twice(ray_local, tmp_path, ray_tmp, engine):
    """SIGKILL the driver mid-run (workers writing a part after each batch): the next run adopts
    the parts the dead run wrote, skips exactly the images they hold, and redoes the rest."""
    source, out = tmp_path / "in", tmp_path / "out"
    _many_inputs(source, KILLED_RUN_INPUTS)
    stderr_file = tmp_path / "stderr.txt"  # a file, not a pipe: nobody reads it while the job runs
    with open(stderr_file, "w") as stderr:
        process = _start_job(source, out, ray_tmp, engine, stderr, "--manifest-flush-seconds", "0")
    try:
        _wait_for(lambda: _parts_written(out) >= 3, 300, process, "the first parts", stderr_file)
        workers = descendants(process.pid)
        process.kill()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    _stop_everything_it_started(process.pid, workers, ray_tmp, engine)
    assert not (out / "_manifest" / "_commits").exists(), "the killed run committed nothing"
    in_parts = sum(1 for r in _manifest(out) if r["status"] == "ok")
    assert in_parts >= 3
    dead_parts = sorted(p.name for p in (out / "_manifest").glob("part-*.parquet"))
    summary = run_enhance(EnhanceConfig(input=str(source), output=str(out), engine=engine))
    assert summary.skipped == in_parts and summary.adopted_rows == in_parts
    assert summary.ok == KILLED_RUN_INPUTS - in_parts
    commit = json.loads((out / "_manifest" / "_commits" / f"{summary.run_id}.json").read_text())
    assert sorted(commit["adopted"]) == dead_parts and set(dead_parts) <= {p["name"] for p in commit["parts"]}
    _check_exactly_once(out, source)


@pytest.mark.slow
# What each seed draws: 1, SIGTERM with a part after each batch, 0.38 s after the first output; 5,
# SIGKILL with the rows held for 60 s (lost with the process: the rerun redoes those inputs over
# their outputs), 1.19 s after it. (Seeds 2 and 3 drew seed 1's signal and flush again, at 0.13 and 0.55 s.)
@pytest.mark.parametrize("seed", [1, 5])
def test_signals_at_random_moments_leave_every_input_done_exactly_once(tmp_path, ray_tmp, seed):
    """SIGTERM or SIGKILL at a random moment (the seed draws which and when, from the first output to
    well past it), then a rerun: whatever the moment, every input ends with one valid output and its
    rows once. Local workers: the Ray engine goes through the same driver (the tests above)."""
    import random

    rng = random.Random(seed)
    sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
    flush = rng.choice(["0", "60"])
    source, out = tmp_path / "in", tmp_path / "out"
    _many_inputs(source, 16, 200, 300)
    stderr_file = tmp_path / "stderr.txt"
    with open(stderr_file, "w") as stderr:
        process = _start_job(source, out, ray_tmp, "local", stderr, "--manifest-flush-seconds", flush)
    try:
        _wait_for(lambda: _outputs_written(out) >= 1, 300, process, "the first output", stderr_file)
        time.sleep(rng.uniform(0.0, 1.5))
        workers = descendants(process.pid)
        if process.poll() is None:
            process.send_signal(sig)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    _stop_everything_it_started(process.pid, workers, ray_tmp, "local")
    said = stderr_file.read_text()
    assert "Traceback" not in said, said[-3000:]
    assert process.returncode in (0, 143, -signal.SIGKILL), (process.returncode, said[-2000:])
    summary = run_enhance(EnhanceConfig(input=str(source), output=str(out), engine="local"))
    assert summary.ok + summary.skipped == 16 and summary.error == 0
    _check_exactly_once(out, source)


@pytest.mark.slow
def test_a_killed_actor_loses_no_input_and_every_input_ends_once(ray_local, tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    _many_inputs(source, 24)
    outcome = {}

    def run():
        try:
            outcome["summary"] = run_enhance(_config(source, out, batch_size=1, max_full_frame_pixels=None, tile_size=None,
                                                     part_flush_s=0.0))
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    _wait_for(lambda: _parts_written(out) >= 1 or not thread.is_alive(), 300, what="the first part")
    assert thread.is_alive(), outcome
    part = next((out / "_manifest").glob("part-*.parquet"))
    worker = pq.read_table(part)["worker"][0].as_py()
    pid = int(worker.rsplit("/pid", 1)[1])
    os.kill(pid, signal.SIGKILL)  # exactly the actor process that wrote that part
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["summary"].ok == 24 and outcome["summary"].error == 0
    assert not alive({pid}), "the actor that wrote the first rows is dead"
    # Ray re-runs a batch whose actor died before replying: one final row and one valid output
    # per input must hold whichever actor's row is final.
    _check_exactly_once(out, source)


@pytest.mark.slow
def test_one_cpu_cluster_does_not_stall(tmp_path, ray_tmp):
    """The default settings on a one-CPU machine (a subprocess: it needs its own Ray)."""
    source = tmp_path / "in"
    for i in range(3):
        _save(source / f"{i}.png", _dark(40, 50, i), "PNG")
    script = ("import ray, sys; ray.init(num_cpus=1, include_dashboard=False);"
              "from dce_batch.job import EnhanceConfig, run_enhance;"
              "s = run_enhance(EnhanceConfig(input=sys.argv[1], output=sys.argv[2])); sys.exit(0 if s.ok == 3 else 1)")
    result = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "out")], env=cli_env(ray_tmp),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_available(), reason="needs `unshare -m` and mount rights (root) for a small tmpfs")
@pytest.mark.parametrize("situation", ["full", "read-only"])
def test_an_output_that_fills_up_or_is_read_only_fails_the_run_and_claims_nothing(tmp_path, ray_tmp, situation):
    """OUTPUT is a tiny tmpfs in a private mount namespace: a disk that fills up mid-run, or one
    mounted read-only. Exit 1 with a clear message; every ok row in the manifest has its output."""
    source, out, kept = tmp_path / "in", tmp_path / "out", tmp_path / "kept"
    for i in range(12):
        _save(source / f"img{i:02d}.png", (np.random.default_rng(i).random((300, 400, 3)) * 60).astype(np.uint8), "PNG")
    out.mkdir()
    kept.mkdir()
    # The 12 outputs take about 1.4 MB (measured 1.37 MB, 1.49 MB with --denoise fast: smoother
    # outputs compress better), so 600 kB fills up mid-run, whichever denoiser runs.
    mount = f"mount -t tmpfs -o size={'600k' if situation == 'full' else '1m'} tmpfs {out}"
    if situation == "read-only":
        mount += f" && mount -o remount,ro {out}"
    script = (f"{mount} && {sys.executable} {REPO / 'jobs' / 'enhance.py'} {source} {out} --batch-size 1; "
              f"code=$?; cp -a {out}/. {kept}/; exit $code")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=cli_env(ray_tmp),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    expected = "No space left" if situation == "full" else "Read-only file system"
    last = result.stderr.strip().splitlines()[-1]  # the command's own message comes last
    assert last.startswith("dce-batch enhance: OutputWriteError: ") and expected in last, result.stderr[-3000:]
    if (kept / "_manifest").exists():
        for row in _manifest(kept):
            if row["status"] == "ok":  # claimed: then it was written, whole
                assert decode_image((kept / row["output_relpath"]).read_bytes()).width == 400
    assert not list(kept.rglob("*.tmp"))
