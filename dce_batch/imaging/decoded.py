"""The decoded image: pixels in their native depth plus what is needed to write them back.

:func:`~dce_batch.imaging.decode.decode_image` makes a :class:`DecodedImage` and
:func:`~dce_batch.imaging.encode.encode_image` takes it back as the source of the output's
alpha, ICC profile, EXIF and format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from dce_batch.imaging.pixels import MAX_LEVEL, to_unit_float

__all__ = ["DecodedImage"]

# Modes without colour: written back as grayscale. "La" is premultiplied LA.
GRAY_8BIT_MODES: Final = frozenset({"1", "L", "LA", "La"})
# Gray with more than 8 bits: 16-bit and 32-bit integer, 32-bit float. Decoded to uint16.
HIGH_DEPTH_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded image in its native integer depth, plus what is needed to write it back faithfully.

    Attributes:
        pixels: C-contiguous array of shape (H, W, 3), upright (EXIF orientation applied):
            ``uint8`` for 8-bit sources, ``uint16`` for sources with more than 8 bits per channel
            (16-bit PNG/TIFF/PNM colour and gray, 10/12-bit AVIF and JPEG 2000 scaled from their
            maximum, ``I;16``, ``I`` clipped to 0..65535, ``F`` scaled
            from [0, 1] to 0..65535). Gray sources have three equal channels. Use
            :meth:`to_float` for the model's float32 input.
        alpha: array of shape (H, W), same dtype as ``pixels``, if the source had transparency,
            else None. The model never sees it; :func:`encode_image` puts it back.
        format: Pillow's format name of the source, e.g. ``"JPEG"``, ``"PNG"``, ``"MPO"``.
        mode: the source's Pillow mode, e.g. ``"RGB"``, ``"P"``, ``"I;16"``, ``"CMYK"``.
        grayscale: the source had no colour; the output is written back as grayscale.
        bit_depth: 8 or 16, always the depth of ``pixels.dtype``. PNG and TIFF outputs of 16-bit
            images are written at 16 bits per channel.
        exif: raw EXIF bytes of the source, as Pillow reads them, or None.
        icc_profile: the source ICC profile if it is an RGB or gray profile, else None (CMYK
            profiles are used for the CMYK -> RGB conversion and then dropped).
        converted_to_srgb: ``pixels`` were converted to sRGB from ``icc_profile``, an RGB profile
            of another space (Display P3, Adobe RGB; :mod:`~dce_batch.imaging.colour_space`).
            :func:`encode_image` converts enhanced pixels back into it where the output keeps it.

    Arrays are not compared by ``==`` (``eq=False``): compare ``pixels`` explicitly.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str
    grayscale: bool
    bit_depth: int
    exif: bytes | None = None
    icc_profile: bytes | None = None
    converted_to_srgb: bool = False

    def __post_init__(self) -> None:
        # Cheap structural checks: a malformed DecodedImage would otherwise fail far away (in
        # the model or the encoder) with an unhelpful message.
        pixels = self.pixels
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype not in MAX_LEVEL:
            raise ValueError(
                f"pixels must be uint8 or uint16 HxWx3, got {pixels.dtype} {pixels.shape}"
            )
        if not pixels.flags.c_contiguous:
            raise ValueError("pixels must be C-contiguous (use np.ascontiguousarray)")
        if self.alpha is not None:
            if self.alpha.shape != pixels.shape[:2]:
                raise ValueError(
                    f"alpha shape {self.alpha.shape} does not match pixels {pixels.shape[:2]}"
                )
            if self.alpha.dtype != pixels.dtype:
                raise ValueError(f"alpha dtype {self.alpha.dtype} differs from pixels {pixels.dtype}")
        expected_depth = 8 if pixels.dtype == np.uint8 else 16
        if self.bit_depth != expected_depth:
            raise ValueError(
                f"bit_depth must be {expected_depth} for {pixels.dtype} pixels, got {self.bit_depth}"
            )

    @property
    def height(self) -> int:
        """Displayed height in pixels (after EXIF orientation)."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Displayed width in pixels (after EXIF orientation)."""
        return int(self.pixels.shape[1])

    def to_float(self) -> np.ndarray:
        """The pixels as a new float32 HxWx3 array in [0, 1], the model's input.

        Exactly ``uint8 / 255`` in float32 for 8-bit images (what the model was trained with) and
        ``uint16 / 65535`` for 16-bit ones.
        """
        return to_unit_float(self.pixels)
