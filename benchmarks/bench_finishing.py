"""The finishing stage's CPU cost next to the network's, side by side in one run.

What it proves: how much the job's default finishing (noise-aware denoise + exposure,
``dce_batch.enhance.finishing``, run by the ``Enhancer`` tile by tile after the network) adds to DCE-Net on
one CPU thread, on the same images, as a ratio to the network alone, at the default precision
(int8 on x86 CPUs, see dce_batch.enhance.quantization) and in fp32. The issue allows at most +30 %.

Rows (one process, ``torch.set_num_threads(--threads)``, 1 by default; 8-bit images as the job
decodes them; CPU default tiling):

* network: ``Enhancer(weights, InferenceConfig(precision=P))``;
* network + finishing: the same with ``finish=FinishConfig()`` (the job's default);
* network + denoise only, network + exposure only;
* network + finishing with ``denoise="fast"`` (no DCT stage on the luma, the earlier default):
  what the DCT stage costs;
* network + finishing with one chroma pass (``chroma_refine_radius=0``, an earlier default):
  what the second chroma pass costs;
* network + finishing without block matching (``matched_noise_level=inf``): what the DCT stage's
  matched groups cost where the noise is strong (here, everywhere);
* network + finishing with ``noise_gain="ratio"`` (the noise's local gain as the ratio of window
  means, the previous default): what regressing the local slope costs;
* the default precision's network with ``scale=1``, alone and with finishing: Zero-DCE's curves
  at full resolution, the network alone that the quality issue's +30 % was written against
  (the default now estimates them on a 4x smaller copy, 4x faster, so the same finishing is a
  larger share of it).

Each round times one pass over all images per row, the row order rotating each round; the
median of ``--repeats`` rounds is reported. Also checks that finishing tile by tile equals
finishing at full frame within an 8-bit step.

    python benchmarks/bench_finishing.py             # 4 images of 1024x768, 5 rounds
    python benchmarks/bench_finishing.py --quick     # 2 images of 640x480
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LoadMonitor, dark_image, foreign_load_now, hardware_line, image_set_parser, median, table  # noqa: E402


def main() -> None:
    parser = image_set_parser(__doc__, images=4, size="1024x768")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 images of 640x480")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size = 2, "640x480"

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from _common import image_size_for

    from dce_batch.enhance.finishing import FinishConfig
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    print(hardware_line(args.threads), flush=True)
    print(foreign_load_now(), flush=True)
    height, width = image_size_for(args.size)
    images = [np.rint(dark_image(height, width, seed=i) * 255).astype(np.uint8) for i in range(args.images)]
    pixels = args.images * height * width
    weights = load_weights()
    default_precision = Enhancer(weights).precision
    finishes = {"": None, " + finishing": FinishConfig(), " + denoise only": FinishConfig(exposure="off"),
                " + exposure only": FinishConfig(denoise="off"),
                " + finishing, denoise fast": FinishConfig(denoise="fast"),
                " + finishing, one chroma pass": FinishConfig(chroma_refine_radius=0),
                " + finishing, no block matching": FinishConfig(matched_noise_level=math.inf),
                " + finishing, ratio gain": FinishConfig(noise_gain="ratio")}
    rows = {}
    for precision in dict.fromkeys([default_precision, "fp32"]):
        for suffix, finish in finishes.items():
            enhancer = Enhancer(weights, InferenceConfig(precision=precision, finish=finish))
            rows[f"network {precision}{suffix}"] = enhancer
    for suffix in ("", " + finishing"):
        rows[f"network {default_precision} scale 1{suffix}"] = Enhancer(
            weights, InferenceConfig(precision=default_precision, scale=1, finish=finishes[suffix]))
    names = list(rows)
    full = Enhancer(weights, InferenceConfig(precision="fp32", finish=FinishConfig(), max_full_frame_pixels=10**9))
    tiled_diff = max(int(np.abs(rows["network fp32 + finishing"].enhance(a).pixels.astype(int)
                                - full.enhance(a).pixels.astype(int)).max()) for a in images)
    for enhancer in rows.values():  # warm-up
        enhancer.enhance(images[0])
    print(f"{args.images} synthetic dark images of {width}x{height} ({pixels / 1e6:.2f} MP in all), "
          f"{args.repeats} rounds, {args.threads} torch thread(s)", flush=True)
    monitor = LoadMonitor()
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            for a in images:
                rows[name].enhance(a)
            times[name].append(time.perf_counter() - start)
    foreign = monitor.line()
    monitor.stop()

    seconds = {n: median(t) for n, t in times.items()}
    out = []
    for name in names:
        base = name.split(" + ")[0]
        out.append([name, f"{seconds[name]:.3f}", f"{seconds[name] / pixels * 1e6:.3f}",
                    f"{pixels / seconds[name] / 1e6:.2f}", f"{seconds[name] / seconds[base]:.3f}"])
    print(table(["row", "s/pass", "us/pixel", "MP/s", "x network alone"], out))
    for precision in dict.fromkeys([default_precision, "fp32"]):
        cost = seconds[f"network {precision} + finishing"] / seconds[f"network {precision}"] - 1
        print(f"finishing adds {cost:+.1%} to the {precision} network (the issue allows +30 %)")
        dct = seconds[f"network {precision} + finishing"] / seconds[f"network {precision} + finishing, denoise fast"] - 1
        print(f"the luma's DCT stage adds {dct:+.1%} to the {precision} network + finishing with --denoise fast")
        matching = seconds[f"network {precision} + finishing"] / seconds[f"network {precision} + finishing, no block matching"] - 1
        print(f"block matching where the noise is strong adds {matching:+.1%} to the {precision} network + finishing "
              f"without it (these synthetic images are noisy everywhere: its worst case)")
        slope = seconds[f"network {precision} + finishing"] / seconds[f"network {precision} + finishing, ratio gain"] - 1
        print(f"the noise's local gain as a regression slope adds {slope:+.1%} to the {precision} network + finishing "
              f"with the ratio of means (here every block is grouped either way: on real photos the slope also "
              f"groups more blocks)")
        second = seconds[f"network {precision} + finishing"] / seconds[f"network {precision} + finishing, one chroma pass"] - 1
        print(f"the second chroma pass adds {second:+.1%} to the {precision} network + one-pass finishing")
    full_resolution = f"network {default_precision} scale 1"
    print(f"at scale 1 (curves at full resolution) finishing adds "
          f"{seconds[full_resolution + ' + finishing'] / seconds[full_resolution] - 1:+.1%}; the default "
          f"(scale 4 + finishing) runs at {seconds[full_resolution] / seconds[f'network {default_precision} + finishing']:.2f}x "
          f"the speed of the scale-1 network alone")
    print(f"finishing in tiles vs full frame: max 8-bit difference {tiled_diff}")
    print(foreign)


if __name__ == "__main__":
    main()
