"""The enhancement job on Ray Data: the only module of the enhancement path that imports Ray.

    driver: list inputs -> plan output names -> drop what an earlier run finished (resume)
    Ray Data: path table -> read bytes (tasks) -> ImageProcessor in an actor pool
              (decode -> enhance -> encode -> atomic write) -> manifest rows
    driver: manifest rows -> Parquet parts under OUTPUT/_manifest/ (as they arrive), progress
            lines, and last the run summary JSON and table

Reading bytes in tasks (not ``read_images``) means a corrupt or unreadable file becomes an
``error`` row instead of aborting the dataset, and writing inside the actor keeps source names.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import posixpath
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from . import __version__
from .errors import ConfigError, DceBatchError, StorageError, describe_error
from .imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    EncodeOptions,
    extension_for,
    format_of_extension,
    output_format_for_path,
)
from .inference import Enhancer, InferenceConfig
from .manifest import (
    STATUS_ERROR,
    STATUS_SKIPPED,
    ManifestRow,
    RunSummary,
    completed_inputs,
    read_manifest,
    rows_to_table,
    write_manifest_part,
)
from .model import ModelVariant
from .process import ImageProcessor, WorkItem
from .storage import (
    MANIFEST_DIR,
    InputFile,
    Location,
    S3Options,
    delete_tree_contents,
    filesystem_for,
    list_files,
    list_inputs,
    read_bytes,
)
from .weights import LoadedWeights, load_weights, read_weights_bytes

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "ActorPool", "EnhanceConfig", "plan_actor_pool", "run_enhance", "sample_images_dir"]

EXIT_OK = 0
EXIT_SOME_FAILED = 3
DEFAULT_OUTPUT = "./enhanced"


def sample_images_dir() -> str:
    """The bundled sample images (the job's default INPUT)."""
    return str(resources.files("dce_batch").joinpath("samples"))


@dataclass(frozen=True)
class EnhanceConfig:
    """Settings of one enhancement run (built by the CLI; shipped whole to the actors)."""

    input: str
    output: str = DEFAULT_OUTPUT
    weights: str | None = None
    variant: ModelVariant | None = None
    scale: float = 12.0
    format: str = "same"
    quality: int = 95
    strength: float = 1.0
    precision: str = "fp32"
    num_actors: tuple[int, int] | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: 1, less on a one-CPU machine
    batch_size: int = 4
    s3: S3Options | None = None
    overwrite: bool = False
    allow_output_inside_input: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    tile_size: int | None = None
    max_full_frame_pixels: int | None = None
    progress_interval_s: float = 10.0
    manifest_part_rows: int = 5000
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
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.variant not in (None, "full", "fast"):
            raise ConfigError(f"--model-variant must be full or fast, got {self.variant!r}")
        self.inference_config()  # validates strength, precision, scale, tiling
        self.encode_options()  # validates format and quality

    def inference_config(self, variant: str | None = None) -> InferenceConfig:
        return InferenceConfig(
            strength=self.strength, precision=self.precision,  # type: ignore[arg-type]
            scale=self.scale if (variant or self.variant) == "fast" else 1.0,
            tile_size=self.tile_size, max_full_frame_pixels=self.max_full_frame_pixels,
        )

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(format=self.format, quality=self.quality)


# --------------------------------------------------------------------------------------------
# Planning (driver, no Ray): what to do with every input
# --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    todo: list[WorkItem] = field(default_factory=list)
    input_paths: list[str] = field(default_factory=list)  # aligned with todo
    skipped: list[ManifestRow] = field(default_factory=list)
    refused: list[ManifestRow] = field(default_factory=list)  # bad names, collisions

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.refused)


def output_relpath(relpath: str, fmt: str) -> str:
    """The input's relative path, with the extension changed only if the format changes."""
    stem, ext = posixpath.splitext(relpath)
    written_as = {"MPO": "JPEG"}.get(format_of_extension(relpath), format_of_extension(relpath))
    if written_as == fmt:
        return relpath
    return stem + extension_for(fmt)


def check_output_location(config: EnhanceConfig, inputs: list[InputFile], output: Location) -> None:
    """Refuse an OUTPUT inside an INPUT folder: a later run would enhance its own outputs.

    (A list file or a single image names its inputs explicitly; for those :func:`plan_run`
    still refuses any output that would overwrite an input.)
    """
    if config.allow_output_inside_input or not inputs:
        return
    input_fs, input_path = filesystem_for(config.input, config.s3)
    if input_fs.get_file_info(input_path).type == pafs.FileType.File:
        return
    root = Location(uri=config.input, filesystem=input_fs, path=inputs[0].root)
    if root.contains(output):
        raise ConfigError(
            f"OUTPUT {output.uri} is inside INPUT {config.input}: a later run would enhance its own "
            "outputs. Choose an OUTPUT outside INPUT, or pass --allow-output-inside-input"
        )


def plan_run(config: EnhanceConfig, inputs: list[InputFile], input_fs, output: Location, weights_meta,
             run_id: str) -> Plan:
    """Decide each input's output name, refuse unsafe ones, and skip what is already done."""
    same_storage = type(input_fs) is type(output.filesystem)
    input_paths = {f.path for f in inputs} if same_storage else set()
    manifest_path = output.child(MANIFEST_DIR)
    done: set[tuple[str, str]] = set()
    if config.overwrite:
        delete_tree_contents(output.filesystem, manifest_path)
    else:
        manifest = read_manifest(output.filesystem, manifest_path, columns=["input_uri", "output_uri", "status"])
        if manifest.num_rows:
            prefix_len = len(output.path.rstrip("/"))
            existing = {output.uri + p[prefix_len:] for p in list_files(output.filesystem, output.path)}
            ok_inputs = completed_inputs(manifest, existing)
            done = {(i, o) for i, o in zip(manifest["input_uri"].to_pylist(), manifest["output_uri"].to_pylist())
                    if i in ok_inputs and o in existing}

    plan = Plan()
    claimed: dict[str, str] = {}
    common = dict(run_id=run_id, model_name=weights_meta.name, model_sha256=weights_meta.sha256,
                  strength=config.strength, variant=weights_meta.variant, precision=config.precision)
    for item in inputs:
        try:
            fmt = output_format_for_path(item.relpath, config.format)
            rel = output_relpath(item.relpath, fmt)
            out_path = output.child(rel)
            out_uri = output.child_uri(rel)
        except (DceBatchError, ValueError) as exc:
            plan.refused.append(ManifestRow(input_uri=item.uri, status=STATUS_ERROR, error=describe_error(exc), **common))
            continue
        if out_uri in claimed:
            plan.refused.append(ManifestRow(
                input_uri=item.uri, status=STATUS_ERROR, **common,
                error=f"OutputCollisionError: {claimed[out_uri]} already writes {out_uri}; rename one of them "
                      "or use --format same"))
            continue
        if out_path in input_paths:
            raise ConfigError(
                f"the output for {item.uri} would overwrite the input {out_path}: choose another OUTPUT"
            )
        claimed[out_uri] = item.uri
        if (item.uri, out_uri) in done:
            plan.skipped.append(ManifestRow(input_uri=item.uri, output_uri=out_uri, status=STATUS_SKIPPED,
                                            output_format=fmt, **common))
            continue
        plan.todo.append(WorkItem(input_uri=item.uri, output_uri=out_uri, output_path=out_path, output_format=fmt))
        plan.input_paths.append(item.path)
    return plan


# --------------------------------------------------------------------------------------------
# Ray Data stages
# --------------------------------------------------------------------------------------------


def read_inputs(batch: pa.Table, filesystem) -> pa.Table:
    """Ray Data task: add each input's bytes (or why it could not be read).

    Reads run in a few threads: object-store reads are latency-bound.
    """
    paths = batch["input_path"].to_pylist()

    def fetch(path: str) -> tuple[bytes | None, str | None]:
        try:
            return read_bytes(filesystem, path), None
        except StorageError as exc:
            return None, describe_error(exc)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        fetched = list(pool.map(fetch, paths))
    return batch.append_column("data", pa.array([d for d, _ in fetched], pa.large_binary())).append_column(
        "read_error", pa.array([e for _, e in fetched], pa.string()))


class EnhanceActor:
    """Ray Data actor: loads the network once, then turns batches of inputs into manifest rows."""

    def __init__(self, config: EnhanceConfig, weights_blob: bytes, weights_name: str, output_filesystem,
                 cpus: float = 1.0) -> None:
        import ray
        import torch

        if config.gpus_per_actor == 0:
            # Without this every actor would use every core and they would fight each other.
            torch.set_num_threads(max(1, math.floor(cpus)))
        weights = load_weights(weights_blob, name=weights_name)
        enhancer = Enhancer(weights, config.inference_config(weights.meta.variant))
        context = ray.get_runtime_context()
        worker = f"{context.get_node_id()[:12]}/{(context.get_actor_id() or '')[:12]}"
        if enhancer.device.type == "cuda":
            worker += f"/{torch.cuda.get_device_name(enhancer.device)}"
        self.processor = ImageProcessor(enhancer, config.encode_options(), output_filesystem,
                                        run_id=config.run_id, worker=worker, max_pixels=config.max_pixels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = {name: batch[name].to_pylist() for name in
                   ("input_uri", "output_uri", "output_path", "output_format", "data", "read_error")}
        rows = []
        for i in range(batch.num_rows):
            item = WorkItem(input_uri=columns["input_uri"][i], output_uri=columns["output_uri"][i],
                            output_path=columns["output_path"][i], output_format=columns["output_format"][i])
            rows.append(self.processor.process(item, columns["data"][i], columns["read_error"][i]))
        return rows_to_table(rows)


READ_TASK_CPUS = 0.25


@dataclass(frozen=True)
class ActorPool:
    min_size: int
    max_size: int
    cpus_per_actor: float
    gpus_per_actor: float


def plan_actor_pool(config: EnhanceConfig, cluster_resources: dict[str, float]) -> ActorPool:
    """How many actors, with which resources: what the flags say, else what the cluster holds.

    The read tasks must always find CPU left over: an actor pool that takes every CPU starves
    them and the job waits forever without an error. So CPU actors leave a quarter of the CPUs
    (at least one read task's worth), the default of 1 CPU per actor shrinks on a one-CPU
    machine, and flags that cannot leave room are refused with a ConfigError.
    """
    cpus = float(cluster_resources.get("CPU", 0))
    gpus = config.gpus_per_actor
    cpus_per_actor = config.cpus_per_actor
    if cpus_per_actor is None:
        cpus_per_actor = 1.0 if cpus - 1.0 >= READ_TASK_CPUS else max(0.1, round(cpus - READ_TASK_CPUS, 2))
    if config.num_actors is not None:
        low, high = config.num_actors
    elif gpus > 0:
        high = int(cluster_resources.get("GPU", 0) // gpus)
        if high < 1:
            raise ConfigError(
                "--gpus-per-actor was given but the cluster has no GPUs right now; on an autoscaling "
                "cluster pass --num-actors MIN:MAX so Ray Data can ask for GPU nodes"
            )
        low, high = 1, max(1, min(high, int((cpus - READ_TASK_CPUS) // max(cpus_per_actor, 1e-9))))
    else:
        usable = cpus - max(READ_TASK_CPUS, cpus / 4)
        low, high = 1, max(1, int(usable // max(cpus_per_actor, 1e-9)))
    if low * cpus_per_actor > cpus - READ_TASK_CPUS and cpus > 0:
        raise ConfigError(
            f"{low} actor(s) x {cpus_per_actor} CPU leave no CPU for reading inputs on this {cpus:g}-CPU "
            f"cluster and the job would stall; lower --num-actors or --cpus-per-actor (fractions are fine)"
        )
    return ActorPool(low, high, cpus_per_actor, gpus)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def resolve_weights(config: EnhanceConfig) -> tuple[bytes, str, LoadedWeights]:
    """Weights bytes (read once, on the driver), their name, and the loaded weights."""
    spec = config.weights
    if spec and "://" in spec and not spec.startswith("file://"):
        fs, path = filesystem_for(spec, config.s3)
        blob, name = read_bytes(fs, path), posixpath.basename(path)
    else:
        blob, name = read_weights_bytes(spec.removeprefix("file://") if spec else None, variant=config.variant)
    loaded = load_weights(blob, variant=config.variant, name=name)
    return blob, name, loaded


def run_enhance(config: EnhanceConfig, *, log: Callable[[str], None] | None = None) -> RunSummary:
    """Run the enhancement job on the current Ray cluster (starting a local one if needed)."""
    import ray

    say = log or (lambda line: print(f"[dce-batch enhance] {line}", file=sys.stderr, flush=True))
    started = time.time()
    blob, weights_name, weights = resolve_weights(config)
    input_fs, inputs = list_inputs(config.input, config.s3, extensions=IMAGE_EXTENSIONS)
    output = Location.parse(config.output, config.s3)
    check_output_location(config, inputs, output)
    plan = plan_run(config, inputs, input_fs, output, weights.meta, config.run_id)
    manifest_path = output.child(MANIFEST_DIR)

    summary = RunSummary(
        run_id=config.run_id, input=config.input, output=output.uri,
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        model={"name": weights.meta.name, "variant": weights.meta.variant, "sha256": weights.meta.sha256,
               "parameters": weights.meta.num_params, "source": weights.meta.source},
        settings=_settings(config), versions=_versions(),
    )
    writer = _ManifestWriter(output, manifest_path, config.run_id, config.manifest_part_rows, summary)
    say(f"run {config.run_id}: {plan.total} inputs in {config.input}: {len(plan.todo)} to enhance, "
        f"{len(plan.skipped)} already done, {len(plan.refused)} refused; model {weights.meta.name} "
        f"({weights.meta.variant})")
    writer.add(rows_to_table(plan.skipped + plan.refused))

    try:
        if plan.todo:
            if not ray.is_initialized():
                ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
            resources = ray.cluster_resources()
            pool = plan_actor_pool(config, resources)
            summary.cluster = {"resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
                               "actors": asdict(pool)}
            say(f"actor pool {pool.min_size}..{pool.max_size} x (CPU {pool.cpus_per_actor}, GPU "
                f"{pool.gpus_per_actor}), batch {config.batch_size}; cluster {summary.cluster['resources']}")
            dataset = _build_dataset(config, plan, input_fs, output, blob, weights_name, pool)
            progress = _Progress(len(plan.todo), config.progress_interval_s, say)
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(batch)
                progress.update(batch)
    finally:
        writer.flush()  # what finished is kept even when the run is interrupted
    summary.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary.elapsed_s = time.time() - started
    processed = summary.ok + summary.error - len(plan.refused)
    summary.images_per_s = processed / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    summary.megapixels_per_s = summary.megapixels / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    summary.write(output.filesystem, manifest_path)
    return summary


def _build_dataset(config, plan: Plan, input_fs, output: Location, blob: bytes, weights_name: str, pool: ActorPool):
    import ray.data

    table = pa.table({
        "input_uri": [w.input_uri for w in plan.todo],
        "input_path": plan.input_paths,
        "output_uri": [w.output_uri for w in plan.todo],
        "output_path": [w.output_path for w in plan.todo],
        "output_format": [w.output_format for w in plan.todo],
    })
    # Blocks of one batch: reads, enhancement and writes overlap from the first images on, and
    # manifest rows reach the driver (and disk) as each batch finishes, not in large bursts.
    # Sliced here rather than with .repartition(), whose tasks need a whole free CPU.
    rows_per_block = max(config.batch_size, math.ceil(table.num_rows / 10_000))
    blocks = [table.slice(start, rows_per_block) for start in range(0, table.num_rows, rows_per_block)]
    return (
        ray.data.from_arrow(blocks)
        .map_batches(read_inputs, fn_kwargs={"filesystem": input_fs}, batch_size=config.batch_size,
                     batch_format="pyarrow", num_cpus=READ_TASK_CPUS)
        .map_batches(
            EnhanceActor,
            fn_constructor_args=(config, blob, weights_name, output.filesystem, pool.cpus_per_actor),
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
            batch_size=config.batch_size,
            batch_format="pyarrow",
            num_cpus=pool.cpus_per_actor,
            num_gpus=pool.gpus_per_actor,
        )
    )


class _ManifestWriter:
    """Buffers manifest rows and writes them as Parquet parts; folds them into the summary."""

    def __init__(self, output: Location, manifest_path: str, run_id: str, part_rows: int, summary: RunSummary):
        self.output, self.manifest_path, self.run_id = output, manifest_path, run_id
        self.part_rows, self.summary = part_rows, summary
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts = 0
        self.last_flush = time.monotonic()

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.summary.add(table)
        self.buffer.append(table)
        self.buffered += table.num_rows
        # Flush by size, and every 30 s so that an interrupted run loses little.
        if self.buffered >= self.part_rows or time.monotonic() - self.last_flush > 30:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer)
        write_manifest_part(self.output.filesystem, self.manifest_path, self.run_id, self.parts, table)
        self.parts += 1
        self.buffer, self.buffered, self.last_flush = [], 0, time.monotonic()


class _Progress:
    """A periodic 'n/total images, img/s' line on top of Ray Data's progress bars."""

    def __init__(self, total: int, interval_s: float, say: Callable[[str], None]) -> None:
        self.total, self.interval_s, self.say = total, interval_s, say
        self.done = self.errors = 0
        self.started = self.last = time.monotonic()

    def update(self, batch: pa.Table) -> None:
        self.done += batch.num_rows
        self.errors += batch["status"].to_pylist().count(STATUS_ERROR)
        now = time.monotonic()
        if now - self.last >= self.interval_s or self.done == self.total:
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            self.say(f"{self.done}/{self.total} images ({self.errors} errors), {rate:.2f} images/s, "
                     f"ETA {eta:.0f} s")
            self.last = now


def _settings(config: EnhanceConfig) -> dict[str, Any]:
    settings = asdict(config)
    settings.pop("s3", None)  # never write credentials into the summary
    if config.s3 is not None:
        settings["s3_endpoint"] = config.s3.endpoint_url
    return settings


def _versions() -> dict[str, str]:
    import PIL
    import ray
    import torch

    return {"dce_batch": __version__, "ray": ray.__version__, "torch": torch.__version__, "pillow": PIL.__version__,
            "pyarrow": pa.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
