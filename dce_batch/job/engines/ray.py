"""The job on Ray Data: the only module of the enhancement job that imports Ray.

    CPU nodes (fused):  planned rows -> EnhanceActor pool, one actor per CPU
                        (read -> decode -> enhance -> encode -> atomic write -> rows into its part)
    GPU nodes (staged): planned rows -> read + decode (CPU tasks) -> GpuEnhanceActor (batches of
                        equal-size windows from several images) -> encode + atomic write + rows
                        into the task process's part (CPU tasks)

Why two shapes (benchmarks/bench_pipeline.py): on a CPU the network is most of the work, so one
actor per core that does everything for its images wastes nothing and moves no pixels through the
object store; on a GPU the network takes well under a millisecond per photo while decoding and
encoding take several milliseconds of a CPU core, so those run on the node's other cores and the
GPU gets large batches.

Every stage that writes images also writes their rows (rolling parts, :mod:`..manifest.parts`)
and returns them, tagged, for the driver's progress and ledger.
"""

from __future__ import annotations

import math
import os
import pickle
import queue
import threading
from typing import Callable, Iterator

import pyarrow as pa

from dce_batch.errors import DceBatchError, OutputWriteError
from dce_batch.job.manifest.parts import BatchRows, PartBuffer, tag_rows, untag_rows
from dce_batch.job.manifest.schema import rows_to_table
from dce_batch.job.manifest.store import ManifestStore
from dce_batch.job.sizing import WorkerPlan
from dce_batch.job.steps import ImageReader, ImageState, ImageWriter, WorkItem, enhance_states
from dce_batch.job.worker import (
    EnhanceWorker,
    build_enhancer,
    fatal_table,
    raise_if_fatal,
    weights_for_worker,
    weights_travel_by_name,
    writer_name,
)
from dce_batch.ray_logging import quiet_ray
from dce_batch.ray_stderr import FilteredStderr

__all__ = ["EnhanceActor", "GpuEnhanceActor", "RayEngine", "is_local_cluster", "starts_local_cluster"]


def _worker_name(device_name: str | None = None) -> str:
    import ray

    context = ray.get_runtime_context()
    name = f"{context.get_node_id()[:12]}/{(context.get_actor_id() or context.get_task_id() or '')[:12]}/pid{os.getpid()}"
    return f"{name}/{device_name}" if device_name else name


def _weights_argument(config, blob: bytes) -> bytes | None:
    """What an actor's constructor carries of the weights: nothing when the actor can read them by
    name (the shipped models, URIs): Ray keeps large constructor arguments in the object store, and
    an actor restarted after they are gone could not start (ray-project/ray#53727); the bytes
    themselves only for a local file, which other nodes may not have."""
    return None if weights_travel_by_name(config) else blob


class EnhanceActor:
    """Fused pipeline: one per CPU; reads, enhances and writes its images, buffers their rows."""

    def __init__(self, config, weights_blob: bytes | None, weights_name: str, weights_sha256: str, input_filesystem,
                 output, pixel_limit: int, limit_reason: str | None, threads: int) -> None:

        blob = weights_for_worker(config, weights_blob, weights_sha256)
        self.worker = EnhanceWorker(config, blob, weights_name, output, pixel_limit=pixel_limit,
                                    limit_reason=limit_reason, worker=_worker_name(), writer=writer_name("a"),
                                    threads=threads, input_filesystem=input_filesystem)

    def __call__(self, batch: pa.Table) -> pa.Table:
        try:
            return tag_rows(self.worker.process(WorkItem.batch_from_table(batch)))
        except OutputWriteError as exc:
            return fatal_table(exc)


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
        states = list(reader.read_batch(WorkItem.batch_from_table(batch), pool))
    return _pickle_states(states)


class GpuEnhanceActor:
    """Staged pipeline: only the network, on batches of windows from several images."""

    def __init__(self, config, weights_blob: bytes | None, weights_name: str, weights_sha256: str) -> None:
        self.enhancer = build_enhancer(config, weights_for_worker(config, weights_blob, weights_sha256), weights_name,
                                       None)
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
        for state in states:
            for name, value in self.constants.items():
                setattr(state.row, name, value)
        enhance_states(self.enhancer, states)
        return _pickle_states(states)


# One rolling part per task process: Ray reuses a worker process for many tasks of a job, and runs
# them one at a time, so consecutive encode/write tasks fill the same part.
_TASK_PARTS: dict[str, PartBuffer] = {}


def encode_write_stage(batch: pa.Table, *, config, output) -> pa.Table:
    """Staged pipeline, CPU task: encode, write, and add the rows to this process's part."""
    import concurrent.futures


    writer = ImageWriter(config.encode_options(), output.filesystem, config.run_id)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            rows = rows_to_table(writer.write_batch(_unpickle_states(batch), pool))
    except OutputWriteError as exc:
        return fatal_table(exc)
    parts = _TASK_PARTS.get(config.run_id)
    if parts is None:
        parts = _TASK_PARTS[config.run_id] = PartBuffer(ManifestStore.of(output), config.run_id,
                                                        writer_name("t"),
                                                        max_rows=config.part_rows, max_age_s=config.part_flush_s)
    try:
        return tag_rows(parts.add(rows))
    except DceBatchError as exc:
        return fatal_table(exc)


def starts_local_cluster() -> bool:
    """Whether ``ray.init()`` here would start a new local cluster (rather than join one)."""
    import ray

    if ray.is_initialized():
        return False
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(None) is None  # what ray.init() would connect to


def is_local_cluster() -> bool:
    """Whether the cluster is this machine alone (a fixed pool: start every actor at once)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes) == 1 and not os.environ.get("RAY_ADDRESS", "").startswith(("ray://", "http"))


class RayEngine:
    """Runs the planned rows on the current Ray cluster, or a local one it starts."""

    name = "ray"

    def __init__(self, config, say: Callable[[str], None], *, shutdown: bool = True) -> None:
        self.config, self.say, self.shutdown = config, say, shutdown
        self.started_cluster = False
        self._closed = False
        # Quiet runs: Ray's benign C++ log lines (see ray_stderr) held back until close().
        self._stderr = FilteredStderr()

    def start(self) -> None:
        """Connect to RAY_ADDRESS or a ``ray start`` cluster on this machine, else start one."""
        import ray

        quiet = quiet_ray(self.config.verbose)
        quiet.apply()
        if not self.config.verbose:
            self._stderr.start()
        if ray.is_initialized():
            return
        if not starts_local_cluster():
            ray.init(**quiet.init_kwargs)
            return
        # Our own local cluster: no dashboard unless asked (it costs seconds and CPU on a laptop).
        ray.init(include_dashboard=self.config.dashboard, **quiet.init_kwargs)
        self.started_cluster = True
        self.say(f"started a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs"
                 + ("" if self.config.dashboard else " (no dashboard; --dashboard adds one)"))

    def plan(self):
        import ray

        from dce_batch.job.sizing import plan_workers

        resources = ray.cluster_resources()
        return plan_workers(self.config, resources, local_cluster=is_local_cluster()), \
            {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")}

    def batches(self, todo: pa.Table, plan: WorkerPlan, input_fs, output, weights) -> Iterator[BatchRows]:
        """Run every planned row; yield each finished batch. Iterates Ray Data in a thread, so the
        caller's thread stays free to notice a stop request between batches."""
        dataset = self._dataset(todo, plan, input_fs, output, weights)
        results: queue.Queue = queue.Queue(maxsize=64)
        done = object()

        def iterate() -> None:
            try:
                for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    results.put(block)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                results.put(exc)
            finally:
                results.put(done)

        threading.Thread(target=iterate, daemon=True, name="dce-ray-results").start()
        while True:
            try:
                item = results.get(timeout=0.2)
            except queue.Empty:
                yield None  # a heartbeat: the caller checks for a stop request
                continue
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            raise_if_fatal(item)
            yield from untag_rows(item)

    def _dataset(self, todo: pa.Table, plan: WorkerPlan, input_fs, output, weights):
        import ray.data

        config = self.config
        weights_args = (_weights_argument(config, weights.blob), weights.name, weights.meta.sha256)
        per_call = plan.images_per_call
        # Blocks of one call each: work overlaps from the first images on, and rows reach the
        # driver as each call finishes, not in large bursts.
        rows_per_block = max(per_call, math.ceil(todo.num_rows / 10_000))
        blocks = [todo.slice(start, rows_per_block) for start in range(0, todo.num_rows, rows_per_block)]
        dataset = ray.data.from_arrow(blocks)
        actors = ray.data.ActorPoolStrategy(min_size=plan.min_size, max_size=plan.max_size)
        if not plan.staged:
            threads = max(1, math.floor(plan.cpus_per_worker))
            return dataset.map_batches(
                EnhanceActor, fn_constructor_args=(config, *weights_args, input_fs, output, plan.image_pixel_limit,
                                                   plan.limit_reason, threads),
                compute=actors, batch_size=per_call, batch_format="pyarrow", num_cpus=plan.cpus_per_worker,
                memory=plan.memory_per_worker,
            )
        return (
            dataset.map_batches(read_decode_stage, fn_kwargs=dict(input_filesystem=input_fs, run_id=config.run_id,
                                                                  pixel_limit=plan.image_pixel_limit,
                                                                  limit_reason=plan.limit_reason),
                                batch_size=per_call, batch_format="pyarrow", num_cpus=1, memory=plan.task_memory)
            .map_batches(GpuEnhanceActor, fn_constructor_args=(config, *weights_args), compute=actors,
                         batch_size=per_call, batch_format="pyarrow", num_cpus=plan.cpus_per_worker,
                         num_gpus=plan.gpus_per_worker or None, memory=plan.memory_per_worker)
            .map_batches(encode_write_stage, fn_kwargs=dict(config=config, output=output), batch_size=per_call,
                         batch_format="pyarrow", num_cpus=1, memory=plan.task_memory)
        )

    def close(self, *, cancel: bool = False) -> None:  # noqa: ARG002 - Ray's actors end with the job
        """Shut down a local Ray this engine started (unless the caller exits right away)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.started_cluster and self.shutdown:
                import ray

                ray.shutdown()
        finally:
            self._stderr.stop()
