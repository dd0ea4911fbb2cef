"""The rule that keeps black inputs black, at several settings, through the job's own finishing.

``finishing._keep_blacks`` scales the output to 0 where the input's 7 x 7 neighbourhood is black
and keeps it where the neighbourhood holds **signal** (its brightest value, faded in from 3.5 to 6
8-bit steps) or **dithered content** (the share of its values at 2 steps or more, faded in from a
quarter to a half). This script runs the default finishing (``finish_image`` with
``job_finish()``, the network's output cached per image) with those settings moved, with the
neighbourhood's maximum alone deciding (2.5 / 4 steps, the share never counted), or with the rule
off, and prints PSNR / SSIM against the references, so the rule's cost on real and simulated pairs
sits beside what it buys (the bundled retina sample's black surround and a black backdrop's JPEG
residue, ``tests/test_finishing.py``). The real SICE pairs are scored twice: at the default level
(0.45, above their references' 0.35) and with the exposure's intercept moved to their references'
level, where only the rule differs. The pairs are those of ``compare_exposure_models.py`` (its
docstring makes them):

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

#: The module's constants that each setting sets, in the order of a setting's values.
NAMES = ("_BLACK_DITHER", "_BLACK_SHARE_START", "_BLACK_SHARE_FULL", "_BLACK_SIGNAL_START", "_BLACK_SIGNAL_FULL")


def _shipped() -> tuple[float, float, float, float, float]:
    from dce_batch.enhance import finishing

    floor, share_start, share_full, signal_start, signal_full = (getattr(finishing, name) for name in NAMES)
    return floor * 255.0, share_start, share_full, signal_start * 255.0, signal_full * 255.0


#: (dither floor, share start, share full, signal start, signal full), floor and signal in 8-bit
#: steps; None switches the rule off. A share start above 1 never counts the share.
SETTINGS: dict[str, tuple[float, float, float, float, float] | None] = {
    "shipped": _shipped(),
    "maximum alone 2.5/4": (1.5, 2.0, 3.0, 2.5, 4.0),
    "off": None,
    "share of 3+": (2.5, 0.05, 0.2, 3.5, 6.0),
    "share 0.6-0.85": (1.5, 0.6, 0.85, 3.5, 6.0),
}
#: The exposure intercept that puts SICE's outputs at their references' level (0.35).
SICE_REFERENCE_INTERCEPT = 0.120


def finished(items: list[dict], setting: tuple[float, float, float, float, float] | None) -> tuple[float, float]:
    """Mean PSNR and SSIM of the default finishing with the black rule set to ``setting``."""
    import torch

    from compare_exposure_models import job_finish

    from dce_batch.enhance import finishing
    from dce_batch.evaluation.evaluate import paired_metrics, quantize

    saved = finishing._lit_factor, *(getattr(finishing, name) for name in NAMES)
    try:
        if setting is None:  # nothing blacked out, and the exposure's mean over the whole frame
            finishing._lit_factor = lambda low: None
        else:
            floor, share_start, share_full, signal_start, signal_full = setting
            for name, value in zip(NAMES, (floor / 255.0, share_start, share_full, signal_start / 255.0,
                                           signal_full / 255.0)):
                setattr(finishing, name, value)
        scores = []
        for item in items:
            low, out = as_tensors(item)
            with torch.inference_mode():
                output = finishing.finish_image(low, out, job_finish())[0].permute(1, 2, 0).numpy()
            scores.append(paired_metrics(item["ref"], quantize(output)))
    finally:
        finishing._lit_factor = saved[0]
        for name, value in zip(NAMES, saved[1:]):
            setattr(finishing, name, value)
    return float(np.mean([s["psnr"] for s in scores])), float(np.mean([s["ssim"] for s in scores]))


def at_sice_reference_level(items: list[dict], setting) -> tuple[float, float]:
    from dce_batch.enhance import exposure

    saved = exposure.TARGET_INTERCEPT
    exposure.TARGET_INTERCEPT = SICE_REFERENCE_INTERCEPT
    try:
        return finished(items, setting)
    finally:
        exposure.TARGET_INTERCEPT = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser)
    args = parser.parse_args()
    enhancer = network()
    sice = load_pairs(args.sice_pairs / "low", args.sice_pairs / "ref", enhancer)
    rows = [("SICE, level 0.45", sice, finished), ("SICE, at refs' level", sice, at_sice_reference_level)]
    rows += [(name, items, finished) for name, items in simulated_sets(args.simulated, enhancer).items()]
    print("PSNR dB / SSIM of the default finishing, black rule settings:")
    print(f"  {'set':26s} " + "  ".join(f"{name:>19s}" for name in SETTINGS))
    for name, items, score in rows:
        cells = [score(items, setting) for setting in SETTINGS.values()]
        print(f"  {name + f' ({len(items)})':26s} " + "  ".join(f"{p:10.3f} / {s:.4f}" for p, s in cells), flush=True)


if __name__ == "__main__":
    main()
