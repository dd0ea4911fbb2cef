"""A JPEG's marker segments, walked without decoding: how much work its scans ask of a decoder.

A progressive JPEG's decoder makes one pass over every block of a scan's components for each
scan, so a file of a few hundred kilobytes that repeats a scan of empty refinements thousands of
times keeps libjpeg-turbo busy for minutes (a 4000x4000 file of 125 KB with 1,000 such scans: 31 s
in the job's decode, 5,000 scans: 107 s), and nothing in Pillow bounds it. libjpeg-turbo gives
applications a limit on scans for this attack (``djpeg -maxscans``, ``TJPARAM_SCANLIMIT``;
NVIDIA's nvImageCodec sets 256 by default), but fewer scans over a larger picture cost as much:
254 single-component scans of a 100 MP picture took 34 s. So the work is counted in passes over
the whole picture: each scan adds its components' share of the picture's blocks (by their
sampling factors). Baseline JPEGs make 1 pass; libjpeg's progressive scripts (as Pillow writes
them) 10 scans and 4.7 passes in 4:4:4, 5.3 in 4:2:0, 6 scans and 6 passes in gray, 18 scans and
6 passes in CMYK.

:func:`jpeg_scan_work` walks the segments from the start-of-image marker to the first end marker
(the first picture: an MPO's further pictures and an EXIF thumbnail's scans do not count),
skipping each segment by its length, each scan's entropy-coded data to the next marker, and, as
libjpeg does, stray bytes between segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_JPEG_PASSES", "MAX_JPEG_SCANS", "ScanWork", "jpeg_scan_work"]

#: More scans than this refuse the file (nvImageCodec's default limit); the walk stops counting there.
MAX_JPEG_SCANS: Final = 256
#: More passes over the picture than this refuse the file: 6 times libjpeg's progressive script,
#: which bounds the scans' work at a few times what a real progressive file of that size costs.
MAX_JPEG_PASSES: Final = 32

_SOS: Final = 0xDA
_EOI: Final = 0xD9
# Start-of-frame markers: 0xC0-0xCF but DHT (C4), JPG (C8) and DAC (CC).
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length: TEM and the restart markers.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
# The next marker after entropy-coded data: 0xFF followed by a byte that is not a stuffed zero, a
# restart marker or a fill byte.
_MARKER_AFTER_SCAN: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# The next marker after stray bytes between segments (libjpeg's next_marker): 0xFF followed by
# anything but a stuffed zero or a fill byte.
_NEXT_MARKER: Final = re.compile(rb"\xff[^\x00\xff]")


@dataclass(frozen=True)
class ScanWork:
    """What a JPEG's first picture asks of a decoder: its scans, and its passes over the picture
    (each scan's components' share of the picture's blocks, summed)."""

    scans: int
    passes: float

    @property
    def excessive(self) -> bool:
        return self.scans > MAX_JPEG_SCANS or self.passes > MAX_JPEG_PASSES


def jpeg_scan_work(data: bytes) -> ScanWork:
    """Count the scans of the JPEG's first picture and the passes they make, stopping once either
    is past its limit. A scan that names a component the frame does not have counts as a whole
    pass; damage is otherwise left for the decoders to report."""
    blocks: dict[int, int] = {}  # component id -> blocks per MCU (its sampling factors' product)
    total = 1  # blocks per MCU of all components
    scans = 0
    units = 0  # blocks per MCU visited by the scans so far: passes = units / total
    position = 2  # after the start-of-image marker
    end = len(data)
    while position + 1 < end:
        if data[position] != 0xFF or data[position + 1] == 0x00:
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
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
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        position += 2 + length
        if marker in _SOF and not blocks:
            blocks = _blocks_per_mcu(segment)
            total = sum(blocks.values()) or 1
        elif marker == _SOS:
            scans += 1
            components = segment[1:1 + 2 * segment[0]:2] if segment else b""
            units += sum(blocks.get(component, total) for component in components) or total
            if scans > MAX_JPEG_SCANS or units > MAX_JPEG_PASSES * total:
                break
            found = _MARKER_AFTER_SCAN.search(data, position)
            if found is None:
                break
            position = found.start()
    return ScanWork(scans=scans, passes=units / total)


def _blocks_per_mcu(frame_header: bytes) -> dict[int, int]:
    """Each component's blocks per MCU, from a frame header's sampling factors (precision, height,
    width, count, then id, sampling byte, table per component)."""
    if len(frame_header) < 6:
        return {}
    components = [frame_header[6 + 3 * i:9 + 3 * i] for i in range(frame_header[5])]
    return {c[0]: (c[1] >> 4) * (c[1] & 0x0F) for c in components if len(c) == 3}
