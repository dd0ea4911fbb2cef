#!/usr/bin/env python3
"""Regenerate the bundled training set in ``dce_batch/training_samples/``.

A maintainer tool, not part of the package. It needs only numpy and Pillow (dependencies of
``dce_batch``) and derives every image from the bundled enhancement samples
(``dce_batch/samples/``, public-domain / CC0 photographs, see that folder's README)::

    python scripts/make_training_samples.py          # writes dce_batch/training_samples/*.jpg
    python scripts/make_training_samples.py --check  # regenerate in a temp dir, compare bytes

Zero-DCE learns from unpaired images at several exposures (the authors used SICE's
multi-exposure sequences), so each sample photo gives ``CROPS_PER_SOURCE`` square crops, each
re-exposed to a target brightness: half of them under-exposed, half over-exposed. Per crop:

1. a seeded random square crop covering 40-80 % of the photo's shorter side (upright: EXIF
   orientation applied), resized to ``SIDE`` x ``SIDE`` with Pillow's LANCZOS filter;
2. sRGB decoded to linear light (IEC 61966-2-1) and multiplied by the gain that brings the
   crop's mean Rec.709 luma (after clipping at white and re-encoding) to the target, found by
   bisection on the logarithm of the gain; targets are drawn from ``UNDER`` or ``OVER``;
3. re-encoded to sRGB, rounded to 8 bits and saved as JPEG (quality ``JPEG_QUALITY``).

The sources are dark photos, so the over-exposed crops carry their coarse shadows and grain:
that is harmless for a data set whose job is a quick, real training run, not a good model.
Output is deterministic for a given numpy / Pillow build (fixed seeds, filter and encoder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "dce_batch" / "samples"
DEFAULT_OUT = REPO_ROOT / "dce_batch" / "training_samples"
SOURCES = ("astronaut_dark.jpg", "coffee_dim_rotated.jpg", "chelsea_night.png", "rocket_dusk.jpg",
           "retina_dark.jpg")
CROPS_PER_SOURCE = 8
SIDE = 96
JPEG_QUALITY = 90
SEED = 2025
UNDER = (0.05, 0.18)  # target mean luma (sRGB, 0-1) of the under-exposed crops
OVER = (0.62, 0.82)  # and of the over-exposed ones
REC709_LUMA = np.array([0.2126, 0.7152, 0.0722])


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def mean_luma(srgb: np.ndarray) -> float:
    return float((srgb @ REC709_LUMA).mean())


def expose(linear: np.ndarray, target: float) -> np.ndarray:
    """sRGB (0-1) of ``linear`` times the gain whose clipped result has mean luma ``target``.

    Mean luma after clipping grows monotonically with the gain, so bisection finds it.
    """
    low, high = np.log(1e-3), np.log(1e4)
    for _ in range(60):
        middle = (low + high) / 2
        if mean_luma(linear_to_srgb(linear * np.exp(middle))) < target:
            low = middle
        else:
            high = middle
    return linear_to_srgb(linear * np.exp((low + high) / 2))


def crops(source: Image.Image, rng: np.random.Generator) -> list[Image.Image]:
    width, height = source.size
    short = min(width, height)
    out = []
    for _ in range(CROPS_PER_SOURCE):
        side = round(short * rng.uniform(0.4, 0.8))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        box = (left, top, left + side, top + side)
        out.append(source.crop(box).resize((SIDE, SIDE), Image.Resampling.LANCZOS))
    return out


def generate(out_dir: Path) -> list[tuple[str, int, float]]:
    """Write every training image into ``out_dir``; returns (file name, bytes, mean luma) rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    rows = []
    for source_name in SOURCES:
        with Image.open(SOURCE_DIR / source_name) as opened:
            source = ImageOps.exif_transpose(opened).convert("RGB")
        stem = source_name.split("_", 1)[0]
        for index, crop in enumerate(crops(source, rng)):
            kind, (low, high) = ("under", UNDER) if index % 2 == 0 else ("over", OVER)
            linear = srgb_to_linear(np.asarray(crop, dtype=np.float64) / 255.0)
            srgb = expose(linear, float(rng.uniform(low, high)))
            name = f"{stem}_{index:02d}_{kind}.jpg"
            Image.fromarray(np.round(srgb * 255.0).astype(np.uint8), "RGB").save(
                out_dir / name, quality=JPEG_QUALITY, optimize=True)
            rows.append((name, (out_dir / name).stat().st_size, mean_luma(srgb)))
    return rows


def check() -> int:
    with tempfile.TemporaryDirectory() as folder:
        generate(Path(folder))
        fresh = {p.name: p.read_bytes() for p in Path(folder).glob("*.jpg")}
    committed = {p.name: p.read_bytes() for p in DEFAULT_OUT.glob("*.jpg")}
    differ = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    if differ:
        print(f"{len(differ)} file(s) differ from a fresh generation: {', '.join(differ)}", file=sys.stderr)
        return 1
    print(f"all {len(fresh)} files match")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder to write (default {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="regenerate in a temp dir and compare with the repo")
    args = parser.parse_args()
    if args.check:
        return check()
    rows = generate(args.out)
    for name, size, luma in rows:
        print(f"{name:28s} {size:6d} bytes  mean luma {luma:.3f}")
    print(f"{len(rows)} images, {sum(size for _, size, _ in rows):,} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
