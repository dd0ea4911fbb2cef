"""A PNG whose image data is incomplete or damaged, which Pillow decodes without a word.

Pillow's PNG decoder stops quietly when the zlib stream ends before the last row (the rows after
it stay black), and it checks no CRC of the image data, so a file whose tail was zero-filled (a
preallocated download that stopped, a disk recovery) decodes its zeros as garbage rows. libpng
reports both ("Not enough image data", "IDAT: CRC error").

:func:`png_stream_damage` checks what libpng checks, paying for a second inflate only where a
cheap sign points at damage: an image-data chunk whose CRC does not match, no IEND chunk, an
interlaced file, or a decoded last row that is all zeros. ``benchmarks/bench_decode_checks.py``:
the CRC pass makes a 12 MP PNG's decode 1.03x as long, and where the second inflate runs, 1.64x.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Final

__all__ = ["PNG_SIGNATURE", "png_chunks", "png_stream_damage"]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# Samples per pixel by colour type (PNG spec, table 11.1).
_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7: Final = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
# Inflate in slices of at most this many output bytes, so a chunk of a flat image does not
# expand into one large buffer.
_SLICE: Final = 1 << 20


def _row_bytes(width: int, channels: int, depth: int) -> int:
    return 1 + (width * channels * depth + 7) // 8  # one filter byte per row


def expected_bytes(width: int, height: int, depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes the image data inflates to: every row of every pass, with its filter byte."""
    channels = _CHANNELS.get(colour_type, 4)
    if not interlaced:
        return height * _row_bytes(width, channels, depth)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        pass_width, pass_height = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if pass_width > 0 and pass_height > 0:
            total += pass_height * _row_bytes(pass_width, channels, depth)
    return total


def png_chunks(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """``(start, type, end)`` of each whole chunk of PNG ``data`` after its signature, up to IEND
    or to a chunk that runs past the end of the data (which the decoder reports as truncated)."""
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length  # length, type, data, CRC
        if end > len(data):
            return
        yield position, kind, end
        if kind == b"IEND":
            return
        position = end


def png_stream_damage(data: bytes, *, last_row_black: bool) -> str | None:
    """Why the image data of PNG ``data`` is incomplete or damaged, or None when it is whole.

    ``last_row_black``: the decoded image's last row is all zeros, the sign of a stream that ended
    early (checked by inflating the data again; a photo with a black bottom edge passes).
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    header: tuple[int, int, int, int, int] | None = None
    idat: list[memoryview] = []
    crc_mismatch = ended = False
    view = memoryview(data)
    for start, kind, end in png_chunks(data):
        if kind == b"IHDR" and end - start >= 25:  # 13 bytes of header data
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[start + 8:start + 21])
            header = (width, height, depth, colour_type, interlace)
        elif kind == b"IDAT":
            body = view[start + 8:end - 4]
            idat.append(body)
            stored = struct.unpack(">I", data[end - 4:end])[0]
            crc_mismatch |= zlib.crc32(body, zlib.crc32(b"IDAT")) != stored
        elif kind == b"IEND":
            ended = True
    if header is None or not idat:
        return None  # nothing to check that the decoder did not already read
    width, height, depth, colour_type, interlace = header
    if not (crc_mismatch or not ended or interlace or last_row_black):
        return None
    expected = expected_bytes(width, height, depth, colour_type, bool(interlace))
    inflater = zlib.decompressobj()
    produced = 0
    try:
        for body in idat:
            pending = bytes(body)
            while pending and not inflater.eof:
                produced += len(inflater.decompress(pending, _SLICE))
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as exc:
        return f"its image data does not inflate ({exc}){_crc_note(crc_mismatch)}"
    if produced < expected:
        return (f"its image data holds {produced:,} of the {expected:,} bytes its {width}x{height} pixels need"
                f"{_crc_note(crc_mismatch)}")
    if not inflater.eof:
        return f"its image data stops before the end of its compressed stream{_crc_note(crc_mismatch)}"
    return None  # whole: only a CRC value or the IEND chunk was lost


def _crc_note(crc_mismatch: bool) -> str:
    return ", and an IDAT chunk fails its CRC" if crc_mismatch else ""
