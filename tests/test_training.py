"""Training on a real local Ray cluster: 2 CPU workers (gloo), checkpoints, resume, failures, S3."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dce_batch.errors import ConfigError
from dce_batch.training.losses import LossWeights
from dce_batch.job import EnhanceConfig, run_enhance
from dce_batch.training.data import AugmentConfig, augment_batch, decode_for_training
from dce_batch.training.run import TrainConfig, TrainingOutcome, run_training
from dce_batch.enhance.weights import load_weights

pytestmark = pytest.mark.ray


def _training_image(rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """Under- or over-exposed smooth scenes, like SICE's multi-exposure sequences."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    scene = np.stack([0.5 + 0.4 * np.sin(6 * yy + rng.random() * 3), 0.5 + 0.4 * np.cos(5 * xx),
                      0.5 + 0.3 * np.sin(4 * (xx + yy))], -1)
    exposure = rng.choice([0.15, 0.3, 1.4])
    return (np.clip(scene * exposure, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def training_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(_training_image(rng, size=int(rng.integers(36, 60)))).save(root / f"{i:02d}.jpg", quality=95)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def _config(data, storage, **overrides) -> TrainConfig:
    settings = dict(data=str(data), storage=str(storage), workers=2, epochs=3, image_size=32, batch_size=4,
                    lr=1e-3, val_fraction=0.2, seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def _fast_config(data, storage, **overrides) -> TrainConfig:
    """The fast variant with its own loss weights: one worker, one epoch."""
    return _config(data, storage, variant="fast", epochs=1, workers=1, loss=LossWeights.for_variant("fast"),
                   **overrides)


@pytest.fixture(scope="module")
def fast_run(ray_local, training_images, tmp_path_factory) -> TrainingOutcome:
    """A fast-variant run from random weights, with its weights exported, trained once for the module.

    Each run costs about 20 s of Ray Train start-up (little of it training): the determinism test
    repeats this run instead of training two of its own, and the fast-variant test checks it.
    """
    folder = tmp_path_factory.mktemp("fast")
    return run_training(_fast_config(training_images, folder / "runs", name="fast",
                                     export=str(folder / "fast.safetensors")))


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*"))


def test_two_workers_train_checkpoint_and_export(ray_local, training_images, tmp_path):
    export = tmp_path / "model.safetensors"
    outcome = run_training(_config(training_images, tmp_path / "runs", name="basic", export=str(export)))
    history = outcome.history
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    for m in history:
        for term in ("smoothness", "spatial", "color", "exposure"):
            assert np.isfinite(m[f"train_{term}"]) and np.isfinite(m[f"val_{term}"])
        # Validation: every image, once. Training: an even split over 2 workers (Ray Train drops
        # the odd one out so DDP steps match); the fixture's split is odd or even by file names.
        assert m["val_images"] == outcome.val_images >= 1
        assert m["train_images"] == outcome.train_images - outcome.train_images % 2
    assert outcome.images == outcome.train_images + outcome.val_images == 20
    assert len(outcome.unreadable) == 1 and "corrupt.jpg" in outcome.unreadable[0]
    run_dir = tmp_path / "runs" / "basic"
    assert _checkpoints(run_dir), "checkpoints must appear in storage"
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs"] == 3 and summary["history"] == history and summary["images"] == 20
    assert (run_dir / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    weights = load_weights(export)
    assert weights.meta.variant == "full" and weights.meta.num_params == 79_416
    assert weights.meta.recipe["epochs"] == 3 and weights.meta.recipe["loss"]["smoothness"] == 200
    assert weights.meta.metrics["epochs"] == 3 and "val_loss" in weights.meta.metrics
    assert weights.meta.data.startswith(str(training_images))

    # the exported weights drive the enhancement job (local worker processes load them as Ray's
    # actors do, and start in a fraction of the time)
    images = tmp_path / "to_enhance"
    images.mkdir()
    Image.fromarray(_training_image(np.random.default_rng(5))).save(images / "x.png")
    summary = run_enhance(EnhanceConfig(input=str(images), output=str(tmp_path / "enhanced"), weights=str(export),
                                        engine="local"))
    assert summary.ok == 1 and summary.model["sha256"] == weights.meta.sha256


def test_an_injected_worker_failure_restarts_and_the_same_name_resumes(ray_local, training_images, tmp_path):
    storage = tmp_path / "runs"
    # A worker process dies in epoch 2 (os._exit in the last rank): the group restarts from the
    # checkpoint of epoch 1 and the run completes without losing or repeating epochs.
    crashed = run_training(_config(training_images, storage, name="resumable", epochs=2, max_failures=1,
                                   inject_failure_at_epoch=1))
    assert [m["epoch"] for m in crashed.history] == [1, 2]
    # restarted exactly once, from a checkpoint (not from scratch): epoch 1 was never redone
    assert [m["resumes"] for m in crashed.history] == [0, 1]

    # Same name, more epochs: continues after epoch 2 instead of starting over.
    more = run_training(_config(training_images, storage, name="resumable", epochs=3))
    assert [m["epoch"] for m in more.history] == [1, 2, 3]
    assert more.history[:2] == crashed.history
    assert [m["resumes"] for m in more.history] == [0, 1, 2]


def test_training_is_deterministic_with_a_seed(fast_run, training_images, tmp_path):
    # The same run again: only its storage differs (the export, after training, is left out)
    again = run_training(_fast_config(training_images, tmp_path / "runs", name="fast"))
    keys = ("train_loss", "val_loss", "train_exposure", "train_smoothness")
    assert [[m[k] for k in keys] for m in fast_run.history] == [[m[k] for k in keys] for m in again.history]


def test_data_and_checkpoints_on_s3(ray_local, s3_server, s3_bucket, tmp_path):
    client = s3_server.client()
    rng = np.random.default_rng(1)
    for i in range(12):
        buffer = io.BytesIO()
        Image.fromarray(_training_image(rng)).save(buffer, "PNG")
        client.put_object(Bucket=s3_bucket, Key=f"sice/{i:02d}.png", Body=buffer.getvalue())
    config = _config(f"s3://{s3_bucket}/sice/", f"s3://{s3_bucket}/runs", name="s3run", epochs=2,
                     export=f"s3://{s3_bucket}/models/dce.safetensors", s3=s3_server.s3_options())
    outcome = run_training(config)
    assert outcome.images == 12 and outcome.run_uri == f"s3://{s3_bucket}/runs/s3run"
    keys = s3_server.list_keys(s3_bucket)
    assert any(k.startswith("runs/s3run/checkpoint_") and k.endswith("/state.pt") for k in keys)
    assert "runs/s3run/metrics.json" in keys and "runs/s3run/loss_curves.png" in keys
    blob = client.get_object(Bucket=s3_bucket, Key="models/dce.safetensors")["Body"].read()
    assert load_weights(blob).meta.metrics["epochs"] == 2
    # and the same name resumes from the checkpoint in the bucket
    again = run_training(_config(f"s3://{s3_bucket}/sice/", f"s3://{s3_bucket}/runs", name="s3run", epochs=3,
                                 s3=s3_server.s3_options()))
    assert [m["resumes"] for m in again.history] == [0, 0, 1]


def test_fast_variant_trains_with_its_own_defaults_and_fine_tunes(fast_run, training_images, tmp_path):
    outcome = fast_run
    assert outcome.weights_meta.variant == "fast" and outcome.weights_meta.num_params == 10_561
    assert outcome.weights_meta.recipe["loss"]["smoothness"] == 1600
    # --init-weights: start from the shipped fast model instead of random weights
    tuned = run_training(_fast_config(training_images, tmp_path / "runs", name="tuned", lr=1e-9,
                                      init_weights="zerodcepp_sice_v2", export=str(tmp_path / "tuned.safetensors")))
    shipped = load_weights("zerodcepp_sice_v2").state_dict
    exported = load_weights(tmp_path / "tuned.safetensors").state_dict
    assert all(torch.allclose(exported[k], shipped[k], atol=1e-6) for k in shipped)
    assert tuned.history[0]["train_loss"] < outcome.history[0]["train_loss"]
    assert tuned.weights_meta.recipe["init_weights"] == "zerodcepp_sice_v2"
    with pytest.raises(Exception, match="variant"):
        run_training(_config(training_images, tmp_path / "runs", name="wrong", variant="fast", epochs=1,
                             workers=1, init_weights="zerodce_sice_v1"))


def test_invalid_training_settings():
    for bad in (dict(workers=0), dict(epochs=0), dict(min_crop=0.0), dict(val_fraction=0.7),
                dict(variant="huge"), dict(inject_failure_at_epoch=0)):
        with pytest.raises(ConfigError):
            _config("/data", "/runs", **bad)


def test_decode_and_augment_without_ray():
    buffer = io.BytesIO()
    Image.fromarray(_training_image(np.random.default_rng(2), size=50)).save(buffer, "PNG")
    result = decode_for_training(buffer.getvalue(), 48, max_pixels=10**6)
    assert result.error is None and result.pixels.shape == (48, 48, 3) and result.pixels.dtype == np.uint8
    bad = decode_for_training(b"nope", 48, max_pixels=10**6)
    assert bad.pixels is None and bad.error.startswith("UnsupportedImageError")

    images = torch.from_numpy(np.stack([result.pixels] * 4))
    plain = augment_batch(images, AugmentConfig(image_size=48, min_crop=1.0, hflip=False), torch.Generator())
    assert plain.shape == (4, 3, 48, 48) and torch.allclose(plain[0], images[0].permute(2, 0, 1).float() / 255)
    flipped = augment_batch(images, AugmentConfig(image_size=48, min_crop=1.0, hflip=True),
                            torch.Generator().manual_seed(3))
    assert any(torch.equal(flipped[i], plain[i].flip(-1)) for i in range(4))
    cropped = augment_batch(images, AugmentConfig(image_size=24, min_crop=0.5), torch.Generator().manual_seed(0))
    assert cropped.shape == (4, 3, 24, 24) and 0 <= float(cropped.min()) and float(cropped.max()) <= 1
    again = augment_batch(images, AugmentConfig(image_size=24, min_crop=0.5), torch.Generator().manual_seed(0))
    assert torch.equal(cropped, again), "augmentation is reproducible from the generator"


def test_validation_split_is_stable():
    """Same seed, same validation images: however the files are ordered, and when more are added."""
    from dce_batch.storage import InputFile
    from dce_batch.training.run import split_files

    files = [InputFile(uri=f"s3://b/sice/{i}.jpg", path=f"b/sice/{i}.jpg", relpath=f"{i}.jpg", size=1)
             for i in range(400)]
    train, val = split_files(files, 0.1, seed=0)
    assert len(train) + len(val) == 400 and 20 <= len(val) <= 60
    assert {f.uri for f in split_files(list(reversed(files)), 0.1, seed=0)[1]} == {f.uri for f in val}
    more = files + [InputFile(uri=f"s3://b/sice/new{i}.jpg", path=f"b/sice/new{i}.jpg", relpath=f"new{i}.jpg", size=1) for i in range(50)]
    assert {f.uri for f in val} <= {f.uri for f in split_files(more, 0.1, seed=0)[1]}
    assert {f.uri for f in split_files(files, 0.1, seed=1)[1]} != {f.uri for f in val}
    moved = [InputFile(uri=f"/data/sice/{f.relpath}", path=f"/data/sice/{f.relpath}", relpath=f.relpath, size=1)
             for f in files]
    assert {f.relpath for f in split_files(moved, 0.1, seed=0)[1]} == {f.relpath for f in val}, \
        "a data set copied from a bucket to a disk keeps its split"
    assert split_files(files[:3], 0.05, seed=0)[1], "at least one validation image"
    assert split_files(files, 0.0, seed=0) == (files, [])


def test_loss_curves_are_optional(tmp_path, monkeypatch, capsys):
    """matplotlib is the `plot` extra: without it the run skips the PNG and says why."""
    import sys

    import pyarrow.fs as pafs

    from dce_batch.errors import MissingDependencyError
    from dce_batch.training.run import LOSS_TERMS, _write_loss_curves, plot_history

    history = [{"epoch": e, "train_loss": 1.0 / e, **{f"train_{t}": 0.5 / e for t in LOSS_TERMS}} for e in (1, 2)]
    fs = pafs.LocalFileSystem()
    assert _write_loss_curves(fs, str(tmp_path), history, "with")
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (tmp_path / "loss_curves.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(MissingDependencyError, match=r"dce-batch\[plot\]"):
        plot_history(history)
    assert not _write_loss_curves(fs, str(tmp_path), history, "without")
    assert not (tmp_path / "loss_curves.png").exists()
    assert "loss_curves.png skipped" in capsys.readouterr().out
