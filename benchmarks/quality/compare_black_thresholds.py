"""The rule that keeps black inputs black, at several thresholds, through the job's own finishing.

``finishing._keep_blacks`` scales the output to 0 where the brightest value of the input's 7 x 7
neighbourhood is at or under a floor (2.5 8-bit steps) and keeps it from a second threshold on
(4 steps). This script runs the default finishing (``finish_image`` with ``job_finish()``, the
network's output cached per image) with those thresholds moved, or with the rule off, and prints
PSNR / SSIM against the references, so the rule's cost on real and simulated pairs sits beside
what it buys (the bundled retina sample's black surround, ``tests/test_finishing.py``). The
pairs are those of ``compare_exposure_models.py`` (its docstring makes them):

    python benchmarks/quality/compare_black_thresholds.py /tmp/sice_pairs /tmp/evalsim/simulated
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from compare_exposure_models import add_pair_arguments, as_tensors, load_pairs, network, simulated_sets  # noqa: E402

#: (floor, full) in 8-bit steps; None switches the rule off.
THRESHOLDS: dict[str, tuple[float, float] | None] = {
    "shipped 2.5/4": (2.5, 4.0),
    "off": None,
    "2/3": (2.0, 3.0),
    "1.5/2.5": (1.5, 2.5),
    "0.5/1.5": (0.5, 1.5),
}


def finished(items: list[dict], thresholds: tuple[float, float] | None) -> tuple[float, float]:
    """Mean PSNR and SSIM of the default finishing with the black thresholds set to ``thresholds``."""
    import torch

    from compare_exposure_models import job_finish

    from dce_batch.enhance import finishing
    from dce_batch.evaluation.evaluate import paired_metrics, quantize

    saved = finishing._keep_blacks, finishing._BLACK_FLOOR, finishing._BLACK_FULL
    try:
        if thresholds is None:
            finishing._keep_blacks = lambda low, out: out
        else:
            finishing._BLACK_FLOOR, finishing._BLACK_FULL = (t / 255.0 for t in thresholds)
        scores = []
        for item in items:
            low, out = as_tensors(item)
            with torch.inference_mode():
                output = finishing.finish_image(low, out, job_finish())[0].permute(1, 2, 0).numpy()
            scores.append(paired_metrics(item["ref"], quantize(output)))
    finally:
        finishing._keep_blacks, finishing._BLACK_FLOOR, finishing._BLACK_FULL = saved
    return float(np.mean([s["psnr"] for s in scores])), float(np.mean([s["ssim"] for s in scores]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser)
    args = parser.parse_args()
    enhancer = network()
    sets = {"SICE brackets, real": load_pairs(args.sice_pairs / "low", args.sice_pairs / "ref", enhancer),
            **simulated_sets(args.simulated, enhancer)}
    print("PSNR dB / SSIM of the default finishing, black thresholds (floor/full, 8-bit steps):")
    print(f"  {'set':22s} " + "  ".join(f"{name:>15s}" for name in THRESHOLDS))
    for name, items in sets.items():
        cells = [finished(items, thresholds) for thresholds in THRESHOLDS.values()]
        print(f"  {name + f' ({len(items)})':22s} " + "  ".join(f"{p:7.2f} / {s:.4f}" for p, s in cells))


if __name__ == "__main__":
    main()
