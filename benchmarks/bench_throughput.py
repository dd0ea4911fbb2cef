"""Per-image CPU throughput of the inference options, side by side in one run.

What it proves: how many images (and megapixels) per second one process enhances on this CPU with
the library's CPU defaults (``InferenceConfig(device="cpu")``: DCE-Net in 256-pixel tiles, glibc told
to keep freed memory), against the alternatives, on the same synthetic dark images, as ratios to
the default DCE-Net fp32 row. It also reports how far each output is from that row's (tiling and
the allocator must not change a pixel; bf16 does; the fast variant is another model), so a
speed-up is never quoted without its cost.

Rows:

* DCE-Net fp32, CPU default (the reference);
* DCE-Net fp32 full-frame (``max_full_frame_pixels=10**9``), memory kept as by default;
* DCE-Net fp32, CPU default tiles but glibc's default allocator: ``dce_batch.enhance.precision.keep_freed_memory``
  is replaced by a no-op in that process before the Enhancer is built, so every activation above
  glibc's mmap threshold is mapped, faulted in page by page and unmapped on each call;
* DCE-Net bf16, CPU default (where the CPU has native bf16); DCE-Net int8 (``dce_batch.enhance.quantization``,
  x86 CPUs), CPU default; Zero-DCE++ at scale 12, CPU default (strips);
* DCE-Net fp32 and int8 at scale 4: curves from a 4x smaller copy with guided upsampling, the job's
  default (every other DCE-Net row runs at scale 1, full resolution);
* extra rows (``--no-extra`` drops them): DCE-Net fp32 full-frame with glibc's default allocator (the
  CPU default before commit 2c3c7fe for images up to 2 MP), DCE-Net bf16 full-frame, and Zero-DCE++
  s12 in one pass (its behaviour before 2c3c7fe up to 2 MP).

Method: every configuration runs in its own spawned process (``torch.set_num_threads(--threads)``)
holding the same images, so no configuration inherits another's allocator state. Each is warmed up
on three calls; then ``--repeats`` rounds each ask every process, one at a time, for one timed pass
over all images, the order rotating each round so slow drifts hit all alike; the median pass is
reported. CPU seconds (user, kernel) and the peak RSS are the process's own.

    python benchmarks/bench_throughput.py            # 8 images of 1024x768, 3 rounds (~2 min on 2 cores)
    python benchmarks/bench_throughput.py --quick    # 4 images of 640x480, 3 rounds (~40 s)
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LoadMonitor, dark_image, foreign_load_now, hardware_line, image_set_parser, malloc_env_line, median, table  # noqa: E402

FULL_FRAME = {"max_full_frame_pixels": 10**9}


def _child(conn, spec: dict, threads: int, size: tuple[int, int], count: int) -> None:
    """One configuration in its own process: warm up, send two outputs, then one timed pass per request."""
    import torch

    torch.set_num_threads(threads)
    from dce_batch.enhance import precision
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    if spec["glibc_default"]:  # must precede the Enhancer, whose constructor calls it on CPUs
        precision.keep_freed_memory = lambda: None
    weights = load_weights("zerodcepp_sice_v2") if spec["model"] == "fast" else load_weights()
    # fp32 unless the row says otherwise: the library's own default is "auto" (int8 on x86 CPUs)
    enhancer = Enhancer(weights, InferenceConfig(device="cpu", **{"precision": "fp32", **spec["config"]}))
    height, width = size
    images = [dark_image(height, width, seed=i) for i in range(count)]
    enhancer.enhance(images[0])
    conn.send({"outputs": [enhancer.enhance(img).pixels for img in images[:2]], "model": weights.meta.name,
               "threads": torch.get_num_threads(), "tile_size": enhancer.config.tile_size,
               "budget": enhancer.config.max_full_frame_pixels,
               "tiled": enhancer.enhance(images[0]).tiled})
    while conn.recv() == "pass":
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for img in images:
            enhancer.enhance(img)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        conn.send((wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                   after.ru_minflt - before.ru_minflt, after.ru_maxrss))


class ChildEnhancer:
    """A configuration in a spawned process of its own."""

    def __init__(self, spec: dict, threads: int, size: tuple[int, int], count: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_child, args=(child_conn, spec, threads, size, count), daemon=True)
        self.process.start()
        self.ready = self.conn.recv()

    def timed_pass(self) -> tuple[float, float, float, int, int]:
        self.conn.send("pass")
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send("stop")
        self.process.join(timeout=30)


def main() -> int:
    parser = image_set_parser(__doc__, images=8, size="1024x768")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds, median reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default: %(default)s)")
    parser.add_argument("--no-extra", action="store_true",
                        help="skip the extra rows (fp32 full-frame with glibc's allocator, bf16 full-frame, "
                             "Zero-DCE++ in one pass)")
    parser.add_argument("--quick", action="store_true", help="4 images of 640x480, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.repeats = 4, "640x480", 3

    print(hardware_line(args.threads), flush=True)
    print(malloc_env_line(), flush=True)
    print(foreign_load_now(), flush=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    megapixels = args.images * height * width / 1e6
    fast = f"Zero-DCE++ s{args.scale:g}"

    def spec(model: str, config: dict | None = None, glibc_default: bool = False) -> dict:
        # DCE-Net rows measure the network at full resolution (scale 1), what tiling, allocator
        # and precision act on; the "scale 4" rows are the job's default for it.
        config = {"scale": args.scale if model == "fast" else 1.0, **(config or {})}
        return {"model": model, "config": config, "glibc_default": glibc_default}

    specs: dict[str, dict] = {
        "DCE-Net fp32, CPU default": spec("full"),
        "DCE-Net fp32, full-frame": spec("full", FULL_FRAME),
        "DCE-Net fp32, CPU default, glibc allocator": spec("full", glibc_default=True),
        "DCE-Net bf16, CPU default": spec("full", {"precision": "bf16"}),
        "DCE-Net int8, CPU default": spec("full", {"precision": "int8"}),
        "DCE-Net fp32, scale 4 (curves from a 4x smaller copy)": spec("full", {"scale": 4.0}),
        "DCE-Net int8, scale 4 (the job's default on x86 CPUs)": spec("full", {"precision": "int8", "scale": 4.0}),
        f"{fast} fp32, CPU default": spec("fast"),
    }
    if not args.no_extra:
        specs.update({
            "DCE-Net fp32, full-frame, glibc allocator": spec("full", FULL_FRAME, glibc_default=True),
            "DCE-Net bf16, full-frame": spec("full", {"precision": "bf16", **FULL_FRAME}),
            f"{fast} fp32, one pass": spec("fast", FULL_FRAME),
        })
    from dce_batch.enhance.precision import cpu_has_native_bf16
    from dce_batch.enhance.quantization import int8_available

    for name in list(specs):  # rows this CPU cannot run (bf16 would be emulated and is refused)
        if ("bf16" in name and not cpu_has_native_bf16()) or ("int8" in name and not int8_available()):
            del specs[name]
    children: dict[str, ChildEnhancer] = {}
    try:
        for name, s in specs.items():  # started one after another: warm-ups do not overlap
            children[name] = ChildEnhancer(s, args.threads, (height, width), args.images)
        names = list(children)
        first = children[names[0]].ready
        print(f"{args.images} synthetic dark images of {width}x{height} ({megapixels:.2f} MP in all); "
              f"{args.repeats} rounds after warm-up; one process per configuration, {first['threads']} torch "
              f"threads each; models {first['model']}, {children[f'{fast} fp32, CPU default'].ready['model']}; "
              f"CPU default resolved to tile_size {first['tile_size']}, max_full_frame_pixels {first['budget']:,}",
              flush=True)

        monitor = LoadMonitor()
        passes: dict[str, list[tuple]] = {n: [] for n in names}
        for round_ in range(args.repeats):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                measured = children[name].timed_pass()
                passes[name].append(measured)
                print(f"  round {round_ + 1}: {name}: {measured[0]:.2f} s", file=sys.stderr, flush=True)
        foreign = monitor.line()
    finally:
        for child in children.values():
            child.close()

    ref = median([p[0] for p in passes[names[0]]])
    ref_outputs = children[names[0]].ready["outputs"]
    rows = []
    for name in names:
        walls = [p[0] for p in passes[name]]
        seconds = median(walls)
        user = median([p[1] for p in passes[name]]) / args.images
        sys_s = median([p[2] for p in passes[name]]) / args.images
        faults = median([p[3] for p in passes[name]]) / args.images / 1000
        peak_mb = max(p[4] for p in passes[name]) / 1024
        ready = children[name].ready
        outputs = ready["outputs"]
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(outputs, ref_outputs))
        mean_diff = float(np.mean([np.mean(np.abs(a - b)) for a, b in zip(outputs, ref_outputs)]))
        ran_as = (f"tile {ready['tile_size']}" if ready["tiled"] else "full-frame") if "Zero" not in name else (
            f"strips {max(1, ready['budget'] // width)} rows" if ready["tiled"] else "1 pass")
        rows.append([name, ran_as, f"{seconds:.2f}", f"{min(walls):.2f}-{max(walls):.2f}", f"{args.images / seconds:.2f}",
                     f"{megapixels / seconds:.2f}", f"{ref / seconds:.2f}", f"{user:.2f}", f"{sys_s:.2f}",
                     f"{faults:.1f}", f"{peak_mb:.0f}", f"{diff:.4f}", f"{mean_diff:.5f}"])
    print()
    print(table(["configuration", "ran as", "s per pass (median)", "min-max", "images/s", "MP/s", "speed vs default",
                 "cpu user s/img", "cpu sys s/img", "page faults k/img", "process peak RSS MB",
                 "max |diff| vs default", "mean |diff|"], rows))
    print("speed vs default: DCE-Net fp32 CPU default's median pass time / this one's (higher is faster); "
          "|diff|: output pixels in [0, 1] vs DCE-Net fp32 CPU default on the first two images")
    print("glibc allocator: dce_batch.enhance.precision.keep_freed_memory replaced by a no-op in that process before the "
          "Enhancer was built; process peak RSS: ru_maxrss of the whole process (torch, model, the "
          f"{args.images} input images and whatever the allocator keeps)")
    print(foreign)
    return 0


if __name__ == "__main__":
    sys.exit(main())
