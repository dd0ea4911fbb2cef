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

__all__ = ["close_jpeg", "drop_damaged_png_chunks"]

_JPEG_SOI: Final = b"\xff\xd8\xff"
_JPEG_EOI: Final = b"\xff\xd9"
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def close_jpeg(data: bytes) -> bytes:
    """A JPEG that lacks its final end-of-image marker, with that marker added.

    Some cameras, phones and interrupted-then-resumed copies leave the last two bytes off a file
    whose pixels are all there; viewers show it whole, and Pillow refuses it as truncated. With the
    marker added, a file that lost only the marker decodes without a warning, and one cut short
    inside its compressed data still draws libjpeg's "premature end of data segment", which the
    decoder's check turns into an error.
    """
    if data.startswith(_JPEG_SOI) and not data.endswith(_JPEG_EOI):
        return data + _JPEG_EOI
    return data


def drop_damaged_png_chunks(data: bytes) -> bytes:
    """A PNG without those of its ancillary chunks whose CRC does not match their content.

    Only ancillary chunks (a lowercase first letter) are checked, so the image data is never
    read twice. A critical chunk's damage, or a chunk list that runs past the end of the file, is
    left for the decoder to report.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return data
    keep: list[tuple[int, int]] = []  # byte ranges of the chunks kept
    damaged = False
    position = len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if end > len(data):
            break  # truncated: the decoder says so
        if kind[:1].islower():
            stored = struct.unpack(">I", data[end - 4:end])[0]
            if zlib.crc32(data[position + 4:end - 4]) != stored:
                damaged = True
                position = end
                continue
        keep.append((position, end))
        position = end
        if kind == b"IEND":
            break
    if not damaged:
        return data
    return _PNG_SIGNATURE + b"".join(data[start:end] for start, end in keep) + data[position:]
