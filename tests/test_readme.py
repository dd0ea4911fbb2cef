"""Every command and code block of the README runs as written, in order, in a copy of the checkout.

The two set-up commands (a new virtual environment and `pip install`) are what CI itself runs
(`.ci/run` is the second, verbatim); every other block runs here: the enhancement examples, the
cluster block against a `ray start --head` started exactly as it says (token auth included, with
its own HOME and RAY_TMPDIR so nothing of the user's is touched), the S3 block against a
`moto_server` on the port the README names, training, report, evaluate, ONNX, and the Python
snippets. Each block's time is printed (`pytest -s`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .ray_cluster import FAST_RAY_TRAIN, processes_of, stop_processes_of

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.s3]

_BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)


def readme_blocks() -> list[tuple[str, str]]:
    return [(kind, body) for kind, body in _BLOCK.findall((REPO / "README.md").read_text())]


def _is_setup(body: str) -> bool:
    return "python3 -m venv" in body


def test_the_readme_has_its_two_commands_and_ci_runs_the_second_verbatim():
    setup = [body.strip() for kind, body in readme_blocks() if _is_setup(body)]
    assert len(setup) == 2
    assert setup[1] in (REPO / ".ci" / "run").read_text()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _checkout_copy(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _moto_with_a_bucket(port: int, log: Path):
    process = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while _port_free(port):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="bucket")
    rng = np.random.default_rng(0)
    for i in range(2):
        path = log.with_name(f"raw{i}.png")
        Image.fromarray((rng.random((48, 64, 3)) * 60).astype(np.uint8)).save(path)
        client.put_object(Bucket="bucket", Key=f"raw/img{i}.png", Body=path.read_bytes())
    return process, client


def _check_training_is_quiet_and_leaves_no_cluster(result, work: Path, ray_tmp: str) -> None:
    """The training example on a machine with no cluster: a local Ray starts, and what the user
    reads is the run's line, one line per epoch and the result; no Ray log lines, bars or colour
    codes; the results where the user said; and the local cluster ends with the command."""
    from dce_batch.enhance.weights import load_weights
    from dce_batch.ray_stderr import is_core_log_line

    output = result.stdout + result.stderr
    assert "\x1b" not in output and "\r" not in output, "no colour codes or redrawn bars"
    assert not any(marker in output for marker in ("row/s", "it/s", "INFO", "Warning", "(pid=")), output
    assert not [line for line in output.splitlines() if is_core_log_line(line)], "no Ray C++ log lines"
    training = [line for line in output.splitlines() if line.startswith("[dce-batch train]")]
    assert [line.split()[3] for line in training if "] epoch " in line] == ["1/2", "2/2"], output
    assert len(training) <= 4, output
    # The result on stdout, progress on stderr: the training's one stdout line comes first (the
    # block's enhancement prints its own after it).
    finished = [line for line in result.stdout.splitlines() if line.startswith("run finished: 2 epochs")]
    assert len(finished) == 1 and "weights in runs/try1.safetensors" in finished[0], output
    assert result.stdout.splitlines()[0] == finished[0], output
    assert "40 images from the bundled training samples" in result.stderr, output
    assert load_weights(work / "runs" / "try1.safetensors").meta.metrics["epochs"] == 2
    assert (work / "runs" / "try1" / "metrics.json").is_file()
    deadline = time.monotonic() + 30
    while processes_of(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_of(ray_tmp), "the local Ray cluster outlived the command"


def _check_the_job_ran_on_the_cluster(result, work: Path) -> None:
    """The submitted job joined the head the block started (it did not start a Ray of its own),
    ran its actors on that one node, and enhanced every sample once."""
    from dce_batch.imaging import decode_image, mean_luminance
    from dce_batch.job.manifest import read_manifest

    log = result.stdout + result.stderr
    assert "Started a local Ray instance" not in log, log[-3000:]
    rows = read_manifest("/tmp/dce-enhanced-on-ray").to_pylist()
    samples = sorted(p.name for p in (work / "dce_batch" / "samples").iterdir() if p.suffix in (".jpg", ".png"))
    assert sorted(r["input_relpath"] for r in rows) == samples and {r["status"] for r in rows} == {"ok"}, rows
    assert len({r["worker"].split("/")[0] for r in rows}) == 1, "every actor on the head's node"
    for row in rows:
        before = decode_image((work / "dce_batch" / "samples" / row["input_relpath"]).read_bytes())
        after = decode_image(Path("/tmp/dce-enhanced-on-ray", row["output_relpath"]).read_bytes())
        assert (after.width, after.height) == (before.width, before.height)
        assert mean_luminance(after.pixels) > mean_luminance(before.pixels)


def test_every_readme_block_runs_as_written(tmp_path):
    if not all(_port_free(port) for port in (9000, 6390, 8290, 8291)):
        pytest.skip("a port the README's blocks name (9000, 6390, 8290, 8291) is in use on this machine")
    work = tmp_path / "checkout"
    _checkout_copy(work)
    for block_path in sorted({p for _, body in readme_blocks() for p in re.findall(r"/tmp/[\w.-]+", body)}):
        # What an earlier run of these blocks left there (an OUTPUT made by other code, say).
        shutil.rmtree(block_path, ignore_errors=True) if Path(block_path).is_dir() else Path(block_path).unlink(
            missing_ok=True)
    # Short: Ray's socket paths must fit 107 bytes. The cluster block's head keeps its own temp dir,
    # so every other block runs as on a machine with no cluster (training then starts and stops a
    # local Ray of its own, as on a fresh clone).
    head_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    local_tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg",
               # The suite's Ray Train settings, as for its own clusters: the controller polls its
               # workers every 0.25 s (not 2 s) and starts no preemption watcher.
               **FAST_RAY_TRAIN)
    moto, client = _moto_with_a_bucket(9000, tmp_path / "moto.log")
    timings = []
    try:
        for kind, body in readme_blocks():
            if _is_setup(body):
                continue
            command = ["bash", "-euo", "pipefail", "-c", body] if kind == "bash" else [sys.executable, "-c", body]
            started = time.monotonic()
            block_env = {**env, "RAY_TMPDIR": head_tmp if "ray start --head" in body else local_tmp}
            before = {p.name for p in work.iterdir()}
            result = subprocess.run(command, cwd=work, env=block_env, capture_output=True, text=True, timeout=900)
            timings.append((time.monotonic() - started, body.strip().splitlines()[0]))
            assert result.returncode == 0, f"README block failed:\n{body}\n--- stdout\n{result.stdout[-3000:]}" \
                                           f"\n--- stderr\n{result.stderr[-5000:]}"
            if body.startswith("dce-batch train"):
                _check_training_is_quiet_and_leaves_no_cluster(result, work, local_tmp)
                # nothing in the working folder but what the block's two commands name
                assert {p.name for p in work.iterdir()} - before == {"runs", "enhanced-try1"}
            if "ray job submit" in body:
                _check_the_job_ran_on_the_cluster(result, work)
                # The head serves only this block (the README stops it with `ray stop`): idle, it
                # would take CPU from every block after it.
                stop_processes_of(head_tmp)
        # The S3 block's outputs, while the server is up.
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="bucket", Prefix="enhanced/")["Contents"]]
        assert {"enhanced/img0.png", "enhanced/img1.png"} <= set(keys)
    finally:
        for ray_tmp in (head_tmp, local_tmp):
            stop_processes_of(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)
        moto.terminate()
        moto.wait(timeout=30)
        for seconds, first_line in timings:
            print(f"{seconds:7.1f} s  {first_line}")
    # What the blocks were meant to make, made.
    assert sorted(p.name for p in (work / "enhanced-samples").glob("*.*")) == sorted(
        p.name for p in (REPO / "dce_batch" / "samples").iterdir() if p.suffix in (".jpg", ".png"))
    assert (work / "enhanced-samples" / "_report" / "index.html").is_file()
