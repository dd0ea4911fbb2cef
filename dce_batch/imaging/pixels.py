"""Pixel arrays as numbers: the [0, 1] float scale, integer depths and Rec.709 luma.

The model works on float32 in [0, 1]; decoded images hold uint8 or uint16. These functions convert
between the two by exact rules (``x / 255`` or ``x / 65535`` one way, round-half-to-even of
``x * max`` after clipping the other) and compute the brightness statistics the job records.
numpy only: no Pillow, no torch.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["REC709_LUMA", "mean_luminance", "to_uint8", "to_unit_float"]

#: The largest value of each integer depth images are held in.
MAX_LEVEL: Final[dict[np.dtype, float]] = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}

#: Rec.709 / sRGB luma weights, used for brightness statistics and for grayscale output.
REC709_LUMA: Final[tuple[float, float, float]] = (0.2126, 0.7152, 0.0722)


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """A uint8, uint16 or float array as float32 in [0, 1] (a new array for integer input).

    Integers are divided by their dtype's maximum in float32 (``uint8 / 255``, ``uint16 / 65535``).
    Float arrays are returned as float32 with their values unchanged (no copy if already float32).

    Raises:
        ValueError: any other dtype.
    """
    array = np.asarray(array)
    level = MAX_LEVEL.get(array.dtype)
    if level is not None:
        out = array.astype(np.float32)
        out /= np.float32(level)
        return out
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise ValueError(f"expected a uint8, uint16 or float array, got {array.dtype}")


def to_uint8(array: np.ndarray) -> np.ndarray:
    """A uint8, uint16 or float array as uint8, rounded as :func:`encode_image` does for 8-bit
    outputs: uint8 unchanged (the same array), uint16 to ``round(x / 257)``, float in [0, 1] to
    ``round(x * 255)`` after clipping (NaN counts as 0).

    Raises:
        ValueError: any other dtype.
    """
    array = np.asarray(array)
    if array.dtype not in MAX_LEVEL and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a uint8, uint16 or float array, got {array.dtype}")
    return to_depth(array, np.dtype(np.uint8))


def mean_luminance(pixels: np.ndarray) -> float:
    """Mean Rec.709 luma, in [0, 1], of an (..., 3) uint8, uint16 or float array.

    Integer arrays are normalised by their dtype's maximum (255, 65535); float arrays are taken
    as values in [0, 1]. Computed from per-channel means in float64, which equals the mean of
    per-pixel luma without allocating an HxW temporary.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim < 1 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an (..., 3) array, got shape {pixels.shape}")
    if pixels.size == 0:
        raise ValueError("mean_luminance of an empty image is undefined")
    level = MAX_LEVEL.get(pixels.dtype)
    if level is None and not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"expected a uint8, uint16 or float array, got {pixels.dtype}")
    channel_means = pixels.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    luma = float(np.dot(channel_means, np.asarray(REC709_LUMA, dtype=np.float64)))
    return luma / level if level is not None else luma


def _clip_unit(values: np.ndarray) -> np.ndarray:
    out = np.nan_to_num(values.astype(np.float32, copy=True), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


def rec709_luma(pixels: np.ndarray) -> np.ndarray:
    """Rec.709 luma (HxW float32 in [0, 1]) of uint8/uint16/float HxWx3 pixels."""
    values = _clip_unit(to_unit_float(pixels))
    luma = values @ np.asarray(REC709_LUMA, dtype=np.float32)
    return np.clip(luma, 0.0, 1.0, out=luma)


def to_depth(values: np.ndarray, depth: np.dtype) -> np.ndarray:
    """uint8/uint16/float values as ``depth`` (uint8 or uint16), by the rules of encode_image."""
    if values.dtype == depth:
        return values
    if values.dtype == np.uint8:  # to 16 bits: 255 -> 65535 exactly
        return values.astype(np.uint16) * np.uint16(257)
    if values.dtype == np.uint16:  # to 8 bits: round(x / 257); x / 257 is never exactly n + 0.5
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    # [0, 1] float to integers by round-half-to-even of x * max (the inverse of x / max).
    level = np.float32(MAX_LEVEL[depth])
    return np.rint(_clip_unit(values) * level).astype(depth)
