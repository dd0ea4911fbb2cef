"""What a finished run leaves behind: ``metrics.json`` and ``loss_curves.png`` in the run's
storage, and the exported weights (``--export``)."""

from __future__ import annotations

import io
import json
import os
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from dce_batch.enhance.network import build_model, count_parameters
from dce_batch.enhance.weights import WeightsMeta, save_weights
from dce_batch.errors import MissingDependencyError
from dce_batch.storage import filesystem_for, write_bytes_atomic
from dce_batch.training.config import TrainConfig
from dce_batch.training.datasets import TrainingData
from dce_batch.training.loop import LOSS_TERMS

__all__ = ["export_weights", "plot_history", "write_run_results"]

METRICS_FILE = "metrics.json"
LOSS_CURVES_FILE = "loss_curves.png"
_SECRET_KEYS = ("access_key", "secret_key", "session_token")


def write_run_results(filesystem: pafs.FileSystem, run_path: str, name: str, config: TrainConfig,
                      data: TrainingData, history: list[dict[str, Any]],
                      say=print) -> None:
    """``metrics.json`` (every epoch, the config, the hardware) and ``loss_curves.png``."""
    summary = {
        "run": name,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs": history[-1]["epoch"],
        "final": history[-1],
        "best": min(history, key=lambda m: m["score"]),
        "data": config.data_uri,
        "images": data.images,
        "train_images": data.train_images,
        "val_images": data.val_images,
        "unreadable": data.unreadable,
        "config": _jsonable(asdict(config)),
        "hardware": _hardware(config),
        "parameters": count_parameters(build_model(config.variant)),
        "history": history,
    }
    write_bytes_atomic(filesystem, f"{run_path}/{METRICS_FILE}", json.dumps(summary, indent=2).encode())
    write_loss_curves(filesystem, run_path, history, name, say)


def export_weights(config: TrainConfig, name: str, state: dict[str, torch.Tensor],
                   final: dict[str, Any], data: TrainingData) -> WeightsMeta:
    """Write the final weights, with their recipe, data and metrics, to ``config.export``."""
    metrics = {k: final[k] for k in final if k.startswith(("train_", "val_"))}
    metrics.update(epochs=final["epoch"], images=data.images, unreadable=len(data.unreadable))
    blob, meta = save_weights(
        state, None, name=Path(config.export).stem, variant=config.variant,
        source=f"trained by dce_batch (run {name})", licence="see the training data's licence",
        recipe=config.recipe(), data=f"{config.data_uri} ({data.images} images)", metrics=metrics,
    )
    export_fs, export_path = filesystem_for(config.export, config.s3)
    write_bytes_atomic(export_fs, export_path, blob)
    return meta


def write_loss_curves(filesystem: pafs.FileSystem, run_path: str, history: list[dict[str, Any]], name: str,
                      say=print) -> bool:
    """Write ``loss_curves.png`` beside ``metrics.json``; without matplotlib, say so and skip it."""
    try:
        png = plot_history(history, title=name)
    except MissingDependencyError as exc:
        say(f"[dce-batch train] {LOSS_CURVES_FILE} skipped: {exc}")
        return False
    write_bytes_atomic(filesystem, f"{run_path}/{LOSS_CURVES_FILE}", png)
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
        return {k: _jsonable(v) for k, v in value.items() if k not in _SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
