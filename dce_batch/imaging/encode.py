"""Enhanced pixels to bytes in the output format, with the source's alpha, ICC profile and EXIF.

8-bit outputs are written by Pillow, 16-bit PNG and TIFF by :mod:`~dce_batch.imaging.deep`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from dce_batch.errors import ConfigError, UnsupportedImageError
from dce_batch.imaging.colour_space import from_srgb
from dce_batch.imaging.decoded import DecodedImage
from dce_batch.imaging.deep import encode_16bit
from dce_batch.imaging.formats import (
    ALPHA_FORMATS,
    DEEP_FORMATS,
    METADATA_FORMATS,
    MAX_SIDE,
    extension_for,
    normalise_requested_format,
    output_format,
)
from dce_batch.imaging.metadata import icc_colour_space, upright_exif
from dce_batch.imaging.pixels import MAX_LEVEL, rec709_luma, to_depth

__all__ = ["EncodeOptions", "EncodedImage", "encode_image"]

logger = logging.getLogger(__name__)

_JPEG_MAX_MARKER_BYTES: Final = 65533  # an APP1 (EXIF) segment cannot be longer


@dataclass(frozen=True)
class EncodeOptions:
    """How to write enhanced images.

    Attributes:
        format: ``"same"`` (keep the source format where sensible, see :func:`output_format`),
            ``"jpeg"``, ``"png"`` or ``"webp"``. Case-insensitive; ``"jpg"`` means ``"jpeg"``.
        quality: 1..100, used by JPEG and WebP.
    """

    format: str = "same"
    quality: int = 95

    def __post_init__(self) -> None:
        # Normalise so that equal settings compare (and hash) equal.
        object.__setattr__(self, "format", normalise_requested_format(self.format))
        if isinstance(self.quality, bool) or not isinstance(self.quality, (int, np.integer)):
            raise ConfigError(f"quality must be an integer 1..100, got {self.quality!r}")
        if not 1 <= int(self.quality) <= 100:
            raise ConfigError(f"quality must be in 1..100, got {self.quality}")
        object.__setattr__(self, "quality", int(self.quality))


@dataclass(frozen=True)
class EncodedImage:
    """Encoded output bytes with the Pillow format written and the matching file extension."""

    data: bytes
    format: str
    extension: str


def encode_image(
    pixels: np.ndarray, source: DecodedImage, options: EncodeOptions, *, fmt: str | None = None
) -> EncodedImage:
    """Encode enhanced ``pixels`` in the format :func:`output_format` picks for ``source``.

    ``fmt`` (a Pillow format name) overrides that choice: the batch job plans output names
    from file extensions before decoding, and a file whose content differs from its extension
    must still be written in the format its planned name says.

    ``pixels`` is HxWx3 ``uint8``, ``uint16``, or float in [0, 1] (any values: NaN counts as 0,
    the rest is clipped). PNG and TIFF outputs of 16-bit sources are written at 16 bits per
    channel (uint16 exactly, float rounded to 65535 levels, uint8 scaled by 257); everything else
    at 8 bits (float rounded to 255 levels, uint16 as ``round(x / 257)``). Grayscale sources are
    written as grayscale (Rec.709 luma of ``pixels``), the source alpha is re-attached where the
    format supports it (PNG, WebP, TIFF), and the ICC profile and EXIF are kept where the format
    supports them, with EXIF Orientation reset to 1 (the pixels are already upright) and the EXIF
    pixel dimensions set to the written size. Pixels of a source decoded from a wide-gamut profile
    (``source.converted_to_srgb``) are sRGB and are converted back into that profile, except for
    BMP, which carries no profile and is written in sRGB.

    Raises:
        UnsupportedImageError: the image is wider or taller than the output format allows
            (JPEG 65500, WebP 16383 pixels).
        ValueError: ``pixels`` is not HxWx3 uint8/uint16/float or its size differs from ``source``.
    """
    pixels = np.asarray(pixels)
    expected = (source.height, source.width, 3)
    if pixels.shape != expected:
        raise ValueError(f"pixels must have shape {expected} (the source's), got {pixels.shape}")
    if pixels.dtype not in MAX_LEVEL and not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"pixels must be uint8, uint16 or float, got {pixels.dtype}")
    fmt = (fmt or output_format(source.format, options.format)).upper()
    extension_for(fmt)  # ConfigError for formats this module does not write
    max_side = MAX_SIDE.get(fmt)
    if max_side is not None and max(source.width, source.height) > max_side:
        raise UnsupportedImageError(
            f"{source.width}x{source.height} is too large for {fmt} (at most {max_side} pixels "
            "per side); choose --format png for this image"
        )

    depth = np.dtype(np.uint16 if source.bit_depth == 16 and fmt in DEEP_FORMATS else np.uint8)
    alpha = source.alpha if fmt in ALPHA_FORMATS else None
    if source.grayscale:
        channels = [to_depth(rec709_luma(pixels), depth)]
        mode = "L"
    elif source.converted_to_srgb and fmt in METADATA_FORMATS and source.icc_profile is not None:
        # Back into the source's own space, whose profile the output carries (an output that
        # carries none stays sRGB), at the output's depth.
        channels = [from_srgb(to_depth(pixels, depth), source.icc_profile)]
        mode = "RGB"
    else:
        channels = [to_depth(pixels, depth)]
        mode = "RGB"
    if alpha is not None:
        channels.append(to_depth(alpha, depth))
        mode += "A"
    array = channels[0] if len(channels) == 1 else _stack_channels(channels)
    del channels

    if depth == np.uint16:
        data = encode_16bit(array, fmt, mode, source)
    else:
        image = Image.fromarray(array)
        assert image.mode == mode, (image.mode, mode)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **_save_options(fmt, mode, source, options))
        data = buffer.getvalue()
    return EncodedImage(data=data, format=fmt, extension=extension_for(fmt))


def _stack_channels(channels: list[np.ndarray]) -> np.ndarray:
    planes = [c if c.ndim == 3 else c[:, :, None] for c in channels]
    return np.ascontiguousarray(np.concatenate(planes, axis=2))


def _save_options(
    fmt: str, mode: str, source: DecodedImage, options: EncodeOptions
) -> dict[str, object]:
    """Keyword arguments for ``Image.save``: quality and the metadata the format can carry."""
    kwargs: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = options.quality
    if fmt == "TIFF":
        kwargs["compression"] = "tiff_adobe_deflate"  # lossless and readable everywhere
    if fmt not in METADATA_FORMATS:
        return kwargs

    # WebP has no grayscale; Pillow stores L/LA as RGB/RGBA, so only RGB profiles fit there.
    stored_gray = mode in ("L", "LA") and fmt != "WEBP"
    icc = source.icc_profile
    if icc is not None and icc_colour_space(icc) == ("GRAY" if stored_gray else "RGB"):
        kwargs["icc_profile"] = icc

    exif = upright_exif(source.exif, source.width, source.height)
    if exif is not None and fmt == "JPEG" and len(exif) > _JPEG_MAX_MARKER_BYTES:
        logger.debug("dropping EXIF of %d bytes: too long for a JPEG APP1 segment", len(exif))
        exif = None
    if exif is not None:
        kwargs["exif"] = exif
    return kwargs
