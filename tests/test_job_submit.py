"""`ray job submit --working-dir . -- python jobs/train.py ...` against a `ray start --head` node, with
token authentication. (The README's cluster block submits the enhancement job to a head started as it
says: tests/test_readme.py checks that run.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dce_batch.enhance.weights import load_weights

from .ray_cluster import RAY_BIN

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_job_submit_without_the_token_is_refused(ray_head, tmp_path):
    """Token auth is on: a client that does not send the token cannot submit; with it, it can."""
    command = [RAY_BIN, "job", "list", "--address", ray_head.address]
    with_token = subprocess.run(command, env=ray_head.env(), capture_output=True, text=True, timeout=120)
    assert with_token.returncode == 0, with_token.stdout + with_token.stderr
    env = ray_head.env()
    env["RAY_AUTH_MODE"] = "disabled"
    without = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    log = without.stdout + without.stderr
    assert without.returncode != 0 and ("401" in log or "auth" in log.lower()), log[-2000:]


def test_training_job_submitted_to_a_running_cluster(ray_head, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray((rng.random((40, 40, 3)) * rng.choice([60, 250])).astype(np.uint8)).save(data / f"{i}.png")
    export = tmp_path / "model.safetensors"
    command = [RAY_BIN, "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO), "--",
               "python", "jobs/train.py", "--data", str(data), "--workers", "1", "--epochs", "2",
               "--image-size", "32", "--batch-size", "4", "--storage", str(tmp_path / "runs"), "--name", "submitted",
               "--export", str(export)]
    result = subprocess.run(command, cwd=REPO, env=ray_head.env(), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "epoch 2/2" in log and "run finished: 2 epochs" in log
    assert log.count("] epoch 1/2 train") == 1, "each epoch's line reaches the user once"
    assert load_weights(export).meta.metrics["epochs"] == 2
    assert (tmp_path / "runs" / "submitted" / "metrics.json").is_file()
