"""Training: pure parts (config, data, split, progress lines, recipes) without Ray; runs on a real
local Ray cluster (2 CPU workers with gloo, checkpoints, resume, failures, S3) marked ``slow``;
and the command line as a user runs it (subprocesses with their own Ray, or none)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dce_batch.enhance.weights import load_weights
from dce_batch.errors import ConfigError
from dce_batch.job import EnhanceConfig, run_enhance
from dce_batch.training.config import BUNDLED_DATA, TrainConfig, training_samples_dir
from dce_batch.training.data import AugmentConfig, augment_batch, decode_for_training
from dce_batch.training.losses import LossWeights
from dce_batch.training.run import run_training

from .ray_cluster import cli_env

REPO = Path(__file__).resolve().parents[1]


def _training_image(rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """Under- or over-exposed smooth scenes, like SICE's multi-exposure sequences."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    scene = np.stack([0.5 + 0.4 * np.sin(6 * yy + rng.random() * 3), 0.5 + 0.4 * np.cos(5 * xx),
                      0.5 + 0.3 * np.sin(4 * (xx + yy))], -1)
    exposure = rng.choice([0.15, 0.3, 1.4])
    return (np.clip(scene * exposure, 0, 1) * 255).astype(np.uint8)


TRAINING_IMAGES = 40  # several Ray Data blocks, so that block order could matter


@pytest.fixture(scope="module")
def training_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    for i in range(TRAINING_IMAGES):
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


def _fine_tuning_config(data, folder: Path) -> TrainConfig:
    return _fast_config(data, folder / "runs", name="fast", lr=1e-9, init_weights="zerodcepp_sice_v2",
                        export=str(folder / "fast.safetensors"))


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*"))


# --------------------------------------------------------------------------------------------
# On a real local Ray cluster: each run costs seconds of Ray Train start-up, so they are `slow`
# --------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_train_checkpoint_and_export(ray_local, training_images, tmp_path):
    export = tmp_path / "model.safetensors"
    lines: list[str] = []
    outcome = run_training(_config(training_images, tmp_path / "runs", name="basic", export=str(export)),
                           say=lines.append)
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
    assert outcome.images == outcome.train_images + outcome.val_images == TRAINING_IMAGES
    assert len(outcome.unreadable) == 1 and "corrupt.jpg" in outcome.unreadable[0]
    # The driver's own lines: the run, the skipped file, one per epoch (from the rank-0 worker)
    epoch_lines = [line for line in lines if "] epoch " in line]
    assert [line.split()[3] for line in epoch_lines] == ["1/3", "2/3", "3/3"], lines
    assert any("skipped" in line and "corrupt.jpg" in line for line in lines)
    run_dir = tmp_path / "runs" / "basic"
    assert _checkpoints(run_dir), "checkpoints must appear in storage"
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs"] == 3 and summary["history"] == history and summary["images"] == TRAINING_IMAGES
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


@pytest.mark.ray
@pytest.mark.slow
def test_fast_variant_fine_tunes_with_its_own_defaults_and_a_seed_repeats_it_bit_for_bit(
        ray_local, training_images, tmp_path):
    """The fast variant trains with its own loss weights from ``--init-weights``; and the same run
    again gives bit-identical losses, by construction: the block order is fixed from the listing
    to the worker's shard (``preserve_order``), the shuffle and augmentation are seeded, and the
    worker computes in one thread, in the same order, on the same machine. The fixture's images
    span several Ray Data blocks, which without a fixed order may arrive in any order.

    One test for both: each run costs seconds of Ray Train start-up, and the suite's two
    processes would each train a run shared by two tests."""
    # Fine-tuned from the shipped fast model (--init-weights) at a tiny learning rate, exported.
    first = run_training(_fine_tuning_config(training_images, tmp_path / "first"))
    assert first.weights_meta.variant == "fast" and first.weights_meta.num_params == 10_561
    assert first.weights_meta.recipe["loss"]["smoothness"] == 1600
    assert first.weights_meta.recipe["init_weights"] == "zerodcepp_sice_v2"
    # --init-weights started from the shipped fast model, not from random weights: an Adam step
    # moves each weight by at most lr * (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr, and one epoch here
    # is a handful of steps, far below this bound (random weights would be nowhere near).
    shipped = load_weights("zerodcepp_sice_v2").state_dict
    exported = load_weights(first.export_uri).state_dict
    assert all(torch.allclose(exported[k], shipped[k], rtol=0, atol=1e-6) for k in shipped)

    again = run_training(_fine_tuning_config(training_images, tmp_path / "again"))
    keys = ("train_loss", "val_loss", "train_exposure", "train_smoothness")
    assert [[m[k] for k in keys] for m in first.history] == [[m[k] for k in keys] for m in again.history]


S3_TRAINING_IMAGES = 10


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.s3
def test_on_s3_an_injected_worker_failure_restarts_from_the_bucket_and_the_same_name_resumes(
        ray_local, s3_server, s3_bucket, tmp_path):
    """Data, checkpoints, metrics and weights in a bucket. The worker process dies in epoch 2
    (os._exit in the last rank): the group restarts from the checkpoint of epoch 1 read back from
    the bucket, and the run completes without losing or repeating epochs. The same name with more
    epochs then continues after epoch 2 instead of starting over.

    One worker: what this proves (restart and resume from checkpoints in a bucket) does not depend
    on the group's size, and each worker of a group costs its start-up again on every (re)start;
    two workers with DDP are test_two_workers_train_checkpoint_and_export's."""
    client = s3_server.client()
    rng = np.random.default_rng(1)
    for i in range(S3_TRAINING_IMAGES):  # two batches an epoch: the failure comes at the second
        buffer = io.BytesIO()
        Image.fromarray(_training_image(rng)).save(buffer, "PNG")
        client.put_object(Bucket=s3_bucket, Key=f"sice/{i:02d}.png", Body=buffer.getvalue())
    lines: list[str] = []
    config = _config(f"s3://{s3_bucket}/sice/", f"s3://{s3_bucket}/runs", name="s3run", workers=1, epochs=2,
                     max_failures=1, inject_failure_at_epoch=1, export=f"s3://{s3_bucket}/models/dce.safetensors",
                     s3=s3_server.s3_options())
    crashed = run_training(config, say=lines.append)
    assert crashed.images == S3_TRAINING_IMAGES and crashed.run_uri == f"s3://{s3_bucket}/runs/s3run"
    assert crashed.train_images > config.batch_size, "a second batch, at which the failure comes"
    assert [m["epoch"] for m in crashed.history] == [1, 2]
    # restarted exactly once, from a checkpoint (not from scratch): epoch 1 was never redone
    assert [m["resumes"] for m in crashed.history] == [0, 1]
    assert any("continuing after epoch 1 of 2" in line for line in lines), lines
    keys = s3_server.list_keys(s3_bucket)
    assert any(k.startswith("runs/s3run/checkpoint_") and k.endswith("/state.pt") for k in keys)
    assert "runs/s3run/metrics.json" in keys and "runs/s3run/loss_curves.png" in keys
    blob = client.get_object(Bucket=s3_bucket, Key="models/dce.safetensors")["Body"].read()
    assert load_weights(blob).meta.metrics["epochs"] == 2

    more = run_training(_config(f"s3://{s3_bucket}/sice/", f"s3://{s3_bucket}/runs", name="s3run", workers=1, epochs=3,
                                s3=s3_server.s3_options()))
    assert [m["epoch"] for m in more.history] == [1, 2, 3]
    assert more.history[:2] == crashed.history
    assert [m["resumes"] for m in more.history] == [0, 1, 2]


# --------------------------------------------------------------------------------------------
# Without Ray
# --------------------------------------------------------------------------------------------


def test_invalid_training_settings():
    for bad in (dict(workers=0), dict(epochs=0), dict(min_crop=0.0), dict(val_fraction=0.7),
                dict(variant="huge"), dict(inject_failure_at_epoch=0)):
        with pytest.raises(ConfigError):
            _config("/data", "/runs", **bad)
    with pytest.raises(ConfigError, match="--data is required"):
        _config("", "/runs")


def test_a_cpu_training_worker_runs_with_denormals_flushed():
    """What the training loop does first on a CPU worker (no Ray needed): subnormal results become
    zero, as in the enhancement workers (activations and gradients go subnormal too)."""
    from dce_batch.training.loop import prepare_cpu_worker

    # torch returns False where the CPU has no flush-to-zero mode it can set: nothing to test there.
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode torch can set")
    threads = torch.get_num_threads()
    try:
        tiny = torch.tensor(0x000AE398, dtype=torch.int32).view(torch.float32).reshape(1)  # 1.0e-39, from its bits
        assert (tiny * 1.0).item() != 0.0  # off: a subnormal survives arithmetic
        prepare_cpu_worker(TrainConfig(data=BUNDLED_DATA, cpus_per_worker=1))
        assert (tiny * 1.0).item() == 0.0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_flush_denormal(True)  # as any Enhancer leaves this process
        torch.set_num_threads(threads)


def test_bundled_training_samples():
    """`--data samples`: the bundled set, small, readable, under- and over-exposed."""
    config = TrainConfig(data=BUNDLED_DATA)
    assert config.data_uri == training_samples_dir() and config.data_description == "the bundled training samples"
    assert TrainConfig(data="./samples").data_uri == "./samples"
    folder = Path(training_samples_dir())
    files = sorted(folder.glob("*.jpg"))
    assert len(files) >= 32 and sum(f.stat().st_size for f in files) < 1_000_000
    assert (folder / "README.md").is_file()
    for kind, in_range in (("under", lambda m: m < 0.25), ("over", lambda m: m > 0.55)):
        chosen = [f for f in files if f.stem.endswith(kind)]
        assert len(chosen) >= len(files) // 3, kind
        for f in chosen:
            result = decode_for_training(f.read_bytes(), 64, max_pixels=10**6)
            assert result.error is None, f
            assert in_range(float(result.pixels.mean()) / 255), f


def test_decode_and_augment_without_ray():
    buffer = io.BytesIO()
    Image.fromarray(_training_image(np.random.default_rng(2), size=50)).save(buffer, "PNG")
    result = decode_for_training(buffer.getvalue(), 48, max_pixels=10**6)
    assert result.error is None and result.pixels.shape == (48, 48, 3) and result.pixels.dtype == np.uint8
    bad = decode_for_training(b"nope", 48, max_pixels=10**6)
    assert bad.pixels is None and bad.error.startswith("UnsupportedImageError")

    images = torch.from_numpy(np.stack([result.pixels] * 4))
    plain = augment_batch(images, AugmentConfig(image_size=48, min_crop=1.0, hflip=False), torch.Generator())
    # uint8 / 255 in float32 both ways: the same single rounding
    assert plain.shape == (4, 3, 48, 48) and torch.equal(plain[0], images[0].permute(2, 0, 1).float() / 255)
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
    from dce_batch.training.datasets import split_files

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


def test_progress_lines():
    from dce_batch.training.progress import ResumeEvent, epoch_line, resume_line

    metrics = {"epoch": 3, "train_loss": 0.81234, "val_loss": 0.79111, "images_per_second": 52.34}
    assert epoch_line(metrics, 10, elapsed_s=65, mean_epoch_s=20) == (
        "[dce-batch train] epoch 3/10 train loss 0.8123, val loss 0.7911, 52.3 images/s, elapsed 1m05s, ETA 2m20s")
    last = epoch_line({**metrics, "epoch": 10}, 10, elapsed_s=5, mean_epoch_s=1)
    assert last.endswith("52.3 images/s, elapsed 5s"), "no ETA after the last epoch"
    no_val = epoch_line({k: v for k, v in metrics.items() if k != "val_loss"}, 10, 1, 1)
    assert "val loss" not in no_val and "train loss 0.8123," in no_val
    assert resume_line(ResumeEvent(after_epoch=2, epochs=5, resumes=1)) == (
        "[dce-batch train] continuing after epoch 2 of 5 from its checkpoint (resume #1)")


def test_shipped_recipes_parse_and_unknown_keys_are_refused(tmp_path):
    from dce_batch.cli import parse_train_args, train_config_from_args

    recipes = sorted((REPO / "training").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        config = train_config_from_args(parse_train_args(["--config", str(recipe), "--data", "sice256"]))
        assert config.name == recipe.stem and config.data == "sice256"
        assert Path(config.export).parts[0] == "runs", "a recipe's weights land in ./runs, which git ignores"
    override = train_config_from_args(parse_train_args(["--config", str(recipes[0]), "--data", "d", "--epochs", "2"]))
    assert override.epochs == 2, "the command line overrides the recipe"
    typo = tmp_path / "typo.toml"
    typo.write_text('epochs = 3\nlearning-rate = 0.1\n')
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_train_args(["--config", str(typo)])


@pytest.mark.parametrize("through", ["dce-batch train", "train_main"])
def test_recipe_values_are_defaults_on_the_subparser_path_too(through, tmp_path, monkeypatch, capsys):
    """``dce-batch train --config`` goes through argparse's train subparser: the recipe's values are
    the defaults and the command line wins, before --config or after it."""
    from dce_batch import cli

    recipe = tmp_path / "recipe.toml"
    recipe.write_text('name = "from_recipe"\nepochs = 7\nimage-size = 64\nlr = 0.002\n')
    configs = []

    def run_training(config):
        configs.append(config)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr("dce_batch.training.run.run_training", run_training)
    argv = ["--epochs", "3", "--config", str(recipe), "--data", "d", "--lr", "0.001"]
    code = cli.main(["train", *argv]) if through == "dce-batch train" else cli.train_main(argv)
    assert code == 2 and "stopped by the test" in capsys.readouterr().err
    (config,) = configs
    assert (config.name, config.image_size) == ("from_recipe", 64), "the recipe's values"
    assert (config.epochs, config.lr, config.data) == (3, 0.001, "d"), "the command line over the recipe"

    typo = tmp_path / "typo.toml"
    typo.write_text("epochz = 3\n")
    code = cli.main(["train", "--config", str(typo), "--data", "d"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dce-batch train: ") and "epochz" in err and len(err.splitlines()) == 1, err
    assert len(configs) == 1, "a bad recipe stops before training"


def test_loss_curves_are_optional(tmp_path, monkeypatch):
    """matplotlib is the `plot` extra: without it the run skips the PNG and says why."""
    import pyarrow.fs as pafs

    from dce_batch.errors import MissingDependencyError
    from dce_batch.training.loop import LOSS_TERMS
    from dce_batch.training.results import plot_history, write_loss_curves

    history = [{"epoch": e, "train_loss": 1.0 / e, **{f"train_{t}": 0.5 / e for t in LOSS_TERMS}} for e in (1, 2)]
    fs = pafs.LocalFileSystem()
    lines: list[str] = []
    assert write_loss_curves(fs, str(tmp_path), history, "with", lines.append)
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not lines

    (tmp_path / "loss_curves.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(MissingDependencyError, match=r"dce-batch\[plot\]"):
        plot_history(history)
    assert not write_loss_curves(fs, str(tmp_path), history, "without", lines.append)
    assert not (tmp_path / "loss_curves.png").exists()
    assert len(lines) == 1 and "loss_curves.png skipped" in lines[0]


# --------------------------------------------------------------------------------------------
# The command line, as a user runs it
# --------------------------------------------------------------------------------------------


# Each call in a fresh interpreter: a mistake must be reported before anything imports or starts Ray.
_MISTAKES_SCRIPT = r"""
import contextlib, io, json, sys
from dce_batch.cli import train_main

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_main(argv)
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
ray = sys.modules.get("ray")
print(json.dumps({"results": results, "ray_started": bool(ray and ray.is_initialized())}))
"""


def test_cli_refuses_mistakes_with_one_line_before_ray_starts(tmp_path, ray_tmp):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (tmp_path / "one").mkdir()
    Image.fromarray(_training_image(np.random.default_rng(3))).save(tmp_path / "one" / "a.png")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "bad.toml").write_text("epochz = 3\n")
    # `samples` is the bundled set; a folder of that name here is ambiguous, and ./samples names it
    (tmp_path / "samples").mkdir()
    bundled = str(REPO / "dce_batch" / "training_samples")
    cases = {
        "does not exist": ["--data", str(tmp_path / "missing")],
        "no input images": ["--data", str(tmp_path / "empty")],
        "none ends in": ["--data", str(tmp_path / "notes")],
        "at least 2": ["--data", str(tmp_path / "one")],
        "--data is required": [],
        "is a folder": ["--data", bundled, "--export", str(tmp_path / "a_folder")],
        "nope.safetensors": ["--data", bundled, "--init-weights", "nope.safetensors"],
        "epochz": ["--config", str(tmp_path / "bad.toml"), "--data", bundled],
        "--data ./samples": ["--data", "samples"],
    }
    result = subprocess.run([sys.executable, "-c", _MISTAKES_SCRIPT, json.dumps(list(cases.values()))],
                            cwd=tmp_path, env=cli_env(ray_tmp), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["results"]) == len(cases), report
    for expected, outcome in zip(cases, report["results"]):
        lines = outcome["stderr"].splitlines()
        assert outcome["code"] == 2 and len(lines) == 1 and expected in lines[0], outcome
        assert lines[0].startswith("dce-batch train: ") and not outcome["stdout"], outcome
    assert not report["ray_started"] and not any(Path(ray_tmp).iterdir()), "Ray must not start for a mistake"
