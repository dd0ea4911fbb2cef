#!/usr/bin/env python3
"""Regenerate the bundled low-light sample images in ``dce_batch/samples/``.

This is a maintainer tool, NOT part of the ``dce_batch`` package (it is not installed and nothing
in the package imports it). It needs scikit-image, which is not a dependency of ``dce_batch``::

    pip install scikit-image          # only while running this script
    python scripts/make_samples.py    # writes dce_batch/samples/*.jpg|png, prints a table
    python scripts/make_samples.py --check   # regenerate in a temp dir, compare with the repo

Every sample starts from a public-domain / CC0 colour photograph bundled with scikit-image
(``skimage.data.<name>()``; see ``dce_batch/samples/README.md`` for each one's author and
licence) and is turned into a plausible low-light photo:

1. resize (Pillow LANCZOS, in sRGB) so the longest side is at most 512 px (rocket: 640 px, the
   PNG chelsea: 320 px to keep the lossless file small);
2. decode sRGB to linear light (IEC 61966-2-1 transfer function);
3. scale the exposure down strongly (a per-image factor between 0.05 and 0.12) with an optional
   mild white-balance cast (e.g. warm indoor light, blue dusk);
4. add faint seeded sensor noise in linear light: signal-dependent shot noise plus Gaussian read
   noise, independent per channel, clipped at 0. It is kept subtle (about 1.1-1.7 8-bit sRGB code
   values r.m.s.) so that the picture still looks clean with light grain after the ~4x
   brightening that the enhancement applies;
5. re-encode to sRGB, quantise to 8 bits and save (JPEG quality 90, or PNG).

One JPEG (``coffee_dim_rotated.jpg``) is stored rotated 90 degrees with EXIF Orientation 6 so it
displays upright, carries EXIF Make/Model ``dce_batch sample`` and an embedded sRGB ICC profile.

Output is deterministic: fixed seeds (``numpy.random.default_rng``), fixed resize filter, fixed
encoder settings, and the ICC profile's creation date (which littleCMS sets to "now") pinned to a
constant. Byte-identical output assumes the same numpy / Pillow (libjpeg, zlib) builds; it was
produced with scikit-image 0.26.0, numpy 2.4, Pillow 13.0.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

try:
    import skimage.data
except ImportError:  # pragma: no cover - maintainer tool
    sys.exit("scripts/make_samples.py needs scikit-image: pip install scikit-image")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "dce_batch" / "samples"

REC709_LUMA = np.array([0.2126, 0.7152, 0.0722])
JPEG_QUALITY = 90
EXIF_ORIENTATION, EXIF_MAKE, EXIF_MODEL, EXIF_DESCRIPTION = 0x0112, 0x010F, 0x0110, 0x010E
MAKE_MODEL = "dce_batch sample"
#: ICC header dateTimeNumber (bytes 24..35): 2000-01-01 00:00:00, replacing littleCMS's "now".
ICC_FIXED_DATE = (2000).to_bytes(2, "big") + b"".join(v.to_bytes(2, "big") for v in (1, 1, 0, 0, 0))


@dataclass(frozen=True)
class Sample:
    filename: str
    source: str  # name of the skimage.data function
    longest_side: int
    exposure: float  # multiplier in linear light
    seed: int
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)  # linear R, G, B gains
    # Subtle on purpose: the enhancer brightens these ~4x, which amplifies the grain with them.
    shot_noise: float = 0.00005  # variance per unit of linear signal
    read_noise: float = 0.0004  # std. dev. in linear light
    rotate_exif6: bool = False  # store rotated 90 deg with EXIF Orientation 6 + ICC + Make/Model
    description: str = field(default="", compare=False)


SAMPLES: tuple[Sample, ...] = (
    Sample(
        "astronaut_dark.jpg", "astronaut", 512, exposure=0.05, seed=1001,
        white_balance=(1.06, 1.0, 0.90),
    ),
    Sample(
        "coffee_dim_rotated.jpg", "coffee", 512, exposure=0.065, seed=1002,
        white_balance=(1.10, 1.0, 0.82), rotate_exif6=True,
        description="Darkened from skimage.data.coffee (Rachel Michetti, CC0)",
    ),
    Sample(
        "chelsea_night.png", "chelsea", 320, exposure=0.05, seed=1003,
        white_balance=(1.08, 1.0, 0.86), shot_noise=0.00006, read_noise=0.0005,
    ),
    Sample(
        "rocket_dusk.jpg", "rocket", 640, exposure=0.12, seed=1004,
        white_balance=(0.92, 1.0, 1.12),
    ),
    Sample(
        "retina_dark.jpg", "retina", 384, exposure=0.08, seed=1005,
        shot_noise=0.00003, read_noise=0.0003,
    ),
)


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def load_source(sample: Sample) -> Image.Image:
    pixels = getattr(skimage.data, sample.source)()
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"skimage.data.{sample.source}: expected uint8 RGB, got "
                         f"{pixels.dtype} {pixels.shape}")
    image = Image.fromarray(pixels, "RGB")
    w, h = image.size
    scale = sample.longest_side / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def darken(image: Image.Image, sample: Sample) -> Image.Image:
    rng = np.random.default_rng(sample.seed)
    linear = srgb_to_linear(np.asarray(image, dtype=np.float64) / 255.0)
    signal = linear * sample.exposure * np.asarray(sample.white_balance, dtype=np.float64)
    sigma = np.sqrt(sample.shot_noise * signal + sample.read_noise**2)
    noisy = signal + sigma * rng.standard_normal(signal.shape)
    encoded = linear_to_srgb(noisy)
    return Image.fromarray(np.round(encoded * 255.0).astype(np.uint8), "RGB")


def srgb_icc_profile() -> bytes:
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = ICC_FIXED_DATE  # creation date; profile ID (84..99) is left unset (zeros)
    return bytes(profile)


def encode(image: Image.Image, sample: Sample) -> bytes:
    buf = io.BytesIO()
    if sample.filename.endswith(".png"):
        image.save(buf, "PNG", optimize=True)
    elif sample.rotate_exif6:
        # Orientation 6 = "rotate 90 degrees clockwise to display", so store the upright picture
        # rotated 90 degrees counter-clockwise.
        stored = image.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        exif[EXIF_MAKE] = MAKE_MODEL
        exif[EXIF_MODEL] = MAKE_MODEL
        if sample.description:
            exif[EXIF_DESCRIPTION] = sample.description
        stored.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True, exif=exif.tobytes(),
                    icc_profile=srgb_icc_profile())
    else:
        image.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def mean_luminance(data: bytes) -> tuple[float, tuple[int, int]]:
    """Mean Rec.709 luma of the upright decoded file, on 8-bit values scaled to [0, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")
        pixels = np.asarray(upright, dtype=np.float64) / 255.0
    return float(pixels.reshape(-1, 3).mean(axis=0) @ REC709_LUMA), upright.size


def generate(out_dir: Path) -> list[tuple[str, int, tuple[int, int], tuple[int, int], float]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample in SAMPLES:
        upright = darken(load_source(sample), sample)
        data = encode(upright, sample)
        lum, shown = mean_luminance(data)
        if shown != upright.size:
            raise AssertionError(f"{sample.filename}: displays as {shown}, expected {upright.size}")
        with Image.open(io.BytesIO(data)) as im:
            stored = im.size
        (out_dir / sample.filename).write_bytes(data)
        rows.append((sample.filename, len(data), stored, shown, lum))
    return rows


def print_table(rows) -> None:
    print(f"{'file':<24} {'bytes':>7} {'stored WxH':>11} {'shown WxH':>11} {'mean luma':>9}")
    for name, size, stored, shown, lum in rows:
        print(f"{name:<24} {size:>7} {stored[0]:>5}x{stored[1]:<5} {shown[0]:>5}x{shown[1]:<5}"
              f" {lum:>9.4f}")
    print(f"{'total':<24} {sum(r[1] for r in rows):>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary folder and compare byte-for-byte "
                             "with --out instead of overwriting it")
    args = parser.parse_args(argv)
    if not args.check:
        print_table(generate(args.out))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = generate(Path(tmp))
        print_table(rows)
        bad = [r[0] for r in rows
               if not (args.out / r[0]).is_file()
               or (args.out / r[0]).read_bytes() != (Path(tmp) / r[0]).read_bytes()]
    if bad:
        print(f"MISMATCH with {args.out}: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"OK: all {len(rows)} files in {args.out} are byte-identical to a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
