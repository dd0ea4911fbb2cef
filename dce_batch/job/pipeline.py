"""The enhancement job on Ray Data: the only module of the enhancement path that imports Ray.

    driver: weights, OUTPUT checks -> plan (list inputs, output names, resume set), while Ray starts
    Ray Data, CPU nodes (fused):  plan rows -> EnhanceActor pool, one actor per CPU
                                  (read -> decode -> enhance -> encode -> atomic write -> rows)
    Ray Data, GPU nodes (staged): plan rows -> read + decode (CPU tasks) -> GpuEnhanceActor
                                  (batches of equal-size windows from several images on the GPU)
                                  -> encode + atomic write (CPU tasks) -> rows
    driver: rows -> Parquet parts under OUTPUT/_manifest/, progress, and last the run summary

Why two shapes (benchmarks/bench_pipeline.py): on a CPU the network is >95 % of the work, so
one actor per core that does everything for its images wastes nothing, and moves no pixels
through the object store; on a GPU the network takes well under a millisecond per photo while
decoding and encoding take several milliseconds of a CPU core, so those run on the node's other
cores in parallel and the GPU gets large batches.

Every actor journals its rows (``_manifest/_pending/``) as soon as a batch's outputs are written,
so a driver that dies loses no row; the next run folds the journal into the manifest.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch import __version__
from dce_batch.errors import ConfigError, InputNotFoundError, StorageError, WeightsError, describe_error
from dce_batch.imaging import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, EncodeOptions
from dce_batch.job.manifest import (
    ManifestRow,
    RunSummary,
    conform,
    delete_pending,
    read_manifest,
    recover_pending,
    rows_to_table,
    write_manifest_part,
    write_pending_part,
)
from dce_batch.job.plan import Plan, list_output_files, output_settings, plan_run
from dce_batch.job.steps import ImageProcessor, ImageReader, ImageState, ImageWriter, WorkItem
from dce_batch.job.progress import Progress
from dce_batch.enhance.settings import FinishConfig, check_inference_settings, resolve_scale
from dce_batch.enhance.registry import read_header_metadata
from dce_batch.storage import (
    MANIFEST_DIR,
    Location,
    S3Options,
    filesystem_for,
    list_inputs_table,
    read_bytes,
    remove_files,
    writes_via_temp_files,
)

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "ActorPool", "EnhanceConfig", "plan_actor_pool", "run_enhance",
           "sample_images_dir"]

EXIT_OK = 0
EXIT_SOME_FAILED = 3
DEFAULT_OUTPUT = "./enhanced"

#: Memory an actor needs beyond its image: Python, torch, the model and a window's activations
#: (384 MiB measured) plus Ray's worker and headroom.
ACTOR_BASE_MEMORY = 700 << 20
#: Bytes per pixel of the image an actor holds: input bytes, decoded and enhanced pixels, the
#: encoder's copy and the output bytes. benchmarks/bench_memory.py measured 28-30 B/px for
#: 16-bit PNGs and 10-11 for 8-bit JPEGs (24 to 100 MP); 32 covers the worst with a margin.
ACTOR_BYTES_PER_PIXEL = 32
#: The least memory a local actor is started with when memory is short: images of up to 12 MP.
_SMALLEST_ACTOR_MEMORY = ACTOR_BASE_MEMORY + 12_000_000 * ACTOR_BYTES_PER_PIXEL
#: Tasks of the staged (GPU) pipeline hold a batch of decoded images.
TASK_BASE_MEMORY = 300 << 20


def sample_images_dir() -> str:
    """The bundled sample images (the job's default INPUT)."""
    return str(resources.files("dce_batch").joinpath("samples"))


@dataclass(frozen=True)
class EnhanceConfig:
    """Settings of one enhancement run (built by the CLI; shipped whole to the actors)."""

    input: str
    output: str = DEFAULT_OUTPUT
    weights: str | None = None
    variant: str | None = None
    scale: float | None = None  # None: the variant's default (settings.DEFAULT_SCALES)
    format: str = "same"
    quality: int = 95
    strength: float = 1.0
    precision: str = "auto"
    denoise: str = "auto"  # noise-aware denoising after the curves (dce_batch.enhance.finishing); "fast", "off"
    denoise_strength: float = 1.0
    exposure: float | str = "auto"  # scene-fitted exposure: "auto", "off" or a target mean brightness
    highlight_stretch: float = FinishConfig.highlight_stretch  # 0: the curves' highlights (the earlier tone)
    num_actors: tuple[int, int] | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: 1 per actor (its torch threads)
    batch_size: int | None = None  # None: 2 images per CPU actor call, 16 per GPU actor call
    pipeline: str = "auto"  # auto: fused on CPUs, staged with GPUs
    actor_memory: int | None = None  # bytes; None: from max_pixels (see plan_actor_pool)
    s3: S3Options | None = None
    overwrite: bool = False
    allow_output_inside_input: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    tile_size: int | None = None
    max_full_frame_pixels: int | None = None
    progress_interval_s: float = 10.0
    manifest_part_rows: int = 50_000
    manifest_flush_s: float = 60.0
    dashboard: bool = False
    engine: str = "auto"  # ray | local | auto (see choose_engine)
    quiet: bool = False  # only errors and the final summary
    verbose: bool = False  # Ray's own INFO lines and worker logs too
    report: bool | None = None  # build OUTPUT/_report/index.html; None: for local OUTPUTs
    run_id: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        if self.num_actors is not None:
            low, high = self.num_actors
            if low < 1 or high < low:
                raise ConfigError(f"--num-actors must be MIN[:MAX] with 1 <= MIN <= MAX, got {low}:{high}")
        if self.gpus_per_actor < 0 or (self.cpus_per_actor or 0) < 0:
            raise ConfigError("--gpus-per-actor and --cpus-per-actor cannot be negative")
        if self.gpus_per_actor == 0 and self.cpus_per_actor == 0:
            raise ConfigError("an actor needs some CPU (--cpus-per-actor) or GPU (--gpus-per-actor)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.variant not in (None, "full", "fast"):
            raise ConfigError(f"--model-variant must be full or fast, got {self.variant!r}")
        if self.engine not in ("auto", "ray", "local"):
            raise ConfigError(f"--engine must be auto, ray or local, got {self.engine!r}")
        if self.engine == "local" and (self.gpus_per_actor > 0 or self.pipeline == "staged"):
            raise ConfigError("--engine local runs the fused CPU pipeline; GPUs and --pipeline staged need --engine ray")
        if self.pipeline not in ("auto", "fused", "staged"):
            raise ConfigError(f"--pipeline must be auto, fused or staged, got {self.pipeline!r}")
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be positive, got {self.max_pixels}")
        if self.quiet and self.verbose:
            raise ConfigError("--quiet and --verbose contradict each other; pass one")
        if self.actor_memory is not None and self.actor_memory < ACTOR_BASE_MEMORY:
            raise ConfigError(f"--actor-memory must be at least {ACTOR_BASE_MEMORY >> 20} MB")
        check_inference_settings(strength=self.strength, precision=self.precision, scale=self.scale,
                                 tile_size=self.tile_size, max_full_frame_pixels=self.max_full_frame_pixels)
        self.finish_config()  # validates denoise and exposure
        self.encode_options()  # validates format and quality

    @property
    def staged(self) -> bool:
        return self.pipeline == "staged" or (self.pipeline == "auto" and self.gpus_per_actor > 0)

    @property
    def images_per_call(self) -> int:
        return self.batch_size or (16 if self.staged else 2)

    def inference_config(self, variant: str | None = None):
        from dce_batch.enhance.enhancer import InferenceConfig  # torch stays out of the driver until needed

        return InferenceConfig(
            strength=self.strength, precision=self.precision,  # type: ignore[arg-type]
            scale=self.scale,
            tile_size=self.tile_size, max_full_frame_pixels=self.max_full_frame_pixels,
            finish=self.finish_config(),
        )

    def finish_config(self) -> FinishConfig:
        return FinishConfig(denoise=self.denoise, denoise_strength=self.denoise_strength,  # type: ignore[arg-type]
                            exposure=self.exposure, highlight_stretch=self.highlight_stretch)

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(format=self.format, quality=self.quality)


# --------------------------------------------------------------------------------------------
# Actor pool
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorPool:
    min_size: int
    max_size: int
    cpus_per_actor: float
    gpus_per_actor: float
    memory_per_actor: int  # bytes, declared to Ray
    image_pixel_limit: int  # largest image an actor takes (the memory bound's basis)
    staged: bool = False
    task_memory: int = 0  # staged: memory declared by each read/decode and encode/write task
    limited_by: str = "CPU"
    limit_reason: str | None = None  # why image_pixel_limit is below --max-pixels, for error rows


def actor_memory_bytes(max_pixels: int) -> int:
    """Memory one actor needs to enhance an image of ``max_pixels`` (windows bound the network's share)."""
    return ACTOR_BASE_MEMORY + max_pixels * ACTOR_BYTES_PER_PIXEL


def _limit_reason(config: EnhanceConfig, pixel_limit: int) -> str | None:
    """Why the pixel limit is below --max-pixels (the actor's memory), for error rows."""
    if pixel_limit >= config.max_pixels:
        return None
    return (f"an actor has {(config.actor_memory or 0) / 2**30:.2f} GiB (--actor-memory), enough for images of up to "
            f"{pixel_limit / 1e6:.1f} MP; give actors more memory to enhance it")


def plan_actor_pool(config: EnhanceConfig, cluster_resources: dict[str, float], *, local_cluster: bool = False) -> ActorPool:
    """How many actors, with which resources: what the flags say, else what the cluster holds.

    CPU nodes: one actor per CPU (each runs one torch thread), as many as the cluster's memory
    holds at ``memory_per_actor`` each. Nothing else needs CPU in the fused pipeline, so the pool
    may take every core. GPU nodes (staged): actors by GPUs; CPU must be left for the read/decode
    and encode/write tasks, or the job would stall without an error, so such settings are refused.
    """
    cpus = float(cluster_resources.get("CPU", 0))
    memory = float(cluster_resources.get("memory", 0))
    gpus = config.gpus_per_actor
    staged = config.staged
    cpus_per_actor = config.cpus_per_actor if config.cpus_per_actor is not None else 1.0
    if cpus and cpus_per_actor > cpus:
        cpus_per_actor = cpus  # a one-CPU cluster still gets its actor
    actor_memory = config.actor_memory or actor_memory_bytes(config.max_pixels)
    pixel_limit = min(config.max_pixels, max(1, (actor_memory - ACTOR_BASE_MEMORY) // ACTOR_BYTES_PER_PIXEL))
    limit_reason = _limit_reason(config, pixel_limit)
    limited_by = "CPU"
    if config.num_actors is not None:
        low, high = config.num_actors
    else:
        if gpus > 0:
            high = int(cluster_resources.get("GPU", 0) // gpus)
            limited_by = "GPU"
            if high < 1:
                raise ConfigError(
                    "--gpus-per-actor was given but the cluster has no GPUs right now; on an autoscaling "
                    "cluster pass --num-actors MIN:MAX so Ray Data can ask for GPU nodes")
        else:
            # Staged on CPUs (a test of the GPU path, mostly): leave a CPU for the tasks.
            usable = cpus - 1 if staged else cpus
            high = max(1, int(usable // max(cpus_per_actor, 1e-9)))
        if memory and high * actor_memory > memory:
            high = int(memory // actor_memory)
            limited_by = "memory"
            if high < 1 and local_cluster and config.actor_memory is None and memory >= _SMALLEST_ACTOR_MEMORY:
                # This machine alone, short of memory right now (free memory is a moment's reading,
                # and nothing else waits for more): one actor takes what there is, and only the
                # images too large for it become error rows, which a later run retries.
                high, actor_memory = 1, int(memory)
                pixel_limit = min(config.max_pixels, (actor_memory - ACTOR_BASE_MEMORY) // ACTOR_BYTES_PER_PIXEL)
                limit_reason = (f"this machine had {memory / 2**30:.1f} GiB of memory to give when the run started, "
                                f"enough for images of up to {pixel_limit / 1e6:.0f} MP; run again with more memory "
                                "free to enhance it")
            elif high < 1:
                raise ConfigError(
                    f"one actor needs {actor_memory / 2**30:.1f} GiB to enhance images of up to "
                    f"{config.max_pixels / 1e6:g} MP, but the cluster offers {memory / 2**30:.1f} GiB; lower "
                    "--max-pixels (or --actor-memory), or add memory")
        # A fixed-size pool starts every actor at once; an autoscaling cluster grows from one.
        low = high if local_cluster else 1
    reserved = (low * cpus_per_actor) if staged else 0.0
    if staged and cpus and reserved > cpus - 1:
        raise ConfigError(
            f"{low} actor(s) x {cpus_per_actor} CPU leave less than one CPU for reading, decoding and "
            f"encoding images on this {cpus:g}-CPU cluster and the job would stall; lower --num-actors "
            "or --cpus-per-actor (fractions are fine)")
    if local_cluster and cpus and not staged and low * cpus_per_actor > cpus + 1e-9:
        raise ConfigError(
            f"{low} actor(s) x {cpus_per_actor} CPU do not fit this {cpus:g}-CPU machine and the job would "
            "wait forever; lower --num-actors or --cpus-per-actor")
    task_memory = TASK_BASE_MEMORY + config.images_per_call * min(pixel_limit, 25_000_000) * 8 if staged else 0
    return ActorPool(low, high, cpus_per_actor, gpus, actor_memory, pixel_limit, staged, task_memory, limited_by,
                     limit_reason)


# --------------------------------------------------------------------------------------------
# Ray Data stages
# --------------------------------------------------------------------------------------------


def _warn_of_the_pixel_limit(pool: ActorPool, say: Callable[[str], None]) -> None:
    if pool.limit_reason:  # set only when the actors take less than --max-pixels
        say(f"warning: images over {pool.image_pixel_limit / 1e6:.0f} MP will get error rows: {pool.limit_reason}")


def _worker_name(device_name: str | None = None) -> str:
    import ray

    context = ray.get_runtime_context()
    name = f"{context.get_node_id()[:12]}/{(context.get_actor_id() or context.get_task_id() or '')[:12]}/pid{os.getpid()}"
    return f"{name}/{device_name}" if device_name else name


def _items(batch: pa.Table) -> list[WorkItem]:
    columns = {name: batch[name].to_pylist() for name in
               ("input_uri", "input_path", "output_uri", "output_path", "output_format", "settings", "settings_sha256")}
    return [WorkItem(input_uri=columns["input_uri"][i], input_path=columns["input_path"][i],
                     output_uri=columns["output_uri"][i], output_path=columns["output_path"][i],
                     output_format=columns["output_format"][i], settings=columns["settings"][i],
                     settings_sha256=columns["settings_sha256"][i]) for i in range(batch.num_rows)]


def _build_enhancer(config: EnhanceConfig, weights_blob: bytes, weights_name: str, threads: int | None):
    import torch

    from dce_batch.enhance.enhancer import Enhancer
    from dce_batch.enhance.weights import load_weights

    if threads is not None:
        # Without this every actor would use every core and they would fight each other.
        torch.set_num_threads(threads)
    weights = load_weights(weights_blob, name=weights_name)
    return Enhancer(weights, config.inference_config(weights.meta.variant))


class EnhanceActor:
    """Fused pipeline: one per CPU; reads, enhances and writes its images, journals their rows."""

    def __init__(self, config: EnhanceConfig, weights_blob: bytes, weights_name: str, input_filesystem,
                 output: Location, pixel_limit: int, limit_reason: str | None, threads: int) -> None:
        enhancer = _build_enhancer(config, weights_blob, weights_name, threads)
        self.worker = _worker_name()
        self.config, self.output = config, output
        self.processor = ImageProcessor(enhancer, config.encode_options(), input_filesystem, output.filesystem,
                                        run_id=config.run_id, worker=self.worker, max_pixels=pixel_limit,
                                        limit_reason=limit_reason)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = rows_to_table(self.processor.process_batch(_items(batch)))
        write_pending_part(self.output.filesystem, self.output.child(MANIFEST_DIR), self.config.run_id, self.worker, rows)
        return rows


def _pickle_states(states: list[ImageState]) -> pa.Table:
    return pa.table({"state": pa.array([pickle.dumps(s, protocol=5) for s in states], pa.large_binary())})


def _unpickle_states(batch: pa.Table) -> list[ImageState]:
    return [pickle.loads(b) for b in batch["state"].to_pylist()]


def read_decode_stage(batch: pa.Table, *, input_filesystem, run_id: str, pixel_limit: int,
                      limit_reason: str | None) -> pa.Table:
    """Staged pipeline, CPU task: read and decode a batch of inputs."""
    import concurrent.futures

    reader = ImageReader(input_filesystem, run_id=run_id, max_pixels=pixel_limit, limit_reason=limit_reason)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        states = list(reader.read_batch(_items(batch), pool))
    return _pickle_states(states)


class GpuEnhanceActor:
    """Staged pipeline: only the network, on batches of windows from several images."""

    def __init__(self, config: EnhanceConfig, weights_blob: bytes, weights_name: str) -> None:
        self.enhancer = _build_enhancer(config, weights_blob, weights_name, None)
        device = self.enhancer.device
        if device.type == "cuda":
            import torch

            self.worker = _worker_name(torch.cuda.get_device_name(device))
        else:
            self.worker = _worker_name()
        meta = self.enhancer.weights.meta
        self.constants = dict(model_name=meta.name, model_sha256=meta.sha256, strength=self.enhancer.config.strength,
                              variant=meta.variant, precision=self.enhancer.precision, worker=self.worker)

    def __call__(self, batch: pa.Table) -> pa.Table:
        states = _unpickle_states(batch)
        todo = [s for s in states if s.decoded is not None]
        for state in states:
            for name, value in self.constants.items():
                setattr(state.row, name, value)
        if todo:
            results = self.enhancer.enhance_batch([s.decoded.pixels for s in todo])
            for state, result in zip(todo, results):
                state.enhanced, state.row.tiled = result.pixels, result.tiled
        return _pickle_states(states)


def encode_write_stage(batch: pa.Table, *, config: EnhanceConfig, output: Location) -> pa.Table:
    """Staged pipeline, CPU task: encode, write, and journal the rows."""
    import concurrent.futures

    writer = ImageWriter(config.encode_options(), output.filesystem)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        rows = rows_to_table(writer.write_batch(_unpickle_states(batch), pool))
    write_pending_part(output.filesystem, output.child(MANIFEST_DIR), config.run_id, _worker_name(), rows)
    return rows


def _build_dataset(config: EnhanceConfig, todo: pa.Table, input_fs, output: Location, blob: bytes,
                   weights_name: str, pool: ActorPool):
    import ray.data

    # Blocks of one call each: work overlaps from the first images on, and rows reach the driver
    # (and disk) as each call finishes, not in large bursts.
    per_call = config.images_per_call
    rows_per_block = max(per_call, math.ceil(todo.num_rows / 10_000))
    blocks = [todo.slice(start, rows_per_block) for start in range(0, todo.num_rows, rows_per_block)]
    dataset = ray.data.from_arrow(blocks)
    actors = ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size)
    if not pool.staged:
        threads = max(1, math.floor(pool.cpus_per_actor))
        return dataset.map_batches(
            EnhanceActor, fn_constructor_args=(config, blob, weights_name, input_fs, output, pool.image_pixel_limit,
                                               pool.limit_reason, threads),
            compute=actors, batch_size=per_call, batch_format="pyarrow", num_cpus=pool.cpus_per_actor,
            memory=pool.memory_per_actor,
        )
    return (
        dataset.map_batches(read_decode_stage, fn_kwargs=dict(input_filesystem=input_fs, run_id=config.run_id,
                                                              pixel_limit=pool.image_pixel_limit,
                                                              limit_reason=pool.limit_reason),
                            batch_size=per_call, batch_format="pyarrow", num_cpus=1, memory=pool.task_memory)
        .map_batches(GpuEnhanceActor, fn_constructor_args=(config, blob, weights_name), compute=actors,
                     batch_size=per_call, batch_format="pyarrow", num_cpus=pool.cpus_per_actor,
                     num_gpus=pool.gpus_per_actor or None, memory=pool.memory_per_actor)
        .map_batches(encode_write_stage, fn_kwargs=dict(config=config, output=output), batch_size=per_call,
                     batch_format="pyarrow", num_cpus=1, memory=pool.task_memory)
    )


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class ResolvedWeights:
    blob: bytes
    name: str
    meta: Any  # WeightsMeta


def read_weights_spec(config: EnhanceConfig) -> tuple[bytes, str]:
    """The weights file's bytes (read once, on the driver, shipped to the actors) and its name."""
    from dce_batch.enhance.registry import read_weights_bytes

    spec = config.weights
    if spec and "://" in spec and not spec.startswith("file://"):
        fs, path = filesystem_for(spec, config.s3)
        return read_bytes(fs, path), path.rsplit("/", 1)[-1]
    return read_weights_bytes(spec.removeprefix("file://") if spec else None, variant=config.variant)


def resolve_weights(config: EnhanceConfig, blob: bytes | None = None, name: str | None = None) -> ResolvedWeights:
    """The weights' bytes and metadata.

    The project's own files are read from their header (no torch in the driver: the workers load
    and verify the tensors, sha256 included); published checkpoints are imported here.
    """
    if blob is None:
        blob, name = read_weights_spec(config)
    header = read_header_metadata(blob)
    if header is not None:
        if config.variant is not None and header.variant != config.variant:
            raise WeightsError(
                f"weights {name!r} are for the {header.variant!r} variant, but --model-variant {config.variant!r} "
                "was asked for; drop one of the two or pass matching weights")
        return ResolvedWeights(blob, name, header)
    from dce_batch.enhance.weights import load_weights

    loaded = load_weights(blob, variant=config.variant, name=name)
    return ResolvedWeights(blob, name, loaded.meta)


def check_output_location(config: EnhanceConfig, output: Location) -> None:
    """Refuse an OUTPUT inside an INPUT folder: a later run would enhance its own outputs.

    (A list file or a single image names its inputs explicitly; for those :func:`plan_run`
    still refuses any output that would overwrite an input.)
    """
    if config.allow_output_inside_input:
        return
    input_fs, input_path = filesystem_for(config.input, config.s3)
    root = input_path
    if set("*?[") & set(root):  # a glob: its fixed leading folders
        root = "/".join(part for part in root.split("/")[: next(i for i, p in enumerate(root.split("/")) if set("*?[") & set(p))])
    try:
        info = input_fs.get_file_info(root)
    except OSError as exc:
        raise StorageError(f"cannot check INPUT {config.input}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise InputNotFoundError(f"INPUT {config.input} does not exist (relative paths are taken from {os.getcwd()})")
    if info.type == pafs.FileType.File:
        return
    if Location(uri=config.input, filesystem=input_fs, path=root).contains(output):
        raise ConfigError(
            f"OUTPUT {output.uri} is inside INPUT {config.input}: a later run would enhance its own "
            "outputs. Choose an OUTPUT outside INPUT, or pass --allow-output-inside-input"
        )


def check_output_writable(output: Location) -> None:
    """Fail before any work when OUTPUT cannot be written (read-only, no permission, no bucket)."""
    from dce_batch.errors import OutputWriteError
    from dce_batch.storage import write_bytes_atomic

    if not isinstance(output.filesystem, pafs.LocalFileSystem):
        return  # object stores: the first write says it (a probe would leave folder markers behind)
    probe = f"{output.child(MANIFEST_DIR)}/.write-probe-{uuid.uuid4().hex[:8]}"
    try:
        write_bytes_atomic(output.filesystem, probe, b"dce_batch checks that OUTPUT is writable")
        output.filesystem.delete_file(probe)
    except (StorageError, OSError) as exc:
        raise OutputWriteError(f"OUTPUT {output.uri} cannot be written: {exc}") from exc


@dataclass
class _Prepared:
    input_fs: pafs.FileSystem
    plan: Plan
    recovered: int
    removed_temp_files: int = 0


def _prepare(config: EnhanceConfig, output: Location, blob: bytes, name: str, started: float,
             timings: dict[str, float]) -> tuple[ResolvedWeights, _Prepared]:
    """Weights, then list inputs, fold dead runs' journals in, and plan (runs while Ray starts)."""
    weights = resolve_weights(config, blob, name)
    timings["weights_s"] = time.time() - started
    prepared = plan_inputs(config, output, weights)
    return weights, prepared


def run_output_settings(config: EnhanceConfig, meta, output_format: str) -> dict:
    """The output settings (``plan.output_settings``) a run with ``config`` and weights ``meta``
    records for its outputs of ``output_format``: what resume compares."""
    finish = config.finish_config()
    # "fast" is the filter earlier versions ran as "auto": record it as they did (denoise auto,
    # its method's name), so their OUTPUTs resume with --denoise fast, as scale 1 does for --scale.
    denoise = "auto" if finish.denoise == "fast" else finish.denoise
    finishing = None if not finish.enabled else {
        "denoise": denoise, "denoise_strength": finish.denoise_strength, "exposure": finish.exposure,
        "method": finish.method}
    # Recorded only where it acts, so that OUTPUTs made before it existed resume with 0.
    if finishing and finish.exposure_target is not None and finish.highlight_stretch > 0:
        finishing["highlight_stretch"] = finish.highlight_stretch
    return output_settings(model_sha256=meta.sha256, variant=meta.variant, scale=resolve_scale(meta.variant, config.scale),
                           strength=config.strength, precision=config.precision, format=config.format,
                           quality=config.quality, output_format=output_format, finishing=finishing)


def plan_inputs(config: EnhanceConfig, output: Location, weights: ResolvedWeights) -> _Prepared:
    """List inputs, fold dead runs' journals in, read the manifest and plan every input."""
    try:
        input_fs, listing = list_inputs_table(config.input, config.s3, extensions=IMAGE_EXTENSIONS)
    except StorageError as exc:
        if str(exc).startswith("no input images") or "no such file" in str(exc):
            raise InputNotFoundError(str(exc)) from exc
        raise
    manifest_path = output.child(MANIFEST_DIR)
    fs = output.filesystem
    done, existing, recovered, removed = None, None, 0, 0
    if config.overwrite:
        from dce_batch.storage import delete_tree_contents

        delete_tree_contents(fs, manifest_path)
    else:
        recovered = recover_pending(fs, manifest_path, skip_run=config.run_id)
        done = read_manifest(fs, manifest_path, compact=True)
    has_outputs = done is not None and pc.any(pc.equal(done["status"].cast(pa.string()), "ok")).as_py()
    if has_outputs or writes_via_temp_files(fs):
        found = list_output_files(output)
        existing = found.uris if has_outputs else None
        # A writer killed mid-write (a killed driver takes its actors down with it) leaves its temp
        # file; one run at a time per OUTPUT (as for the journals above), so every temp file
        # here is such debris.
        removed = remove_files(fs, found.unfinished)
    meta = weights.meta
    constants = dict(model_name=meta.name, model_sha256=meta.sha256, strength=config.strength,
                     variant=meta.variant, precision=config.precision)
    plan = plan_run(listing=listing, input_fs=input_fs, output=output, run_id=config.run_id,
                    settings_for=functools.partial(run_output_settings, config, meta),
                    requested_format=config.format, row_constants=constants,
                    done=done, existing_outputs=existing, max_pixels=config.max_pixels)
    return _Prepared(input_fs, plan, recovered, removed)


class _Background:
    """Run a function in a daemon thread; :meth:`result` waits interruptibly (Ctrl-C works)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(fn,), daemon=True, name="dce-plan").start()

    def _run(self, fn) -> None:
        try:
            self._result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> Any:
        while not self._done.wait(0.2):
            pass
        if self._error is not None:
            raise self._error
        return self._result


def _start_ray(config: EnhanceConfig, say: Callable[[str], None]) -> bool:
    """Connect to RAY_ADDRESS or a `ray start` cluster on this machine, else start a local one.

    Returns True when this call started the cluster (the caller then shuts it down). Ray's own
    INFO lines, worker logs and Ray Data's bars stay out of the way unless ``config.verbose``.
    """
    import ray

    from dce_batch.job.progress import quiet_ray

    quiet = quiet_ray(config.verbose)
    quiet.apply()
    if ray.is_initialized():
        return False
    if not _starts_local_cluster():
        ray.init(**quiet.init_kwargs)
        return False
    # Our own local cluster: no dashboard unless asked (it costs seconds and CPU on a laptop).
    ray.init(include_dashboard=config.dashboard, **quiet.init_kwargs)
    say(f"started a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs"
        + ("" if config.dashboard else " (no dashboard; --dashboard adds one)"))
    return True


def _silent(line: str) -> None:  # noqa: ARG001 - --quiet
    return None


def _starts_local_cluster() -> bool:
    """Whether ray.init() here would start a new local cluster (rather than join one)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(None) is None  # what ray.init() would connect to
    except Exception:  # noqa: BLE001 - private API moved: assume a cluster is joined
        return False


class _Interrupted(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, a scheduler's kill) handled like Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Interrupted()


def run_enhance(config: EnhanceConfig, *, log: Callable[[str], None] | None = None,
                shutdown: bool = True) -> RunSummary:
    """Run the enhancement job: on the current Ray cluster, a local one it starts, or (small runs
    with no cluster around, see :func:`choose_engine`) a pool of local processes.

    Ctrl-C (KeyboardInterrupt) or SIGTERM stops it promptly: the rows of finished images are
    written to the manifest, no summary is written, and the exception propagates.
    ``shutdown=False`` leaves a local cluster this call started running (the CLI exits right
    after, and the cluster's processes end with it).
    """
    say = log or (lambda line: print(f"[dce-batch enhance] {line}", file=sys.stderr, flush=True))
    if config.quiet:
        say = _silent
    started = time.time()
    timings: dict[str, float] = {}
    output = Location.parse(config.output, config.s3)
    check_output_location(config, output)
    check_output_writable(output)
    blob, name = read_weights_spec(config)  # a missing file or unknown name fails here, before Ray starts
    previous_sigterm = None
    owns_ray = False
    local_pool = None
    try:
        if threading.current_thread() is threading.main_thread():
            previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        # Loading the weights (torch), listing, reading the manifest and planning run in a thread
        # while the engine starts in this one: each takes seconds, and they overlap.
        preparing = _Background(lambda: _prepare(config, output, blob, name, started, timings))
        engine = "ray" if config.engine == "ray" else None
        if engine is None and (config.engine == "local" or _could_run_locally(config)):
            # The local workers start (and import torch) while the driver plans; if the plan turns
            # out too large for them, Ray takes over and they are dismissed.
            local_pool = _start_local_pool(config, output, blob, name)
            weights, prepared = preparing.result()
            engine = choose_engine(config, prepared.plan.todo.num_rows)
            if engine != "local":
                local_pool.close(cancel=True)
                local_pool = None
        if engine != "local":
            owns_ray = _start_ray(config, say)
            timings["ray_ready_s"] = time.time() - started
            if previous_sigterm is not None:
                # Again after ray.init, whose own handler would end the process without flushing the manifest.
                signal.signal(signal.SIGTERM, _on_sigterm)
        weights, prepared = preparing.result()
        timings["planned_s"] = time.time() - started
        summary = _run_plan(config, output, weights, prepared, started, timings, say, engine or "ray", local_pool)
        if local_pool is not None:
            # All work done: let the idle workers exit in order, so that nothing (their queues'
            # semaphores) is left for multiprocessing's resource tracker to warn about at exit.
            local_pool.close()
            local_pool = None
        return summary
    finally:
        if local_pool is not None:
            local_pool.close(cancel=True)
        if owns_ray and shutdown:
            import ray

            ray.shutdown()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


#: Collections up to this many images run in local processes when no cluster is running (Ray's
#: start-up would cost more than it saves); larger ones start a local Ray (benchmarks/bench_pipeline.py).
LOCAL_MAX_IMAGES = 1000


def _could_run_locally(config: EnhanceConfig) -> bool:
    return config.engine == "auto" and config.gpus_per_actor == 0 and config.pipeline != "staged" \
        and config.num_actors is None and _starts_local_cluster()


def choose_engine(config: EnhanceConfig, images: int) -> str:
    """``local`` (a process pool on this machine) or ``ray`` for a run with ``images`` to do.

    ``auto`` picks local only when nothing else asks for Ray: no cluster is running or named
    (RAY_ADDRESS, ``ray start``, ``ray job submit``), no GPUs or staged pipeline or actor counts are
    asked for, and at most :data:`LOCAL_MAX_IMAGES` images are to do.
    """
    if config.engine != "auto":
        return config.engine
    return "local" if _could_run_locally(config) and images <= LOCAL_MAX_IMAGES else "ray"


def _run_plan(config: EnhanceConfig, output: Location, weights: ResolvedWeights, prepared: _Prepared,
              started: float, timings: dict[str, float], say: Callable[[str], None], engine: str,
              local_pool=None) -> RunSummary:
    plan = prepared.plan
    manifest_path = output.child(MANIFEST_DIR)
    meta = weights.meta
    summary = RunSummary(
        run_id=config.run_id, input=config.input, output=output.uri,
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        model={"name": meta.name, "variant": meta.variant, "sha256": meta.sha256,
               "parameters": meta.num_params, "source": meta.source},
        settings=_settings(config), versions=_versions(), timings=timings,
    )
    writer = _ManifestWriter(output, manifest_path, config, summary)
    say(f"run {config.run_id}: {plan.total} inputs in {config.input}: {plan.todo.num_rows} to enhance, "
        f"{plan.skipped.num_rows} already done, {plan.refused.num_rows} refused; model {meta.name} ({meta.variant})"
        + (f"; recovered {prepared.recovered} rows of an interrupted run" if prepared.recovered else "")
        + (f"; removed {prepared.removed_temp_files} temp files of writes an interrupted run never finished"
           if prepared.removed_temp_files else ""))
    writer.add(plan.skipped)
    writer.add(plan.refused)
    received = 0
    progress = Progress(plan.todo.num_rows, quiet=config.quiet, interval_s=config.progress_interval_s,
                        interactive=False if config.verbose else None)

    def take(rows: pa.Table) -> None:
        nonlocal received
        if rows.num_rows:
            if "first_batch_s" not in timings:
                timings["first_batch_s"] = time.time() - started
            writer.add(rows)
            received += rows.num_rows
            progress.update_batch(rows)

    try:
        todo = plan.todo
        if todo.num_rows and engine == "local":
            _run_local(config, todo, prepared, local_pool, summary, say, take)
        elif todo.num_rows:
            _run_ray(config, todo, prepared, output, weights, summary, say, take)
    finally:
        progress.close()
        writer.flush()  # what finished is kept even when the run is interrupted or fails
    if received >= plan.todo.num_rows:
        # Every row reached a part: the journal is redundant (else the next run folds it in).
        delete_pending(output.filesystem, manifest_path, config.run_id)
    summary.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary.elapsed_s = time.time() - started
    processed = summary.ok + summary.error - plan.refused.num_rows
    summary.images_per_s = processed / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    summary.megapixels_per_s = summary.megapixels / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    summary.write(output.filesystem, manifest_path)
    wants_report = config.report if config.report is not None else isinstance(output.filesystem, pafs.LocalFileSystem)
    if wants_report:
        from dce_batch.report.build import build_report

        try:
            summary.report = build_report(config.output, s3=config.s3, log=say, run_id=config.run_id)
        except Exception as exc:  # noqa: BLE001 - the images are done; a report failure must not hide that
            print(f"[dce-batch enhance] warning: the report could not be built: {describe_error(exc)}",
                  file=sys.stderr, flush=True)
    return summary


def _run_ray(config, todo, prepared, output, weights, summary, say, take) -> None:
    import ray

    resources = ray.cluster_resources()
    pool = plan_actor_pool(config, resources, local_cluster=_is_local_cluster())
    summary.cluster = {"engine": "ray", "resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
                       "actors": asdict(pool)}
    say(f"{'staged' if pool.staged else 'fused'} pipeline on Ray: actors {pool.min_size}..{pool.max_size} x (CPU "
        f"{pool.cpus_per_actor:g}, GPU {pool.gpus_per_actor:g}, memory {pool.memory_per_actor / 2**30:.1f} GiB for "
        f"images up to {pool.image_pixel_limit / 1e6:g} MP; pool limited by {pool.limited_by}), "
        f"{config.images_per_call} images per call, precision {config.precision}")
    _warn_of_the_pixel_limit(pool, say)
    dataset = _build_dataset(config, todo, prepared.input_fs, output, weights.blob, weights.name, pool)
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        take(batch)


def _local_pool_plan(config: EnhanceConfig) -> ActorPool:
    resources = {"CPU": float(os.cpu_count() or 1), "memory": _available_memory() * 0.8}
    return plan_actor_pool(config, resources, local_cluster=True)


def _start_local_pool(config: EnhanceConfig, output: Location, blob: bytes, name: str):
    from dce_batch.job.engines.local import LocalPool

    pool = _local_pool_plan(config)
    local = LocalPool(pool.max_size, (config, blob, name, output, pool.image_pixel_limit, pool.limit_reason), plan=pool)
    local.start()
    return local


def _run_local(config, todo, prepared, local, summary, say, take) -> None:
    pool = local.plan
    summary.cluster = {"engine": "local", "resources": {"CPU": os.cpu_count()}, "actors": asdict(pool)}
    say(f"fused pipeline in {local.workers} local processes (no cluster running and {todo.num_rows} images: "
        f"starting Ray would cost more than it saves; --engine ray to use it), {config.images_per_call} images "
        f"per call, precision {config.precision}")
    _warn_of_the_pixel_limit(pool, say)
    per_call = config.images_per_call
    batches = (_items(todo.slice(start, per_call)) for start in range(0, todo.num_rows, per_call))
    for rows in local.run(batches, prepared.input_fs):
        take(rows)


def _available_memory() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with Ray; a bare install may lack it
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _is_local_cluster() -> bool:
    """Whether the cluster is this machine alone (a fixed pool: start every actor at once)."""
    import ray

    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001
        return False
    return len(nodes) == 1 and not os.environ.get("RAY_ADDRESS", "").startswith(("ray://", "http"))


class _ManifestWriter:
    """Buffers manifest rows and writes them as Parquet parts; folds them into the summary."""

    def __init__(self, output: Location, manifest_path: str, config: EnhanceConfig, summary: RunSummary):
        self.output, self.manifest_path, self.run_id = output, manifest_path, config.run_id
        self.part_rows, self.flush_s, self.summary = config.manifest_part_rows, config.manifest_flush_s, summary
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts = 0
        self.last_flush = time.monotonic()

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        # Large tables (a million skipped rows) go in slices: each is made a plain table only as
        # it is written, so memory holds the compact form plus one part.
        for start in range(0, table.num_rows, self.part_rows):
            piece = table.slice(start, self.part_rows)
            self.summary.add(piece)
            self.buffer.append(piece)
            self.buffered += piece.num_rows
            # By size, and now and then so that a reader of a long run sees progress (the
            # actors' journal already keeps every row safe if the driver dies).
            if self.buffered >= self.part_rows or time.monotonic() - self.last_flush > self.flush_s:
                self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.concat_tables([conform(piece) for piece in self.buffer])
        write_manifest_part(self.output.filesystem, self.manifest_path, self.run_id, self.parts, table)
        self.parts += 1
        self.buffer, self.buffered, self.last_flush = [], 0, time.monotonic()


def _settings(config: EnhanceConfig) -> dict[str, Any]:
    settings = asdict(config)
    settings.pop("s3", None)  # never write credentials into the summary
    if config.s3 is not None:
        settings["s3_endpoint"] = config.s3.endpoint_url
    return settings


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import PIL

    return {"dce_batch": __version__, "ray": version("ray"), "torch": version("torch"), "pillow": PIL.__version__,
            "pyarrow": pa.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}

