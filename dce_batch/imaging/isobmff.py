"""An ISOBMFF file's (AVIF's) boxes, read without decoding: where the file ends, how many items it holds.

* :func:`isobmff_extent`: where the last top-level box ends, so that zeros after it count as
  padding and zeros inside it as a file never written to its end.
* :func:`item_count`: the entries of the ``iinf`` box inside the top-level ``meta`` box. libavif
  parses every item when the file is opened, in time that grows faster than the square of their
  number: 44,101 unused items (a file of 2 MB whose picture is 64x64) took 18.8 s, 24,337 2.2 s.
  A tiled picture has an item per tile: 100 MP in 256x256 tiles is about 1,600, a 48 MP one in
  512x512 tiles about 200 with its alpha and gain map.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

__all__ = ["MAX_ITEMS", "isobmff_extent", "item_count"]

#: More items than this refuse the file before libavif parses it.
MAX_ITEMS: Final = 4096
# The smallest item entry (an ``infe`` box of version 0 or 1: header, item ID, protection index,
# two empty strings).
_SMALLEST_ITEM_ENTRY: Final = 18


def isobmff_extent(data: bytes) -> int:
    """Where an ISOBMFF file's last top-level box ends: padding after it is no damage.

    The walk stops at a box header whose type is not four printable characters (zero padding
    reads as a box whose type is four zero bytes); a box that runs past the end, or one whose
    size is 0 ("to the end of the file"), ends the file.
    """
    end = 0
    for _kind, _body, box_end in _boxes(data, 0, len(data)):
        end = box_end
    return end if end else len(data)


def item_count(data: bytes) -> int:
    """The number of entries the ``iinf`` box of the top-level ``meta`` box declares, as far as the
    box can hold them (a count damaged into a large number is not a file of many items); 0 if none."""
    for kind, body, box_end in _boxes(data, 0, len(data)):
        if kind == b"meta":  # a full box: version and flags before its children
            for child, child_body, child_end in _boxes(data, body + 4, box_end):
                if child == b"iinf" and child_body + 8 <= len(data):
                    wide = data[child_body] != 0  # version 0 counts in 16 bits, later ones in 32
                    declared, = struct.unpack_from(">I" if wide else ">H", data, child_body + 4)
                    entries_start = child_body + (8 if wide else 6)
                    return min(declared, max(child_end - entries_start, 0) // _SMALLEST_ITEM_ENTRY)
            return 0
    return 0


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, where its body starts, where it ends) of each box between ``start`` and ``end``. A
    box whose type is not printable stops the walk (padding); one that runs past ``end``, or whose
    size is 0, is the last and ends at ``end``."""
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        if not all(0x20 <= byte < 0x7F for byte in kind):
            return
        header = 8
        if size == 1 and offset + 16 <= end:
            size = struct.unpack_from(">Q", data, offset + 8)[0]
            header = 16
        if size < header or offset + size >= end:
            yield kind, offset + header, end
            return
        yield kind, offset + header, offset + size
        offset += size
