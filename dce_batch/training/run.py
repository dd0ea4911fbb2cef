"""Distributed DCE-Net training on Ray Train: the driver (``dce-batch train`` / ``jobs/train.py``).

The flow, one module per step:

    checks that need no Ray: --data listed, --init-weights read, --export named  (datasets, here)
      -> Ray (joined or started, quiet unless verbose)
      -> Ray Data: decode + resize every image once, split train/validation     (datasets.py)
      -> TorchTrainer workers, DDP (gloo on CPU, NCCL on GPU), one loop each    (loop.py)
      -> per epoch: ray.train.report(metrics, checkpoint); a line on the driver (progress.py)
      -> metrics.json + loss_curves.png in the run's storage, weights export    (results.py)

Resume is Ray Train's: a second run with the same ``name`` and ``storage`` continues from that
run's latest checkpoint, and a failed worker (within ``max_failures``) restarts the group from
the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from dce_batch.enhance.weights import WeightsMeta
from dce_batch.errors import ConfigError
from dce_batch.ray_stderr import FilteredStderr
from dce_batch.storage import Location, filesystem_for, read_bytes
from dce_batch.training.config import TrainConfig
from dce_batch.training.datasets import (
    TrainingData,
    decode_datasets,
    list_training_images,
)
from dce_batch.training.loop import CHECKPOINT_FILE, HISTORY_FILE, train_loop
from dce_batch.training.progress import PREFIX, ProgressRelay
from dce_batch.training.results import export_weights, write_run_results

__all__ = ["TrainingOutcome", "run_training"]

# A local cluster that the driver starts for itself gets token authentication by default, and Ray
# says so at WARNING level on every start: nothing for the user to act on.
_RAY_NOTICE_LOGGERS = ("ray._private.authentication.authentication_token_setup",)


@dataclass(frozen=True)
class TrainingOutcome:
    run_path: str  # run folder in storage (filesystem path)
    run_uri: str
    metrics: dict[str, Any]  # the last epoch's
    history: list[dict[str, Any]]
    images: int  # readable images, training and validation together
    unreadable: list[str]
    train_images: int  # of ``images``; each epoch uses all but the remainder of an equal split
    val_images: int
    export_uri: str | None
    weights_meta: WeightsMeta | None
    seconds: float  # wall time of run_training, Ray's start included


def _say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_training(config: TrainConfig, *, say: Callable[[str], None] | None = None) -> TrainingOutcome:
    """Run (or resume) a training run on the current Ray cluster, or on a local one it starts.

    ``say`` receives the progress lines (default: standard error). Mistakes in the settings
    (``--data``, ``--init-weights``, ``--export``) raise before Ray is started or joined.

    Raises:
        ConfigError: invalid settings (InputNotFoundError for a missing or empty ``data``).
        WeightsError: ``init_weights`` cannot be loaded for this variant.
        StorageError: storage cannot be read or written.
    """
    started = time.monotonic()
    say = say or _say_on_stderr
    name = config.run_name()
    filesystem, files = list_training_images(config)
    init_state = read_init_weights(config)
    check_export(config)
    storage_fs, storage_path = filesystem_for(config.storage, config.s3)
    storage_location = Location.parse(config.storage, config.s3)

    # Ray's benign C++ log lines held back for the run (see dce_batch.ray_stderr); --verbose shows them.
    with nullcontext() if config.verbose else FilteredStderr():
        start_ray(config.verbose)
        data = decode_datasets(config, filesystem, files)
        say(f"{PREFIX} run {name!r}: {data.images} images from {config.data_description} ({data.train_images} "
            f"train, {data.val_images} validation, {len(data.unreadable)} unreadable), {config.workers} "
            f"worker{'s' if config.workers != 1 else ''}; checkpoints in {storage_location.child_uri(name)}")
        if data.train_images % config.workers:
            # Ray Train gives every worker the same number of rows (DDP steps must match), so the
            # remainder sits out each epoch; the local shuffle changes which rows that is.
            say(f"{PREFIX}   {data.train_images % config.workers} training image(s) per epoch left out"
                f" to split {data.train_images} evenly over {config.workers} workers")
        for line in data.unreadable[:10]:
            say(f"{PREFIX}   skipped {line}")

        with _ray_deprecations_hidden(not config.verbose), ProgressRelay(say, started) as relay:
            trainer = _trainer(config, name, storage_fs, storage_path, data, init_state, relay.queue)
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        if result.checkpoint is None:
            raise ConfigError(f"run {name!r} finished without a checkpoint")

        with result.checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
        write_run_results(result.filesystem, result.path, name, config, data, history, say)
        meta = export_weights(config, name, state["model"], history[-1], data) if config.export else None
        return TrainingOutcome(run_path=result.path, run_uri=storage_location.child_uri(name), metrics=history[-1],
                               history=history, images=data.images, unreadable=data.unreadable,
                               train_images=data.train_images, val_images=data.val_images,
                               export_uri=config.export, weights_meta=meta, seconds=time.monotonic() - started)


def start_ray(verbose: bool) -> bool:
    """Join the current Ray cluster (RAY_ADDRESS, ``ray start``, ``ray job submit``) or start a
    local one; True when this call started it.

    Unless ``verbose``, Ray's INFO lines, the workers' output and Ray Data's progress bars stay
    out of the way (the driver prints its own lines).
    """
    import ray

    from dce_batch.ray_logging import quiet_ray

    settings = quiet_ray(verbose)
    settings.apply()
    for logger_name in _RAY_NOTICE_LOGGERS:
        logging.getLogger(logger_name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if ray.is_initialized():
        return False
    # No dashboard: it costs seconds and a core on a small machine, and training reports here.
    ray.init(include_dashboard=False, **settings.init_kwargs)
    return True


@contextmanager
def _ray_deprecations_hidden(hide: bool) -> Iterator[None]:
    """Ray's deprecation warnings about its own internals (nothing a user can change) hidden."""
    with warnings.catch_warnings():
        if hide:
            from ray.util.annotations import RayDeprecationWarning

            warnings.simplefilter("ignore", RayDeprecationWarning)
        yield


def _trainer(config: TrainConfig, name: str, storage_fs: pafs.FileSystem, storage_path: str, data: TrainingData,
             init_state: dict[str, torch.Tensor] | None, progress_queue: Any):
    import ray.train
    from ray.train.torch import TorchTrainer

    datasets = {"train": data.train}
    if data.val is not None:
        datasets["val"] = data.val
    resources = {"CPU": config.cpus_per_worker, **({"GPU": config.gpus_per_worker} if config.use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": config, "has_val": data.val is not None, "init_state": init_state,
                           "progress": progress_queue},
        scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute="score",
                checkpoint_score_order="min",
            ),
        ),
        datasets=datasets,
        dataset_config=_data_config(),
    )


def _data_config():
    """Split "train" evenly; every worker reads "val" whole; both in a fixed order.

    Validation is not split by Ray (its equal split drops rows): each worker reads it whole and
    evaluates every world-th batch, so every validation image counts exactly once. The fixed
    order makes each worker's shard, and so the training batches, the same on every run.
    """
    import ray.train

    options = {}
    for dataset in ("train", "val"):
        options[dataset] = ray.train.DataConfig.default_ingest_options()
        options[dataset].preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


def read_init_weights(config: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The ``--init-weights`` state dict (read once, on the driver), checked against the variant.

    Raises:
        WeightsError: the file or name is missing, unreadable, or of the other variant.
    """
    if not config.init_weights:
        return None
    from dce_batch.enhance.weights import load_weights

    spec = config.init_weights
    if "://" in spec and not spec.startswith("file://"):
        fs, path = filesystem_for(spec, config.s3)
        loaded = load_weights(read_bytes(fs, path), variant=config.variant, name=path.rsplit("/", 1)[-1])
    else:
        loaded = load_weights(spec.removeprefix("file://"), variant=config.variant)
    return dict(loaded.state_dict)


def check_export(config: TrainConfig) -> None:
    """``--export`` must name a file: refused before training rather than after it.

    Raises:
        ConfigError: ``--export`` ends in a slash or is an existing local folder.
    """
    if not config.export:
        return
    fs, path = filesystem_for(config.export, config.s3)
    is_folder = config.export.endswith("/") or (isinstance(fs, pafs.LocalFileSystem) and os.path.isdir(path))
    if is_folder:
        raise ConfigError(f"--export {config.export} is a folder; name the weights file, e.g. "
                          f"{config.export.rstrip('/')}/{config.run_name()}.safetensors")
