"""How many workers, with which resources: :func:`plan_workers` gives a :class:`WorkerPlan`.

Used by both engines: Ray actors (and the staged pipeline's CPU tasks) declare its resources to
Ray; the local engine starts that many worker processes.

**Memory is declared per call.** A worker holds every image of one call at once (the fused
pipeline reads a call's images together, the staged GPU actor enhances them as one batch), so what
it declares is its base plus ``images_per_call`` times the most one image can take. The bytes per
pixel of one image, at the largest size ``--max-pixels`` lets in, were measured by
``benchmarks/bench_memory.py`` (its upper bound is also a test, tests/test_sizing.py):

* fused actor: input bytes, decoded and enhanced pixels, the encoder's copy, the output bytes:
  :data:`FUSED_BYTES_PER_PIXEL`;
* staged GPU actor: the decoded images and their enhanced copies, plus their serialized forms
  going in and out: :data:`GPU_ACTOR_BYTES_PER_PIXEL`;
* staged read/decode and encode/write tasks: :data:`TASK_BYTES_PER_PIXEL`.

So batch size and ``--max-pixels`` trade: halve either and a worker needs about half the memory
for images, and twice as many fit on a node.
"""

from __future__ import annotations

from dataclasses import dataclass

from dce_batch.errors import ConfigError

__all__ = ["ACTOR_BASE_MEMORY", "FUSED_BYTES_PER_PIXEL", "GPU_ACTOR_BYTES_PER_PIXEL", "SMALLEST_WORKER_MEMORY",
           "TASK_BASE_MEMORY", "TASK_BYTES_PER_PIXEL", "WorkerPlan", "plan_workers", "worker_memory_bytes"]

#: Memory a worker needs beyond its images: Python, torch, the model and a window's activations
#: (the "RSS before" column of benchmarks/bench_memory.py) plus Ray's worker and headroom.
ACTOR_BASE_MEMORY = 700 << 20
#: Bytes per pixel of one image in a fused worker: above what benchmarks/bench_memory.py measures
#: for 16-bit PNGs, the most demanding inputs (benchmarks/README.md, "One actor's memory").
FUSED_BYTES_PER_PIXEL = 36
#: Bytes per pixel of one image in the staged GPU actor (decoded 16-bit RGBA 8, enhanced 8, and
#: their serialized copies in and out).
GPU_ACTOR_BYTES_PER_PIXEL = 32
#: Bytes per pixel of one image in a staged read/decode or encode/write task.
TASK_BYTES_PER_PIXEL = 24
#: The staged tasks' base (no model).
TASK_BASE_MEMORY = 300 << 20
#: The least memory a worker is started with when a machine is short of memory: two images of 6 MP.
SMALLEST_WORKER_MEMORY = ACTOR_BASE_MEMORY + 2 * 6_000_000 * FUSED_BYTES_PER_PIXEL


@dataclass(frozen=True)
class WorkerPlan:
    """The pool a run uses: counts, per-worker resources, and the largest image a worker takes."""

    min_size: int
    max_size: int
    cpus_per_worker: float
    gpus_per_worker: float
    memory_per_worker: int  # bytes declared per worker (a call's images included)
    images_per_call: int
    image_pixel_limit: int  # largest image a worker takes (the memory bound's basis)
    staged: bool = False
    task_memory: int = 0  # staged: memory declared by each read/decode and encode/write task
    limited_by: str = "CPU"
    limit_reason: str | None = None  # why image_pixel_limit is below --max-pixels, for error rows

    def describe(self) -> dict:
        """For the run summary and the report: plain numbers with their units."""
        return {"workers": f"{self.min_size}..{self.max_size}" if self.min_size != self.max_size else self.max_size,
                "cpus_per_worker": self.cpus_per_worker, "gpus_per_worker": self.gpus_per_worker,
                "memory_per_worker_gib": round(self.memory_per_worker / 2**30, 2),
                "images_per_call": self.images_per_call,
                "largest_image_mp": round(self.image_pixel_limit / 1e6, 1), "limited_by": self.limited_by,
                "pipeline": "staged" if self.staged else "fused"}


def worker_memory_bytes(pixel_limit: int, images_per_call: int, *, staged: bool = False) -> int:
    """Memory one worker declares to enhance calls of ``images_per_call`` images of up to ``pixel_limit``."""
    per_pixel = GPU_ACTOR_BYTES_PER_PIXEL if staged else FUSED_BYTES_PER_PIXEL
    return ACTOR_BASE_MEMORY + images_per_call * pixel_limit * per_pixel


def _pixel_limit(memory: int, images_per_call: int, staged: bool) -> int:
    per_pixel = GPU_ACTOR_BYTES_PER_PIXEL if staged else FUSED_BYTES_PER_PIXEL
    return max(1, (memory - ACTOR_BASE_MEMORY) // (images_per_call * per_pixel))


def plan_workers(config, cluster_resources: dict[str, float], *, local_cluster: bool = False) -> WorkerPlan:
    """Workers for ``config`` (an :class:`~dce_batch.job.config.EnhanceConfig`) on a cluster with
    ``cluster_resources`` (``CPU``, ``GPU``, ``memory`` in bytes).

    CPU nodes: one worker per CPU (each runs one torch thread), as many as the memory holds.
    Nothing else needs a CPU in the fused pipeline, so the pool may take every core. GPU nodes
    (staged): workers by GPUs; a CPU must be left for the read/decode and encode/write tasks, or
    the job would stall without an error, so such settings are refused.

    On one machine (``local_cluster``) free memory is a moment's reading and nothing waits for
    more: when it cannot hold one worker for ``--max-pixels``, one worker takes the memory there
    is, and only the images too large for it get error rows (a later run retries them).
    """
    cpus = float(cluster_resources.get("CPU", 0))
    memory = float(cluster_resources.get("memory", 0))
    gpus = config.gpus_per_actor
    staged = config.staged
    per_call = config.images_per_call
    cpus_per_worker = config.cpus_per_actor if config.cpus_per_actor is not None else 1.0
    if cpus and cpus_per_worker > cpus:
        cpus_per_worker = cpus  # a one-CPU cluster still gets its worker
    worker_memory = config.actor_memory or worker_memory_bytes(config.max_pixels, per_call, staged=staged)
    pixel_limit = min(config.max_pixels, _pixel_limit(worker_memory, per_call, staged))
    limit_reason = None
    if pixel_limit < config.max_pixels:
        limit_reason = (f"a worker has {worker_memory / 2**30:.2f} GiB (--actor-memory) for {per_call} image(s) per "
                        f"call, enough for images of up to {pixel_limit / 1e6:.1f} MP; give workers more memory or "
                        "lower --batch-size to enhance it")
    limited_by = "CPU"
    if config.num_actors is not None:
        low, high = config.num_actors
        limited_by = "--num-actors"
    else:
        if gpus > 0:
            high = int(cluster_resources.get("GPU", 0) // gpus)
            limited_by = "GPU"
            if high < 1:
                raise ConfigError(
                    "--gpus-per-actor was given but the cluster has no GPUs right now; on an autoscaling "
                    "cluster pass --num-actors MIN:MAX so Ray Data can ask for GPU nodes")
        else:
            usable = cpus - 1 if staged else cpus  # staged on CPUs: leave a CPU for the tasks
            high = max(1, int(usable // max(cpus_per_worker, 1e-9)))
        if memory and high * worker_memory > memory:
            high = int(memory // worker_memory)
            limited_by = "memory"
            if high < 1 and local_cluster and config.actor_memory is None and memory >= SMALLEST_WORKER_MEMORY:
                high, worker_memory = 1, int(memory)
                pixel_limit = min(config.max_pixels, _pixel_limit(worker_memory, per_call, staged))
                limit_reason = (f"this machine had {memory / 2**30:.1f} GiB of memory to give when the run started, "
                                f"enough for {per_call} image(s) per call of up to {pixel_limit / 1e6:.0f} MP; run "
                                "again with more memory free (or a lower --batch-size) to enhance it")
            elif high < 1:
                raise ConfigError(
                    f"one worker needs {worker_memory / 2**30:.1f} GiB to enhance {per_call} image(s) per call of up "
                    f"to {config.max_pixels / 1e6:g} MP, but the cluster offers {memory / 2**30:.1f} GiB; lower "
                    "--max-pixels or --batch-size (or --actor-memory), or add memory")
        # A fixed-size pool starts every worker at once; an autoscaling cluster grows from one.
        low = high if local_cluster else 1
    reserved = (low * cpus_per_worker) if staged else 0.0
    if staged and cpus and reserved > cpus - 1:
        raise ConfigError(
            f"{low} actor(s) x {cpus_per_worker} CPU leave less than one CPU for reading, decoding and "
            f"encoding images on this {cpus:g}-CPU cluster and the job would stall; lower --num-actors "
            "or --cpus-per-actor (fractions are fine)")
    if local_cluster and cpus and not staged and low * cpus_per_worker > cpus + 1e-9:
        raise ConfigError(
            f"{low} actor(s) x {cpus_per_worker} CPU do not fit this {cpus:g}-CPU machine and the job would "
            "wait forever; lower --num-actors or --cpus-per-actor")
    task_memory = TASK_BASE_MEMORY + per_call * pixel_limit * TASK_BYTES_PER_PIXEL if staged else 0
    if staged and memory and low * worker_memory + 2 * task_memory > memory:
        # The GPU actors, one read/decode task and one encode/write task must fit together, or
        # Ray Data waits for memory that never frees: the job would hang without an error.
        if not (local_cluster and config.actor_memory is None):
            raise ConfigError(
                f"{low} actor(s) of {worker_memory / 2**30:.1f} GiB and the decode and encode tasks "
                f"({task_memory / 2**30:.1f} GiB each, {per_call} image(s) of up to {pixel_limit / 1e6:g} MP per call) "
                f"need more than the cluster's {memory / 2**30:.1f} GiB and the job would stall; lower --max-pixels "
                "or --batch-size, or add memory")
        per_image = low * GPU_ACTOR_BYTES_PER_PIXEL + 2 * TASK_BYTES_PER_PIXEL
        fitting = int((memory - low * ACTOR_BASE_MEMORY - 2 * TASK_BASE_MEMORY) // (per_call * per_image))
        if fitting < 1_000_000:
            raise ConfigError(f"this machine's {memory / 2**30:.1f} GiB cannot hold {low} actor(s) and the decode and "
                              "encode tasks of the staged pipeline; use --pipeline fused or fewer actors")
        pixel_limit = min(pixel_limit, fitting)
        worker_memory = worker_memory_bytes(pixel_limit, per_call, staged=True)
        task_memory = TASK_BASE_MEMORY + per_call * pixel_limit * TASK_BYTES_PER_PIXEL
        limited_by = "memory"
        limit_reason = (f"this machine had {memory / 2**30:.1f} GiB of memory to give for {low} actor(s) and the "
                        f"decode and encode tasks, enough for {per_call} image(s) per call of up to "
                        f"{pixel_limit / 1e6:.0f} MP; lower --batch-size or free memory to enhance it")
    return WorkerPlan(low, high, cpus_per_worker, gpus, worker_memory, per_call, pixel_limit, staged, task_memory,
                      limited_by, limit_reason)
