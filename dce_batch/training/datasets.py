"""The training data on the driver: list the images, split them, decode them once with Ray Data.

:func:`list_training_images` and :func:`split_files` need no Ray: the listing runs before Ray
starts, so a missing or empty ``--data`` fails at once. :func:`decode_datasets` decodes every
image once in Ray Data tasks and materialises the training and validation datasets that the
Ray Train workers read each epoch.

Block order is fixed (``preserve_order``) from the listing to the workers' shards, so the rows
each worker sees, in the order it sees them, depend only on the data and the seed: two runs with
the same settings train on the same batches on any machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from dce_batch.errors import (
    ConfigError,
    CredentialsError,
    InputNotFoundError,
    StorageError,
    describe_error,
)
from dce_batch.imaging import IMAGE_EXTENSIONS
from dce_batch.storage import InputFile, filesystem_for, list_inputs, read_bytes
from dce_batch.storage.listing import GLOB_CHARS
from dce_batch.training.config import BUNDLED_DATA, TrainConfig
from dce_batch.training.data import decode_for_training

__all__ = ["TrainingData", "decode_datasets", "list_training_images", "split_files"]

# Enough blocks to decode in parallel on any cluster, few enough to keep scheduling cheap.
IMAGES_PER_BLOCK = 16
MAX_BLOCKS = 200


def list_training_images(config: TrainConfig) -> tuple[pafs.FileSystem, list[InputFile]]:
    """The training images named by ``--data`` (a random ``--max-images`` subset when asked).

    Raises:
        InputNotFoundError: ``--data`` does not exist, cannot be listed, or holds no images;
            or ``--data samples`` is ambiguous because a local folder has that name.
        CredentialsError: object storage needs credentials that cannot be found.
    """
    if config.uses_bundled_data and os.path.isdir(BUNDLED_DATA):
        raise InputNotFoundError(
            f"--data {BUNDLED_DATA} names the bundled training images, but there is also a folder "
            f"./{BUNDLED_DATA} here: pass --data ./{BUNDLED_DATA} to train on that folder")
    local_fs, local_path = filesystem_for(config.data_uri, config.s3)
    if (isinstance(local_fs, pafs.LocalFileSystem) and not GLOB_CHARS & set(local_path)
            and not os.path.exists(local_path)):
        raise InputNotFoundError(f"--data {config.data} does not exist (relative paths are taken from "
                                 f"{os.getcwd()})")
    try:
        filesystem, files = list_inputs(config.data_uri, config.s3, extensions=IMAGE_EXTENSIONS)
    except CredentialsError:
        raise
    except StorageError as exc:
        # Whatever the reason (no such path, nothing that looks like an image, an unreachable
        # bucket), the run cannot start: an argument to fix, reported before Ray starts.
        raise InputNotFoundError(f"--data: {exc}") from exc
    if config.max_images is not None and len(files) > config.max_images:
        rng = np.random.default_rng(config.seed)
        files = [files[i] for i in sorted(rng.choice(len(files), config.max_images, replace=False))]
    if len(files) < 2:
        raise InputNotFoundError(f"--data {config.data_description}: {len(files)} image(s) found; "
                                 "training needs at least 2")
    return filesystem, files


def split_files(files: list[InputFile], val_fraction: float, seed: int) -> tuple[list[InputFile], list[InputFile]]:
    """Train/validation split by a seeded hash of each file's path relative to the data root.

    Stable however the data is listed, decoded or parallelised, when images are added, and when
    the data set is moved (a local folder copied to a bucket keeps its split), so a resumed run
    validates on exactly the same images. At least one validation image when
    ``val_fraction > 0`` and there are two images or more.
    """
    if val_fraction <= 0 or len(files) < 2:
        return list(files), []

    def draw(name: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2**64

    draws = {f.uri: draw(f.relpath or f.uri) for f in files}
    val = [f for f in files if draws[f.uri] < val_fraction]
    if not val:
        val = [min(files, key=lambda f: draws[f.uri])]
    chosen = {f.uri for f in val}
    return [f for f in files if f.uri not in chosen], val


@dataclass(frozen=True)
class TrainingData:
    """Decoded, materialised datasets (column ``image``: uint8 S x S x 3) and what was skipped."""

    train: Any  # ray.data.Dataset
    val: Any | None  # ray.data.Dataset, or None without validation images
    train_images: int
    val_images: int
    unreadable: list[str]  # "uri: TypeName: message" for each file that could not be decoded

    @property
    def images(self) -> int:
        """Readable images, training and validation together."""
        return self.train_images + self.val_images


def _decode_batch(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem, base_size: int,
                  max_pixels: int) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: paths -> decoded uint8 images, and an error text per row
    (empty for a decoded image)."""
    images, errors = [], []
    empty = np.zeros((base_size, base_size, 3), dtype=np.uint8)
    for path in batch["path"]:
        try:
            result = decode_for_training(read_bytes(filesystem, str(path)), base_size, max_pixels=max_pixels)
        except StorageError as exc:
            images.append(empty)
            errors.append(describe_error(exc))
            continue
        images.append(result.pixels if result.pixels is not None else empty)
        errors.append(result.error or "")
    return {"uri": batch["uri"], "split": batch["split"], "image": np.stack(images), "error": np.array(errors, dtype=str)}


def decode_datasets(config: TrainConfig, filesystem: pafs.FileSystem, files: list[InputFile]) -> TrainingData:
    """Split ``files``, decode each once in Ray Data tasks and materialise both datasets.

    Raises:
        ConfigError: fewer than two images could be decoded, or none for training.
    """
    import ray.data
    from ray.data.expressions import col

    train_files, val_files = split_files(files, config.val_fraction, config.seed)
    table = pa.table({
        "path": [f.path for f in train_files + val_files],
        "uri": [f.uri for f in train_files + val_files],
        "split": ["train"] * len(train_files) + ["val"] * len(val_files),
    })
    listed = ray.data.from_arrow(table)
    # Later datasets copy this one's context: the order stays fixed all the way to the shards.
    listed.context.execution_options.preserve_order = True
    decoded = (
        listed.repartition(max(1, min(len(files) // IMAGES_PER_BLOCK, MAX_BLOCKS)))
        .map_batches(
            _decode_batch,
            fn_kwargs={"filesystem": filesystem, "base_size": config.decoded_size, "max_pixels": config.max_pixels},
            batch_size=IMAGES_PER_BLOCK,
        )
        .materialize()
    )
    failed = decoded.filter(expr=col("error") != "").select_columns(["uri", "error"]).take_all()
    unreadable = [f"{row['uri']}: {row['error']}" for row in failed]
    readable = col("error") == ""
    train = decoded.filter(expr=readable & (col("split") == "train")).select_columns(["image"]).materialize()
    train_images = train.count()
    val, val_images = None, 0
    if val_files:
        val = decoded.filter(expr=readable & (col("split") == "val")).select_columns(["image"]).materialize()
        val_images = val.count()
        if val_images == 0:
            val = None
    if train_images == 0 or train_images + val_images < 2:
        raise ConfigError(f"only {train_images + val_images} readable training image(s) in "
                          f"{config.data_description} ({len(unreadable)} unreadable); need at least 2, "
                          "one of them for training")
    return TrainingData(train=train, val=val, train_images=train_images, val_images=val_images,
                        unreadable=unreadable)

