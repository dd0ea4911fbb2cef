"""Wide-gamut sources (Display P3, Adobe RGB, ...) enhanced in sRGB and written back in their own space.

The network was trained on sRGB photos and the finishing's exposure and colour rules read sRGB
values. Pixels encoded for another RGB profile, as phones write Display P3 and cameras Adobe
RGB, would be lifted along the wrong curves and primaries: the output, seen through its profile,
comes out paler and with shifted hues. So a colour source whose RGB profile is not sRGB is
converted to sRGB when it is decoded (:func:`to_srgb`), and its enhanced pixels are converted back
into that profile when an output that carries the profile is written (:func:`from_srgb`); an
output that carries no profile (BMP) stays sRGB, which is what viewers assume of it.

Conversions go through LittleCMS (imagecodecs' ``cms_transform``), with the relative colorimetric
intent: colours inside sRGB are kept exactly, colours outside it (saturated greens and reds of
P3) are clipped to its edge. A profile that maps every colour of a 9 x 9 x 9 lattice to within one
8-bit level of itself is sRGB under another name (there are many), and is left alone.
"""

from __future__ import annotations

import functools
import logging
from typing import Final

import numpy as np

from dce_batch.imaging.metadata import icc_colour_space, icc_processing_elements, icc_too_costly

__all__ = ["from_srgb", "is_srgb_equivalent", "needs_conversion", "to_srgb"]

logger = logging.getLogger(__name__)

_RELATIVE_COLORIMETRIC: Final = 1  # LittleCMS INTENT_RELATIVE_COLORIMETRIC
# LittleCMS optimises a transform into tables. At 8 bits, with its finer tables
# (cmsFLAGS_HIGHRESPRECALC), that is exact to within rounding (0.6 of a level), except near black
# on the way into a pure power curve (Adobe RGB's gamma 2.2), where the curve is so steep that the
# error reaches 2.3 levels; unoptimised it would take 8 times as long. At 16 bits the optimised
# tables are off by up to 5 levels of 8 bits (saturated colours into sRGB), so 16-bit pixels go
# through the unoptimised pipeline (cmsFLAGS_NOOPTIMIZE), exact, at 3 times the cost; they are
# rare. benchmarks/bench_decode_checks.py measures both, error and speed.
_HIGH_RESOLUTION_TABLES: Final = 0x0400
_NOT_OPTIMISED: Final = 0x0100
_LATTICE: Final = np.stack(np.meshgrid(*[np.linspace(0, 255, 9).round().astype(np.uint8)] * 3, indexing="ij"),
                           axis=-1).reshape(-1, 1, 3)


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> bytes:
    import imagecodecs

    return bytes(imagecodecs.cms_profile("srgb"))


def _transform(pixels: np.ndarray, source: bytes, target: bytes) -> np.ndarray:
    """``pixels`` (uint8 or uint16) converted in their own dtype."""
    import imagecodecs

    flags = _NOT_OPTIMISED if pixels.dtype == np.uint16 else _HIGH_RESOLUTION_TABLES
    return imagecodecs.cms_transform(np.ascontiguousarray(pixels), source, target, colorspace="rgb",
                                     outcolorspace="rgb", intent=_RELATIVE_COLORIMETRIC, flags=flags)


@functools.lru_cache(maxsize=32)
def is_srgb_equivalent(icc: bytes) -> bool | None:
    """True for an RGB profile that is sRGB to within one 8-bit level, False for another RGB
    space, None for a profile LittleCMS cannot use, one too costly to apply
    (:func:`~dce_batch.imaging.metadata.icc_too_costly`) or one that is not RGB: left as it is."""
    if icc_colour_space(icc) != "RGB":
        return None
    if icc_too_costly(icc):
        logger.debug("ICC profile too costly to apply (%d processing elements), pixels left as they are",
                     icc_processing_elements(icc))
        return None
    try:
        converted = _transform(_LATTICE, icc, _srgb_profile())
    except Exception as exc:  # noqa: BLE001 - imagecodecs raises CmsError, ValueError, ... for bad profiles
        logger.debug("ICC profile not usable for conversion, pixels left as they are: %s", exc)
        return None
    return int(np.abs(converted.astype(np.int16) - _LATTICE).max()) <= 1


def needs_conversion(icc: bytes | None) -> bool:
    """Whether pixels tagged with ``icc`` are converted to sRGB for enhancement."""
    return icc is not None and is_srgb_equivalent(icc) is False


def to_srgb(pixels: np.ndarray, icc: bytes) -> np.ndarray:
    """H x W x 3 uint8/uint16 ``pixels`` encoded for ``icc`` (an RGB profile), as sRGB, same dtype."""
    return _transform(pixels, icc, _srgb_profile())


def from_srgb(pixels: np.ndarray, icc: bytes) -> np.ndarray:
    """H x W x 3 uint8/uint16 sRGB ``pixels`` encoded for ``icc`` (an RGB profile), same dtype."""
    return _transform(pixels, _srgb_profile(), icc)
