"""Fit the scene-exposure model's two coefficients (``dce_batch/enhance/exposure.py``) and check them.

1. **Fit.** For each well-exposed reference (Kodak24 and the 24 SICE frames the simulated sets
   use, reduced to 600 px), dark captures at the simulated levels ``lol_matched``, ``lol_wide``
   and ``lol_wide_jpeg`` (``dce_batch.evaluation.lowlight_sim``: exposure, noise and JPEG per scene). The
   feature ``r = log(mean / p99.5)`` of each dark capture's linear luma
   (``dce_batch.enhance.exposure.scene_feature``, the code the job runs) is regressed on the reference's
   mean luma by least squares: ``target = a + b r``. Printed: the coefficients, the RMS error
   of the target against the references' mean luma, and against a single fixed target (the
   references' average), per source and cross-validated (fitted on one source, scored on the
   other).
2. **Real captures (SICE sequences).** The feature is meant to be the same in a dark capture
   and in the well-exposed photo of the same scene. SICE Part 1's bracketed sequences are real
   captures of one scene at several exposures (camera noise, tone curve, JPEG): for each
   sequence, the feature of every dark frame (mean luma under 0.15) against that of the
   sequence's reference frame (``sice_sequences.pick_reference``). Printed: their correlation
   and the mean absolute difference, in target units (``b x |r_dark - r_ref|``).

    python benchmarks/quality/fit_exposure.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from sice_sequences import LUMA, group_sequences, load_thumbnails, pick_reference, shared_root  # noqa: E402

SICE_FRAMES = (46, 269, 326, 366, 456, 497, 528, 570, 695, 762, 786, 804, 838, 878, 988, 1099, 1123, 1219, 1265,
               1290, 1306, 1325, 1605, 1609)
LEVEL_NAMES = ("lol_matched", "lol_wide", "lol_wide_jpeg")


def _load(path: Path, side: int = 600) -> np.ndarray:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if max(image.size) > side:
        f = side / max(image.size)
        image = image.resize((round(image.width * f), round(image.height * f)), Image.BOX)
    return np.asarray(image)


def _feature(pixels: np.ndarray) -> float:
    import torch

    from dce_batch.enhance.exposure import scene_feature

    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    return float(scene_feature(x))


def samples(references: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(feature of each dark capture, its reference's mean luma) over the levels."""
    from dce_batch.evaluation.lowlight_sim import LEVELS, simulate_low_light

    features, targets = [], []
    for path in references:
        reference = _load(path)
        for name in LEVEL_NAMES:
            dark = simulate_low_light(reference, LEVELS[name], key=path.stem)
            features.append(_feature(dark))
            targets.append(float((reference / 255.0 @ LUMA).mean()))
    return np.array(features), np.array(targets)


def main() -> None:
    from dce_batch.enhance.exposure import TARGET_MAX, TARGET_MIN

    shared = shared_root() / "data"
    if not shared.is_dir():
        sys.exit(f"{shared} is absent (../shared; set DCE_SHARED)")
    sources = {
        "kodak24": sorted((shared / "well_exposed" / "kodak24").glob("*.png")),
        "sice24": [shared / "sice_part1_train" / f"{n}.jpg" for n in SICE_FRAMES],
    }
    data = {name: samples(paths) for name, paths in sources.items()}

    def fit(x, y):
        b, a = np.polyfit(x, y, 1)
        return a, b

    def rmse(a, b, x, y):
        return float(np.sqrt(((np.clip(a + b * x, TARGET_MIN, TARGET_MAX) - y) ** 2).mean()))

    x_all = np.concatenate([d[0] for d in data.values()])
    y_all = np.concatenate([d[1] for d in data.values()])
    a, b = fit(x_all, y_all)
    print(f"pooled fit ({len(x_all)} dark captures): target = {a:.3f} + {b:.3f} r  (feature range "
          f"{x_all.min():.2f} .. {x_all.max():.2f}); RMS error {rmse(a, b, x_all, y_all):.4f}, a fixed target "
          f"{y_all.std():.4f}")
    for name, (x, y) in data.items():
        other = [n for n in data if n != name][0]
        ao, bo = fit(*data[other])
        print(f"  {name}: pooled fit {rmse(a, b, x, y):.4f}; fitted on {other} alone ({ao:.3f} + {bo:.3f} r) "
              f"{rmse(ao, bo, x, y):.4f}; a fixed target {y.std():.4f}; correlation of r with the target "
              f"{np.corrcoef(x, y)[0, 1]:.2f}")

    folder = shared / "sice_part1_train"
    numbers, thumbs = load_thumbnails(folder)
    dark_r, ref_r = [], []
    for group in group_sequences(thumbs):
        ref = pick_reference(thumbs, group)
        if ref is None:
            continue
        ref_feature = _feature(_load(folder / f"{numbers[ref]}.jpg"))
        for i in group:
            if (thumbs[i] / 255.0 @ LUMA).mean() < 0.15:
                dark_r.append(_feature(_load(folder / f"{numbers[i]}.jpg")))
                ref_r.append(ref_feature)
    dark_r, ref_r = np.array(dark_r), np.array(ref_r)
    print(f"SICE sequences: {len(dark_r)} real dark frames against their sequence's reference frame: "
          f"correlation of the feature {np.corrcoef(dark_r, ref_r)[0, 1]:.2f}, mean |difference| x b "
          f"{b * np.abs(dark_r - ref_r).mean():.4f} in target units (median {b * np.median(np.abs(dark_r - ref_r)):.4f}); "
          f"dark frames' feature reads {np.mean(dark_r - ref_r):+.3f} on average")


if __name__ == "__main__":
    main()
