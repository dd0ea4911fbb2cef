"""How many workers, with what memory: one call's images, declared (no Ray)."""

from __future__ import annotations

import pytest
import torch

from dce_batch.errors import ConfigError
from dce_batch.job import EnhanceConfig
from dce_batch.job.sizing import (
    ACTOR_BASE_MEMORY,
    FUSED_BYTES_PER_PIXEL,
    GPU_ACTOR_BYTES_PER_PIXEL,
    plan_workers,
)

GIB = 2**30


def _pool(cpus, memory=256 * GIB, local=True, **flags):
    return plan_workers(EnhanceConfig(input="/in", **flags), {"CPU": cpus, "memory": memory}, local_cluster=local)


def test_one_worker_per_cpu_within_memory_declared_per_call():
    for cpus in (1, 2, 4, 16):
        p = _pool(cpus)
        assert (p.min_size, p.max_size, p.cpus_per_worker, p.images_per_call) == (cpus, cpus, 1.0, 2)
        # A worker holds a call's two images of up to --max-pixels at once: it declares both.
        assert p.memory_per_worker == ACTOR_BASE_MEMORY + 2 * 100_000_000 * FUSED_BYTES_PER_PIXEL
    one_per_call = _pool(4, batch_size=1)
    assert one_per_call.memory_per_worker == ACTOR_BASE_MEMORY + 100_000_000 * FUSED_BYTES_PER_PIXEL
    assert _pool(16, local=False).min_size == 1, "an autoscaling cluster grows the pool from one"
    limited = _pool(16, memory=20 * GIB)
    assert limited.limited_by == "memory" and limited.max_size == int(20 * GIB // limited.memory_per_worker)
    # Batch size and --max-pixels trade: halving either about halves what a worker needs for images.
    assert _pool(16, memory=20 * GIB, max_pixels=20_000_000).max_size > limited.max_size
    assert _pool(16, memory=20 * GIB, batch_size=1).max_size > limited.max_size
    with pytest.raises(ConfigError, match="max-pixels or --batch-size"):
        _pool(4, memory=1 * GIB)


def test_a_machine_short_of_memory_gives_one_worker_what_there_is():
    short = _pool(4, memory=2 * GIB)
    assert (short.min_size, short.max_size, short.memory_per_worker) == (1, 1, 2 * GIB)
    assert short.image_pixel_limit == (2 * GIB - ACTOR_BASE_MEMORY) // (2 * FUSED_BYTES_PER_PIXEL)  # 19.6 MP
    assert "2.0 GiB of memory" in short.limit_reason and "up to 20 MP" in short.limit_reason
    assert _pool(4).limit_reason is None
    with pytest.raises(ConfigError, match="cluster offers 2.0 GiB"):  # a cluster may be waiting for nodes
        _pool(4, memory=2 * GIB, local=False)
    with pytest.raises(ConfigError, match="cluster offers 2.0 GiB"):  # what the user asked for, or nothing
        _pool(4, memory=2 * GIB, actor_memory=7 * GIB)


def test_explicit_actor_memory_sets_the_largest_image_per_call():
    p = _pool(4, actor_memory=ACTOR_BASE_MEMORY + 4 * 1_000_000 * FUSED_BYTES_PER_PIXEL, batch_size=4)
    assert p.image_pixel_limit == 1_000_000 and "--actor-memory" in p.limit_reason


def test_gpu_actors_declare_their_call_s_images_and_leave_cpu_for_the_tasks():
    gpu = plan_workers(EnhanceConfig(input="/in", gpus_per_actor=0.25), {"CPU": 8, "GPU": 2, "memory": 256 * GIB})
    assert (gpu.max_size, gpu.gpus_per_worker, gpu.staged) == (8, 0.25, True)
    # Up to 16 images per call, fewer for large --max-pixels: 4 of 100 MP.
    assert gpu.images_per_call == 4
    assert gpu.memory_per_worker == ACTOR_BASE_MEMORY + 4 * 100_000_000 * GPU_ACTOR_BYTES_PER_PIXEL
    small = plan_workers(EnhanceConfig(input="/in", gpus_per_actor=1, max_pixels=12_000_000),
                         {"CPU": 8, "GPU": 2, "memory": 256 * GIB})
    assert small.images_per_call == 16 and small.task_memory > 0
    with pytest.raises(ConfigError, match="stall"):  # staged: CPU must be left for decode/encode tasks
        plan_workers(EnhanceConfig(input="/in", gpus_per_actor=0.25, num_actors=(8, 8)),
                     {"CPU": 8, "GPU": 2, "memory": 256 * GIB})
    # One machine with less memory than a call of 100 MP images takes: the staged pool still fits
    # (actor and both tasks at once), for smaller images, and says so; a cluster is refused.
    fits = plan_workers(EnhanceConfig(input="/in", pipeline="staged", cpus_per_actor=0.5, batch_size=4),
                        {"CPU": 2, "memory": 16 * GIB}, local_cluster=True)
    assert fits.memory_per_worker + 2 * fits.task_memory <= 16 * GIB * fits.max_size
    assert fits.image_pixel_limit < 100_000_000 and "decode and encode tasks" in fits.limit_reason
    with pytest.raises(ConfigError, match="stall"):
        plan_workers(EnhanceConfig(input="/in", pipeline="staged", cpus_per_actor=0.5, batch_size=4),
                     {"CPU": 2, "memory": 16 * GIB}, local_cluster=False)
    assert _pool(2, num_actors=(2, 2), cpus_per_actor=0.5).cpus_per_worker == 0.5
    with pytest.raises(ConfigError, match="wait forever"):
        _pool(2, num_actors=(3, 3))
    with pytest.raises(ConfigError, match="no GPUs"):
        _pool(4, gpus_per_actor=1)


def test_the_declared_bound_covers_what_a_call_really_takes(tmp_path, request):
    """bench_memory.py's bound on a small image: one fused call of two 2 MP 16-bit PNGs (the worst
    case per pixel) stays within what the worker declares for them, over its base."""
    import gc

    import numpy as np
    from PIL import Image

    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights
    from dce_batch.imaging import EncodeOptions
    from dce_batch.job.steps import ImageProcessor, WorkItem
    import pyarrow.fs as pafs

    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        path = tmp_path / f"in{i}.png"
        pixels = (rng.random((1200, 1600, 3)) * 20000).astype(np.uint16)
        Image.fromarray(pixels[..., 0]).save(path)  # Pillow writes 16-bit gray: keep it simple and deep
        items.append(WorkItem(input_uri=str(path), input_path=str(path), input_relpath=path.name,
                              output_relpath=path.name, output_path=str(tmp_path / "out" / path.name),
                              output_format="PNG"))
    fs = pafs.LocalFileSystem()
    # One torch thread, as each worker runs (per-thread scratch memory would grow with the cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    processor = ImageProcessor(Enhancer(load_weights(), InferenceConfig(device="cpu")), EncodeOptions(), fs, fs,
                               run_id="r", max_pixels=2_000_000)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(tiny)
    # Warm-up on a tiny image: the model and its kernels are the base, the call's images are not.
    processor.process_batch([WorkItem(input_uri=str(tiny), input_path=str(tiny), input_relpath="tiny.png",
                                      output_relpath="tiny.png", output_path=str(tmp_path / "out" / "tiny.png"),
                                      output_format="PNG")])
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as handle:  # the peak (VmHWM) starts again from now
            handle.write("5")
    except OSError:
        pytest.skip("needs /proc/self/clear_refs to measure a peak")
    before = _status_bytes("VmRSS")
    rows = processor.process_batch(items)
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    used = _status_bytes("VmHWM") - before
    declared_for_images = 2 * 1_920_000 * FUSED_BYTES_PER_PIXEL
    print(f"one call of two 1.92 MP 16-bit images: {used / 2**20:.0f} MiB over the base, declared "
          f"{declared_for_images / 2**20:.0f} MiB")
    assert used <= declared_for_images
    processor.close()


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")
