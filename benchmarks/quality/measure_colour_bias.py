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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from compare_exposure_models import add_pair_arguments, load_pairs, simulated_sets  # noqa: E402


def log_chroma(pixels: np.ndarray) -> np.ndarray:
    """log(R/G), log(B/G) of the mean linear colour of sRGB ``pixels`` (floats in [0, 1])."""
    linear = np.where(pixels <= 0.04045, pixels / 12.92, ((pixels + 0.055) / 1.055) ** 2.4)
    mean = linear.reshape(-1, 3).mean(axis=0)
    return np.log(mean[[0, 2]] / mean[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser)
    parser.add_argument("--weights", action="append", help="weights to measure (repeatable; default: the shipped DCE-Net)")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
