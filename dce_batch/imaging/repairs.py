"""Repairs that image viewers make without a word, applied to the bytes before decoding.

Each one touches only damage that leaves every pixel intact, and returns other data unchanged
(the same object), so a file that needs no repair costs one check.

* :func:`close_jpeg`: a JPEG that lacks only its final end-of-image marker.
* :func:`drop_damaged_png_chunks`: a PNG whose ancillary chunk (text, time, ICC profile, EXIF ...)
  fails its CRC. libpng's default, which browsers follow, is to warn and discard such a chunk;
  Pillow refuses the whole file.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from dce_batch.imaging.png_stream import PNG_SIGNATURE, png_chunks

__all__ = ["JPEG_EOI", "close_jpeg", "drop_damaged_png_chunks", "trailing_zero_bytes"]

_JPEG_SOI: Final = b"\xff\xd8\xff"
JPEG_EOI: Final = b"\xff\xd9"


def close_jpeg(data: bytes) -> bytes:
    """A JPEG that lacks its final end-of-image marker, with that marker added.

    Some cameras, phones and interrupted-then-resumed copies leave the last two bytes off a file
    whose pixels are all there; viewers show it whole, and Pillow refuses it as truncated. With the
    marker added, a file that lost only the marker decodes without a warning, and one cut short
    inside its compressed data still draws libjpeg's "premature end of data segment", which the
    decoder's check turns into an error.

    A file that ends at its marker and is then padded with zero bytes (a copy onto preallocated
    space or whole disk blocks, some cameras' fixed-size files) is complete: it is left as it is.
    """
    if not data.startswith(_JPEG_SOI):
        return data
    if data.endswith(JPEG_EOI, 0, len(data) - trailing_zero_bytes(data, len(data))):
        return data
    return data + JPEG_EOI


def trailing_zero_bytes(data: bytes, end: int) -> int:
    """How many zero bytes ``data[:end]`` ends with, read back 64 KB at a time (no copy of the file)."""
    stop = end
    while stop > 0:
        start = max(0, stop - 65536)
        kept = len(data[start:stop].rstrip(b"\0"))
        stop = start + kept
        if kept:
            break
    return end - stop


def drop_damaged_png_chunks(data: bytes) -> bytes:
    """A PNG without those of its ancillary chunks whose CRC does not match their content.

    Only ancillary chunks (a lowercase first letter) are checked here; the image data's CRCs are
    :mod:`~dce_batch.imaging.png_stream`'s. A critical chunk's damage, or a chunk list that runs
    past the end of the file, is left for the decoder to report.
    """
    if not data.startswith(PNG_SIGNATURE):
        return data
    keep: list[tuple[int, int]] = []  # byte ranges of the chunks kept
    damaged = False
    rest = len(PNG_SIGNATURE)  # where what follows the last whole chunk starts
    for start, kind, end in png_chunks(data):
        rest = end
        if kind[:1].islower() and zlib.crc32(data[start + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            damaged = True
            continue
        keep.append((start, end))
    if not damaged:
        return data
    return PNG_SIGNATURE + b"".join(data[start:end] for start, end in keep) + data[rest:]
