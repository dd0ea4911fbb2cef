"""The finishing stage's CPU cost next to the network's, side by side in one run.

What it proves: how much the default finishing (noise-aware denoise + exposure,
``dce_batch.finishing``) adds to DCE-Net on one CPU thread, on the same images, as a ratio to
the network alone (fp32 and bf16), and what each part costs per pixel. Also that running the
finishing tile by tile with ``finish_halo`` pixels of context (as the Enhancer will) gives the
full-frame pixels, and what the halo costs.

Rows (one process, ``torch.set_num_threads(--threads)``, 1 by default):

* network fp32: ``Enhancer(load_weights(), InferenceConfig(device="cpu")).enhance`` (256-px tiles);
* network fp32 + finishing, full frame: the above, then ``finish_params`` on ``params_copy``
  copies and ``finish_tiles`` on the whole image (what ``dce-batch evaluate`` runs);
* network fp32 + finishing in 256-px tiles with the halo (what the integrated job will run);
* network bf16, and network bf16 + finishing (full frame);
* finishing alone: default, denoise only, exposure only, and the per-image ``finish_params``.

Each round times one pass over all images per row, the row order rotating each round; the
median of ``--repeats`` rounds is reported.

    python benchmarks/bench_finishing.py             # 4 images of 1024x768, 3 rounds (~1 min on 2 cores)
    python benchmarks/bench_finishing.py --quick     # 2 images of 640x480
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LoadMonitor, dark_image, foreign_load_now, hardware_line, image_set_parser, median, table  # noqa: E402


def main() -> None:
    parser = image_set_parser(__doc__, images=4, size="1024x768")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 images of 640x480")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size = 2, "640x480"

    import torch

    torch.set_num_threads(args.threads)
    from _common import image_size_for

    from dce_batch.finishing import FinishConfig, finish_halo, finish_params, finish_tiles, params_copy
    from dce_batch.inference import Enhancer, InferenceConfig, tile_grid
    from dce_batch.weights import load_weights

    print(hardware_line(args.threads), flush=True)
    print(foreign_load_now(), flush=True)
    height, width = image_size_for(args.size)
    images = [dark_image(height, width, seed=i) for i in range(args.images)]
    pixels = args.images * height * width
    weights = load_weights()
    fp32 = Enhancer(weights, InferenceConfig(device="cpu"))
    bf16 = Enhancer(weights, InferenceConfig(device="cpu", precision="bf16"))
    default, denoise_only, exposure_only = FinishConfig(), FinishConfig(exposure="off"), FinishConfig(denoise="off")
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()  # noqa: E731
    lows = [as_tensor(a) for a in images]
    enhanced = [as_tensor(fp32.enhance(a).pixels) for a in images]

    def finish_full(low, out, config):
        params = finish_params(params_copy(low), params_copy(out), config)
        return finish_tiles(low, out, params, config)

    def finish_tiled(low, out, config, tile=256):
        params = finish_params(params_copy(low), params_copy(out), config)
        result = torch.empty_like(out)
        halo = finish_halo(config)
        for rows, cols, prow, pcol in tile_grid(height, width, tile, halo):
            done = finish_tiles(low[..., prow, pcol], out[..., prow, pcol], params, config)
            result[..., rows, cols] = done[..., rows.start - prow.start:rows.stop - prow.start,
                                           cols.start - pcol.start:cols.stop - pcol.start]
        return result

    def with_network(enhancer, finisher):
        def run():
            for a, low in zip(images, lows):
                out = as_tensor(enhancer.enhance(a).pixels)
                if finisher:
                    finisher(low, out)
        return run

    def finishing_only(fn):
        def run():
            for low, out in zip(lows, enhanced):
                fn(low, out)
        return run

    rows = {
        "network fp32": with_network(fp32, None),
        "network fp32 + finishing (full frame)": with_network(fp32, lambda l, o: finish_full(l, o, default)),
        "network fp32 + finishing (256-px tiles + halo)": with_network(fp32, lambda l, o: finish_tiled(l, o, default)),
        "network bf16": with_network(bf16, None),
        "network bf16 + finishing (full frame)": with_network(bf16, lambda l, o: finish_full(l, o, default)),
        "finishing alone, default": finishing_only(lambda l, o: finish_full(l, o, default)),
        "finishing alone, default, 256-px tiles": finishing_only(lambda l, o: finish_tiled(l, o, default)),
        "finishing alone, denoise only": finishing_only(lambda l, o: finish_full(l, o, denoise_only)),
        "finishing alone, exposure only": finishing_only(lambda l, o: finish_full(l, o, exposure_only)),
        "finish_params alone": finishing_only(lambda l, o: finish_params(params_copy(l), params_copy(o), default)),
    }
    names = list(rows)
    # Correctness next to speed: tiles with the halo give the full-frame pixels.
    tiled_diff = max(float((finish_tiled(l, o, default) - finish_full(l, o, default)).abs().max())
                     for l, o in zip(lows, enhanced))
    for run in rows.values():  # warm-up
        run()
    print(f"{args.images} synthetic dark images of {width}x{height} ({pixels / 1e6:.2f} MP in all), "
          f"{args.repeats} rounds, {args.threads} torch thread(s); finishing halo {finish_halo(default)} px",
          flush=True)
    monitor = LoadMonitor()
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            rows[name]()
            times[name].append(time.perf_counter() - start)
    foreign = monitor.line()
    monitor.stop()

    seconds = {n: median(t) for n, t in times.items()}
    out = []
    for name in names:
        base = "network bf16" if "bf16" in name else "network fp32"
        ratio = seconds[name] / seconds[base] if "network" in name else None
        out.append([name, f"{seconds[name]:.3f}", f"{seconds[name] / pixels * 1e6:.3f}",
                    f"{pixels / seconds[name] / 1e6:.2f}", f"{ratio:.3f}" if ratio else "-",
                    f"{seconds[name] / seconds['network fp32']:.3f}"])
    print(table(["row", "s/pass", "us/pixel", "MP/s", "x own network", "x network fp32"], out))
    cost = seconds["network fp32 + finishing (full frame)"] / seconds["network fp32"] - 1
    cost_tiled = seconds["network fp32 + finishing (256-px tiles + halo)"] / seconds["network fp32"] - 1
    cost_bf16 = seconds["network bf16 + finishing (full frame)"] / seconds["network bf16"] - 1
    print(f"\nfinishing adds {cost:+.1%} to the fp32 network (full frame), {cost_tiled:+.1%} in 256-px tiles, "
          f"{cost_bf16:+.1%} to the bf16 network; tiled vs full-frame finishing: max |diff| {tiled_diff:.2e} "
          f"({tiled_diff * 255:.4f} of an 8-bit step)")
    print(foreign)


if __name__ == "__main__":
    main()
