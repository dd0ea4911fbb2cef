"""The per-worker training loop that Ray Train runs in each worker (``TorchTrainer``'s function).

Each epoch a worker reads its equal shard of the training set, augments each batch on its device,
steps DDP (gloo on CPUs, NCCL on GPUs), then every worker evaluates its stride of the whole
validation set. Losses are summed over all workers and reported with
``ray.train.report``; rank 0 also saves the checkpoint (model, optimizer, epoch, global RNG state
and the metric history) and sends the epoch's metrics to the driver's progress line.

Resume: a checkpoint given by Ray Train (a restarted worker group, or a second run with the same
name) continues after its epoch. Augmentation draws are derived from ``(seed, epoch, rank)`` and
the shuffle seed from the epoch, so a resumed run sees the same crops as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dce_batch.enhance.precision import prepare_cpu_process
from dce_batch.enhance.network import build_model, init_weights
from dce_batch.training.config import TrainConfig
from dce_batch.training.data import AugmentConfig, augment_batch
from dce_batch.training.losses import ZeroDCELoss
from dce_batch.training.progress import EpochEvent, ResumeEvent, send_progress

__all__ = ["CHECKPOINT_FILE", "HISTORY_FILE", "LOSS_TERMS", "prepare_cpu_worker", "train_loop"]

CHECKPOINT_FILE = "state.pt"
HISTORY_FILE = "history.json"
LOSS_TERMS = ("smoothness", "spatial", "color", "exposure")
SHUFFLE_BUFFER_ROWS = 256
VALIDATION_BATCH = 32


def prepare_cpu_worker(config: TrainConfig) -> None:
    """A CPU worker's process: its share of the cores, freed memory kept and denormals flushed
    (activations and gradients decay into the subnormal range too, where Intel CPUs take a slow
    path for every multiply; see :func:`~dce_batch.enhance.precision.flush_denormals`)."""
    torch.set_num_threads(max(1, math.floor(config.cpus_per_worker)))
    prepare_cpu_process()


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function.

    ``loop_config``: ``config`` (:class:`TrainConfig`), ``has_val`` (a "val" dataset is given),
    ``init_state`` (a state dict to start from, or None) and ``progress`` (the driver's progress
    queue, or None).
    """
    import ray.train
    import ray.train.torch

    config: TrainConfig = loop_config["config"]
    progress = loop_config.get("progress")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        prepare_cpu_worker(config)
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
            send_progress(progress, ResumeEvent(after_epoch=start_epoch, epochs=config.epochs, resumes=resumes))

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
            batch_size=config.batch_size, device=device, local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
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
            send_progress(progress, EpochEvent(metrics=metrics, epochs=config.epochs))
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
    # Not print(): Ray Train patches print() in workers, and each line reached the driver twice.
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
    for index, batch in enumerate(shard.iter_torch_batches(batch_size=VALIDATION_BATCH, device=device)):
        if index % world != rank:
            continue
        x = augment_batch(batch["image"], plain, generator)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x)
            total, terms = loss_fn(x, out.image.float(), out.curves.float())
        _accumulate(sums, terms, total, x.shape[0])
    return _reduce(sums, world, device, prefix="val")
