"""The enhancement job end to end on a real local Ray cluster (and planning without Ray)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dce_batch.errors import ConfigError
from dce_batch.imageio import decode_image, mean_luminance
from dce_batch.manifest import MANIFEST_SCHEMA, read_manifest
from dce_batch.pipeline import EnhanceConfig, output_relpath, plan_run, run_enhance
from dce_batch.storage import InputFile, Location
from dce_batch.weights import load_weights

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


def _config(input_dir, output_dir, **overrides) -> EnhanceConfig:
    settings = dict(input=str(input_dir), output=str(output_dir), batch_size=2, max_full_frame_pixels=300_000,
                    tile_size=256, progress_interval_s=0.5)
    settings.update(overrides)
    return EnhanceConfig(**settings)


def _manifest(output_dir: Path):
    return read_manifest(Location.parse(str(output_dir)).filesystem, str(output_dir / "_manifest")).to_pylist()


def test_local_folder_end_to_end(ray_local, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    summary = run_enhance(_config(mixed_inputs, out))
    rows = {Path(r["input_uri"]).name: r for r in _manifest(out)}
    assert set(rows) == {"a.jpg", "b.png", "c.webp", "d.bmp", "e_gray.png", "f_alpha.png", "large.png",
                         "corrupt.jpg", "truncated.jpg"}
    assert (summary.total, summary.ok, summary.error, summary.skipped) == (9, 7, 2, 0)
    weights = load_weights()
    for name, row in rows.items():
        assert row["run_id"] == summary.run_id
        assert row["model_sha256"] == weights.meta.sha256 and row["model_name"] == weights.meta.name
        assert row["strength"] == 1.0 and row["variant"] == "full" and row["precision"] == "fp32"
        assert row["duration_ms"] > 0 and row["worker"] and row["finished_at"] is not None
        if name in ("corrupt.jpg", "truncated.jpg"):
            assert row["status"] == "error" and row["output_uri"] is None
            expected = "UnsupportedImageError" if name == "corrupt.jpg" else "CorruptImageError"
            assert row["error"].startswith(expected + ": ")
            continue
        assert row["status"] == "ok" and row["error"] is None
        source = decode_image(Path(row["input_uri"]).read_bytes())
        output_path = Path(row["output_uri"])
        assert output_path.is_file() and str(output_path).startswith(str(out))
        # mirrors the input's relative path
        assert output_path.relative_to(out) == Path(row["input_uri"]).relative_to(mixed_inputs)
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
    import pandas as pd

    frame = pd.read_parquet(out / "_manifest")
    assert len(frame) == 9 and set(frame["status"]) == {"ok", "error"}
    import duckdb

    counts = dict(duckdb.sql(f"SELECT status, count(*) FROM '{out}/_manifest/*.parquet' GROUP BY 1").fetchall())
    assert counts == {"ok": 7, "error": 2}
    assert not any(out.rglob("*.tmp")), "no temporary files may be left behind"


def test_resume_skips_finished_inputs_and_overwrite_redoes_all(ray_local, tmp_path):
    source = tmp_path / "in"
    for i in range(4):
        _save(source / f"img{i}.png", _dark(40, 50, i), "PNG")
    out = tmp_path / "out"
    first = run_enhance(_config(source, out))
    assert first.ok == 4
    (out / "img2.png").unlink()  # an output lost since: must be redone, not skipped
    second = run_enhance(_config(source, out))
    assert (second.ok, second.skipped, second.error) == (1, 3, 0)
    rows = _manifest(out)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert sorted(Path(r["input_uri"]).name for r in ok_rows if r["run_id"] == second.run_id) == ["img2.png"]
    # img2 has two ok rows over time only because its output vanished; all others exactly one
    skipped = [r for r in rows if r["run_id"] == second.run_id and r["status"] == "skipped"]
    assert sorted(Path(r["input_uri"]).name for r in skipped) == ["img0.png", "img1.png", "img3.png"]
    assert all(r["output_uri"] for r in skipped)

    third = run_enhance(_config(source, out, overwrite=True))
    assert (third.ok, third.skipped) == (4, 0)
    rows = _manifest(out)
    assert {r["run_id"] for r in rows} == {third.run_id}, "--overwrite replaces the manifest"
    per_input = {}
    for r in rows:
        per_input.setdefault(r["input_uri"], []).append(r["status"])
    assert all(statuses == ["ok"] for statuses in per_input.values())


def test_changing_the_format_is_not_a_resume(ray_local, tmp_path):
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    out = tmp_path / "out"
    run_enhance(_config(source, out))
    again = run_enhance(_config(source, out, format="webp", quality=80))
    assert again.ok == 1 and again.skipped == 0
    assert (out / "x.webp").is_file() and decode_image((out / "x.webp").read_bytes()).format == "WEBP"


def test_published_checkpoint_as_weights(ray_local, tmp_path):
    """--weights also takes the authors' .pth checkpoints, imported on the fly."""
    from .shared_data import shared_path

    checkpoint = shared_path("reference_weights", "zero_dce_pp_epoch99.pth")
    source = tmp_path / "in"
    _save(source / "x.png", _dark(90, 120), "PNG")
    summary = run_enhance(_config(source, tmp_path / "out", weights=str(checkpoint), scale=4))
    rows = _manifest(tmp_path / "out")
    assert summary.ok == 1 and rows[0]["model_name"] == "zero_dce_pp_epoch99" and rows[0]["variant"] == "fast"
    assert rows[0]["mean_luma_out"] > rows[0]["mean_luma_in"]


def test_list_file_input(ray_local, tmp_path):
    """A list of URIs instead of a listing: relative paths below the list's common folder."""
    source = tmp_path / "photos"
    _save(source / "2024" / "a.jpg", _dark(40, 40, 1), "JPEG")
    _save(source / "2025" / "b.png", _dark(40, 40, 2), "PNG")
    _save(source / "2025" / "not_listed.png", _dark(40, 40, 3), "PNG")
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# inputs\n{source / '2024' / 'a.jpg'}\n{source / '2025' / 'b.png'}\n")
    summary = run_enhance(_config(listing, tmp_path / "out"))
    assert summary.ok == 2 and summary.total == 2
    assert (tmp_path / "out" / "2024" / "a.jpg").is_file() and (tmp_path / "out" / "2025" / "b.png").is_file()
    assert not (tmp_path / "out" / "2025" / "not_listed.png").exists()


def test_output_inside_input_is_refused(tmp_path):
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    with pytest.raises(ConfigError, match="inside INPUT"):
        run_enhance(_config(source, source / "enhanced"))
    with pytest.raises(ConfigError, match="inside INPUT"):
        run_enhance(_config(source, source))
    assert not (source / "enhanced").exists()


def test_output_inside_input_when_allowed(ray_local, tmp_path):
    source = tmp_path / "in"
    _save(source / "x.png", _dark(30, 30), "PNG")
    summary = run_enhance(_config(source, source / "enhanced", allow_output_inside_input=True))
    assert summary.ok == 1 and (source / "enhanced" / "x.png").is_file()


def test_planning_refuses_escaping_and_colliding_names(tmp_path):
    """Input keys can never make an output path escape OUTPUT; two inputs never share an output."""
    output = Location.parse(str(tmp_path / "out"))
    meta = load_weights().meta
    inputs = [
        InputFile(uri="s3://b/../../etc/evil.jpg", path="b/x/evil.jpg", relpath="../../etc/evil.jpg", size=1),
        InputFile(uri="/in/a.png", path="/in/a.png", relpath="a.png", size=1),
        InputFile(uri="/in/a.jpg", path="/in/a.jpg", relpath="a.jpg", size=1),
        InputFile(uri="/in/b.gif", path="/in/b.gif", relpath="b.gif", size=1),
    ]
    config = _config(tmp_path / "in", tmp_path / "out", format="jpeg")
    import pyarrow.fs as pafs

    plan = plan_run(config, inputs, pafs.LocalFileSystem(), output, meta, "run1")
    refused = {r.input_uri: r.error for r in plan.refused}
    assert refused["s3://b/../../etc/evil.jpg"].startswith("StorageError")
    assert "OutputCollisionError" in refused["/in/a.jpg"]
    assert [w.output_path for w in plan.todo] == [str(tmp_path / "out" / "a.jpg"), str(tmp_path / "out" / "b.jpg")]
    assert all(w.output_path.startswith(str(tmp_path / "out")) for w in plan.todo)
    assert output_relpath("x/y.jpeg", "JPEG") == "x/y.jpeg"
    assert output_relpath("x/y.gif", "PNG") == "x/y.png"


def test_s3_prefix_to_prefix(ray_local, s3_server, s3_bucket, tmp_path):
    client = s3_server.client()
    for i, (fmt, ext) in enumerate([("JPEG", "jpg"), ("PNG", "png"), ("JPEG", "jpg")]):
        buffer = io.BytesIO()
        Image.fromarray(_dark(48, 64, i)).save(buffer, fmt)
        client.put_object(Bucket=s3_bucket, Key=f"raw/day{i % 2}/img{i}.{ext}", Body=buffer.getvalue())
    client.put_object(Bucket=s3_bucket, Key="raw/day0/broken.png", Body=b"\x89PNG\r\n\x1a\n broken")
    summary = run_enhance(_config(f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/enhanced/", s3=s3_server.s3_options()))
    assert (summary.ok, summary.error) == (3, 1)
    keys = set(s3_server.list_keys(s3_bucket))
    assert {"enhanced/day0/img0.jpg", "enhanced/day1/img1.png", "enhanced/day0/img2.jpg"} <= keys
    assert any(k.startswith("enhanced/_manifest/part-") and k.endswith(".parquet") for k in keys)
    assert f"enhanced/_manifest/_run-{summary.run_id}.json" in keys
    body = client.get_object(Bucket=s3_bucket, Key="enhanced/day1/img1.png")["Body"].read()
    assert decode_image(body).width == 64
    output = Location.parse(f"s3://{s3_bucket}/enhanced", s3_server.s3_options())
    rows = read_manifest(output.filesystem, output.child("_manifest")).to_pylist()
    assert sorted(r["status"] for r in rows) == ["error", "ok", "ok", "ok"]
    assert all(r["input_uri"].startswith(f"s3://{s3_bucket}/raw/") for r in rows)
    assert all(r["output_uri"].startswith(f"s3://{s3_bucket}/enhanced/") for r in rows if r["status"] == "ok")
    # resume against object storage too
    again = run_enhance(_config(f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/enhanced/", s3=s3_server.s3_options()))
    assert (again.ok, again.skipped, again.error) == (0, 3, 1)


def _run_cli(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "enhance.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_cli_default_run_enhances_the_bundled_samples(tmp_path):
    """The README's first command: no arguments, samples -> ./enhanced/, a local Ray started for it."""
    result = _run_cli([], cwd=tmp_path, env=_cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(p.name for p in (tmp_path / "enhanced").iterdir() if p.is_file())
    samples = sorted(p.name for p in (REPO / "dce_batch" / "samples").iterdir() if p.suffix in (".jpg", ".png"))
    assert outputs == samples and len(samples) >= 4
    assert "ok" in result.stdout and "error" in result.stdout


@pytest.mark.slow
def test_cli_exit_codes(tmp_path):
    source = tmp_path / "in"
    _save(source / "good.png", _dark(30, 30), "PNG")
    (source / "bad.jpg").write_bytes(b"nope")
    result = _run_cli([str(source), str(tmp_path / "out"), "--num-actors", "1"], cwd=tmp_path, env=_cli_env())
    assert result.returncode == 3, result.stderr[-3000:]
    assert "UnsupportedImageError" in result.stdout
    refused = _run_cli([str(source), str(source / "out")], cwd=tmp_path, env=_cli_env())
    assert refused.returncode == 2 and "inside INPUT" in refused.stderr
    invalid = _run_cli([str(source), str(tmp_path / "o2"), "--strength", "3"], cwd=tmp_path, env=_cli_env())
    assert invalid.returncode == 2 and "strength" in invalid.stderr


@pytest.mark.slow
def test_cli_against_s3_with_the_standard_aws_variables(s3_server, s3_bucket, tmp_path):
    """As a user runs it: credentials and endpoint from AWS_* variables, nothing passed in code."""
    buffer = io.BytesIO()
    Image.fromarray(_dark(40, 56)).save(buffer, "JPEG")
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="in/x.jpg", Body=buffer.getvalue())
    env = {**_cli_env(), **s3_server.env()}
    result = _run_cli([f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out/", "--format", "png"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    keys = set(s3_server.list_keys(s3_bucket))
    assert "out/x.png" in keys and any(k.startswith("out/_manifest/_run-") for k in keys)


@pytest.mark.slow
def test_interrupted_run_resumes_with_only_the_remainder(ray_local, tmp_path):
    source = tmp_path / "in"
    for i in range(30):
        _save(source / f"img{i:02d}.png", _dark(300, 400, i), "PNG")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "enhance.py"), str(source), str(out), "--batch-size", "1",
         "--num-actors", "1"], env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(list(out.glob("*.png"))) < 4:
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no outputs appeared"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "run again to resume" in stderr
    first = _manifest(out)
    done_first = {r["input_uri"] for r in first if r["status"] == "ok"}
    assert 1 <= len(done_first) < 30, "the interruption must leave work for the second run"
    assert not list(out.glob("_manifest/_run-*.json")), "an interrupted run writes no summary"
    summary = run_enhance(EnhanceConfig(input=str(source), output=str(out), num_actors=(1, 1)))
    assert summary.skipped == len(done_first)
    assert summary.ok + summary.skipped == 30 and summary.error == 0
    ok_rows = [r for r in _manifest(out) if r["status"] == "ok"]
    assert len(ok_rows) == len({r["input_uri"] for r in ok_rows}) == 30, "no input has two ok rows"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in source.glob("*.png"))
    assert not list(out.rglob("*.tmp"))


def test_actor_pool_always_leaves_cpu_for_the_read_tasks():
    """On small machines a pool that takes every CPU starves the reads and the job stalls."""
    from dce_batch.pipeline import READ_TASK_CPUS, plan_actor_pool

    def pool(cpus, **flags):
        return plan_actor_pool(EnhanceConfig(input="/in", **flags), {"CPU": cpus})

    for cpus in (1, 2, 4, 16):
        p = pool(cpus)
        assert p.min_size == 1 and p.max_size * p.cpus_per_actor <= cpus - READ_TASK_CPUS
    assert (pool(2).max_size, pool(2).cpus_per_actor) == (1, 1.0)
    assert pool(1).cpus_per_actor == 0.75
    assert pool(16).max_size == 12
    assert pool(2, num_actors=(2, 2), cpus_per_actor=0.5).cpus_per_actor == 0.5
    with pytest.raises(ConfigError, match="stall"):
        pool(2, num_actors=(2, 2), cpus_per_actor=0.9)
    with pytest.raises(ConfigError, match="no GPUs"):
        pool(4, gpus_per_actor=1)
    gpu = plan_actor_pool(EnhanceConfig(input="/in", gpus_per_actor=0.25), {"CPU": 8, "GPU": 2})
    assert (gpu.max_size, gpu.gpus_per_actor) == (7, 0.25)


@pytest.mark.slow
def test_one_cpu_cluster_does_not_stall(tmp_path):
    """The default settings on a one-CPU machine (a subprocess: it needs its own Ray)."""
    source = tmp_path / "in"
    for i in range(3):
        _save(source / f"{i}.png", _dark(40, 50, i), "PNG")
    script = ("import ray, sys; ray.init(num_cpus=1, include_dashboard=False);"
              "from dce_batch.pipeline import EnhanceConfig, run_enhance;"
              "s = run_enhance(EnhanceConfig(input=sys.argv[1], output=sys.argv[2])); sys.exit(0 if s.ok == 3 else 1)")
    result = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "out")], env=_cli_env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
