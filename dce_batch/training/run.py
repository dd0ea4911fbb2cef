"""Distributed DCE-Net training on Ray Train (the ``dce-batch train`` / ``jobs/train.py`` job).

The flow:

    storage listing -> Ray Data: read + decode + resize (tasks, once) -> materialised dataset
      -> train/validation split -> TorchTrainer workers (DDP; gloo on CPU, NCCL on GPU)
      -> per epoch: ray.train.report(metrics, checkpoint) -> CheckpointConfig keeps the best few
      -> at the end: metrics.json + loss_curves.png in the run's storage, optional weights export

Resume is Ray Train's: a second run with the same ``--name`` and ``--storage`` continues from
that run's latest checkpoint, and a failed worker (within ``--max-failures``) restarts the
group from the latest checkpoint. Checkpoints hold the model, the optimizer, the epoch, the
global RNG state and the metric history; augmentation draws are derived from
``(seed, epoch, rank)``, so a resumed run sees the same crops as an uninterrupted one.

Defaults are the authors': Adam, lr 1e-4, weight decay 1e-4, gradient-norm clip 0.1, batch 8
per worker, loss weights 200/1/5/10 (1600 smoothness for the fast variant), E = 0.6, 256 x 256.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dce_batch.errors import ConfigError, MissingDependencyError, StorageError, describe_error
from dce_batch.imaging import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from dce_batch.enhance.precision import prepare_cpu_process
from dce_batch.training.losses import LossWeights, ZeroDCELoss
from dce_batch.enhance.network import ModelVariant, build_model, count_parameters, init_weights
from dce_batch.storage import Location, S3Options, filesystem_for, list_inputs, read_bytes, write_bytes_atomic
from dce_batch.training.data import AugmentConfig, augment_batch, decode_for_training
from dce_batch.enhance.weights import WeightsMeta, save_weights

__all__ = ["TrainConfig", "TrainingOutcome", "run_training"]

CHECKPOINT_FILE = "state.pt"
HISTORY_FILE = "history.json"
LOSS_TERMS = ("smoothness", "spatial", "color", "exposure")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; built by the CLI, shipped whole to the workers."""

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
    inject_failure_at_epoch: int | None = None

    def __post_init__(self) -> None:
        checks = [
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


@dataclass(frozen=True)
class TrainingOutcome:
    run_path: str  # run folder in storage (filesystem path)
    run_uri: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    images: int  # readable images, training and validation together
    unreadable: list[str]
    train_images: int  # of ``images``; each epoch uses all but the remainder of an equal split
    val_images: int
    export_uri: str | None
    weights_meta: WeightsMeta | None


# --------------------------------------------------------------------------------------------
# Data (driver side): list, decode once in Ray Data tasks, split
# --------------------------------------------------------------------------------------------


def _decode_batch(batch: dict[str, np.ndarray], filesystem, base_size: int, max_pixels: int) -> dict[str, Any]:
    """Ray Data map_batches function: paths -> decoded uint8 images (or an error per row)."""
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
        errors.append(result.error)
    return {"uri": batch["uri"], "image": np.stack(images), "error": np.array(errors, dtype=object)}


def split_files(files: list, val_fraction: float, seed: int) -> tuple[list, list]:
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


def load_training_data(config: TrainConfig):
    """(train_ds, val_ds or None, readable image count, unreadable 'uri: reason' list)."""
    filesystem, files = list_inputs(config.data, config.s3, extensions=IMAGE_EXTENSIONS)
    if config.max_images is not None and len(files) > config.max_images:
        rng = np.random.default_rng(config.seed)
        files = [files[i] for i in sorted(rng.choice(len(files), config.max_images, replace=False))]
    train_files, val_files = split_files(files, config.val_fraction, config.seed)
    train, bad_train = _decoded_dataset(train_files, filesystem, config)
    val, bad_val = _decoded_dataset(val_files, filesystem, config) if val_files else (None, [])
    unreadable = bad_train + bad_val
    count = len(files) - len(unreadable)
    if train is None or count < 2:
        raise ConfigError(f"only {count} readable training image(s) under {config.data}; need at least 2")
    return train, val, count, unreadable


def _decoded_dataset(files: list, filesystem, config: TrainConfig):
    """Decode once in Ray Data tasks and materialise: (dataset of images or None, unreadable)."""
    import ray.data

    table = pa.table({"path": [f.path for f in files], "uri": [f.uri for f in files]})
    # Enough blocks to decode in parallel everywhere, few enough to keep scheduling cheap.
    blocks = max(1, min(len(files) // 16, 200))
    decoded = (
        ray.data.from_arrow(table)
        .repartition(blocks)
        .map_batches(
            _decode_batch,
            fn_kwargs={"filesystem": filesystem, "base_size": config.decoded_size, "max_pixels": config.max_pixels},
            batch_size=16,
        )
        .materialize()
    )
    unreadable = [f"{r['uri']}: {r['error']}" for r in decoded.filter(lambda r: r["error"] is not None).take_all()]
    if len(unreadable) == len(files):
        return None, unreadable
    good = decoded.filter(lambda r: r["error"] is None).select_columns(["image"]).materialize()
    return good, unreadable


# --------------------------------------------------------------------------------------------
# The per-worker training loop
# --------------------------------------------------------------------------------------------


def _train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config: TrainConfig = loop_config["config"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, math.floor(config.cpus_per_worker)))
        prepare_cpu_process()
    autocast_dtype = torch.bfloat16 if (config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")) else None

    torch.manual_seed(config.seed)
    model = build_model(config.variant)
    init_weights(model)
    if loop_config.get("init_state") is not None:  # fine-tuning: start from given weights
        model.load_state_dict(loop_config["init_state"])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = ZeroDCELoss(config.loss)

    start_epoch, history, resumes = 0, [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"]) + 1
        resumes = int(state.get("resumes", 0)) + 1
        history = history[:start_epoch]
        if rank == 0:
            _worker_say(f"[dce-batch train] resumed after epoch {start_epoch} of {config.epochs} "
                        f"(from its checkpoint; resume #{resumes})")

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config["has_val"] else None
    augment = AugmentConfig(image_size=config.image_size, min_crop=config.min_crop, hflip=config.hflip)
    plain = AugmentConfig(image_size=config.image_size, min_crop=1.0, hflip=False)

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(hash((config.seed, epoch, rank)) % (2**63))
        model.train()
        sums = torch.zeros(len(LOSS_TERMS) + 2, dtype=torch.float64)  # terms, total, images
        for step, batch in enumerate(train_shard.iter_torch_batches(
            batch_size=config.batch_size, device=device, local_shuffle_buffer_size=256,
            local_shuffle_seed=config.seed * 100_003 + epoch * 101 + rank, drop_last=False,
        )):
            if (config.inject_failure_at_epoch == epoch and start_epoch == 0 and rank == world - 1 and step == 1):
                _worker_say(f"[dce-batch train] injected failure: worker {rank} exits in epoch {epoch + 1}")
                time.sleep(2)  # mid-epoch, after the controller has registered the last checkpoint
                os._exit(1)
            x = augment_batch(batch["image"], augment, generator)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model(x)
                total, terms = loss_fn(x, out.image.float(), out.curves.float())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            _accumulate(sums, terms, total, x.shape[0])
        train_metrics = _reduce(sums, world, device, prefix="train")
        val_metrics = (_evaluate(_unwrap(model), val_shard, loss_fn, plain, device, rank, world, autocast_dtype)
                       if val_shard else {})
        elapsed = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, **train_metrics, **val_metrics, "epoch_seconds": elapsed,
                   "images_per_second": train_metrics["train_images"] / elapsed, "resumes": resumes}
        metrics["score"] = metrics.get("val_loss", metrics["train_loss"])
        history.append(metrics)
        save = (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
        if rank == 0:
            _worker_say(_epoch_line(metrics, config.epochs))
        if rank == 0 and save:
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": epoch, "resumes": resumes, "torch_rng": torch.get_rng_state()},
                           Path(folder) / CHECKPOINT_FILE)
                (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)


def _worker_say(line: str) -> None:
    # Not print(): Ray Train V2 patches print() in workers and each line reached the driver twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _accumulate(sums: torch.Tensor, terms: dict[str, torch.Tensor], total: torch.Tensor, n: int) -> None:
    # Losses are batch means: weight them by the batch size so the epoch mean is per image.
    for i, name in enumerate(LOSS_TERMS):
        sums[i] += float(terms[name].detach()) * n
    sums[len(LOSS_TERMS)] += float(total.detach()) * n
    sums[-1] += n


def _reduce(sums: torch.Tensor, world: int, device: torch.device, prefix: str) -> dict[str, float]:
    if world > 1:
        import torch.distributed as dist

        buffer = sums.to(device if device.type == "cuda" else "cpu")
        dist.all_reduce(buffer)
        sums = buffer.cpu()
    images = max(float(sums[-1]), 1.0)
    metrics = {f"{prefix}_{name}": float(sums[i]) / images for i, name in enumerate(LOSS_TERMS)}
    metrics[f"{prefix}_loss"] = float(sums[len(LOSS_TERMS)]) / images
    metrics[f"{prefix}_images"] = int(sums[-1])
    return metrics


@torch.no_grad()
def _evaluate(model, shard, loss_fn, plain: AugmentConfig, device, rank: int, world: int,
              autocast_dtype) -> dict[str, float]:
    """Mean losses over the whole (unsplit) validation set; this worker takes every world-th batch."""
    model.eval()
    sums = torch.zeros(len(LOSS_TERMS) + 2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for index, batch in enumerate(shard.iter_torch_batches(batch_size=32, device=device)):
        if index % world != rank:
            continue
        x = augment_batch(batch["image"], plain, generator)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x)
            total, terms = loss_fn(x, out.image.float(), out.curves.float())
        _accumulate(sums, terms, total, x.shape[0])
    return _reduce(sums, world, device, prefix="val")


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    terms = " ".join(f"{name[:3]} {m[f'train_{name}']:.4f}" for name in LOSS_TERMS)
    val = f" | val {m['val_loss']:.4f}" if "val_loss" in m else ""
    return (f"[dce-batch train] epoch {m['epoch']}/{epochs} train {m['train_loss']:.4f} ({terms}){val}"
            f" | {m['images_per_second']:.1f} img/s, {m['epoch_seconds']:.1f} s")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def run_training(config: TrainConfig) -> TrainingOutcome:
    """Run (or resume) a training run on the current Ray cluster; returns what it produced."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    name = config.run_name()
    storage_fs, storage_path = filesystem_for(config.storage, config.s3)
    storage_location = Location.parse(config.storage, config.s3)
    init_state = _initial_state(config)  # fail fast on bad --init-weights, before decoding data
    train_ds, val_ds, images, unreadable = load_training_data(config)
    train_count, val_count = train_ds.count(), (val_ds.count() if val_ds is not None else 0)
    print(f"[dce-batch train] run {name!r}: {images} images from {config.data} ({train_count} train,"
          f" {val_count} validation; {len(unreadable)} unreadable, skipped)", flush=True)
    if train_count % config.workers:
        # Ray Train gives every worker the same number of rows (DDP steps must match), so the
        # remainder sits out each epoch; the local shuffle changes which rows that is.
        print(f"[dce-batch train]   {train_count % config.workers} training image(s) per epoch left out"
              f" to split {train_count} evenly over {config.workers} workers", flush=True)
    for line in unreadable[:10]:
        print(f"[dce-batch train]   skipped {line}", flush=True)

    datasets = {"train": train_ds}
    if val_ds is not None:
        datasets["val"] = val_ds
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"config": config, "has_val": val_ds is not None, "init_state": init_state},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": config.gpus_per_worker} if config.use_gpu else {})},
        ),
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
        # Validation is not split by Ray (its equal split drops rows): each worker reads it whole
        # and evaluates every world-th batch, so every validation image counts exactly once.
        dataset_config=_data_config(),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise ConfigError(f"run {name!r} finished without a checkpoint")

    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        history = json.loads((Path(folder) / HISTORY_FILE).read_text())
    final = history[-1]
    run_path = result.path
    run_uri = storage_location.child_uri(name)
    summary = {
        "run": name,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs": final["epoch"],
        "final": final,
        "best": min(history, key=lambda m: m["score"]),
        "images": images,
        "train_images": train_count,
        "val_images": val_count,
        "unreadable": unreadable,
        "config": _jsonable(asdict(config)),
        "hardware": _hardware(config),
        "parameters": count_parameters(build_model(config.variant)),
        "history": history,
    }
    write_bytes_atomic(result.filesystem, f"{run_path}/metrics.json", json.dumps(summary, indent=2).encode())
    _write_loss_curves(result.filesystem, run_path, history, name)

    export_uri, meta = None, None
    if config.export:
        metrics = {k: final[k] for k in final if k.startswith(("train_", "val_"))}
        metrics.update(epochs=final["epoch"], images=images, unreadable=len(unreadable))
        blob, meta = save_weights(
            state["model"], None, name=Path(config.export).stem, variant=config.variant,
            source=f"trained by dce_batch (run {name})", licence="see the training data's licence",
            recipe=config.recipe(), data=f"{config.data} ({images} images)", metrics=metrics,
        )
        export_fs, export_path = filesystem_for(config.export, config.s3)
        write_bytes_atomic(export_fs, export_path, blob)
        export_uri = config.export
        print(f"[dce-batch train] exported weights to {export_uri} (sha256 {meta.sha256[:12]})", flush=True)
    return TrainingOutcome(run_path=run_path, run_uri=run_uri, metrics=final, history=history, images=images,
                           unreadable=unreadable, train_images=train_count, val_images=val_count,
                           export_uri=export_uri, weights_meta=meta)


def _data_config():
    """Split "train" evenly; every worker reads "val" whole, in a fixed order (see _evaluate)."""
    import ray.train

    val_options = ray.train.DataConfig.default_ingest_options()
    val_options.preserve_order = True  # the batch striding in _evaluate needs the same order everywhere
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options={"val": val_options})


def _initial_state(config: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The --init-weights state dict (read once, on the driver), checked against the variant."""
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


def _write_loss_curves(filesystem, run_path: str, history: list[dict[str, Any]], name: str) -> bool:
    """Write ``loss_curves.png`` beside ``metrics.json``; without matplotlib, say so and skip it."""
    try:
        png = plot_history(history, title=name)
    except MissingDependencyError as exc:
        print(f"[dce-batch train] loss_curves.png skipped: {exc}", flush=True)
        return False
    write_bytes_atomic(filesystem, f"{run_path}/loss_curves.png", png)
    return True


def plot_history(history: list[dict[str, Any]], title: str = "") -> bytes:
    """Loss curves (total and each term, train and validation) as PNG bytes.

    Raises:
        MissingDependencyError: matplotlib (the ``plot`` extra) is not installed.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError(
            "plotting the loss curves needs matplotlib, an optional dependency: "
            "pip install 'dce-batch[plot]' (metrics.json has the same numbers)"
        ) from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, axes = plt.subplots(1, 1 + len(LOSS_TERMS), figsize=(4 * (1 + len(LOSS_TERMS)), 3.2))
    for ax, term in zip(axes, ("loss", *LOSS_TERMS)):
        ax.plot(epochs, [m[f"train_{term}"] for m in history], label="train")
        if f"val_{term}" in history[0]:
            ax.plot(epochs, [m[f"val_{term}"] for m in history], label="val")
        ax.set_title(term)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _hardware(config: TrainConfig) -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "workers": config.workers, "gpus_per_worker": config.gpus_per_worker,
            "cpus_per_worker": config.cpus_per_worker, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k not in ("access_key", "secret_key", "session_token")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
