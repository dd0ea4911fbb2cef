"""Per-image CPU throughput of the inference options, side by side in one run.

What it proves: how many images (and megapixels) per second one process enhances on this CPU with
DCE-Net in fp32, DCE-Net under bf16 autocast, and the fast variant (Zero-DCE++ at scale 12), on the
same synthetic dark images, as ratios to DCE-Net fp32. It also reports how far the bf16 and fast
outputs are from DCE-Net fp32's (bf16 changes the pixels; the fast variant is another model), so a
speed-up is never quoted without its cost.

Extra rows (``--no-extra`` drops them) show what DCE-Net fp32 pays for memory allocation: its
activation tensors (32 channels x H x W x 4 B: 100 MB for 1024x768) are above glibc's mmap
threshold (at most 32 MB), so every one is mapped afresh and returned to the OS on free, and every
call takes a page fault per 4 KiB touched (see ``cpu sys s``). Same network, same pixels:

* DCE-Net fp32 forced to tile with 256-pixel tiles (activations ~9 MB, reused from the heap);
* DCE-Net fp32 in a child process started with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``
  raised, so glibc keeps and reuses freed memory (a deployment knob, e.g. a Ray ``runtime_env``);
* DCE-Net fp32 in a child process started with ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's switch to ask
  for transparent huge pages: one fault per 2 MiB).

Child-process rows run their passes in the same rotation as the others (the parent waits).

Method: all configurations but the child-process rows live in this one process (``torch.set_num_threads(--threads)``). Each is
warmed up on two images; then ``--repeats`` rounds each time one pass over all images per
configuration, the configuration order rotating each round so slow drifts hit all alike; the median
pass is reported.

    python benchmarks/bench_throughput.py            # 8 images of 1024x768, 3 rounds (~3 min on 2 cores)
    python benchmarks/bench_throughput.py --quick    # 4 images of 640x480, 2 rounds (~30 s)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LoadMonitor, dark_image, foreign_load_now, hardware_line, median, table  # noqa: E402


MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(2**31), "MALLOC_TRIM_THRESHOLD_": str(2**40)}
THP = {"THP_MEM_ALLOC_ENABLE": "1"}


def _child(conn, env_label: str, threads: int, size: tuple[int, int], count: int) -> None:
    """A child process holding DCE-Net fp32: runs one timed pass per request."""
    import torch

    torch.set_num_threads(threads)
    from dce_batch.inference import Enhancer, InferenceConfig
    from dce_batch.weights import load_weights

    enhancer = Enhancer(load_weights(), InferenceConfig(device="cpu"))
    height, width = size
    images = [dark_image(height, width, seed=i) for i in range(count)]
    enhancer.enhance(images[0])
    conn.send([enhancer.enhance(img).pixels for img in images[:2]])
    while conn.recv() == "pass":
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for img in images:
            enhancer.enhance(img)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        conn.send((wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))


class ChildEnhancer:
    """DCE-Net fp32 in a spawned process whose environment is set before Python (and glibc) start."""

    def __init__(self, env: dict[str, str], threads: int, size: tuple[int, int], count: int) -> None:
        import multiprocessing as mp
        import os

        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.process = ctx.Process(target=_child, args=(child_conn, ",".join(env), threads, size, count),
                                       daemon=True)
            self.process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.first_outputs = self.conn.recv()

    def timed_pass(self) -> tuple[float, float, float]:
        self.conn.send("pass")
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send("stop")
        self.process.join(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="number of images (default: %(default)s)")
    parser.add_argument("--size", default="1024x768", help="WxH of each image (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds, median reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=12.0, help="fast variant's scale (default: %(default)s)")
    parser.add_argument("--no-extra", action="store_true", help="skip the forced-tiling (tile 256) row")
    parser.add_argument("--quick", action="store_true", help="4 images of 640x480, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.repeats = 4, "640x480", 2

    import torch

    torch.set_num_threads(args.threads)
    from dce_batch.inference import Enhancer, InferenceConfig
    from dce_batch.weights import load_weights

    print(hardware_line(torch.get_num_threads()), flush=True)
    print(foreign_load_now(), flush=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    images = [dark_image(height, width, seed=i) for i in range(args.images)]
    megapixels = args.images * height * width / 1e6

    full, fast = load_weights(), load_weights("zerodcepp_sice_v1")
    configs: dict[str, Enhancer] = {
        "DCE-Net fp32": Enhancer(full, InferenceConfig(device="cpu")),
        "DCE-Net bf16 autocast": Enhancer(full, InferenceConfig(device="cpu", precision="bf16")),
        f"Zero-DCE++ s{args.scale:g} fp32": Enhancer(fast, InferenceConfig(device="cpu", scale=args.scale)),
    }
    children: dict[str, ChildEnhancer] = {}
    if not args.no_extra:
        configs["DCE-Net fp32, tile 256 (forced)"] = Enhancer(
            full, InferenceConfig(device="cpu", tile_size=256, max_full_frame_pixels=1))
        children["DCE-Net fp32, glibc keeps freed memory [child]"] = ChildEnhancer(
            MALLOC_KEEP, args.threads, (height, width), args.images)
        children["DCE-Net fp32, THP_MEM_ALLOC_ENABLE=1 [child]"] = ChildEnhancer(
            THP, args.threads, (height, width), args.images)
    names = list(configs) + list(children)
    print(f"{args.images} synthetic dark images of {width}x{height} ({megapixels:.2f} MP in all); "
          f"{args.repeats} rounds after warm-up; models {full.meta.name}, {fast.meta.name}", flush=True)

    outputs: dict[str, list[np.ndarray]] = {}
    for name, child in children.items():
        outputs[name] = child.first_outputs
    for name in configs:  # warm-up, and the outputs compared below
        configs[name].enhance(images[0])
        outputs[name] = [configs[name].enhance(img).pixels for img in images[:2]]

    monitor = LoadMonitor()
    passes: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for round_ in range(args.repeats):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            if name in children:
                wall, user, sys_s = children[name].timed_pass()
                passes[name].append(wall)
                cpu[name].append((user, sys_s))
                print(f"  round {round_ + 1}: {name}: {wall:.2f} s", file=sys.stderr, flush=True)
                continue
            enhancer = configs[name]
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            for img in images:
                enhancer.enhance(img)
            passes[name].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu[name].append((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))
            print(f"  round {round_ + 1}: {name}: {passes[name][-1]:.2f} s", file=sys.stderr, flush=True)

    for child in children.values():
        child.close()
    ref = median(passes[names[0]])
    rows = []
    for name in names:
        seconds = median(passes[name])
        user = median([u for u, _ in cpu[name]]) / args.images
        sys_s = median([s for _, s in cpu[name]]) / args.images
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(outputs[name], outputs[names[0]]))
        mean_diff = float(np.mean([np.mean(np.abs(a - b)) for a, b in zip(outputs[name], outputs[names[0]])]))
        spread = f"{min(passes[name]):.2f}-{max(passes[name]):.2f}"
        rows.append([name, f"{seconds:.2f}", spread, f"{args.images / seconds:.2f}", f"{megapixels / seconds:.2f}",
                     f"{ref / seconds:.2f}", f"{user:.2f}", f"{sys_s:.2f}", f"{diff:.4f}", f"{mean_diff:.5f}"])
    print()
    print(table(["configuration", "s per pass (median)", "min-max", "images/s", "MP/s", "speed vs fp32",
                 "cpu user s/img", "cpu sys s/img", "max |diff| vs fp32", "mean |diff|"], rows))
    print("speed vs fp32: DCE-Net fp32's median pass time / this one's (higher is faster); |diff|: output pixels "
          "in [0, 1] vs DCE-Net fp32 on the first two images")
    if children:
        print(f"[child] rows: a spawned process started with {' '.join(f'{k}={v}' for k, v in MALLOC_KEEP.items())} "
              f"or {' '.join(f'{k}={v}' for k, v in THP.items())}")
    print(monitor.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
