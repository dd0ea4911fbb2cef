"""The colour cast a network adds, measured against references of the same scenes.

For each pair, the output of the network alone (no finishing) and the reference are compared by
their mean colour in linear light: ``log(R/G)`` and ``log(B/G)`` of the output minus the
reference's. The mean over a set is the network's *bias*, what ``ShippedWeights.colour_bias``
declares and the finishing's ``colour="auto"`` takes out; its standard deviation says how much it
varies from scene to scene.

* **SICE's real brackets** (``sice_sequences.py --pairs DIR``): a camera's dark frame and its
  metered frame of the same scene, same white balance. This is what the declared value comes
  from.
* **Simulated levels** (``dce-batch evaluate --simulate ... --out DIR`` writes
  ``DIR/simulated/LEVEL/{low,high}``): Kodak24 darkened in linear light, chromaticity kept. An
  independent check of the sign and size.

    python benchmarks/quality/sice_sequences.py --pairs /tmp/sice_pairs
    dce-batch evaluate --simulate lol_matched,lol_wide,lol_wide_jpeg \\
        --simulate-from ../shared/data/well_exposed/kodak24 --config input --out /tmp/evalsim
    python benchmarks/quality/measure_colour_bias.py /tmp/sice_pairs /tmp/evalsim/simulated \\
        --weights zerodce_sice_v1 --weights zerodcepp_sice_v2
    python benchmarks/quality/measure_colour_bias.py /tmp/sice_pairs --held-out

``--held-out`` (the shipped DCE-Net): SICE's sequences split in two halves at random (seed 0);
the bias measured on each half is taken out (``colour_exponents_for``) of the other half's
finished outputs, exposure forced as ``compare_exposure_models.py`` forces it at the
references' own level; PSNR / SSIM with and without.
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

#: The SICE fit's intercept at its references' own level (benchmarks/quality/README.md).
SICE_LEVEL_INTERCEPT = 0.120


def log_chroma(pixels: np.ndarray) -> np.ndarray:
    """log(R/G), log(B/G) of the mean linear colour of sRGB ``pixels`` (floats in [0, 1])."""
    import torch

    from dce_batch.enhance.exposure import srgb_to_linear

    mean = srgb_to_linear(torch.from_numpy(pixels)).reshape(-1, 3).double().mean(dim=0).numpy()
    return np.log(mean[[0, 2]] / mean[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser)
    parser.add_argument("--weights", action="append", help="weights to measure (repeatable; default: the shipped DCE-Net)")
    parser.add_argument("--held-out", action="store_true", help="score the correction on held-out halves of SICE")
    args = parser.parse_args()
    if args.held_out:
        held_out(args.sice_pairs)
        return

    import torch

    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    torch.set_num_threads(2)
    for spec in args.weights or [None]:
        enhancer = Enhancer(load_weights(spec), InferenceConfig())  # the network alone
        sets = {"SICE brackets, real": load_pairs(args.sice_pairs / "low", args.sice_pairs / "ref", enhancer)}
        sets.update(simulated_sets(args.simulated, enhancer))
        print(f"{enhancer.weights.meta.name}: output minus reference, mean (sd) over each set")
        for name, items in sets.items():
            bias = np.array([log_chroma(i["out"]) - log_chroma(i["ref"]) for i in items])
            mean, sd = bias.mean(axis=0), bias.std(axis=0)
            print(f"  {name:20s} {len(items):4d} pairs  log R/G {mean[0]:+.3f} ({sd[0]:.3f})  "
                  f"log B/G {mean[1]:+.3f} ({sd[1]:.3f})")


def held_out(sice_pairs: Path) -> None:
    import torch

    from dce_batch.enhance.exposure import CURVES_WEIGHT, TARGET_MAX, TARGET_MIN, night_weight
    from dce_batch.enhance.finishing import finish_image, scene_copy
    from dce_batch.enhance.settings import FinishConfig, colour_exponents_for
    from dce_batch.evaluation.evaluate import paired_metrics, quantize

    items = load_pairs(sice_pairs / "low", sice_pairs / "ref", network())
    bias = np.array([log_chroma(i["out"]) - log_chroma(i["ref"]) for i in items])
    sequences = np.array([i["y"] for i in items])  # a bracket's dark frames share its metered frame
    names = np.unique(sequences)
    np.random.default_rng(0).shuffle(names)
    first = np.isin(sequences, names[: len(names) // 2])

    def scores(chosen: np.ndarray, exponents: tuple[float, float, float]) -> tuple[float, float]:
        results = []
        for item in (items[i] for i in np.flatnonzero(chosen)):
            low, out = as_tensors(item)
            target = min(max(SICE_LEVEL_INTERCEPT + CURVES_WEIGHT * item["m"], TARGET_MIN), TARGET_MAX)
            target += float(night_weight(scene_copy(low))[0]) * (TARGET_MIN - target)
            with torch.inference_mode():
                output = finish_image(low, out, FinishConfig(exposure=target, colour_exponents=exponents))[0]
            results.append(paired_metrics(item["ref"], quantize(output.permute(1, 2, 0).numpy())))
        return float(np.mean([r["psnr"] for r in results])), float(np.mean([r["ssim"] for r in results]))

    for fitted, scored, name in ((first, ~first, "fitted on half A, scored on B"),
                                 (~first, first, "fitted on half B, scored on A")):
        exponents = colour_exponents_for(tuple(bias[fitted].mean(axis=0)))
        (p0, s0), (p1, s1) = scores(scored, (1.0, 1.0, 1.0)), scores(scored, exponents)
        print(f"{name} ({scored.sum()} pairs): colour kept {p0:.2f} / {s0:.3f}, cast taken out {p1:.2f} / {s1:.3f}")


if __name__ == "__main__":
    main()
