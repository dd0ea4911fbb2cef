"""Paired low-light validation data simulated from well-exposed photos.

The physics, in order, as a camera would produce a dark shot of the same scene:

1. sRGB -> linear light (the sRGB transfer function, IEC 61966-2-1);
2. exposure scaled by ``exposure`` (a shorter exposure / smaller aperture) in linear light;
3. on an RGGB Bayer mosaic, signal-dependent Poisson noise (``photons`` electrons at full
   scale: shot noise) plus Gaussian read noise (``read_noise``, in full-scale units);
4. bilinear demosaicing, which gives the noise the spatial and chroma correlation of real
   camera noise (the blotchy blue-purple grain of a night shot);
5. linear -> sRGB, 8-bit quantisation, optionally JPEG.

Every image gets its own seeded random exposure jitter and noise, derived from ``seed`` and the
image's name, so a set is reproducible and independent of the order images are generated in.
The preset :data:`LEVELS` span LOL-like conditions (inputs with mean brightness about 0.03-0.1).
Used only to validate and choose settings: the enhancement network never trains on these pairs.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from dce_batch.errors import ConfigError

__all__ = [
    "LEVELS",
    "LowLightLevel",
    "linear_to_srgb",
    "simulate_low_light",
    "srgb_to_linear",
    "write_simulated_set",
]


@dataclass(frozen=True)
class LowLightLevel:
    """One darkness/noise condition.

    Attributes:
        name: used as the folder name of the generated set.
        exposure: linear-light scale factor (0.03 = about 5 stops darker).
        exposure_jitter: each image's exposure is multiplied by a log-uniform factor in
            [1/jitter, jitter] (1 = none).
        photons: electrons a full-scale (linear 1.0) pixel would collect at this gain; fewer
            means more shot noise.
        read_noise: standard deviation of the Gaussian read noise, full-scale units.
        jpeg_quality: ``None`` writes a lossless PNG; else the low image is JPEG-compressed.
        photons_jitter, read_noise_jitter: per-scene log-uniform factors in [1/j, j] on
            ``photons`` and ``read_noise`` (1 = none): sensors, ISO and exposure times differ
            from shot to shot, and so does the noise of a real set.
        jpeg_spread: the JPEG quality of each scene is drawn uniformly in
            ``[jpeg_quality - jpeg_spread, jpeg_quality]`` (0 = all at ``jpeg_quality``).

    The per-scene noise and JPEG draws use their own random stream, so the levels that leave
    them at their defaults produce the same pixels as before they existed.
    """

    name: str
    exposure: float
    exposure_jitter: float = 1.0
    photons: float = 2000.0
    read_noise: float = 0.002
    jpeg_quality: int | None = None
    photons_jitter: float = 1.0
    read_noise_jitter: float = 1.0
    jpeg_spread: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.exposure <= 1.0:
            raise ConfigError(f"exposure must be in (0, 1], got {self.exposure}")
        if self.exposure_jitter < 1.0:
            raise ConfigError(f"exposure_jitter must be >= 1, got {self.exposure_jitter}")
        if self.photons <= 0 or self.read_noise < 0:
            raise ConfigError("photons must be positive and read_noise non-negative")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.photons_jitter < 1.0 or self.read_noise_jitter < 1.0:
            raise ConfigError("photons_jitter and read_noise_jitter must be >= 1")
        if self.jpeg_spread < 0 or (self.jpeg_quality is not None and self.jpeg_quality - self.jpeg_spread < 1):
            raise ConfigError(f"jpeg_spread must be >= 0 and leave a quality of at least 1, got {self.jpeg_spread}")


# LOL-like presets, from dim and clean to very dark and noisy. At "lol" the shipped
# zerodce_sice_v1 leaves about the mean brightness and SSIM it leaves on LOL itself; "lol_hard"
# is noisier than LOL, "dim_clean" checks that clean inputs are not smeared. "lol_matched" is
# fitted to the figures published for the hidden paired benchmark (issue 10): from well-exposed
# SICE frames it reproduces the network's SSIM and output mean there and the authors'
# checkpoint's PSNR and SSIM (benchmarks/quality/README.md, "Simulated pairs" and "A level
# matched to the hidden benchmark").
LEVELS: dict[str, LowLightLevel] = {
    level.name: level
    for level in (
        LowLightLevel("dim_clean", exposure=0.08, exposure_jitter=1.5, photons=40000.0, read_noise=0.0003),
        LowLightLevel("lol_mild", exposure=0.05, exposure_jitter=1.5, photons=30000.0, read_noise=0.0008),
        LowLightLevel("lol", exposure=0.03, exposure_jitter=1.5, photons=12000.0, read_noise=0.0012),
        LowLightLevel("lol_matched", exposure=0.025, exposure_jitter=1.5, photons=30000.0, read_noise=0.0008),
        LowLightLevel("lol_hard", exposure=0.015, exposure_jitter=1.5, photons=4000.0, read_noise=0.002),
        LowLightLevel("lol_jpeg", exposure=0.03, exposure_jitter=1.5, photons=12000.0, read_noise=0.0012,
                      jpeg_quality=90),
        # Real sets are harder than one darkening for every scene. The exposure ratio
        # (x/÷2.5 around 0.02: inputs at mean luma 0.02-0.11), the photon count and the read noise
        # (x/÷2 each) are drawn per scene, so an input's brightness says little about its
        # reference's; with Kodak24's references (mean luma 0.28-0.69, as real well-exposed
        # scenes spread) a fixed target is wrong for most of them. "lol_wide_jpeg" goes darker
        # (x/÷3 around 0.015, down to 0.005) with less noise and JPEG at quality 85-95.
        LowLightLevel("lol_wide", exposure=0.02, exposure_jitter=2.5, photons=30000.0, read_noise=0.0008,
                      photons_jitter=2.0, read_noise_jitter=2.0),
        LowLightLevel("lol_wide_jpeg", exposure=0.015, exposure_jitter=3.0, photons=60000.0, read_noise=0.0005,
                      photons_jitter=2.0, read_noise_jitter=2.0, jpeg_quality=95, jpeg_spread=10),
    )
}


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """The sRGB decoding function (IEC 61966-2-1), element-wise on values in [0, 1]."""
    srgb = np.asarray(srgb, dtype=np.float64)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """The sRGB encoding function, element-wise; values are clipped to [0, 1] first."""
    linear = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


_BAYER_KERNEL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float64) / 4.0
_BAYER_KERNEL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 4.0


def _rggb_masks(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:height, 0:width]
    red = (rows % 2 == 0) & (cols % 2 == 0)
    blue = (rows % 2 == 1) & (cols % 2 == 1)
    return red, ~(red | blue), blue


def _demosaic_bilinear(mosaic: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing of an RGGB mosaic (the textbook kernels, mirrored borders)."""
    from scipy.ndimage import convolve

    height, width = mosaic.shape
    out = np.empty((height, width, 3), dtype=np.float64)
    for channel, (mask, kernel) in enumerate(zip(_rggb_masks(height, width),
                                                 (_BAYER_KERNEL_RB, _BAYER_KERNEL_G, _BAYER_KERNEL_RB))):
        out[..., channel] = convolve(np.where(mask, mosaic, 0.0), kernel, mode="mirror")
    return out


def _image_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _log_uniform(rng: np.random.Generator, spread: float) -> float:
    """A factor drawn log-uniformly in [1/spread, spread] (1 when spread is 1, drawing nothing)."""
    if spread == 1.0:
        return 1.0
    return float(np.exp(rng.uniform(-np.log(spread), np.log(spread))))


def simulate_low_light(reference: np.ndarray, level: LowLightLevel, *, seed: int = 0, key: str = "") -> np.ndarray:
    """A dark, noisy 8-bit rendering of ``reference`` (H x W x 3 sRGB, uint8 or float in [0, 1]).

    Returns H x W x 3 uint8. ``key`` (e.g. the image name) and ``seed`` pick the random stream.
    """
    if reference.ndim != 3 or reference.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 pixels, got shape {reference.shape}")
    srgb = reference / 255.0 if reference.dtype == np.uint8 else np.asarray(reference, dtype=np.float64)
    rng = _image_rng(seed, key)
    jitter = float(np.exp(rng.uniform(-np.log(level.exposure_jitter), np.log(level.exposure_jitter))))
    linear = srgb_to_linear(srgb) * (level.exposure * jitter)
    height, width, _ = linear.shape
    red, green, blue = _rggb_masks(height, width)
    mosaic = np.where(red, linear[..., 0], np.where(green, linear[..., 1], linear[..., 2]))
    # Per-scene noise and JPEG draws come from their own stream (the levels without them keep their pixels).
    scene_rng = _image_rng(seed, key + ":scene")
    photons = level.photons * _log_uniform(scene_rng, level.photons_jitter)
    read_noise = level.read_noise * _log_uniform(scene_rng, level.read_noise_jitter)
    quality = None if level.jpeg_quality is None else int(level.jpeg_quality - scene_rng.integers(0, level.jpeg_spread + 1))
    electrons = rng.poisson(np.clip(mosaic, 0.0, None) * photons)
    mosaic = electrons / photons + rng.normal(0.0, read_noise, mosaic.shape)
    dark = np.round(linear_to_srgb(_demosaic_bilinear(mosaic)) * 255.0).astype(np.uint8)
    if quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(dark).save(buffer, format="JPEG", quality=quality)
        dark = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return dark


def write_simulated_set(
    references: Iterable[Path], out_dir: Path, level: LowLightLevel, *, seed: int = 0,
    max_side: int | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/low/NAME.png`` and ``out_dir/high/NAME.png`` for each reference image.

    ``max_side`` first downsizes references (area filter) so that their longer side is at most
    this many pixels. Returns the (low, high) folders, matched by file name, as
    ``dce-batch evaluate --low LOW --reference HIGH`` expects.
    """
    low_dir, high_dir = out_dir / "low", out_dir / "high"
    low_dir.mkdir(parents=True, exist_ok=True)
    high_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(references):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if max_side and max(image.size) > max_side:
                factor = max_side / max(image.size)
                image = image.resize((round(image.width * factor), round(image.height * factor)), Image.BOX)
            reference = np.asarray(image)
        name = Path(path).stem + ".png"
        Image.fromarray(reference).save(high_dir / name)
        Image.fromarray(simulate_low_light(reference, level, seed=seed, key=Path(path).stem)).save(low_dir / name)
        count += 1
    if not count:
        raise ConfigError("no reference images given to simulate from")
    return low_dir, high_dir
