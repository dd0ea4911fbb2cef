"""The metadata worth keeping: ICC profiles, EXIF made upright for the output, PNG chunks.

Pillow reads and writes most of it; what is here is what it does not offer: the colour space of
an ICC profile, an EXIF block rewritten for upright pixels, the chunks a PNG stores after its
pixel data, and iCCP/eXIf chunks inserted into a PNG that another encoder wrote.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from typing import Final

from PIL import Image

logger = logging.getLogger(__name__)

EXIF_ORIENTATION: Final = 0x0112
_EXIF_IFD: Final = 0x8769
# Pixel-dimension tags that must describe the written (upright) image: IFD0's ImageWidth and
# ImageLength, and the Exif IFD's PixelXDimension and PixelYDimension.
IFD0_WIDTH, IFD0_HEIGHT = 0x0100, 0x0101
_EXIF_PIXEL_X, _EXIF_PIXEL_Y = 0xA002, 0xA003


def icc_colour_space(icc: bytes) -> str | None:
    """The ICC header's data colour space ("RGB", "GRAY", "CMYK", ...), or None if malformed."""
    if len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20].decode("latin-1").strip()


#: More processing elements than this in one multiProcessElements tag (ICC v4.3's D2Bx/B2Dx, which
#: LittleCMS prefers to the other tables) make a profile too costly to apply: building a transform
#: samples the whole chain on a 49 x 49 x 49 grid, so a chain of 5,000 elements that repeat two
#: elements of 60 bytes (a profile of 393 bytes after zlib) took 10.8 s per image, and 131,000
#: fit in Pillow's 1 MB limit on a PNG's profile. Real profiles have one to a few elements.
MAX_ICC_PROCESSING_ELEMENTS: Final = 16


def icc_processing_elements(icc: bytes) -> int:
    """The most processing elements of any multiProcessElements (``mpet``) tag of an ICC profile;
    0 if it has none or its tag table cannot be read."""
    if len(icc) < 132:
        return 0
    most = 0
    (count,) = struct.unpack_from(">I", icc, 128)
    for index in range(min(count, (len(icc) - 132) // 12)):
        _signature, offset, _size = struct.unpack_from(">4sII", icc, 132 + 12 * index)
        if icc[offset:offset + 4] == b"mpet" and offset + 16 <= len(icc):
            most = max(most, struct.unpack_from(">I", icc, offset + 12)[0])
    return most


def icc_too_costly(icc: bytes) -> bool:
    """Whether applying the profile would cost LittleCMS far more than any real profile does."""
    return icc_processing_elements(icc) > MAX_ICC_PROCESSING_ELEMENTS


def usable_icc(icc: bytes | None) -> bytes | None:
    """Keep RGB and gray profiles; drop CMYK/Lab/other and malformed ones, and ones too costly to
    apply (which the pixels were not converted from, and which would cost every viewer the same)."""
    if icc is None:
        return None
    return bytes(icc) if icc_colour_space(icc) in ("RGB", "GRAY") and not icc_too_costly(icc) else None


def upright_exif(raw: bytes | None, width: int, height: int) -> bytes | None:
    """The source EXIF for an upright ``width`` x ``height`` output, or None if absent/unreadable.

    Orientation becomes 1, and the pixel-dimension tags that are present (IFD0 ImageWidth and
    ImageLength, Exif IFD PixelXDimension and PixelYDimension) are set to the written size:
    after a 90-degree EXIF rotation the source's values are swapped.
    """
    if not raw:
        return None
    try:
        # Pillow warns of malformed EXIF as it parses; such a block is dropped or cleaned here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            exif = Image.Exif()
            exif.load(raw)
            if EXIF_ORIENTATION in exif:
                exif[EXIF_ORIENTATION] = 1
            for tag, value in ((IFD0_WIDTH, width), (IFD0_HEIGHT, height)):
                if tag in exif:
                    exif[tag] = value
            if _EXIF_IFD in exif:
                exif_ifd = exif.get_ifd(_EXIF_IFD)  # a live dict: tobytes() writes what is set here
                for tag, value in ((_EXIF_PIXEL_X, width), (_EXIF_PIXEL_Y, height)):
                    if tag in exif_ifd:
                        exif_ifd[tag] = value
            data = exif.tobytes()
    except Exception as exc:  # noqa: BLE001 - malformed EXIF is dropped, never fatal
        logger.debug("dropping unreadable EXIF: %s", exc)
        return None
    # An EXIF block with no tags (e.g. only a thumbnail) is not worth writing.
    return data if len(exif) else None


def png_with_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """``png`` with iCCP and eXIf chunks inserted after IHDR (both must precede the image data)."""
    chunks = b""
    if icc is not None:
        # Profile name, NUL, compression method 0 (zlib), compressed profile (PNG spec 11.3.3.3).
        chunks += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif is not None:
        # eXIf holds the TIFF-structured EXIF without the JPEG "Exif\0\0" prefix.
        chunks += _png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    if not chunks:
        return png
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_chunk_after_pixels(data: bytes, kind: bytes) -> bytes | None:
    """The payload of the first ``kind`` chunk after a PNG's image data, or None.

    Only chunk headers are read (each is skipped by its length); Pillow reads the chunks before
    the image data when it opens the file.
    """
    offset, seen_pixels = 8, False
    while offset + 8 <= len(data):
        length, chunk = struct.unpack(">I4s", data[offset : offset + 8])
        if chunk == b"IDAT":
            seen_pixels = True
        elif seen_pixels and chunk == kind:
            return data[offset + 8 : offset + 8 + length]
        elif chunk == b"IEND":
            break
        offset += 12 + length
    return None
