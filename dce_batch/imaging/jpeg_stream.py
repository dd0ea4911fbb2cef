"""A JPEG's marker segments, walked without decoding: how many scans its picture has.

A progressive JPEG's decoder makes one pass over every coefficient block for each scan, so a
file of a few hundred kilobytes that repeats a scan of empty refinements thousands of times
keeps libjpeg-turbo busy for minutes (a 4000x4000 file of 125 KB with 1,000 such scans: 31 s in
the job's decode, 5,000 scans: 107 s), and nothing in Pillow bounds it. Encoders write 1 scan
(baseline) or about 10 (libjpeg's progressive script, mozjpeg's optimised ones); libjpeg-turbo
gives applications a limit for this attack (``djpeg -maxscans``, ``TJPARAM_SCANLIMIT``) and
NVIDIA's nvImageCodec sets 256 by default.

:func:`jpeg_scan_count` walks the segments from the start-of-image marker to the first end marker
(the first picture: an MPO's further pictures and an EXIF thumbnail's scans are not counted),
skipping each segment by its length and each scan's entropy-coded data to the next marker.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_JPEG_SCANS", "jpeg_scan_count"]

#: More scans than this refuse the file (nvImageCodec's default limit).
MAX_JPEG_SCANS: Final = 256

_SOS: Final = 0xDA
_EOI: Final = 0xD9
# Markers that stand alone, without a length: TEM and the restart markers.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
# The end of a scan's entropy-coded data: 0xFF followed by a byte that is not a stuffed zero, a
# restart marker or a fill byte.
_MARKER_AFTER_SCAN: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_scan_count(data: bytes, *, stop_after: int = MAX_JPEG_SCANS) -> int:
    """How many start-of-scan markers the JPEG's first picture has, counting no further than
    ``stop_after + 1``. A walk that meets something other than a marker where one belongs stops
    there with what it counted: damage is for the decoders to report."""
    scans = 0
    position = 2  # after the start-of-image marker
    end = len(data)
    while position + 1 < end and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker
            position += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            position += 2
            continue
        if position + 4 > end:
            break
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == _SOS:
            scans += 1
            if scans > stop_after:
                break
            found = _MARKER_AFTER_SCAN.search(data, position)
            if found is None:
                break
            position = found.start()
    return scans
