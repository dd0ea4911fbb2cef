"""Candidate scene-exposure models, compared through the job's own finishing.

``fit_exposure.py`` scores a model by how well it predicts a reference's mean luma; this script
scores what a user sees: PSNR / SSIM of the finished output. Each model gives every image a
target mean luma, the job's finishing (``finish_image``, network output cached per image) is run
with that target forced (``job_finish(exposure=target)``, the night rule applied as
``scene_target`` applies it), and the output is compared with the reference.

* **SICE's real brackets** (``sice_sequences.py --pairs DIR``): every model is fitted with one
  sequence left out and predicts that sequence, at the level of the brackets' own references
  (a camera's meter, 0.35), so the figures are out of sample and compare scene readings, not levels.
* **Simulated sets** (``dce-batch evaluate --simulate ... --out DIR`` writes them under
  ``DIR/simulated/LEVEL/{low,high}``): the models fitted on all of SICE's pairs, moved to the
  well-exposed level (0.45) as the shipped model is.

Models: ``m`` (shipped: ``a + c m``, moved by adding ``0.45 - mean``), ``m+e`` (adds the capture's
exposure, the log of its mean linear luma), ``m, scaled`` (``m``'s fit moved to 0.45 by a factor
instead of an offset, so dark scenes are lifted less).

    python benchmarks/quality/sice_sequences.py --pairs /tmp/sice_pairs
    dce-batch evaluate --simulate lol_matched,lol_wide,lol_wide_jpeg \\
        --simulate-from ../shared/data/well_exposed/kodak24 --config input --out /tmp/evalsim
    python benchmarks/quality/compare_exposure_models.py /tmp/sice_pairs /tmp/evalsim/simulated
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

LEVEL = 0.45
LUMA = np.array([0.2126, 0.7152, 0.0722])
MODELS = ("m", "m+e", "m, scaled")


def _features(low: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(m, e): the curves' mean luma, and the log of the input's mean linear luma."""
    import torch

    from dce_batch.enhance.exposure import srgb_to_linear

    linear = srgb_to_linear(torch.from_numpy(low)).numpy() @ LUMA
    return float((out @ LUMA).mean()), float(np.log(max(float(linear.mean()), 1e-6)))


def load_pairs(low_dir: Path, ref_dir: Path, enhancer) -> list[dict]:
    from dce_batch.evaluation.evaluate import _read, quantize

    items = []
    for path in sorted(low_dir.glob("*.png")):
        low = _read(path, None)
        out = enhancer.enhance(low).pixels  # float in, float out (as dce-batch evaluate runs it)
        m, e = _features(low, out)
        reference = quantize(_read(ref_dir / path.name, None))
        items.append({"name": path.stem, "low": low, "out": out, "ref": reference, "m": m, "e": e,
                      "y": float((reference @ LUMA).mean())})
    return items


def as_tensors(item: dict):
    """The pair's input and cached network output as 1 x 3 x H x W tensors, as ``finish_image`` takes them."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(item[key])).permute(2, 0, 1)[None] for key in ("low", "out"))


@functools.lru_cache(maxsize=1)
def network():
    """The shipped DCE-Net, alone (no finishing), on two threads (one, built once)."""
    import torch

    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    torch.set_num_threads(2)
    return Enhancer(load_weights(None), InferenceConfig())


def job_finish(**settings):
    """``FinishConfig(**settings)`` as the job runs it with the shipped DCE-Net: with the colour
    cast its weights declare taken out."""
    from dce_batch.enhance.settings import FinishConfig

    return network().for_these_weights(FinishConfig(**settings))


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sice_pairs", type=Path, help="folder written by sice_sequences.py --pairs")
    parser.add_argument("simulated", type=Path, nargs="?", help="folder of simulated levels (LEVEL/low, LEVEL/high)")


def simulated_sets(simulated: Path | None, enhancer) -> dict[str, list[dict]]:
    """Each simulated level under ``simulated`` (none when it is None), by name."""
    if simulated is None:
        return {}
    levels = sorted(p.name for p in simulated.iterdir() if (p / "low").is_dir())
    return {level: load_pairs(simulated / level / "low", simulated / level / "high", enhancer) for level in levels}


def _columns(model: str, items: list[dict]) -> np.ndarray:
    m = np.array([i["m"] for i in items])
    e = np.array([i["e"] for i in items])
    columns = [np.ones(len(items)), m] + ([e] if model == "m+e" else [])
    return np.column_stack(columns)


def fit(model: str, items: list[dict]) -> np.ndarray:
    y = np.array([i["y"] for i in items])
    return np.linalg.lstsq(_columns(model, items), y, rcond=None)[0]


def predict(model: str, coefficients: np.ndarray, items: list[dict], level_shift: float = 0.0,
            level_factor: float = 1.0) -> np.ndarray:
    raw = _columns(model, items) @ coefficients
    return raw * level_factor if model == "m, scaled" else raw + level_shift


def finished(item: dict, target: float) -> dict:
    """PSNR, SSIM and mean luma of the job's finishing with ``target`` forced (night rule kept)."""
    import torch

    from dce_batch.enhance.exposure import TARGET_MAX, TARGET_MIN, night_weight
    from dce_batch.enhance.finishing import finish_image, scene_copy
    from dce_batch.evaluation.evaluate import paired_metrics, quantize

    low, out = as_tensors(item)
    with torch.inference_mode():
        room = min(max(target, TARGET_MIN), TARGET_MAX)
        weight = float(night_weight(scene_copy(low))[0])
        forced = room + weight * (TARGET_MIN - room)
        output = quantize(finish_image(low, out, job_finish(exposure=forced))[0].permute(1, 2, 0).numpy())
    return {**paired_metrics(item["ref"], output), "mean": float((output @ LUMA).mean()), "output": output}


def check_forced_target(item: dict) -> float:
    """Largest difference, in 8-bit steps, between the job's default finishing and the shipped
    model's target forced as this script forces it (0 when the script measures what ships)."""
    import torch

    from dce_batch.enhance.exposure import CURVES_WEIGHT, TARGET_INTERCEPT
    from dce_batch.enhance.finishing import finish_image
    from dce_batch.evaluation.evaluate import quantize

    low, out = as_tensors(item)
    with torch.inference_mode():
        default = quantize(finish_image(low, out, job_finish())[0].permute(1, 2, 0).numpy())
    forced = finished(item, TARGET_INTERCEPT + CURVES_WEIGHT * item["m"])
    return float(np.abs(default - forced["output"]).max() * 255)


def _row(label: str, results: list[dict]) -> str:
    means = [r["mean"] for r in results]
    return (f"  {label:10s} {np.mean([r['psnr'] for r in results]):6.2f} / {np.mean([r['ssim'] for r in results]):.3f}"
            f"   output mean {np.mean(means):.3f} ({min(means):.2f}-{max(means):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pair_arguments(parser)
    args = parser.parse_args()
    enhancer = network()
    sice = load_pairs(args.sice_pairs / "low", args.sice_pairs / "ref", enhancer)
    # A bracket's dark frames share one metered frame, which names the sequence.
    sequences = np.array([i["y"] for i in sice])
    y_mean = float(sequences.mean())
    inputs = np.array([float((i["low"] @ LUMA).mean()) for i in sice])
    print(f"forced target against the job's default, first pair: {check_forced_target(sice[0]):.1f} steps of 255")
    print(f"SICE brackets, real: {len(sice)} pairs, references at {y_mean:.3f}; each model fitted without "
          f"the sequence it predicts (PSNR dB / SSIM)")
    for model in MODELS[:2]:
        targets = np.empty(len(sice))
        for s in np.unique(sequences):
            held = sequences == s
            train = [i for i, h in zip(sice, held) if not h]
            targets[held] = predict(model, fit(model, train), [i for i, h in zip(sice, held) if h])
        results = [finished(item, float(t)) for item, t in zip(sice, targets)]
        print(_row(model, results))
        psnr = np.array([r["psnr"] for r in results])
        for lo, hi in ((0.0, 0.05), (0.05, 0.1), (0.1, 0.2)):
            chosen = (inputs >= lo) & (inputs < hi)
            print(f"      inputs {lo:.2f}-{hi:.2f} ({chosen.sum():3d}): {psnr[chosen].mean():.2f} dB")
    coefficients = {model: fit("m+e" if model == "m+e" else "m", sice) for model in MODELS}
    for level, items in simulated_sets(args.simulated, enhancer).items():
        refs = np.array([i["y"] for i in items])
        print(f"{level}: {len(items)} pairs, references {refs.mean():.3f} ({refs.min():.2f}-{refs.max():.2f})")
        for model in MODELS:
            targets = predict(model, coefficients[model], items, level_shift=LEVEL - y_mean, level_factor=LEVEL / y_mean)
            print(_row(model, [finished(item, float(t)) for item, t in zip(items, targets)]))


if __name__ == "__main__":
    main()
