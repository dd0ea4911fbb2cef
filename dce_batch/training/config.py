"""The settings of a training run (:class:`TrainConfig`) and the bundled training set's location.

Defaults are the Zero-DCE authors': Adam, lr 1e-4, weight decay 1e-4, gradient-norm clip 0.1,
batch 8 per worker, loss weights 200/1/5/10 (1600 smoothness for the fast variant), E = 0.6,
256 x 256.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from dce_batch.enhance.network import ModelVariant
from dce_batch.errors import ConfigError
from dce_batch.imaging import DEFAULT_MAX_PIXELS
from dce_batch.limits import (MAX_COUNT, MAX_IMAGES_PER_CALL, MAX_LOSS_WEIGHT, MAX_LR, MAX_PIXEL_LIMIT, MAX_SEED, MAX_SIDE,
                              MAX_WORKER_RESOURCES, MAX_WORKERS, check_number)
from dce_batch.storage import S3Options
from dce_batch.training.losses import LossWeights

__all__ = ["BUNDLED_DATA", "TrainConfig", "training_samples_dir"]

#: The ``--data`` value that names the training images bundled with the package.
BUNDLED_DATA = "samples"


def training_samples_dir() -> str:
    """The bundled training images: a few dozen small under- and over-exposed photos."""
    return str(resources.files("dce_batch").joinpath("training_samples"))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; built by the CLI, shipped whole to the workers.

    ``data`` is a folder, glob, ``s3://`` prefix or list file, or :data:`BUNDLED_DATA` for the
    bundled training set (:attr:`data_uri` is where the images are read from).
    """

    data: str
    storage: str = "./runs"
    name: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    epochs: int = 200
    image_size: int = 256
    base_size: int | None = None
    min_crop: float = 1.0
    hflip: bool = True
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    variant: ModelVariant = "full"
    loss: LossWeights = field(default_factory=LossWeights)
    max_failures: int = 3
    val_fraction: float = 0.05
    seed: int = 0
    export: str | None = None
    init_weights: str | None = None
    keep_checkpoints: int = 3
    checkpoint_every: int = 1
    precision: str = "auto"
    max_images: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    s3: S3Options | None = None
    verbose: bool = False  # Ray's own log lines and the workers' output reach the driver
    inject_failure_at_epoch: int | None = None

    def __post_init__(self) -> None:
        # Types, finiteness and the upper bounds (dce_batch.limits) first: a recipe's numbers reach
        # here without the CLI's argument types.
        for name, value, low, high in [
            ("--workers", self.workers, 1, MAX_WORKERS), ("--epochs", self.epochs, 1, MAX_COUNT),
            ("--image-size", self.image_size, 16, MAX_SIDE), ("--base-size", self.base_size, 16, MAX_SIDE),
            ("--batch-size", self.batch_size, 1, MAX_IMAGES_PER_CALL), ("--max-failures", self.max_failures, -1, MAX_COUNT),
            ("--seed", self.seed, 0, MAX_SEED), ("--keep-checkpoints", self.keep_checkpoints, 1, MAX_COUNT),
            ("--checkpoint-every", self.checkpoint_every, 1, MAX_COUNT), ("--max-images", self.max_images, 2, MAX_COUNT),
            ("max_pixels", self.max_pixels, 1, MAX_PIXEL_LIMIT),
            ("--inject-failure-at-epoch", self.inject_failure_at_epoch, 1, MAX_COUNT),
        ]:
            check_number(name, value, low, high, integer=True)
        for name, value, low, high, low_open in [
            ("--gpus-per-worker", self.gpus_per_worker, 0, MAX_WORKER_RESOURCES, False),
            ("--cpus-per-worker", self.cpus_per_worker, 0, MAX_WORKER_RESOURCES, True),
            ("--min-crop", self.min_crop, 0.05, 1, False), ("--lr", self.lr, 0, MAX_LR, True),
            ("--weight-decay", self.weight_decay, 0, MAX_LR, False),
            ("--grad-clip", self.grad_clip, 0, MAX_LOSS_WEIGHT, True), ("--val-fraction", self.val_fraction, 0, 1, False),
            ("--tv-weight", self.loss.smoothness, 0, MAX_LOSS_WEIGHT, False),
            ("--spatial-weight", self.loss.spatial, 0, MAX_LOSS_WEIGHT, False),
            ("--color-weight", self.loss.color, 0, MAX_LOSS_WEIGHT, False),
            ("--exposure-weight", self.loss.exposure, 0, MAX_LOSS_WEIGHT, False),
            ("--exposure-target", self.loss.exposure_target, 0, 1, True),
        ]:
            check_number(name, value, low, high, low_open=low_open)
        checks = [
            (bool(self.data), ("--data is required: a folder, glob, s3:// prefix or list file of images, "
                               f"or '{BUNDLED_DATA}' for the bundled training images")),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.gpus_per_worker >= 0, "--gpus-per-worker cannot be negative"),
            (self.cpus_per_worker > 0, "--cpus-per-worker must be positive"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.image_size >= 16, f"--image-size must be at least 16, got {self.image_size}"),
            (self.base_size is None or self.base_size >= self.image_size, "--base-size must be >= --image-size"),
            (0.05 <= self.min_crop <= 1.0, f"--min-crop must be in [0.05, 1], got {self.min_crop}"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (0.0 <= self.val_fraction < 0.5, f"--val-fraction must be in [0, 0.5), got {self.val_fraction}"),
            (self.variant in ("full", "fast"), f"--model-variant must be full or fast, got {self.variant!r}"),
            (self.precision in ("auto", "fp32", "bf16"), f"--precision must be auto, fp32 or bf16, got {self.precision!r}"),
            (self.max_images is None or self.max_images >= 2, "--max-images must be at least 2"),
            (self.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
            (self.inject_failure_at_epoch is None or self.inject_failure_at_epoch >= 1,
             "failure injection needs an epoch >= 1 (a checkpoint must exist to restart from)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def uses_bundled_data(self) -> bool:
        return self.data == BUNDLED_DATA

    @property
    def data_uri(self) -> str:
        """Where the training images are read from (the bundled folder for :data:`BUNDLED_DATA`)."""
        return training_samples_dir() if self.uses_bundled_data else self.data

    @property
    def data_description(self) -> str:
        """``data`` as a person reads it, for log lines and the weights' metadata."""
        return "the bundled training samples" if self.uses_bundled_data else self.data

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def decoded_size(self) -> int:
        return self.base_size or self.image_size

    def run_name(self) -> str:
        return self.name or f"dce-{self.variant}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"

    def recipe(self) -> dict[str, Any]:
        """The settings that define the trained model (for the weights' metadata)."""
        keep = ("epochs", "image_size", "base_size", "min_crop", "hflip", "batch_size", "lr", "weight_decay",
                "grad_clip", "variant", "val_fraction", "seed", "workers", "precision", "max_images", "init_weights")
        recipe = {k: getattr(self, k) for k in keep}
        recipe["loss"] = asdict(self.loss)
        recipe["optimizer"] = "Adam"
        return recipe
