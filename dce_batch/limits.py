"""The range of every number a user can set, and the check that enforces it.

Each upper bound lies far above what a real run asks for (a batch of 4,096 images, a tile of
65,536 pixels, a terapixel image, 4,096 workers). What it stops is a typo or a script's runaway
value: past these bounds a count would overflow a C integer, ask the operating system for
exabytes or make every image refused, far from the argument that caused it. The CLI's argument
types and the settings dataclasses (:class:`~dce_batch.job.config.EnhanceConfig`,
:class:`~dce_batch.training.config.TrainConfig`) check the same bounds, so the Python API refuses
what the command line refuses, with a :class:`~dce_batch.errors.ConfigError`.

Light on purpose (no pyarrow, no torch): the CLI imports it to build its parsers.
"""

from __future__ import annotations

import math

from dce_batch.errors import ConfigError

__all__ = [
    "MAX_ACTOR_MEMORY", "MAX_COUNT", "MAX_FLUSH_S", "MAX_IMAGES_PER_CALL", "MAX_LOSS_WEIGHT", "MAX_LR",
    "MAX_OUTAGE_WAIT_S", "MAX_PIXEL_LIMIT", "MAX_REPORT_PAIRS", "MAX_SCALE", "MAX_SEED", "MAX_SIDE", "MAX_THREADS",
    "MAX_WORKERS", "MAX_WORKER_RESOURCES",
    "check_number", "describe_range",
]

#: Images per call of an enhancement worker, and per training batch (``--batch-size``).
MAX_IMAGES_PER_CALL = 4096
#: Side of an image or tile in pixels (``--tile-size``, ``--image-size``, ``--max-side`` ...).
MAX_SIDE = 65536
#: ``--max-pixels``: a terapixel (2**40).
MAX_PIXEL_LIMIT = 1 << 40
#: Workers of a pool (``--num-actors``, ``train --workers``).
MAX_WORKERS = 4096
#: CPUs or GPUs one worker declares (``--cpus-per-actor``, ``--gpus-per-worker`` ...).
MAX_WORKER_RESOURCES = 1024.0
#: ``--actor-memory``: a pebibyte (2**50 bytes).
MAX_ACTOR_MEMORY = 1 << 50
#: ``--scale``: the downscale factor of the copy the curves are estimated on (1 = full resolution).
MAX_SCALE = 1024.0
#: Torch CPU threads (``evaluate --threads``).
MAX_THREADS = 1024
#: Seconds a finished image's row may wait in its worker (``--manifest-flush-seconds``): one day.
MAX_FLUSH_S = 86400.0
#: Seconds a request is tried again through a storage outage (``--s3-outage-wait``): one day.
MAX_OUTAGE_WAIT_S = 86400.0
#: Seeds: what numpy's generators take.
MAX_SEED = 2**32 - 1
#: Other counts (epochs, images, checkpoints, restarts).
MAX_COUNT = 2**31 - 1
#: Learning rate and weight decay.
MAX_LR = 10.0
#: Loss weights and the gradient-norm clip.
MAX_LOSS_WEIGHT = 1e6
#: Before/after pairs a report shows.
MAX_REPORT_PAIRS = 100_000


def _show(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:g}"


def describe_range(low: float | None, high: float | None, *, low_open: bool = False) -> str:
    """``from 1 to 4,096``, ``above 0 and at most 1,024``, ``at least 0``: for error messages."""
    if low is not None and high is not None:
        return f"above {_show(low)} and at most {_show(high)}" if low_open else f"from {_show(low)} to {_show(high)}"
    if low is not None:
        return f"above {_show(low)}" if low_open else f"at least {_show(low)}"
    if high is not None:
        return f"at most {_show(high)}"
    return "finite"


def check_number(name: str, value: object, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, integer: bool = False) -> None:
    """:class:`ConfigError` unless ``value`` is a finite number (a whole one if ``integer``) within
    ``[low, high]`` (``(low, high]`` if ``low_open``). None is left to the caller."""
    if value is None:
        return
    kind = "a whole number" if integer else "a number"
    numeric = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric) or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{name} must be {kind} {describe_range(low, high, low_open=low_open)}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        raise ConfigError(f"{name} must be {kind} {describe_range(low, high, low_open=low_open)}, got {value!r}")
